package volume

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/storage"
)

func TestSnapshot(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, checkpointEvery: 3})
	const size = 2 << 20
	c.create("vol", size, 0)
	v := c.open("vol", Options{})
	defer v.Close(ctx)
	r := rand.New(rand.NewPCG(21, 22))
	m := make(model, size)
	workload(t, ctx, v, m, r, 200)
	if err := v.Snapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	old := bytes.Clone(m)
	if err := v.Snapshot(ctx, "s1"); !errors.Is(err, torus.ErrExist) {
		t.Fatalf("duplicate snapshot: %v", err)
	}
	workload(t, ctx, v, m, r, 200)
	s := c.open("vol", Options{Snapshot: "s1"})
	defer s.Close(ctx)
	if !s.ReadOnly() || s.Size() != size {
		t.Fatalf("snapshot read-only %v size %d", s.ReadOnly(), s.Size())
	}
	verify(t, ctx, s, old)
	verify(t, ctx, v, m)
	if err := s.WriteAt(ctx, []byte{1}, 0, false); !errors.Is(err, torus.ErrReadOnly) {
		t.Fatalf("snapshot write: %v", err)
	}
	if _, err := Open(ctx, c.deps(), "vol", Options{Snapshot: "nope"}); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("missing snapshot: %v", err)
	}

	// A snapshot requested by another process is answered by the writer.
	if err := c.meta.RequestSnapshot(ctx, "vol", "s2"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		done, failure, err := c.meta.SnapshotRequestResult(ctx, "vol", "s2")
		if err != nil {
			t.Fatal(err)
		}
		if done {
			if failure != "" {
				t.Fatalf("request failed: %s", failure)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("snapshot request not answered")
		}
		time.Sleep(5 * time.Millisecond)
	}
	s2 := c.open("vol", Options{Snapshot: "s2"})
	verify(t, ctx, s2, m)
	s2.Close(ctx)

	// Everything the snapshots and the head need is live; a GC keeping
	// exactly the live set loses nothing. Like the daemons' sweep, list
	// first, then compute the live set (the writer may be rolling).
	listed := make(map[*storage.Memory][]torus.SegmentInfo)
	for _, st := range c.stores {
		segs, err := st.List(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		listed[st] = segs
	}
	live, err := LiveSegments(ctx, c.meta, c, "vol")
	if err != nil {
		t.Fatal(err)
	}
	var deleted int
	for st, segs := range listed {
		for _, sg := range segs {
			if !live[sg.ID] {
				if err := st.Delete(ctx, sg.ID); err != nil {
					t.Fatal(err)
				}
				deleted++
			}
		}
	}
	t.Logf("GC deleted %d segment replicas", deleted)
	s1 := c.open("vol", Options{Snapshot: "s1"})
	verify(t, ctx, s1, old)
	s1.Close(ctx)
	verify(t, ctx, v, m)
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	v2 := c.open("vol", Options{})
	verify(t, ctx, v2, m)
	v2.Close(ctx)
}

func TestSnapshotClosed(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2})
	c.create("vol", 1<<20, 0)
	// An empty volume can be snapshotted too.
	if err := SnapshotClosed(ctx, c.deps(), "vol", "empty"); err != nil {
		t.Fatal(err)
	}
	v := c.open("vol", Options{})
	p := bytes.Repeat([]byte{7}, 10000)
	if err := v.WriteAt(ctx, p, 3, false); err != nil {
		t.Fatal(err)
	}
	// While a writer holds the volume, SnapshotClosed is refused.
	if err := SnapshotClosed(ctx, c.deps(), "vol", "busy"); !errors.Is(err, torus.ErrLocked) {
		t.Fatalf("snapshot of an open volume: %v", err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := SnapshotClosed(ctx, c.deps(), "vol", "full"); err != nil {
		t.Fatal(err)
	}
	m := make(model, 1<<20)
	copy(m[3:], p)
	s := c.open("vol", Options{Snapshot: "full"})
	verify(t, ctx, s, m)
	s.Close(ctx)
	e := c.open("vol", Options{Snapshot: "empty"})
	verify(t, ctx, e, make(model, 1<<20))
	e.Close(ctx)
}

// TestReadOnlyView: a read-only open sees the head at open time, including
// the writer's flushed open segment, and not later writes.
func TestReadOnlyView(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2})
	c.create("vol", 1<<20, 0)
	v := c.open("vol", Options{})
	defer v.Close(ctx)
	m := make(model, 1<<20)
	r := rand.New(rand.NewPCG(31, 32))
	workload(t, ctx, v, m, r, 100)
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	ro := c.open("vol", Options{ReadOnly: true})
	defer ro.Close(ctx)
	old := bytes.Clone(m)
	workload(t, ctx, v, m, r, 100)
	verify(t, ctx, ro, old)
}

// TestLiveSegmentLengths: sealed segments carry their head lengths, the
// open segment and the writer's reservations are Unknown, and the
// checkpoint's table is included.
func TestLiveSegmentLengths(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, checkpointEvery: 2})
	c.create("vol", 4<<20, 0)
	v := c.open("vol", Options{})
	defer v.Close(ctx)
	m := make(model, 4<<20)
	workload(t, ctx, v, m, rand.New(rand.NewPCG(91, 92)), 300)
	var cache TableCache
	var lens map[torus.SegmentID]int64
	var h torus.Head
	var slots []SlotInfo
	for try := 0; ; try++ {
		// Compaction may roll segments meanwhile: take a stable view.
		h = v.Info().Head
		v.mu.Lock()
		slots = v.idx.Slots()
		v.mu.Unlock()
		var err error
		if lens, err = LiveSegmentLengths(ctx, c.meta, c, "vol", &cache); err != nil {
			t.Fatal(err)
		}
		if reflect.DeepEqual(h, v.Info().Head) {
			break
		}
		if try == 50 {
			t.Fatal("head never stable")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if h.Checkpoint == nil || h.Open == nil {
		t.Fatalf("workload left no checkpoint or open segment: %+v", h)
	}
	if lens[h.Checkpoint.ID] != h.Checkpoint.Length {
		t.Errorf("checkpoint length %d, want %d", lens[h.Checkpoint.ID], h.Checkpoint.Length)
	}
	for _, s := range h.Sealed {
		if lens[s.ID] != s.Length {
			t.Errorf("sealed %v length %d, want %d", s.ID, lens[s.ID], s.Length)
		}
	}
	if n, ok := lens[*h.Open]; !ok || n != Unknown {
		t.Errorf("open segment: %d %v", n, ok)
	}
	reserved := torus.SegmentID{Volume: v.Info().Volume.ID, Epoch: h.Epoch, Seq: h.NextSeq, Kind: torus.KindCheckpoint}
	if n, ok := lens[reserved]; !ok || n != Unknown {
		t.Errorf("reserved checkpoint %v: %d %v", reserved, n, ok)
	}
	// Every segment the index points into is live, with its length.
	for _, s := range slots {
		if s.Live > 0 && s.Ref.ID != *h.Open && lens[s.Ref.ID] != s.Ref.Length {
			t.Errorf("indexed segment %v: length %d, want %d", s.Ref.ID, lens[s.Ref.ID], s.Ref.Length)
		}
	}
	// A second call is served from the cache and agrees.
	again, err := LiveSegmentLengths(ctx, c.meta, c, "vol", &cache)
	if err != nil || len(again) != len(lens) {
		t.Fatalf("cached call: %d entries, %v", len(again), err)
	}
}
