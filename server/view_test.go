package server

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/metadata"
)

// waitView waits until s's cached view satisfies ok.
func waitView(t *testing.T, s *Server, ok func(clusterState) bool) clusterState {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, ready := s.view.snapshot()
		if ready && ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("cached view never reached the expected state; last: rev %d, %d volumes", st.rev, len(st.volumes))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func putSegment(t *testing.T, s *Server, id torus.SegmentID) {
	t.Helper()
	if err := s.store.Append(context.Background(), id, 0, make([]byte, torus.BlockSize)); err != nil {
		t.Fatalf("writing segment %v: %v", id, err)
	}
}

func hasSegment(t *testing.T, s *Server, id torus.SegmentID) bool {
	t.Helper()
	_, err := s.store.Stat(context.Background(), id)
	if err != nil && !errors.Is(err, torus.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}

// TestGCRechecksStaleView: a GC plan made from a cached view taken before
// a head sealed a new segment and before a new volume was created (with a
// head naming its segment) must not delete those segments: the plan is
// re-checked against the store's current revision before anything is
// deleted. A segment no volume names is still collected.
func TestGCRechecksStaleView(t *testing.T) {
	meta := initMeta(t)
	s := startTestServer(t, meta)
	ctx := context.Background()
	old, err := meta.CreateVolume(ctx, torus.VolumeInfo{Name: "old", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := meta.NewSession(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close(ctx)
	e, err := meta.Lock(ctx, sess, "old", torus.WriterInfo{Owner: "w"})
	if err != nil {
		t.Fatal(err)
	}
	seg := func(vol, seq uint64) torus.SegmentID { return torus.SegmentID{Volume: vol, Epoch: e, Seq: seq} }
	a, z := seg(old.ID, 1), seg(old.ID, 3) // seq 2 is the stale head's next: live
	if err := meta.CommitHead(ctx, "old", e, torus.Head{Epoch: e, NextSeq: 2,
		Sealed: []torus.SegmentRef{{ID: a, Length: torus.BlockSize}}}); err != nil {
		t.Fatal(err)
	}
	st := waitView(t, s, func(st clusterState) bool { return st.volumes["old"].head.NextSeq == 2 })
	cache := make(liveCache)
	s.cachedView(ctx, st, cache) // live sets as of the view

	// After the view: "old" seals z, and a new volume's head names x.
	if err := meta.CommitHead(ctx, "old", e, torus.Head{Epoch: e, NextSeq: 4,
		Sealed: []torus.SegmentRef{{ID: a, Length: torus.BlockSize}, {ID: z, Length: torus.BlockSize}}}); err != nil {
		t.Fatal(err)
	}
	nv, err := meta.CreateVolume(ctx, torus.VolumeInfo{Name: "new", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	ne, err := meta.Lock(ctx, sess, "new", torus.WriterInfo{Owner: "w"})
	if err != nil {
		t.Fatal(err)
	}
	x := torus.SegmentID{Volume: nv.ID, Epoch: ne, Seq: 1}
	if err := meta.CommitHead(ctx, "new", ne, torus.Head{Epoch: ne, NextSeq: 2,
		Sealed: []torus.SegmentRef{{ID: x, Length: torus.BlockSize}}}); err != nil {
		t.Fatal(err)
	}
	y := torus.SegmentID{Volume: 999, Epoch: 1, Seq: 1} // no volume names it
	for _, id := range []torus.SegmentID{a, z, x, y} {
		putSegment(t, s, id)
	}
	local, err := s.store.List(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	view := s.cachedView(ctx, st, cache)
	if !view.garbage(z) || !view.garbage(x) || view.garbage(a) {
		t.Fatalf("stale view: garbage(a, z, x) = %v %v %v, want false true true (the test's premise)",
			view.garbage(a), view.garbage(z), view.garbage(x))
	}
	s.collectGarbage(ctx, local, view, st.rev)
	for _, id := range []torus.SegmentID{a, z, x} {
		if !hasSegment(t, s, id) {
			t.Errorf("segment %v deleted by a GC plan made from a stale view", id)
		}
	}
	if hasSegment(t, s, y) {
		t.Errorf("segment %v that no volume names was not collected", y)
	}
}

// TestViewFollowsChanges: the cached view is built by one full read and
// then kept by the watch: volumes, epochs (handed to fencing), writers,
// heads and peers follow their changes; a heartbeat changes nothing
// maintenance looks at; a compacted history makes the owner read the view
// again.
func TestViewFollowsChanges(t *testing.T) {
	meta := initMeta(t).(*metadata.Memory)
	ctx := context.Background()
	if _, err := meta.CreateVolume(ctx, torus.VolumeInfo{Name: "a", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	epochs := make(chan map[uint64]uint64, 100)
	v := newView(meta, testutil.Logger(t), time.Hour, func(e map[uint64]uint64) { epochs <- e }, func(torus.RingSpec) {})
	vctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); v.run(vctx) }()
	defer func() { cancel(); <-done }()
	s := &Server{view: v}
	waitView(t, s, func(st clusterState) bool { _, ok := st.volumes["a"]; return ok })

	b, err := meta.CreateVolume(ctx, torus.VolumeInfo{Name: "b", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := meta.NewSession(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close(ctx)
	e, err := meta.Lock(ctx, sess, "b", torus.WriterInfo{Owner: "w"})
	if err != nil {
		t.Fatal(err)
	}
	if err := meta.CommitHead(ctx, "b", e, torus.Head{Epoch: e, NextSeq: 5}); err != nil {
		t.Fatal(err)
	}
	st := waitView(t, s, func(st clusterState) bool {
		vb := st.volumes["b"]
		return vb.info.ID == b.ID && vb.epoch == e && vb.writer && vb.head.NextSeq == 5
	})
	for fenced := false; !fenced; {
		select {
		case m := <-epochs:
			fenced = m[b.ID] == e
		case <-time.After(10 * time.Second):
			t.Fatal("the new epoch was not handed to fencing")
		}
	}
	if err := meta.PutPeer(ctx, torus.PeerInfo{ID: "p"}); err != nil {
		t.Fatal(err)
	}
	ps, err := meta.NewSession(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer ps.Close(ctx)
	if err := meta.Heartbeat(ctx, ps, "p", torus.Beat{}); err != nil {
		t.Fatal(err)
	}
	// The view must have applied the first heartbeat (p coming up is a
	// change that matters), not only PutPeer, before the next is sent.
	up, _ := meta.Revision(ctx)
	st = waitView(t, s, func(st clusterState) bool { return len(st.peers) == 1 && st.peers[0].ID == "p" && st.rev >= up })
	// (Later heartbeats reach no view: TestViewTypedChanges.)
	if err := meta.Unlock(ctx, "b", e); err != nil {
		t.Fatal(err)
	}
	if err := meta.DeleteVolume(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	waitView(t, s, func(st clusterState) bool { _, ok := st.volumes["a"]; return !ok && !st.volumes["b"].writer })

	// A compacted history: the owner's follow returns, and run reads
	// the view again.
	cancel()
	<-done
	meta.Compact(0)
	if _, err := meta.CreateVolume(ctx, torus.VolumeInfo{Name: "c", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	r, _ := meta.Revision(ctx)
	meta.Compact(r)
	fctx, fcancel := context.WithCancel(ctx)
	defer fcancel()
	followed := make(chan struct{})
	go func() { defer close(followed); v.follow(fctx, st.rev) }() // from a revision now compacted
	select {
	case <-followed: // follow returned on the resync: the caller (run) reads again
	case <-time.After(10 * time.Second):
		t.Fatal("follow from a compacted revision did not return for a resync")
	}
}
