package volume

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/storage"
)

// TestCheckpointIncremental: a checkpoint writes what changed since the
// one before it, not the whole index (issue 10). After 8192 scattered
// blocks are mapped, a checkpoint after 16 more blocks is a small fraction
// of the first.
func TestCheckpointIncremental(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 3, segmentSize: 8 << 20, checkpointEvery: 1000})
	const size = 256 << 20
	c.create("vol", size, 0)
	v := c.open("vol", Options{Owner: "w"})
	defer v.Close(ctx)
	r := rand.New(rand.NewPCG(51, 52))
	m := make(model, size)
	write := func(blocks int) {
		for range blocks {
			off := r.Int64N(size/torus.BlockSize) * torus.BlockSize
			p := randBytes(r, torus.BlockSize)
			if err := v.WriteAt(ctx, p, off, false); err != nil {
				t.Fatal(err)
			}
			copy(m[off:], p)
		}
	}
	checkpoint := func(name string) int64 {
		before := v.Stats().CheckpointBytes
		if err := v.Snapshot(ctx, name); err != nil { // seals and checkpoints
			t.Fatal(err)
		}
		return v.Stats().CheckpointBytes - before
	}
	write(8192)
	first := checkpoint("s1")
	write(16)
	second := checkpoint("s2")
	t.Logf("checkpoint of %d mapped blocks: %d bytes; after 16 more blocks: %d bytes", v.Stats().BlocksWritten, first, second)
	if second*20 > first {
		t.Fatalf("the second checkpoint is %d bytes, the first %d: a checkpoint must hold what changed, not the whole index", second, first)
	}
	verify(t, ctx, v, m)
	v.Close(ctx)
	v2 := c.open("vol", Options{Owner: "w2"})
	defer v2.Close(ctx)
	verify(t, ctx, v2, m)
}

// TestRunStackReopen: through many checkpoints, so that runs are merged
// (RunMerges) at the top and down to the bottom of the stack, with writes,
// zeroes and trims between them, every reopen (writer and read-only)
// reads what was written (docs/design/index-runs.md, invariant 2).
func TestRunStackReopen(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 3, segmentSize: 1 << 20, checkpointEvery: 1})
	const size = 16 << 20
	c.create("vol", size, 0)
	m := make(model, size)
	r := rand.New(rand.NewPCG(61, 62))
	var merges int64
	for round := range 6 {
		v := c.open("vol", Options{Owner: "w"})
		workload(t, ctx, v, m, r, 1500)
		if err := v.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		merges += v.Stats().RunMerges
		v.mu.Lock()
		depth := len(v.stack)
		v.mu.Unlock()
		t.Logf("round %d: %d checkpoints, %d merges, %d runs in the stack", round, v.Stats().Checkpoints, v.Stats().RunMerges, depth)
		if err := v.Close(ctx); err != nil {
			t.Fatal(err)
		}
		ro := c.open("vol", Options{ReadOnly: true})
		verify(t, ctx, ro, m)
		ro.Close(ctx)
	}
	if merges == 0 {
		t.Fatal("no run was merged: the test did not exercise merges")
	}
	v := c.open("vol", Options{Owner: "last"})
	defer v.Close(ctx)
	verify(t, ctx, v, m)
}

// TestOpensFormat2Checkpoint: a volume whose head names a checkpoint of the
// whole index (version 1, written before runs existed) opens, reads back,
// and its next checkpoint is a version 3 one holding the whole index with
// nothing below, which opens in turn.
func TestOpensFormat2Checkpoint(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 3, segmentSize: 1 << 20, checkpointEvery: 1000})
	const size = 16 << 20
	c.create("vol", size, 0)
	m := make(model, size)
	r := rand.New(rand.NewPCG(71, 72))
	v := c.open("vol", Options{Owner: "w"})
	workload(t, ctx, v, m, r, 300)
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// Rewrite the head as an older writer left it: its index in a version
	// 1 checkpoint, nothing sealed after it.
	ro := c.open("vol", Options{ReadOnly: true})
	ro.mu.Lock()
	info, head := ro.info, cloneHead(ro.head)
	old := EncodeCheckpoint(info.ID, size, ro.idx)
	ro.mu.Unlock()
	ro.Close(ctx)
	id := torus.SegmentID{Volume: info.ID, Epoch: head.Epoch, Seq: head.NextSeq, Kind: torus.KindCheckpoint}
	for _, st := range c.stores {
		if err := st.Append(ctx, id, 0, old); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Sync(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	head.Checkpoint = &torus.SegmentRef{ID: id, Length: int64(len(old))}
	head.Sealed, head.Open, head.OpenReplicas = nil, nil, nil
	head.NextSeq++
	sess, err := c.meta.NewSession(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	e, err := c.meta.Lock(ctx, sess, "vol", torus.WriterInfo{Owner: "an older torusblk"})
	if err != nil {
		t.Fatal(err)
	}
	head.Epoch = e
	if err := c.meta.CommitHead(ctx, "vol", e, head); err != nil {
		t.Fatal(err)
	}
	if err := c.meta.Unlock(ctx, "vol", e); err != nil {
		t.Fatal(err)
	}
	sess.Close(ctx)

	v = c.open("vol", Options{Owner: "w2"})
	verify(t, ctx, v, m)
	if n := v.idx.Changed(); n != -1 {
		t.Fatalf("after a version 1 checkpoint the next checkpoint must hold the whole index; Changed = %d", n)
	}
	workload(t, ctx, v, m, r, 100)
	if err := v.Snapshot(ctx, "s"); err != nil { // a checkpoint
		t.Fatal(err)
	}
	ck, err := v.readCheckpoint(ctx, *v.Info().Head.Checkpoint)
	if err != nil {
		t.Fatal(err)
	}
	if ck.Runs == nil || len(ck.Runs.Stack) != 0 {
		t.Fatalf("the first checkpoint after a version 1 one: runs %v", ck.Runs != nil)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	v = c.open("vol", Options{Owner: "w3"})
	defer v.Close(ctx)
	verify(t, ctx, v, m)
}

// TestCheckpointInBackground: a checkpoint is written off the appender
// (issue 10): while its segment's appends hang, writes go on through
// several seals, the head names it as Checkpointing (live for the GC), a
// read-only open reads everything by replaying the sealed segments, and
// once it lands the next seal puts it in the head.
func TestCheckpointInBackground(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 3, segmentSize: 1 << 20, checkpointEvery: 1})
	const size = 16 << 20
	c.create("vol", size, 0)
	v := c.open("vol", Options{Owner: "w"})
	defer v.Close(ctx)
	r := rand.New(rand.NewPCG(81, 82))
	m := make(model, size)
	write := func(n int64) error {
		for off := int64(0); off < n; off += 256 << 10 {
			at := r.Int64N(size/(256<<10)) * (256 << 10)
			p := randBytes(r, 256<<10)
			if err := v.WriteAt(ctx, p, at, false); err != nil {
				return err
			}
			copy(m[at:], p)
		}
		return v.Flush(ctx)
	}
	if err := write(2 << 20); err != nil {
		t.Fatal(err)
	}
	hang := make(chan struct{})
	for _, st := range c.stores {
		st.SetFault(func(op string, seg torus.SegmentID) error {
			if seg.Kind == torus.KindCheckpoint && op == storage.OpAppend {
				<-hang
			}
			return nil
		})
	}
	release := sync.OnceFunc(func() { close(hang) })
	defer release() // before v.Close, which waits for the checkpoint's goroutine
	done := make(chan error, 1)
	go func() { done <- write(6 << 20) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("writes wait for a checkpoint whose appends hang: the checkpoint is not written in the background")
	}
	h := v.Info().Head
	if h.Checkpointing == nil || len(h.Sealed) < 4 {
		t.Fatalf("with a checkpoint hanging after 6 MiB: head checkpointing %v, %d sealed", h.Checkpointing, len(h.Sealed))
	}
	hung := *h.Checkpointing
	live, err := LiveSegments(ctx, c.meta, c, "vol")
	if err != nil {
		t.Fatal(err)
	}
	if !live[*h.Checkpointing] {
		t.Fatalf("the checkpoint being written (%v) is not live for the GC", *h.Checkpointing)
	}
	ro := c.open("vol", Options{ReadOnly: true})
	verify(t, ctx, ro, m)
	ro.Close(ctx)

	for _, st := range c.stores {
		st.SetFault(nil)
	}
	release()
	before := v.Stats().Checkpoints
	waitFor(t, "the hung checkpoint to complete", func() bool { return v.Stats().Checkpoints > before })
	if err := write(2 << 20); err != nil { // seals: the next roll takes it
		t.Fatal(err)
	}
	h = v.Info().Head
	if h.Checkpoint == nil || h.Checkpoint.ID.Seq < hung.Seq {
		t.Fatalf("head after the checkpoint landed: %+v", h)
	}
	verify(t, ctx, v, m)
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	v2 := c.open("vol", Options{Owner: "w2"})
	defer v2.Close(ctx)
	verify(t, ctx, v2, m)
}

// TestRunCheckpointLengthsWrap: a segment count and run length whose
// sizes wrap around 2^64 when added are refused as corrupt; the table is
// never read past its end (before: a panic on a slice out of range).
func TestRunCheckpointLengthsWrap(t *testing.T) {
	const nsegs = 1<<32 - 1
	var p []byte
	p = binary.LittleEndian.AppendUint32(p, CheckpointMagic)
	p = binary.LittleEndian.AppendUint32(p, CheckpointVersionRuns)
	p = binary.LittleEndian.AppendUint64(p, 9)
	p = binary.LittleEndian.AppendUint64(p, 0)
	p = binary.LittleEndian.AppendUint32(p, nsegs)
	p = binary.LittleEndian.AppendUint32(p, 0)
	const entries = 3 // well-formed table entries, far fewer than nsegs
	var segBytes uint64 = nsegs * checkpointSegEntrySize
	p = binary.LittleEndian.AppendUint64(p, entries*checkpointSegEntrySize-segBytes) // the sum wraps to what follows
	for i := range entries {
		p = appendSegmentEntry(p, torus.SegmentRef{ID: torus.SegmentID{Volume: 9, Epoch: 1, Seq: uint64(i)}, Length: 4096})
	}
	p = binary.LittleEndian.AppendUint32(p, crc32.Checksum(p, castagnoli))
	p = slices.Clip(p) // as read from a segment: nothing past its end
	if _, err := DecodeCheckpoint(p, OnlyVolume(9), 6000); !errors.Is(err, torus.ErrCorrupt) {
		t.Fatalf("a checkpoint whose lengths wrap: %v, want ErrCorrupt", err)
	}
}

// TestBackgroundCheckpointKeptWhenSealFails: a background checkpoint that
// has landed but whose roll fails (the open segment can be neither synced
// nor read back) is given back to the index: the blocks it holds are in
// the next checkpoint, which drops the sealed segments holding them. A
// reopen reads every acknowledged, flushed write.
func TestBackgroundCheckpointKeptWhenSealFails(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 3, segmentSize: 1 << 20, checkpointEvery: 1})
	const size = 16 << 20
	c.create("vol", size, 0)
	v := c.open("vol", Options{Owner: "w", RetryFor: 200 * time.Millisecond})
	defer v.Close(ctx)
	r := rand.New(rand.NewPCG(91, 92))
	m := make(model, size)
	write := func(from, n int64) error {
		for off := from; off < from+n; off += 128 << 10 {
			p := randBytes(r, 128<<10)
			if err := v.WriteAt(ctx, p, off, false); err != nil {
				return err
			}
			copy(m[off:], p)
		}
		return nil
	}
	// Seals and a background checkpoint of the first 3 MiB.
	if err := write(0, 3<<20); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the background checkpoint", func() bool { return v.Stats().Checkpoints > 0 })
	// The next roll cannot secure the open segment.
	for _, st := range c.stores {
		st.SetFault(func(op string, seg torus.SegmentID) error {
			if seg.Kind == torus.KindData && (op == storage.OpSync || op == storage.OpRead) {
				return errors.New("disk on fire")
			}
			return nil
		})
	}
	const scratch = 8 << 20 // written while failing, rewritten after
	_ = write(scratch, 2<<20)
	for _, st := range c.stores {
		st.SetFault(nil)
	}
	v.Close(ctx)
	v = c.open("vol", Options{Owner: "w2"})
	if err := write(scratch, 6<<20); err != nil { // more seals and checkpoints
		t.Fatal(err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	v = c.open("vol", Options{Owner: "w3"})
	verify(t, ctx, v, m)
}

// waitFor polls cond until it holds, failing the test after 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited 20 s for %s", what)
		}
	}
}
