package server

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/rebalance"
	"github.com/torus-storage/torus/volume"
)

// TestGCMarkingShared: the live set is the union over volumes. A segment
// of a deleted source that a clone names is kept, with the clone as its
// user and the largest size and replication of its users; a deleted
// source's unshared segment is garbage; every segment of a broken volume
// and of the volumes it shares is kept; nothing is garbage while the view
// is unsettled.
func TestGCMarkingShared(t *testing.T) {
	seg := func(vol, seq uint64) torus.SegmentID { return torus.SegmentID{Volume: vol, Epoch: 1, Seq: seq} }
	view := &clusterView{
		volumes: map[uint64]torus.VolumeInfo{
			// Volume 1 (the source) is deleted: not listed.
			2: {ID: 2, Name: "clone", Size: 8 << 20, Replication: 3, Shares: []uint64{1}},
			3: {ID: 3, Name: "other", Size: 4 << 20},
			4: {ID: 4, Name: "broken", Shares: []uint64{5}},
			6: {ID: 6, Name: "clone2", Size: 2 << 20, Shares: []uint64{1}},
		},
		live: map[uint64]map[torus.SegmentID]int64{
			2: {seg(1, 1): 100, seg(2, 1): 50, seg(2, 2): volume.Unknown},
			3: {seg(3, 1): 10},
			6: {seg(1, 1): 100},
		},
		broken: map[uint64]error{4: errors.New("checkpoint unreadable")},
		segs:   map[torus.SegmentID]segUse{},
		keep:   map[uint64]bool{4: true, 5: true},
	}
	view.merge(2)
	u := view.segs[seg(1, 1)]
	if u.length != 100 || u.replication != 3 || u.nblocks != (8<<20)/torus.BlockSize || !slices.Equal(u.users, []uint64{2, 6}) {
		t.Fatalf("shared segment: %+v, want length 100, replication 3 (the clone's), 2048 blocks, users [2 6]", u)
	}
	if r := view.segs[seg(3, 1)].replication; r != 2 {
		t.Fatalf("a volume without its own replication: %d, want the ring's 2", r)
	}
	for id, want := range map[torus.SegmentID]bool{
		seg(1, 1): false, // the deleted source's, named by the clones
		seg(1, 2): true,  // the deleted source's, named by nobody
		seg(2, 2): false, // the clone's writer may be creating it
		seg(3, 9): true,  // not in its volume's live set
		seg(4, 1): false, // broken volume
		seg(5, 1): false, // shared by the broken volume
	} {
		if got := view.garbage(id); got != want {
			t.Errorf("garbage(%v) = %v, want %v", id, got, want)
		}
	}
	view.unsettled = true
	if view.garbage(seg(1, 2)) {
		t.Error("garbage while the view is unsettled")
	}
}

// TestVolumeStatusesShared: a segment shared by a parent (replication 2)
// and a clone (replication 3) counts for both, each judged by its own
// replication: with 2 full copies the parent is healthy, the clone
// degraded.
func TestVolumeStatusesShared(t *testing.T) {
	id := torus.SegmentID{Volume: 1, Epoch: 1, Seq: 1}
	view := &clusterView{
		volumes: map[uint64]torus.VolumeInfo{1: {ID: 1, Name: "src"}, 2: {ID: 2, Name: "clone", Replication: 3, Shares: []uint64{1}}},
		live:    map[uint64]map[torus.SegmentID]int64{1: {id: 100}, 2: {id: 100}},
		segs:    map[torus.SegmentID]segUse{},
	}
	view.merge(2)
	segs := []rebalance.Segment{{ID: id, Sealed: true, Length: 100,
		Holders: []rebalance.Holder{{Peer: "p1", Length: 100}, {Peer: "p2", Length: 100}}}}
	got := map[string]torus.VolumeStatus{}
	for _, st := range volumeStatuses(view, 2, segs, map[string]bool{"p1": true, "p2": true}, nil, "p1", nil) {
		got[st.Volume] = st
	}
	if s := got["src"]; s.Health != torus.VolumeHealthy || s.Used != 100 {
		t.Errorf("src: %+v, want healthy, used 100", s)
	}
	if s := got["clone"]; s.Health != torus.VolumeDegraded || s.Used != 100 || s.UnderReplicated != 1 {
		t.Errorf("clone: %+v, want degraded (2 of 3 copies), used 100", s)
	}
}

// TestGCDue: GC runs every GCInterval, and at every pass while the store
// is 80 % full or more.
func TestGCDue(t *testing.T) {
	const every = 30 * time.Second
	for _, c := range []struct {
		since      time.Duration
		used, capy int64
		want       bool
	}{
		{time.Second, 10, 100, false},
		{every, 10, 100, true},
		{time.Second, 79, 100, false},
		{time.Second, 80, 100, true},
		{time.Second, 100, 100, true},
		{time.Second, 5, 0, false}, // capacity unknown
	} {
		if got := gcDue(c.since, every, torus.Usage{Used: c.used, Capacity: c.capy}); got != c.want {
			t.Errorf("gcDue(%v, %v, %d of %d) = %v, want %v", c.since, every, c.used, c.capy, got, c.want)
		}
	}
}
