package server

import (
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/rebalance"
)

func TestVolumeStatuses(t *testing.T) {
	view := &clusterView{volumes: map[uint64]torus.VolumeInfo{
		1: {Name: "a", ID: 1}, 2: {Name: "b", ID: 2}, 3: {Name: "c", ID: 3}, 4: {Name: "empty", ID: 4},
	}}
	seg := func(vol, seq uint64, length int64, holders ...rebalance.Holder) rebalance.Segment {
		return rebalance.Segment{ID: torus.SegmentID{Volume: vol, Epoch: 1, Seq: seq}, Sealed: true, Length: length, Holders: holders}
	}
	h := func(p string, n int64) rebalance.Holder { return rebalance.Holder{Peer: p, Length: n} }
	up := map[string]bool{"p1": true, "p2": true}
	segs := []rebalance.Segment{
		seg(1, 1, 100, h("p1", 100), h("p2", 100)),
		seg(2, 1, 100, h("p1", 100), h("p2", 50)),  // short copy: degraded
		seg(2, 2, 100, h("p1", 100), h("p3", 100)), // p3 down: degraded
		seg(3, 1, 100, h("p3", 100)),               // only on a down peer
		seg(3, 2, 100, h("p1", 100), h("p2", 100)),
		{ID: torus.SegmentID{Volume: 1, Seq: 9}, Sealed: false, Holders: []rebalance.Holder{h("p1", 10)}},
	}
	plan := &rebalance.Plan{Moves: rebalance.Moves{Copies: []rebalance.Copy{{Seg: segs[1].ID, From: "p1", To: "p2", Length: 100, Have: 50}}}}
	got := volumeStatuses(view, 2, segs, up, plan, "p1", nil)
	want := map[string]struct {
		h            torus.VolumeHealth
		under, unav  int
		used, stored int64
		pending      int64
	}{
		"a":     {torus.VolumeHealthy, 0, 0, 100, 200, 0},
		"b":     {torus.VolumeDegraded, 2, 0, 200, 350, 50},
		"c":     {torus.VolumeUnavailable, 1, 1, 200, 300, 0},
		"empty": {torus.VolumeHealthy, 0, 0, 0, 0, 0},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d statuses, want %d", len(got), len(want))
	}
	for _, st := range got {
		w := want[st.Volume]
		if st.Health != w.h || st.UnderReplicated != w.under || st.Unavailable != w.unav ||
			st.Used != w.used || st.Stored != w.stored || st.PendingBytes != w.pending || st.Reporter != "p1" {
			t.Errorf("%s: got %+v, want %+v", st.Volume, st, w)
		}
	}
}
