package server

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
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

// TestReportedUnrepairable: every up daemon's scrub findings reach the
// published status, not only the publisher's own: they come in the
// heartbeats, and a down daemon's stale ones are left out.
func TestReportedUnrepairable(t *testing.T) {
	peers := []torus.PeerInfo{
		{ID: "p1", Unrepairable: map[uint64][]uint64{7: {1, 3}}},
		{ID: "p2", Unrepairable: map[uint64][]uint64{7: {3, 4}, 8: {9}}},
		{ID: "p3", Unrepairable: map[uint64][]uint64{9: {1}}}, // down
	}
	up := map[string]bool{"p1": true, "p2": true}
	reported := reportedUnrepairable(peers, up)
	own := map[uint64][]uint64{7: {5}}
	all := unionBlocks(reported, own)
	if !slices.Equal(all[7], []uint64{1, 3, 4, 5}) || !slices.Equal(all[8], []uint64{9}) || len(all[9]) != 0 {
		t.Fatalf("findings %v, want volume 7 [1 3 4 5], 8 [9], none for the down peer's volume 9", all)
	}
	view := &clusterView{volumes: map[uint64]torus.VolumeInfo{7: {Name: "seven", ID: 7}, 10: {Name: "ten", ID: 10}}}
	for _, st := range volumeStatuses(view, 2, nil, up, nil, "p1", all) {
		switch st.Volume {
		case "seven":
			if st.Health != torus.VolumeUnavailable || st.UnrepairableBlocks != 4 {
				t.Errorf("seven: %+v, want unavailable with 4 unrepairable blocks", st)
			}
		case "ten":
			if st.Health != torus.VolumeHealthy || st.UnrepairableBlocks != 0 {
				t.Errorf("ten: %+v, want healthy", st)
			}
		}
	}
}

// TestFirstHealthRecordsNoEvent: a publisher's first pass over volumes of
// unknown health records no "volume is healthy" event for the healthy
// ones (at 10,000 volumes that was 10,000 event-log transactions, minutes
// of etcd requests after every start of a cluster), and publishes every
// status.
func TestFirstHealthRecordsNoEvent(t *testing.T) {
	meta := initMeta(t)
	ctx := context.Background()
	const nvol = 20
	for i := range nvol {
		if _, err := meta.CreateVolume(ctx, torus.VolumeInfo{Name: fmt.Sprintf("v%02d", i), Size: 1 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	s, err := New(Config{DataDir: t.TempDir(), Capacity: 64 << 20, AutoJoin: true, HeartbeatTTL: time.Second,
		MaintenanceInterval: 10 * time.Millisecond, ScrubInterval: -1}, meta, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for deadline := time.Now().Add(10 * time.Second); ; {
		st, err := meta.VolumeStatuses(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(st) == nvol {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d statuses published, want %d", len(st), nvol)
		}
		time.Sleep(10 * time.Millisecond)
	}
	evs, err := meta.Events(ctx, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range evs {
		if e.Kind == torus.EventVolumeHealthy {
			t.Fatalf("first publication recorded %q for volume %s: want no event for a volume first seen healthy", e.Kind, e.Volume)
		}
	}
}
