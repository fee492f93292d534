package volume

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/torus-storage/torus"
)

// TestCompaction: random overwrites leave sealed segments mostly dead; the
// compactor moves their live blocks, later checkpoints drop them, and a GC
// keeping only LiveSegments loses nothing. Client writes race with the
// moves throughout; the model catches a move that undid a write, and the
// reopen checks the same on replay.
func TestCompaction(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, checkpointEvery: 2})
	const size = 1 << 20
	c.create("vol", size, 0)
	v := c.open("vol", Options{})
	r := rand.New(rand.NewPCG(51, 52))
	m := make(model, size)
	// Take a snapshot early: its segments are never compacted.
	workload(t, ctx, v, m, r, 50)
	if err := v.Snapshot(ctx, "early"); err != nil {
		t.Fatal(err)
	}
	early := append(model(nil), m...)
	buf := make([]byte, torus.BlockSize)
	deadline := time.Now().Add(20 * time.Second)
	for v.Stats().BlocksMoved == 0 || v.Stats().Checkpoints < 6 {
		if time.Now().After(deadline) {
			t.Fatalf("no compaction: %+v", v.Stats())
		}
		for i := 0; i < 200; i++ {
			off := r.Int64N(size/torus.BlockSize) * torus.BlockSize
			for j := range buf {
				buf[j] = byte(r.Uint32())
			}
			if err := v.WriteAt(ctx, buf, off, false); err != nil {
				t.Fatal(err)
			}
			copy(m[off:], buf)
		}
		workload(t, ctx, v, m, r, 20)
	}
	st := v.Stats()
	t.Logf("compaction: %d segments, %d blocks moved; %d seals, %d checkpoints", st.SegmentsCompacted, st.BlocksMoved, st.SegmentsSealed, st.Checkpoints)
	verify(t, ctx, v, m)
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// GC: keep only the live set.
	live, err := LiveSegments(ctx, c.meta, c, "vol")
	if err != nil {
		t.Fatal(err)
	}
	var kept, dropped int64
	for _, s := range c.stores {
		segs, _ := s.List(ctx, 0)
		for _, sg := range segs {
			if live[sg.ID] {
				kept += sg.Length
				continue
			}
			dropped += sg.Length
			if err := s.Delete(ctx, sg.ID); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("GC kept %d bytes, dropped %d bytes (volume %d bytes, 2 replicas)", kept, dropped, size)
	if dropped == 0 {
		t.Error("GC dropped nothing after compaction")
	}
	v2 := c.open("vol", Options{})
	verify(t, ctx, v2, m)
	if err := v2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	s := c.open("vol", Options{Snapshot: "early"})
	verify(t, ctx, s, early)
	s.Close(ctx)
}

// TestCloneCompaction: a clone's compactor leaves its parent's segments
// alone (they are the parent's space, and move records name only the
// writer's own segments): after random overwrites of the clone, parent
// segments far under the compaction threshold are still mapped, while the
// clone's own segments are compacted; the clone's data is right, also on
// replay after a reopen, and the parent is unchanged.
func TestCloneCompaction(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, checkpointEvery: 2, segmentSize: 1 << 20})
	const size = 2 << 20
	c.create("src", size, 0)
	s := c.open("src", Options{})
	r := rand.New(rand.NewPCG(61, 62))
	base := make(model, size)
	for i := range base {
		base[i] = byte(r.Uint32())
	}
	if err := s.WriteAt(ctx, base, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := s.Snapshot(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	src, _ := c.meta.Volume(ctx, "src")
	if _, err := c.meta.CloneVolume(ctx, torus.VolumeInfo{Name: "clone", Size: size}, "src", "s"); err != nil {
		t.Fatal(err)
	}
	v := c.open("clone", Options{})
	m := append(model(nil), base...)
	buf := make([]byte, torus.BlockSize)
	deadline := time.Now().Add(20 * time.Second)
	for v.Stats().BlocksMoved == 0 || v.Stats().Checkpoints < 6 {
		if time.Now().After(deadline) {
			t.Fatalf("no compaction of the clone's own segments: %+v", v.Stats())
		}
		for i := 0; i < 200; i++ {
			off := r.Int64N(size/torus.BlockSize) * torus.BlockSize
			for j := range buf {
				buf[j] = byte(r.Uint32())
			}
			if err := v.WriteAt(ctx, buf, off, false); err != nil {
				t.Fatal(err)
			}
			copy(m[off:], buf)
		}
	}
	v.mu.Lock()
	sparse := 0
	for _, sl := range v.idx.slots {
		if sl.Ref.ID.Volume == src.ID && sl.Live > 0 && float64(sl.Live*torus.BlockSize) < compactLive*float64(sl.Ref.Length) {
			sparse++
		}
	}
	v.mu.Unlock()
	if sparse == 0 {
		t.Fatal("no parent segment under the compaction threshold is still mapped: the test did not reach the case, or the clone compacted its parent's segments")
	}
	verify(t, ctx, v, m)
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	v2 := c.open("clone", Options{})
	verify(t, ctx, v2, m)
	v2.Close(ctx)
	s2 := c.open("src", Options{ReadOnly: true})
	verify(t, ctx, s2, base)
	s2.Close(ctx)
}
