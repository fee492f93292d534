package main

import (
	"errors"
	"strings"
	"testing"
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
