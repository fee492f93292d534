package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/metadata"
	"github.com/torus-storage/torus/report"
)

// keepOpen stops torusctl's Close from closing the shared test store.
type keepOpen struct{ torus.Metadata }

func (keepOpen) Close() error { return nil }

// run runs torusctl against m and returns stdout, stderr and the error.
func run(t *testing.T, m torus.Metadata, term bool, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := NewCommand(Deps{
		Open:       func(context.Context, Global) (torus.Metadata, error) { return keepOpen{m}, nil },
		Getenv:     func(string) string { return "" },
		IsTerminal: func(io.Writer) bool { return term },
	}, &out, &errOut)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

// cluster is a Memory store with peers p1..p3 in the ring (z1, z2, z3),
// p4 registered but new, all up and heartbeating used bytes.
func cluster(t *testing.T, replication int) (*metadata.Memory, torus.Session) {
	t.Helper()
	ctx := context.Background()
	m := metadata.NewMemory()
	t.Cleanup(func() { _ = m.Close() })
	if err := m.InitCluster(ctx, torus.ClusterConfig{Replication: replication}); err != nil {
		t.Fatal(err)
	}
	ses, err := m.NewSession(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	ring, _ := m.Ring(ctx)
	for i, id := range []string{"p1", "p2", "p3", "p4"} {
		p := torus.PeerInfo{ID: id, Address: "10.0.0." + id[1:] + ":4000", Zone: "z" + id[1:], Capacity: int64(i+1) << 30}
		if err := m.PutPeer(ctx, p); err != nil {
			t.Fatal(err)
		}
		if err := m.Heartbeat(ctx, ses, id, torus.Beat{Used: 1 << 20}); err != nil {
			t.Fatal(err)
		}
		if id != "p4" {
			ring.Members = append(ring.Members, torus.RingMember{ID: id, Zone: p.Zone, Weight: p.Capacity})
		}
	}
	ring.Version++
	if err := m.SetRing(ctx, ring); err != nil {
		t.Fatal(err)
	}
	return m, ses
}

func TestResolvePeers(t *testing.T) {
	peers := []torus.PeerInfo{
		{ID: "a", Address: "h1:1"}, {ID: "b", Address: "h2:1"}, {ID: "c", Address: "h2:1"}, {ID: "h1:1", Address: "x:1"},
	}
	got, err := ResolvePeers(peers, []string{"a", "h1:1", "a", "b"})
	if err != nil {
		t.Fatal(err)
	}
	if ids := peerIDs(got); ids != "a, h1:1, b" {
		t.Fatalf("resolved %q, want IDs first, duplicates once", ids)
	}
	if got, err := ResolvePeers(peers, []string{"x:1"}); err != nil || got[0].ID != "h1:1" {
		t.Fatalf("by address: %v %v", got, err)
	}
	if _, err := ResolvePeers(peers, []string{"nope"}); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("unknown peer: %v", err)
	}
	if _, err := ResolvePeers(peers, []string{"h2:1"}); !errors.Is(err, torus.ErrInvalid) || !strings.Contains(err.Error(), "b, c") {
		t.Fatalf("shared address: %v", err)
	}
}

func TestAddRemoveRing(t *testing.T) {
	ring := torus.RingSpec{Version: 3, Replication: 2, VirtualNodes: 8, Members: []torus.RingMember{{ID: "a", Weight: 1}}}
	next, err := AddToRing(ring, []torus.PeerInfo{{ID: "b", Zone: "z", Capacity: 5}})
	if err != nil {
		t.Fatal(err)
	}
	if next.Version != 4 || len(next.Members) != 2 || next.Members[1] != (torus.RingMember{ID: "b", Zone: "z", Weight: 5}) {
		t.Fatalf("AddToRing = %+v", next)
	}
	if len(ring.Members) != 1 {
		t.Fatal("AddToRing changed its input")
	}
	if _, err := AddToRing(ring, []torus.PeerInfo{{ID: "a", Capacity: 1}}); !errors.Is(err, torus.ErrExist) {
		t.Fatalf("adding a member: %v", err)
	}
	if _, err := AddToRing(ring, []torus.PeerInfo{{ID: "b"}}); !errors.Is(err, torus.ErrInvalid) {
		t.Fatalf("adding a peer without capacity: %v", err)
	}
	rm := RemoveFromRing(next, []string{"a", "zz"})
	if rm.Version != 5 || len(rm.Members) != 1 || rm.Members[0].ID != "b" || len(next.Members) != 2 {
		t.Fatalf("RemoveFromRing = %+v (input %+v)", rm, next)
	}
}

func TestBar(t *testing.T) {
	for _, tc := range []struct {
		f    float64
		want string
	}{
		{0, "[..........]   0%"}, {0.5, "[#####.....]  50%"}, {1, "[##########] 100%"}, {2, "[##########] 100%"}, {-1, "[..........]   0%"},
	} {
		if got := Bar(tc.f, 10); got != tc.want {
			t.Errorf("Bar(%v) = %q, want %q", tc.f, got, tc.want)
		}
	}
}

func TestPeerAdd(t *testing.T) {
	m, _ := cluster(t, 2)
	out, _, err := run(t, m, false, "peer", "add", "10.0.0.4:4000")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "ring version 3: added p4 (4 members)") {
		t.Fatalf("peer add printed %q", out)
	}
	ring, _ := m.Ring(context.Background())
	if last := ring.Members[3]; last != (torus.RingMember{ID: "p4", Zone: "z4", Weight: 4 << 30}) {
		t.Fatalf("added member %+v, want weight = capacity, zone z4", last)
	}
	if _, _, err := run(t, m, false, "peer", "add", "p4"); !errors.Is(err, torus.ErrExist) {
		t.Fatalf("adding p4 twice: %v", err)
	}
	if _, _, err := run(t, m, false, "peer", "add", "p9"); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("adding an unknown peer: %v", err)
	}
	if ring2, _ := m.Ring(context.Background()); ring2.Version != ring.Version {
		t.Fatalf("refused adds wrote ring version %d", ring2.Version)
	}
}

func TestPeerRemoveForce(t *testing.T) {
	m, ses := cluster(t, 2)
	ctx := context.Background()
	_, _, err := run(t, m, false, "peer", "remove", "--force", "p3")
	if err == nil || !strings.Contains(err.Error(), "refusing --force on peer p3: it is up") || !strings.Contains(err.Error(), "--yes-really") {
		t.Fatalf("--force on an up peer: %v", err)
	}
	if _, _, err := run(t, m, false, "peer", "remove", "--yes-really", "p3"); err == nil {
		t.Fatal("--yes-really without --force accepted")
	}
	// Every peer's liveness key goes with the shared session: all down.
	m.ExpireSession(ses.ID())
	out, stderr, err := run(t, m, false, "-o", "json", "peer", "remove", "--force", "p3")
	if err != nil {
		t.Fatal(err)
	}
	var res removeResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.RingVersion != 3 || len(res.Removed) != 1 {
		t.Fatalf("json %q: %+v %v", out, res, err)
	}
	if stderr != "" {
		t.Fatalf("unexpected warning %q", stderr)
	}
	peers, _ := m.Peers(ctx)
	if len(peers) != 3 {
		t.Fatalf("peers after forced removal: %+v", peers)
	}
	// Up peers with --yes-really: allowed, and warns when too few remain.
	s2, _ := m.NewSession(ctx, time.Minute)
	_ = m.Heartbeat(ctx, s2, "p2", torus.Beat{})
	_, stderr, err = run(t, m, false, "peer", "remove", "--force", "--yes-really", "p2")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr, "1 ring members remain, fewer than replication 2") {
		t.Fatalf("no warning about too few members: %q", stderr)
	}
}

func TestPeerRemoveGraceful(t *testing.T) {
	m, ses := cluster(t, 2)
	ctx := context.Background()
	// Too few members would remain.
	if _, _, err := run(t, m, false, "peer", "remove", "p1", "p2"); !errors.Is(err, torus.ErrInvalid) {
		t.Fatalf("removing 2 of 3 with replication 2: %v", err)
	}
	// --no-wait only marks draining; a new peer is just forgotten.
	out, _, err := run(t, m, false, "peer", "remove", "--no-wait", "p3", "p4")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "deleted p4 (not in the ring); draining p3") {
		t.Fatalf("--no-wait printed %q", out)
	}
	peers, _ := m.Peers(ctx)
	if len(peers) != 3 || peers[2].State != torus.PeerDraining {
		t.Fatalf("peers after --no-wait: %+v", peers)
	}
	// Timeout: p3 still reports data.
	_, _, err = run(t, m, false, "peer", "remove", "p3", "--timeout", "300ms", "--interval", "50ms")
	if !errors.Is(err, errDrainTimeout) || !strings.Contains(err.Error(), "stay draining") {
		t.Fatalf("timeout: %v", err)
	}
	// A "daemon" moves the data off after a while; remove waits and
	// finishes, showing progress with a bar on a terminal.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		time.Sleep(150 * time.Millisecond)
		_ = m.Heartbeat(ctx, ses, "p3", torus.Beat{Used: 1 << 19, Pending: 1 << 19})
		time.Sleep(150 * time.Millisecond)
		_ = m.Heartbeat(ctx, ses, "p3", torus.Beat{})
	}()
	out, _, err = run(t, m, true, "peer", "remove", "p3", "--timeout", "10s", "--interval", "20ms")
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"\r[....", "] 100% draining p3: 0B left", "removed p3 (ring version 3)"} {
		if !strings.Contains(out, want) {
			t.Fatalf("output %q lacks %q", out, want)
		}
	}
	if !strings.Contains(out, "50%") {
		t.Fatalf("output %q never showed half-way progress", out)
	}
	ring, _ := m.Ring(ctx)
	peers, _ = m.Peers(ctx)
	if len(ring.Members) != 2 || len(peers) != 2 {
		t.Fatalf("after removal: ring %+v peers %+v", ring, peers)
	}
}

func TestStatus(t *testing.T) {
	m, ses := cluster(t, 2)
	ctx := context.Background()
	for _, n := range []string{"a", "b", "c", "d"} {
		if _, err := m.CreateVolume(ctx, torus.VolumeInfo{Name: n, Size: 1 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	_ = m.Heartbeat(ctx, ses, "p1", torus.Beat{Used: 1 << 20, Pending: 3 << 20})
	if err := m.PutVolumeStatuses(ctx, []torus.VolumeStatus{
		{Volume: "a", Health: torus.VolumeHealthy, Stored: 4 << 20},
		{Volume: "b", Health: torus.VolumeDegraded, Stored: 2 << 20, UnderReplicated: 2, PendingBytes: 1 << 20},
		{Volume: "c", Health: torus.VolumeUnavailable, Unavailable: 1},
	}); err != nil {
		t.Fatal(err)
	}
	out, _, err := run(t, m, true, "status")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"peers: +3 up, 0 down, 0 draining, 1 new, 0 removed",
		"volumes: +4 \\(0 open\\): 1 healthy, 1 degraded, 1 unavailable, 1 not reported",
		"segments: +2 under-replicated, 1 unavailable",
		`healing: +\[#{18}\.{12}\]  60% 1MiB to heal, 3MiB to rebalance`,
		"ring: +version 2, replication 2, 3 members",
	} {
		if !regexpMatch(want, out) {
			t.Errorf("status output lacks /%s/:\n%s", want, out)
		}
	}
	out, _, err = run(t, m, false, "-o", "json", "status")
	if err != nil {
		t.Fatal(err)
	}
	var st report.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if st.HealPending != 1<<20 || st.RebalancePending != 3<<20 || st.Stored != 6<<20 || st.Progress != 0.6 ||
		st.VolumeHealth["unknown"] != 1 || st.VolumeHealth["degraded"] != 1 || st.Peers[torus.PeerUp] != 3 {
		t.Fatalf("json status %+v", st)
	}
	// Not a terminal: no bar.
	out, _, _ = run(t, m, false, "status")
	if strings.Contains(out, "[#") {
		t.Fatalf("bar drawn off a terminal: %q", out)
	}
}

func TestVolumeListStatus(t *testing.T) {
	m, _ := cluster(t, 2)
	ctx := context.Background()
	v, _ := m.CreateVolume(ctx, torus.VolumeInfo{Name: "a", Size: 1 << 30})
	_, _ = m.CreateVolume(ctx, torus.VolumeInfo{Name: "b", Size: 1 << 30})
	if err := m.PutVolumeStatuses(ctx, []torus.VolumeStatus{
		{Volume: "a", ID: v.ID, Health: torus.VolumeDegraded, Used: 5 << 20, UnderReplicated: 3, PendingBytes: 2 << 20},
	}); err != nil {
		t.Fatal(err)
	}
	out, _, err := run(t, m, false, "volume", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"NAME +SIZE +USED +WRITER +MIN-REPLICAS +HEALTH +UNDER-REPL +PENDING",
		"a +1GiB +5MiB +- +default +degraded +3 +2MiB",
		"b +1GiB +- +- +default +- +- +-",
	} {
		if !regexpMatch(want, out) {
			t.Errorf("volume list lacks /%s/:\n%s", want, out)
		}
	}
	out, _, _ = run(t, m, false, "-o", "json", "volume", "list")
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatal(err)
	}
	if rows[0]["health"] != "degraded" || rows[0]["under_replicated"] != 3.0 || rows[0]["pending_bytes"] != float64(2<<20) ||
		rows[1]["health"] != nil || rows[1]["used"] != nil {
		t.Fatalf("json rows %v", rows)
	}
}

func regexpMatch(pattern, s string) bool { return regexp.MustCompile(pattern).MatchString(s) }

// TestDrainNeedsFreshHeartbeats: a stale "no data" report (from before the
// drain began) does not end the wait; two newer heartbeats are needed.
func TestDrainNeedsFreshHeartbeats(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var b beats
	step := func(sec int, used int64, wantLeft bool) {
		t.Helper()
		peers := []torus.PeerInfo{{ID: "p", Used: used, LastSeen: t0.Add(time.Duration(sec) * time.Second)}}
		p, err := drainProgress(peers, map[string]torus.VolumeStatus{"v": {Health: torus.VolumeDegraded, PendingBytes: 7}}, []string{"p"}, &b)
		if err != nil {
			t.Fatal(err)
		}
		if got := len(p.Left) > 0; got != wantLeft {
			t.Fatalf("at %ds used %d: left=%v, want %v", sec, used, got, wantLeft)
		}
		if p.Degraded != 1 || p.VolPending != 7 {
			t.Fatalf("volume progress %+v", p)
		}
	}
	step(0, 0, true) // baseline: maybe stale
	step(0, 0, true) // same heartbeat again
	step(1, 0, true) // first fresh one
	step(2, 0, false)
	step(3, 4096, true) // data came back
	if _, err := drainProgress(nil, nil, []string{"p"}, &b); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("vanished peer: %v", err)
	}
}
