package main

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseHealth(t *testing.T) {
	cases := []struct {
		in       string
		want     Health
		degraded bool
	}{
		{`{"healthy": true, "under_replicated_bytes": 0}`, Health{}, false},
		{`{"volumes": [{"name": "bench", "under_replicated_bytes": 1024, "under_replicated_segments": 1},
		  {"name": "b", "under_replicated_bytes": 2048, "under_replicated_segments": 2}]}`,
			Health{UnderReplicatedBytes: 3072, UnderReplicatedSegments: 3}, true},
		{`[{"name": "bench", "healthy": false}]`, Health{Unhealthy: true}, true},
		{`{"cluster": {"peers": [{"healthy": true}, {"healthy": false}]}}`, Health{Unhealthy: true}, true},
	}
	for _, c := range cases {
		h, err := ParseHealth([]byte(c.in))
		if err != nil || h != c.want || h.Degraded() != c.degraded {
			t.Errorf("%s: got %+v, %v (degraded %v)", c.in, h, err, h.Degraded())
		}
	}
	for _, bad := range []string{``, `not json`, `{"volumes": [{"name": "bench"}]}`, `{"healthy": "yes"}`} {
		if _, err := ParseHealth([]byte(bad)); !errors.Is(err, ErrHealthFormat) {
			t.Errorf("%q: err %v", bad, err)
		}
	}
}

func TestSumMetric(t *testing.T) {
	text := `# HELP torus_heal_bytes_total Bytes copied by healing.
# TYPE torus_heal_bytes_total counter
torus_heal_bytes_total{volume="bench"} 1.5e+06
torus_heal_bytes_total{volume="other",peer="a}b"} 500000
torus_heal_bytes_total_extra 99
torus_heal_bytes 7
go_goroutines 12
`
	v, ok, err := SumMetric(strings.NewReader(text), "torus_heal_bytes_total")
	if err != nil || !ok || v != 2e6 {
		t.Errorf("got %v %v %v, want 2e6", v, ok, err)
	}
	v, ok, err = SumMetric(strings.NewReader("torus_x 3\ntorus_x 4\n"), "torus_x")
	if err != nil || !ok || v != 7 {
		t.Errorf("unlabelled: %v %v %v", v, ok, err)
	}
	if _, ok, err := SumMetric(strings.NewReader(text), "torus_missing"); ok || err != nil {
		t.Errorf("missing metric: ok %v err %v", ok, err)
	}
	if _, _, err := SumMetric(strings.NewReader("torus_x{a=\"b\" 3\n"), "torus_x"); err == nil {
		t.Error("unterminated labels accepted")
	}
	if _, _, err := SumMetric(strings.NewReader("torus_x abc\n"), "torus_x"); err == nil {
		t.Error("bad value accepted")
	}
}

func FuzzParseHealth(f *testing.F) {
	f.Add([]byte(`{"volumes": [{"under_replicated_bytes": 1, "healthy": false}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := ParseHealth(data)
		if err != nil && !errors.Is(err, ErrHealthFormat) {
			t.Fatalf("error %v does not wrap ErrHealthFormat", err)
		}
		if err != nil && h != (Health{}) {
			t.Fatal("error with a non-zero Health")
		}
	})
}

func TestParseHealthVolumeList(t *testing.T) {
	// torusctl volume list -o json prints "health": null until it can tell.
	if _, err := ParseHealth([]byte(`[{"name":"bench","used":null,"health":null}]`)); !errors.Is(err, ErrHealthFormat) {
		t.Errorf("null health: %v", err)
	}
	h, err := ParseHealth([]byte(`[{"name":"a","health":"ok"},{"name":"bench","health":"degraded"}]`))
	if err != nil || !h.Degraded() {
		t.Errorf("degraded volume: %+v %v", h, err)
	}
	h, err = ParseHealth([]byte(`[{"name":"a","health":"healthy"}]`))
	if err != nil || h.Degraded() {
		t.Errorf("healthy volume: %+v %v", h, err)
	}
}

func TestPeerDown(t *testing.T) {
	list := `[{"id":"a","address":"127.0.0.1:1","state":"up"},{"id":"b","address":"127.0.0.1:2","state":"down"}]`
	for addr, want := range map[string]bool{"127.0.0.1:1": false, "127.0.0.1:2": true, "10.0.0.1:9": true} {
		got, err := PeerDown([]byte(list), addr)
		if err != nil || got != want {
			t.Errorf("%s: %v %v, want %v", addr, got, err, want)
		}
	}
	if got, _ := PeerDown([]byte(`[{"address":"x","state":"up"}]`), "y"); got {
		t.Error("nobody down, unknown address: reported down")
	}
	if _, err := PeerDown([]byte(`{"peers":1}`), "x"); err == nil {
		t.Error("bad JSON accepted")
	}
}

func TestHealTracker(t *testing.T) {
	s := time.Second
	unknown := HealObs{Pending: -1, Copied: -1}
	// Metrics path: down, pending, then copied and nothing pending twice.
	tr := NewHealTracker(100)
	steps := []struct {
		o    HealObs
		done bool
	}{
		{HealObs{Pending: 0, Copied: 100}, false},                     // not noticed yet
		{HealObs{VictimDown: true, Pending: 0, Copied: 100}, false},   // detected at 2s
		{HealObs{VictimDown: true, Pending: 500, Copied: 300}, false}, // copying
		{HealObs{VictimDown: true, Pending: 0, Copied: 700}, false},   // calm once: finished at 4s
		{HealObs{VictimDown: true, Pending: 0, Copied: 700}, true},    // calm twice: confirmed at 5s
	}
	for i, st := range steps {
		if got := tr.Observe(time.Duration(i+1)*s, st.o); got != st.done {
			t.Fatalf("step %d: done %v, want %v", i, got, st.done)
		}
	}
	if d, ok := tr.Noticed(); !ok || d != 2*s || tr.CopyStart() != 3*s {
		t.Errorf("noticed %v %v, copy start %v; want 2s, 3s", d, ok, tr.CopyStart())
	}
	done, finished := tr.Done()
	if !finished || done != 4*s {
		t.Fatalf("done at %v %v, want 4s (the first calm observation)", done, finished)
	}
	var r HealResult
	tr.Result(&r, done)
	if r.Bytes != 600 || r.DetectSeconds != 2 || r.CopyStartSeconds != 3 || r.TotalSeconds != 4 ||
		r.MiBps != 600.0/(1<<20) || r.TotalMiBps != 150.0/(1<<20) {
		t.Errorf("result %+v", r)
	}
	if b, src := tr.Bytes(); b != 600 || !strings.Contains(src, "copied") {
		t.Errorf("bytes %d from %q", b, src)
	}
	if !tr.Observe(9*s, unknown) {
		t.Error("done is not sticky")
	}

	// A copy first seen already finished (it ran between two polls): one
	// poll is counted for it, not zero time (a rate of 0 MiB/s, or none).
	tr = NewHealTracker(100)
	for i, o := range []HealObs{
		{VictimDown: true, Pending: 0, Copied: 100},
		{VictimDown: true, Pending: 0, Copied: 700},
		{VictimDown: true, Pending: 0, Copied: 700},
	} {
		tr.Observe(time.Duration(i+1)*s, o)
	}
	if done, ok := tr.Done(); !ok || tr.CopyStart() != 2*s || done != 3*s {
		t.Errorf("copy seen finished: copy start %v, done %v %v; want 2s, 3s", tr.CopyStart(), done, ok)
	}

	// A kill that never leads to copying never finishes.
	tr = NewHealTracker(0)
	for i := range 10 {
		if tr.Observe(time.Duration(i)*s, HealObs{VictimDown: true, Pending: 0, Copied: 0}) {
			t.Fatal("finished without any healing")
		}
	}
	// Nothing known at all: never detected.
	tr = NewHealTracker(-1)
	for i := range 5 {
		tr.Observe(time.Duration(i)*s, unknown)
	}
	if _, ok := tr.Noticed(); ok {
		t.Error("noticed from no information")
	}

	// torusctl redundancy path, no metrics: degraded reports, then healthy.
	tr = NewHealTracker(-1)
	deg := &Health{UnderReplicatedBytes: 4096}
	ok := &Health{}
	for i, st := range []struct {
		h    *Health
		done bool
	}{{deg, false}, {deg, false}, {ok, false}, {ok, true}} {
		if got := tr.Observe(time.Duration(i)*s, HealObs{Pending: -1, Copied: -1, Health: st.h}); got != st.done {
			t.Fatalf("report step %d: done %v", i, got)
		}
	}
	if b, src := tr.Bytes(); b != 4096 || !strings.Contains(src, "under_replicated") {
		t.Errorf("bytes %d from %q", b, src)
	}
	if tr.CopyStart() != 0 {
		t.Errorf("copy start without copy signals = %v, want the noticing time 0", tr.CopyStart())
	}
	// A blip of calm between rounds of copying does not end it.
	tr = NewHealTracker(0)
	for i, o := range []HealObs{
		{VictimDown: true, Pending: 10, Copied: 0},
		{VictimDown: true, Pending: 0, Copied: 5},
		{VictimDown: true, Pending: 10, Copied: 5},
		{VictimDown: true, Pending: 0, Copied: 15},
	} {
		if tr.Observe(time.Duration(i)*s, o) {
			t.Fatalf("blip step %d finished", i)
		}
	}
	if b, _ := tr.Bytes(); b != 15 {
		t.Errorf("blip bytes %d", b)
	}
	// Finished at the first calm after the last blip (3s), not the blip's.
	if !tr.Observe(4*s, HealObs{VictimDown: true, Pending: 0, Copied: 15}) {
		t.Fatal("calm twice did not finish")
	}
	if done, _ := tr.Done(); done != 3*s {
		t.Errorf("done at %v, want 3s", done)
	}
}
