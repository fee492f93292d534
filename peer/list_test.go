package peer

import (
	"context"
	"slices"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/storage"
)

// TestListPages: List is fetched in pages, so a daemon's segment count is
// not bounded by one frame (before, a reply over 16 MiB, ~400k segments,
// failed the whole List: GC and healing of the daemon stopped). Every
// segment is listed once, across volumes and kinds, whatever the page size.
func TestListPages(t *testing.T) {
	ctx := context.Background()
	st := storage.NewMemory(1 << 30)
	_, addr := startServer(t, NewLocal(st, testutil.Logger(t)), ServerConfig{})
	var want []torus.SegmentID
	for vol := uint64(1); vol <= 3; vol++ {
		for seq := uint64(1); seq <= 7; seq++ {
			for _, k := range []torus.SegmentKind{torus.KindData, torus.KindCheckpoint} {
				id := torus.SegmentID{Volume: vol, Epoch: 2, Seq: seq, Kind: k}
				if err := st.Append(ctx, id, 0, []byte("x")); err != nil {
					t.Fatal(err)
				}
				want = append(want, id)
			}
		}
	}
	for _, page := range []uint32{0, 1, 3, 42, 1000} {
		c := dialT(t, addr, ClientConfig{})
		c.listPage = page
		got, err := c.List(ctx, 0)
		if err != nil {
			t.Fatalf("page %d: %v", page, err)
		}
		ids := make([]torus.SegmentID, len(got))
		for i, s := range got {
			ids[i] = s.ID
		}
		if len(ids) != len(want) || !sameSet(ids, want) {
			t.Fatalf("page %d: listed %d segments, want %d: %v", page, len(ids), len(want), ids)
		}
		one, err := c.List(ctx, 2)
		if err != nil || len(one) != 14 {
			t.Fatalf("page %d: volume 2: %d segments, %v; want 14", page, len(one), err)
		}
	}
	// The server never sends more than asked, nor more than MaxListPage.
	all := make([]torus.SegmentInfo, 10)
	for i := range all {
		all[i].ID = torus.SegmentID{Volume: 1, Seq: uint64(10 - i)}
	}
	p, more := listPage(all, torus.SegmentID{Volume: 1, Seq: 3}, 4)
	if !more || len(p) != 4 || p[0].ID.Seq != 4 || p[3].ID.Seq != 7 {
		t.Fatalf("listPage after seq 3, 4 entries: %v more %v", p, more)
	}
	if p, more := listPage(all, torus.SegmentID{Volume: 1, Seq: 8}, 4); more || len(p) != 2 {
		t.Fatalf("listPage after seq 8: %v more %v", p, more)
	}
}

func sameSet(a, b []torus.SegmentID) bool {
	cmpID := func(x, y torus.SegmentID) int { return compareSeg(x, y) }
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortFunc(a, cmpID)
	slices.SortFunc(b, cmpID)
	return slices.Equal(a, b)
}
