package volume

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/metadata"
	"github.com/torus-storage/torus/storage"
)

// The tests of this file are the durability cases of issue 8, each a
// scenario that lost acknowledged (flushed) writes or failed FLUSH before
// the writer's fixes.

// crashWriter ends the writer as a crash would (its session expires, it is
// fenced) and opens a new one.
func crashWriter(t *testing.T, c *cluster, v *Volume) *Volume {
	t.Helper()
	c.meta.ExpireSession(v.session.ID())
	waitFenced(t, v)
	v.Close(context.Background())
	return c.open("vol", Options{Owner: "second writer"})
}

// TestFlushNeedsDurableLength: replication 2 over 2 peers; 4 MiB flushed,
// 4 MiB more written; one peer loses power (its segments cut back to what
// was synced) and comes back; FLUSH must not count it for bytes it lost.
// Then the other peer dies and the writer is replaced: every flushed byte
// reads back. Before Sync carried the durable length, the FLUSH succeeded on
// the strength of the crashed peer and the second 4 MiB read back as zeros.
func TestFlushNeedsDurableLength(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 2, segmentSize: 32 << 20})
	const size = 16 << 20
	c.create("vol", size, 0)
	v := c.open("vol", Options{Owner: "w"})
	r := rand.New(rand.NewPCG(21, 22))
	m := make(model, size)
	first := randBytes(r, 4<<20)
	if err := v.WriteAt(ctx, first, 0, false); err != nil {
		t.Fatal(err)
	}
	copy(m, first)
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	second := randBytes(r, 4<<20)
	if err := v.WriteAt(ctx, second, 4<<20, false); err != nil {
		t.Fatal(err)
	}
	copy(m[4<<20:], second)
	victim, other := c.ids[0], c.ids[1]
	c.stores[victim].Crash()
	err := v.Flush(ctx)
	if err == nil {
		// The flush may succeed only if the second 4 MiB are durable on
		// two peers: lose the other one and replace the writer.
		c.setDown(other, true)
		v2 := crashWriter(t, c, v)
		defer v2.Close(ctx)
		verify(t, ctx, v2, m)
		if got := v.Stats().CarriedBytes; got == 0 {
			t.Errorf("flush succeeded without carrying the lost tail (CarriedBytes 0)")
		}
		return
	}
	if !errors.Is(err, torus.ErrUnavailable) {
		t.Fatalf("flush: %v, want success or ErrUnavailable", err)
	}
	t.Fatalf("flush failed although both peers are up: %v", err)
}

// TestReplayTriesOtherReplica: replication 2 over 3 peers, 1 MiB segments;
// 8 MiB written and flushed, the writer closed; one byte flipped in the
// first record header of every sealed data segment on one peer only. The
// next open must rebuild the index from the good copies: before, it took
// the first copy long enough, stopped at the bad header and reverted
// flushed data.
func TestReplayTriesOtherReplica(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 3, segmentSize: 1 << 20, checkpointEvery: 64})
	const size = 16 << 20
	c.create("vol", size, 0)
	v := c.open("vol", Options{Owner: "w"})
	r := rand.New(rand.NewPCG(23, 24))
	m := make(model, size)
	for off := int64(0); off < 8<<20; off += 256 << 10 {
		p := randBytes(r, 256<<10)
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			t.Fatal(err)
		}
		copy(m[off:], p)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	head, err := c.meta.Head(ctx, "vol")
	if err != nil {
		t.Fatal(err)
	}
	if len(head.Sealed) < 4 {
		t.Fatalf("only %d sealed segments", len(head.Sealed))
	}
	// Flip offset 9 (inside the block number) of every sealed segment the
	// peer that holds the most of them has.
	var victim string
	most := 0
	for _, id := range c.ids {
		n := 0
		for _, ref := range head.Sealed {
			if _, err := c.stores[id].Stat(ctx, ref.ID); err == nil {
				n++
			}
		}
		if n > most {
			victim, most = id, n
		}
	}
	for _, ref := range head.Sealed {
		if flipByte(t, c, victim, ref.ID, 9) {
			t.Logf("flipped byte 9 of %v on %s", ref.ID, victim)
		}
	}
	v2 := c.open("vol", Options{ReadOnly: true})
	defer v2.Close(ctx)
	verify(t, ctx, v2, m)
	w := c.open("vol", Options{Owner: "w2"})
	defer w.Close(ctx)
	verify(t, ctx, w, m)
}

// flipByte flips one byte of seg on peer id's store, keeping the rest; it
// reports whether the peer holds seg.
func flipByte(t *testing.T, c *cluster, id string, seg torus.SegmentID, off int64) bool {
	t.Helper()
	ctx := context.Background()
	st := c.stores[id]
	info, err := st.Stat(ctx, seg)
	if errors.Is(err, torus.ErrNotExist) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, info.Length)
	if _, err := st.ReadAt(ctx, seg, b, 0); err != nil {
		t.Fatal(err)
	}
	b[off] ^= 0x40
	if err := st.Delete(ctx, seg); err != nil {
		t.Fatal(err)
	}
	if err := st.Append(ctx, seg, 0, b); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Sync(ctx, seg); err != nil {
		t.Fatal(err)
	}
	return true
}

// flakyMeta is metadata whose CommitHead can apply a head and then report a
// timeout (the reply was lost), or fail without applying it.
type flakyMeta struct {
	*metadata.Memory
	applyThenFail atomic.Int32 // the next N commits are applied, then reported failed
	failUnapplied atomic.Int32 // the next N commits fail and are not applied
	commits       atomic.Int32
}

var errLostReply = fmt.Errorf("etcd: request timed out (reply lost): %w", torus.ErrUnavailable)

func (f *flakyMeta) CommitHead(ctx context.Context, volume string, epoch uint64, h torus.Head) error {
	f.commits.Add(1)
	if f.failUnapplied.Add(-1) >= 0 {
		return errLostReply
	}
	err := f.Memory.CommitHead(ctx, volume, epoch, h)
	if err == nil && f.applyThenFail.Add(-1) >= 0 {
		return errLostReply
	}
	return err
}

// openFlaky opens a writer of "vol" on c through flakyMeta.
func openFlaky(t *testing.T, c *cluster) (*flakyMeta, *Volume) {
	t.Helper()
	fm := &flakyMeta{Memory: c.meta}
	deps := c.deps()
	deps.Meta = fm
	v, err := Open(context.Background(), deps, "vol", Options{Owner: "w"})
	if err != nil {
		t.Fatal(err)
	}
	return fm, v
}

// TestAmbiguousCommit: a head commit that etcd applied but whose reply was
// lost. The writer must go on from what etcd holds: before, it took the
// roll for failed, failed the write, kept appending past the length etcd
// had sealed, and a later writer lost flushed data.
func TestAmbiguousCommit(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 3, segmentSize: 1 << 20})
	const size = 8 << 20
	c.create("vol", size, 0)
	fm, v := openFlaky(t, c)
	r := rand.New(rand.NewPCG(25, 26))
	m := make(model, size)
	for i := range 40 {
		if i == 5 || i == 20 {
			fm.applyThenFail.Store(1)
		}
		p := randBytes(r, 128<<10)
		off := int64(r.IntN(size/(128<<10))) * 128 << 10
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		copy(m[off:], p)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if fm.applyThenFail.Load() >= 0 {
		t.Fatal("no commit was made ambiguous: the test proves nothing")
	}
	verify(t, ctx, v, m)
	v2 := crashWriter(t, c, v)
	defer v2.Close(ctx)
	verify(t, ctx, v2, m)
}

// TestFailedRoll: a replica fails and the commit that seals its segment
// fails too (not applied). The write must not be acknowledged until the
// data is on every replica of a committed segment; once etcd answers again
// the writer goes on, and a later writer finds every acknowledged, flushed
// write. Before, the degraded segment stayed open, healthy replicas were
// dropped for ErrConflict, and a batch could be "stored" on no replica.
func TestFailedRoll(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 3, segmentSize: 4 << 20})
	const size = 8 << 20
	c.create("vol", size, 0)
	fm, v := openFlaky(t, c)
	r := rand.New(rand.NewPCG(27, 28))
	m := make(model, size)
	write := func(n int) {
		t.Helper()
		for range n {
			p := randBytes(r, 64<<10)
			off := int64(r.IntN(size/(64<<10))) * 64 << 10
			if err := v.WriteAt(ctx, p, off, false); err != nil {
				t.Fatalf("write: %v", err)
			}
			copy(m[off:], p)
		}
	}
	write(20)
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	write(10)
	victim := openReplicas(v)[0]
	c.setDown(victim, true)
	fm.failUnapplied.Store(3)
	write(20)
	if err := v.Flush(ctx); err != nil {
		t.Fatalf("flush after the failed roll: %v", err)
	}
	for _, id := range openReplicas(v) {
		if id == victim {
			t.Fatalf("down replica %s in the open segment", victim)
		}
	}
	verify(t, ctx, v, m)
	v2 := crashWriter(t, c, v)
	defer v2.Close(ctx)
	verify(t, ctx, v2, m)
}

// TestPartialWriteRace: a partial-block write (read-modify-write) racing
// a full-block write of the same block must not undo the full write: the
// block ends as one of the two serial orders.
func TestPartialWriteRace(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 1, peers: 1})
	c.create("vol", 1<<20, 0)
	v := c.open("vol", Options{Owner: "w"})
	defer v.Close(ctx)
	for i := range 1000 {
		full := bytes.Repeat([]byte{byte(i)}, torus.BlockSize)
		part := bytes.Repeat([]byte{0xEE}, 100)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := v.WriteAt(ctx, full, 0, false); err != nil {
				t.Error(err)
			}
		}()
		go func() {
			defer wg.Done()
			if err := v.WriteAt(ctx, part, 10, false); err != nil {
				t.Error(err)
			}
		}()
		wg.Wait()
		got := make([]byte, torus.BlockSize)
		if err := v.ReadAt(ctx, got, 0); err != nil {
			t.Fatal(err)
		}
		merged := bytes.Clone(full)
		copy(merged[10:], part)
		if !bytes.Equal(got, full) && !bytes.Equal(got, merged) {
			t.Fatalf("round %d: the block is neither the full write nor the full write with the partial one on top (byte 0 = %#x, byte 200 = %#x)",
				i, got[0], got[200])
		}
	}
}

// TestRecoveryCountsRemovedReplica: replication 2 over 3 peers; the open
// segment's replicas are A and B; the writer dies, A is force-removed from
// the ring and unreachable, B is down. A new writer must refuse to open
// (it cannot know the flushed bytes) instead of sealing an empty open
// segment: before the head named the open segment's replicas, recovery
// walked the new ring, did not count A, and lost every flushed write of the
// open segment. Once B is back the open succeeds with everything.
func TestRecoveryCountsRemovedReplica(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 3, segmentSize: 32 << 20})
	const size = 4 << 20
	c.create("vol", size, 0)
	v := c.open("vol", Options{Owner: "w", LockTTL: time.Second})
	r := rand.New(rand.NewPCG(29, 30))
	m := make(model, size)
	workload(t, ctx, v, m, r, 50)
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	reps := openReplicas(v)
	a, b := reps[0], reps[1]
	c.meta.ExpireSession(v.session.ID())
	waitFenced(t, v)
	v.Close(ctx)
	spec, err := c.meta.Ring(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var kept []torus.RingMember
	for _, mb := range spec.Members {
		if mb.ID != a {
			kept = append(kept, mb)
		}
	}
	spec.Members, spec.Version = kept, spec.Version+1
	if err := c.meta.SetRing(ctx, spec); err != nil {
		t.Fatal(err)
	}
	c.setDown(a, true)
	c.setDown(b, true)
	if v2, err := Open(ctx, c.deps(), "vol", Options{Owner: "w2"}); err == nil {
		v2.Close(ctx)
		t.Fatal("open succeeded with both replicas of the open segment unheard")
	} else if !errors.Is(err, torus.ErrUnavailable) {
		t.Fatalf("open: %v, want ErrUnavailable", err)
	}
	c.setDown(b, false)
	v3 := c.open("vol", Options{Owner: "w3"})
	defer v3.Close(ctx)
	verify(t, ctx, v3, m)
}

// TestSealedListBounded: when every checkpoint fails, the head's sealed
// list must not grow without bound (etcd's request limit would then stop
// every commit): writes fail with ErrUnavailable past the limit, and work
// again once checkpoints do.
func TestSealedListBounded(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 3, segmentSize: 1 << 20, checkpointEvery: 2})
	const size = 32 << 20
	c.create("vol", size, 0)
	v := c.open("vol", Options{Owner: "w", RetryFor: 500 * time.Millisecond})
	defer v.Close(ctx)
	v.maxSealed = 6
	noCheckpoints := func(op string, seg torus.SegmentID) error {
		if seg.Kind == torus.KindCheckpoint && op == storage.OpAppend {
			return errors.New("checkpoint disk on fire")
		}
		return nil
	}
	for _, st := range c.stores {
		st.SetFault(noCheckpoints)
	}
	r := rand.New(rand.NewPCG(31, 32))
	var err error
	for off := int64(0); off < size && err == nil; off += 512 << 10 {
		err = v.WriteAt(ctx, randBytes(r, 512<<10), off, false)
	}
	if !errors.Is(err, torus.ErrUnavailable) {
		t.Fatalf("writing 32 MiB with every checkpoint failing: %v, want ErrUnavailable", err)
	}
	if n := len(v.Info().Head.Sealed); n > v.maxSealed {
		t.Fatalf("head has %d sealed segments, limit %d", n, v.maxSealed)
	}
	for _, st := range c.stores {
		st.SetFault(nil)
	}
	for off := int64(0); off < 2<<20; off += 512 << 10 { // at least one seal
		if err := v.WriteAt(ctx, randBytes(r, 512<<10), off, false); err != nil {
			t.Fatalf("write once checkpoints work again: %v", err)
		}
	}
	if ck := v.Info().Head.Checkpoint; ck == nil {
		t.Fatal("no checkpoint after the fault cleared")
	}
}

// TestPowerLossTorn: replication 2 over 3 peers with the default policy.
// Peers lose power one after another in the middle of a write+flush
// workload, each keeping only what it synced, with torn, garbage tails
// (storage.Memory.CrashTorn); the writer goes on without a failed FLUSH
// while two peers are up. Finally every peer loses power at once and the
// writer dies: a new writer finds every flushed write.
func TestPowerLossTorn(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 3, segmentSize: 1 << 20, checkpointEvery: 4})
	const size = 8 << 20
	c.create("vol", size, 0)
	v := c.open("vol", Options{Owner: "w"})
	r := rand.New(rand.NewPCG(33, 34))
	m := make(model, size)
	flushed := make(model, size)
	for round := range 9 {
		workload(t, ctx, v, m, r, 40)
		if err := v.Flush(ctx); err != nil {
			t.Fatalf("round %d: flush: %v", round, err)
		}
		copy(flushed, m)
		workload(t, ctx, v, m, r, 20) // unflushed when the power goes
		c.stores[c.ids[round%3]].CrashTorn(uint64(round))
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatalf("final flush: %v", err)
	}
	copy(flushed, m)
	verify(t, ctx, v, m)
	if v.Stats().CarriedBytes == 0 {
		t.Error("no unflushed bytes were carried: the crashes never hit an unflushed tail")
	}
	for i, id := range c.ids {
		c.stores[id].CrashTorn(uint64(100 + i))
	}
	v2 := crashWriter(t, c, v)
	defer v2.Close(ctx)
	verify(t, ctx, v2, flushed)
}

// TestReadOnlyViewAfterGC: a read-only open of a live volume whose
// segments were superseded and collected must not fail reads with EIO (it
// did: its frozen index named deleted segments); it moves to the current
// head.
func TestReadOnlyViewAfterGC(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 3, segmentSize: 1 << 20})
	const size = 2 << 20
	c.create("vol", size, 0)
	w := c.open("vol", Options{Owner: "w"})
	defer w.Close(ctx)
	r := rand.New(rand.NewPCG(35, 36))
	if err := w.WriteAt(ctx, randBytes(r, size), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := w.Snapshot(ctx, "s1"); err != nil { // seals and checkpoints
		t.Fatal(err)
	}
	if err := c.meta.DeleteSnapshot(ctx, "vol", "s1"); err != nil {
		t.Fatal(err)
	}
	ro := c.open("vol", Options{ReadOnly: true})
	defer ro.Close(ctx)
	old := ro.Info().Head
	now := randBytes(r, size)
	if err := w.WriteAt(ctx, now, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := w.Snapshot(ctx, "s2"); err != nil {
		t.Fatal(err)
	}
	if err := c.meta.DeleteSnapshot(ctx, "vol", "s2"); err != nil {
		t.Fatal(err)
	}
	// The sweep: every segment of the old view that the current head does
	// not name (its data segments are all superseded; its checkpoint may
	// remain as a run below the current one).
	live, err := LiveSegments(ctx, c.meta, c, "vol")
	if err != nil {
		t.Fatal(err)
	}
	var gone []torus.SegmentID
	if old.Checkpoint != nil {
		ck, err := ro.readCheckpoint(ctx, *old.Checkpoint)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range ck.Segments {
			gone = append(gone, s.ID)
		}
		gone = append(gone, old.Checkpoint.ID)
	}
	for _, s := range old.Sealed {
		gone = append(gone, s.ID)
	}
	if len(gone) == 0 {
		t.Fatal("the old view names no segment")
	}
	gone = slices.DeleteFunc(gone, func(id torus.SegmentID) bool { return live[id] })
	for _, st := range c.stores {
		for _, id := range gone {
			if err := st.Delete(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
	}
	got := make([]byte, size)
	if err := ro.ReadAt(ctx, got, 0); err != nil {
		t.Fatalf("read-only read after the GC: %v", err)
	}
	if !bytes.Equal(got, now) {
		t.Fatal("read-only view reads neither the old nor the current contents")
	}
}

// TestSnapshotWithCarry: a snapshot taken just as a replica fails with
// unflushed writes: the carry lands first, then the forced checkpoint, and
// the snapshot holds every write.
func TestSnapshotWithCarry(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 3})
	const size = 2 << 20
	c.create("vol", size, 0)
	v := c.open("vol", Options{Owner: "w"})
	defer v.Close(ctx)
	r := rand.New(rand.NewPCG(37, 38))
	m := make(model, size)
	workload(t, ctx, v, m, r, 30)
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	workload(t, ctx, v, m, r, 30) // unflushed
	victim := openReplicas(v)[0]
	c.stores[victim].SetFault(func(op string, _ torus.SegmentID) error {
		if op == storage.OpSync || op == storage.OpAppend {
			return errors.New("disk on fire")
		}
		return nil
	})
	if err := v.Snapshot(ctx, "snap"); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if v.Stats().CarriedBytes == 0 {
		t.Fatal("nothing carried: the test proves nothing")
	}
	s := c.open("vol", Options{Snapshot: "snap"})
	defer s.Close(ctx)
	verify(t, ctx, s, m)
}

// TestCarrySkipsCorruptCopy: the unflushed tail to carry is read back from
// a replica whose copy verifies: a survivor returning flipped bits is
// passed over for another copy, and nothing corrupt is carried.
func TestCarrySkipsCorruptCopy(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 3})
	const size = 2 << 20
	c.create("vol", size, 0)
	v := c.open("vol", Options{Owner: "w"})
	defer v.Close(ctx)
	r := rand.New(rand.NewPCG(39, 40))
	m := make(model, size)
	workload(t, ctx, v, m, r, 30)
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	workload(t, ctx, v, m, r, 30) // unflushed
	reps := openReplicas(v)
	victim, survivor := reps[0], reps[1]
	// The victim can no longer write or sync but still reads; the
	// survivor's reads come back with a flipped bit.
	c.stores[victim].SetFault(func(op string, _ torus.SegmentID) error {
		if op == storage.OpSync || op == storage.OpAppend {
			return errors.New("disk on fire")
		}
		return nil
	})
	c.setCorrupt(survivor, true)
	if err := v.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
	if v.Stats().CarriedBytes == 0 {
		t.Fatal("nothing carried: the test proves nothing")
	}
	c.setCorrupt(survivor, false)
	verify(t, ctx, v, m)
	v2 := crashWriter(t, c, v)
	defer v2.Close(ctx)
	verify(t, ctx, v2, m)
}

// TestReadPassesHangingReplica: a replica that never answers reads (its
// link blackholed, the daemon still shown up) must not hold reads: the
// next replica is tried after a short wait, and the silent one goes last
// afterwards. Before, a read waited on it until the caller's deadline.
func TestReadPassesHangingReplica(t *testing.T) {
	c := newCluster(t, clusterOpts{replication: 2, peers: 3})
	const size = 1 << 20
	c.create("vol", size, 0)
	v := c.open("vol", Options{Owner: "w"})
	defer v.Close(context.Background())
	r := rand.New(rand.NewPCG(41, 42))
	m := make(model, size)
	workload(t, context.Background(), v, m, r, 40)
	if err := v.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.setHang(openReplicas(v)[0], true)
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 3*readTryTimeout)
		got := make([]byte, size)
		err := v.ReadAt(ctx, got, 0)
		cancel()
		if err != nil {
			t.Fatalf("read %d with a hanging replica: %v", i, err)
		}
		if !bytes.Equal(got, m) {
			t.Fatalf("read %d: wrong data", i)
		}
	}
	if v.Stats().ReadRetries == 0 {
		t.Fatal("no read moved on to the other replica")
	}
}

// TestSegmentTableBounded: the writer's table of segments it appended to
// (what FLUSH walks, and a checkpoint checks) keeps only the segments that
// still need it: the open one, those with bytes not yet durable, and those
// placed off their ring position. Sealed, synced, ring-placed segments
// leave it, so a FLUSH costs the same after a thousand seals as after one.
func TestSegmentTableBounded(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 3, segmentSize: 1 << 20, checkpointEvery: 4})
	const size = 64 << 20
	c.create("vol", size, 0)
	v := c.open("vol", Options{Owner: "w"})
	defer v.Close(ctx)
	r := rand.New(rand.NewPCG(41, 42))
	m := make(model, size)
	for off := int64(0); off < size; off += 256 << 10 {
		p := randBytes(r, 256<<10)
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			t.Fatal(err)
		}
		copy(m[off:], p)
		if off%(4<<20) == 0 {
			if err := v.Flush(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if sealed := v.Stats().SegmentsSealed; sealed < 50 {
		t.Fatalf("only %d seals: the test needs many", sealed)
	}
	v.mu.Lock()
	n := len(v.segs)
	v.mu.Unlock()
	if n > 3 {
		t.Fatalf("the writer tracks %d segments after %d seals; want the open one and at most a couple not yet durable", n, v.Stats().SegmentsSealed)
	}
	verify(t, ctx, v, m)
	// A fresh open reads every block back through ring placement alone.
	v.Close(ctx)
	v2 := c.open("vol", Options{Owner: "w2"})
	defer v2.Close(ctx)
	verify(t, ctx, v2, m)
}

// TestHeadBounded: the largest head a writer can commit (the sealed list at
// its limit, every number at its widest, replicas named by the widest peer
// IDs) stays within 64 KiB, whatever the volume's size or history (issue 10).
func TestHeadBounded(t *testing.T) {
	const wide = ^uint64(0)
	ref := func(k torus.SegmentKind) torus.SegmentRef {
		return torus.SegmentRef{ID: torus.SegmentID{Volume: wide, Epoch: wide, Seq: wide, Kind: k}, Length: 1<<63 - 1}
	}
	ck, open := ref(torus.KindCheckpoint), ref(torus.KindData).ID
	h := torus.Head{Epoch: wide, Checkpoint: &ck, Open: &open, NextSeq: wide}
	for range 8 {
		h.OpenReplicas = append(h.OpenReplicas, strings.Repeat("f", 64))
	}
	for range maxSealedSegments {
		h.Sealed = append(h.Sealed, ref(torus.KindData))
	}
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > 64<<10 {
		t.Fatalf("a head with %d sealed segments is %d bytes of JSON, more than 64 KiB", maxSealedSegments, len(b))
	}
	t.Logf("largest head: %d bytes", len(b))
}
