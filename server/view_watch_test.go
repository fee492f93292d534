package server

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
)

// TestViewTypedChanges: with the in-memory metadata and with etcd, a
// heartbeat reaches no view (no event, no read, no new generation: an
// idle cluster's view costs nothing per peer), a draining peer that beats
// still shows seen now, a burst of peer changes is read with one Peers
// read (not one per change: joins would cost O(daemons²)), and a ring
// change moves the generation (maintenance plans for it).
func TestViewTypedChanges(t *testing.T) {
	for _, tc := range []struct {
		name string
		meta func(t *testing.T) torus.Metadata
	}{
		{"memory", initMeta},
		{"etcd", initEtcdMeta},
	} {
		t.Run(tc.name, func(t *testing.T) { testViewTypedChanges(t, tc.meta(t)) })
	}
}

func testViewTypedChanges(t *testing.T, store torus.Metadata) {
	ctx := context.Background()
	meta := &countingMeta{Metadata: store, n: map[string]int{}}
	const npeers = 5
	sessions := make([]torus.Session, npeers)
	ids := make([]string, npeers)
	for i := range npeers {
		ids[i] = fmt.Sprintf("p%d", i)
		if err := meta.PutPeer(ctx, torus.PeerInfo{ID: ids[i], Address: "127.0.0.1:1", Capacity: 1 << 30}); err != nil {
			t.Fatal(err)
		}
		s, err := meta.NewSession(ctx, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close(ctx)
		sessions[i] = s
		if err := meta.Heartbeat(ctx, s, ids[i], torus.Beat{}); err != nil {
			t.Fatal(err)
		}
	}
	setRing := func(ids ...string) {
		t.Helper()
		spec, err := store.Ring(ctx)
		if err != nil {
			t.Fatal(err)
		}
		spec.Version++
		spec.Members = nil
		for _, id := range ids {
			spec.Members = append(spec.Members, torus.NewRingMember(id, torus.Location{}, 1<<30))
		}
		if err := store.SetRing(ctx, spec); err != nil {
			t.Fatal(err)
		}
	}
	setRing(ids...)

	v := newView(meta, testutil.Logger(t), time.Hour, func(map[uint64]uint64) {}, func(torus.RingSpec) {})
	v.coalesce = 50 * time.Millisecond
	vctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); v.run(vctx) }()
	defer func() { cancel(); <-done }()
	s := &Server{view: v}
	waitView(t, s, func(st clusterState) bool {
		return len(st.ring.Members) == npeers && len(st.peers) == npeers && st.peers[0].State == torus.PeerUp
	})
	// Let the full read's own watch catch up before counting.
	time.Sleep(4 * v.coalesce)
	st0, _ := v.snapshot()
	builds0, reads0 := v.builds.Load(), v.peerReads.Load()
	meta.take()

	// Heartbeats: every peer beats ten times, with new usage.
	for round := range 10 {
		for i := range npeers {
			if err := meta.Heartbeat(ctx, sessions[i], ids[i], torus.Beat{Used: int64(round + 1)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(4 * v.coalesce)
	st1, _ := v.snapshot()
	got := meta.take()
	if st1.gen != st0.gen || st1.rev != st0.rev {
		t.Errorf("heartbeats moved the view from revision %d, generation %d to %d, %d: want no change delivered",
			st0.rev, st0.gen, st1.rev, st1.gen)
	}
	if b, r := v.builds.Load()-builds0, v.peerReads.Load()-reads0; b != 0 || r != 0 {
		t.Errorf("heartbeats made %d full reads and %d peer reads of the view, want none", b, r)
	}
	if n := got["Peers"] + got["Ring"] + got["Volumes"]; n != 0 {
		t.Errorf("heartbeats made the view read the store: %v", got)
	}

	// A draining peer's State hides its liveness; the view shows it seen
	// now while its liveness key exists (healing's liveness uses it).
	if err := meta.SetDraining(ctx, ids[0], true); err != nil {
		t.Fatal(err)
	}
	st := waitView(t, s, func(st clusterState) bool { return st.peers[0].State == torus.PeerDraining })
	if p := st.peers[0]; !p.Alive || time.Since(p.LastSeen) > time.Second {
		t.Errorf("draining peer in the view: alive %v, last seen %v ago; want alive, seen now", p.Alive, time.Since(p.LastSeen))
	}

	// A burst of peer changes (daemons joining) is read together.
	reads0, gen0 := v.peerReads.Load(), st.gen
	for i := range 20 {
		if err := meta.PutPeer(ctx, torus.PeerInfo{ID: fmt.Sprintf("new%02d", i), Address: "127.0.0.1:1", Capacity: 1 << 30}); err != nil {
			t.Fatal(err)
		}
	}
	st = waitView(t, s, func(st clusterState) bool { return len(st.peers) == npeers+20 })
	if r := v.peerReads.Load() - reads0; r > 3 {
		t.Errorf("20 peer changes made %d peer reads, want them coalesced (at most 3)", r)
	}
	if st.gen == gen0 {
		t.Error("new peers did not move the view generation")
	}

	// A ring change moves the generation, with the states it changes.
	gen0 = st.gen
	setRing(ids[1:]...)
	st = waitView(t, s, func(st clusterState) bool {
		i := slices.IndexFunc(st.peers, func(p torus.PeerInfo) bool { return p.ID == ids[0] })
		return len(st.ring.Members) == npeers-1 && i >= 0 && st.peers[i].State == torus.PeerRemoved
	})
	if st.gen == gen0 {
		t.Error("a ring change did not move the view generation")
	}
	if b := v.builds.Load() - builds0; b != 0 {
		t.Errorf("%d full reads of the view, want none (changes are applied, not re-read)", b)
	}
}

// TestPlacementBuiltOncePerRing: heal's placement is built again only for
// a different ring spec.
func TestPlacementBuiltOncePerRing(t *testing.T) {
	var c placementCache
	spec := torus.RingSpec{Version: 2, Replication: 2, VirtualNodes: 16,
		Members: []torus.RingMember{torus.NewRingMember("a", torus.Location{}, 1<<30), torus.NewRingMember("b", torus.Location{}, 1<<30)}}
	p1, err := c.build(spec)
	if err != nil {
		t.Fatal(err)
	}
	again := spec
	again.Members = slices.Clone(spec.Members) // an equal spec, read again
	if p2, err := c.build(again); err != nil || p2 != p1 {
		t.Errorf("an equal ring spec was built again (%v)", err)
	}
	next := again
	next.Version++
	next.Members = append(slices.Clone(spec.Members), torus.NewRingMember("c", torus.Location{}, 1<<30))
	p3, err := c.build(next)
	if err != nil {
		t.Fatal(err)
	}
	if p3 == p1 || p3.Version() != next.Version {
		t.Errorf("a new ring spec (version %d) gave the old placement", next.Version)
	}
}

// TestViewReadsLonePeerChangeAtOnce: a peer change after a quiet window
// (a peer joining, or its liveness expiring) is read at once, not a coalescing window
// later: the CI's TestEvents (tests/life) saw peer-down recorded only at
// the end of its 3-TTL wait, a whole window after the lease expired. The
// changes that follow within the window are still read together.
func TestViewReadsLonePeerChangeAtOnce(t *testing.T) {
	meta := initMeta(t)
	ctx := context.Background()
	if err := meta.PutPeer(ctx, torus.PeerInfo{ID: "p0", Address: "127.0.0.1:1", Capacity: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	v := newView(meta, testutil.Logger(t), time.Hour, func(map[uint64]uint64) {}, func(torus.RingSpec) {})
	const window = 2 * time.Second
	v.coalesce = window
	vctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); v.run(vctx) }()
	defer func() { cancel(); <-done }()
	s := &Server{view: v}
	waitView(t, s, func(st clusterState) bool { return len(st.peers) == 1 })
	time.Sleep(window + window/4) // quiet: the full read is a window old

	start := time.Now()
	reads0 := v.peerReads.Load()
	if err := meta.PutPeer(ctx, torus.PeerInfo{ID: "p1", Address: "127.0.0.1:1", Capacity: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	waitView(t, s, func(st clusterState) bool { return len(st.peers) == 2 })
	if took := time.Since(start); took > window/2 {
		t.Errorf("a lone peer change after a quiet window was read after %v, want at once (window %v)", took, window)
	}
	// A burst right after: read together, at the end of the window.
	for i := range 10 {
		if err := meta.PutPeer(ctx, torus.PeerInfo{ID: fmt.Sprintf("n%d", i), Address: "127.0.0.1:1", Capacity: 1 << 30}); err != nil {
			t.Fatal(err)
		}
	}
	waitView(t, s, func(st clusterState) bool { return len(st.peers) == 12 })
	if r := v.peerReads.Load() - reads0; r > 3 {
		t.Errorf("a change and a burst of 10 made %d peer reads, want at most 3", r)
	}
}
