package volume

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/storage"
)

// syncCounter counts a memory store's Syncs and runs onSync (once armed)
// before the first Sync after arming.
type syncCounter struct {
	n      atomic.Int64
	mu     sync.Mutex
	onSync func()
}

func (s *syncCounter) hook(st *storage.Memory) {
	st.SetFault(func(op string, _ torus.SegmentID) error {
		if op != storage.OpSync {
			return nil
		}
		s.n.Add(1)
		s.mu.Lock()
		f := s.onSync
		s.onSync = nil
		s.mu.Unlock()
		if f != nil {
			f()
		}
		return nil
	})
}

// waitSyncs polls until c counted at least n Syncs, or a second passed.
func (s *syncCounter) waitSyncs(n int64) int64 {
	deadline := time.Now().Add(time.Second)
	for s.n.Load() < n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	return s.n.Load()
}

// TestEarlySyncOnlyAfterFlush: a small write that follows a FLUSH is
// synced early (before any FLUSH asks for it), and writes that no FLUSH
// followed are not: a workload that does not flush pays no fdatasync.
func TestEarlySyncOnlyAfterFlush(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 2, segmentSize: 32 << 20})
	c.create("vol", 16<<20, 0)
	v := c.open("vol", Options{Owner: "w"})
	defer v.Close(ctx)
	var sc syncCounter
	sc.hook(c.stores[c.ids[0]])
	buf := make([]byte, torus.BlockSize)
	for i := range 20 {
		if err := v.WriteAt(ctx, buf, int64(i)*torus.BlockSize, false); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if n := sc.n.Load(); n != 0 {
		t.Fatalf("%d syncs after writes without a FLUSH, want 0", n)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	before := sc.n.Load()
	if err := v.WriteAt(ctx, buf, 0, false); err != nil {
		t.Fatal(err)
	}
	if n := sc.waitSyncs(before + 1); n != before+1 {
		t.Fatalf("a write after a FLUSH: %d syncs, want %d (an early sync)", n, before+1)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := sc.n.Load(); n != before+1 {
		t.Errorf("the FLUSH after an early sync synced again (%d syncs, want %d)", n, before+1)
	}
	// Two writes: the first is synced early (a FLUSH came before it), the
	// second is not (one early sync per FLUSH seen), so the FLUSH syncs.
	if err := v.WriteAt(ctx, buf, 0, false); err != nil {
		t.Fatal(err)
	}
	if n := sc.waitSyncs(before + 2); n != before+2 {
		t.Fatalf("a write after a served FLUSH: %d syncs, want %d", n, before+2)
	}
	if err := v.WriteAt(ctx, buf, torus.BlockSize, false); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	if n := sc.n.Load(); n != before+2 {
		t.Fatalf("a second write before any FLUSH was synced early (%d syncs, want %d)", n, before+2)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := sc.n.Load(); n != before+3 {
		t.Errorf("two writes then a FLUSH: %d syncs, want %d (an early one, then the FLUSH's)", n, before+3)
	}
}

// TestEarlySyncNeedsDurableLength: as TestFlushNeedsDurableLength, but the
// replica loses power just as the early sync reaches it, so that sync
// succeeds with a durable length short of the write. The FLUSH must not
// count it: if it succeeds, the write must survive the loss of the other
// replica.
func TestEarlySyncNeedsDurableLength(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 2, segmentSize: 32 << 20})
	const size = 16 << 20
	c.create("vol", size, 0)
	v := c.open("vol", Options{Owner: "w"})
	r := rand.New(rand.NewPCG(31, 32))
	m := make(model, size)
	first := randBytes(r, 64<<10)
	if err := v.WriteAt(ctx, first, 0, false); err != nil {
		t.Fatal(err)
	}
	copy(m, first)
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	victim, other := c.ids[0], c.ids[1]
	var sc syncCounter
	sc.hook(c.stores[victim])
	crashed := make(chan struct{})
	sc.mu.Lock()
	sc.onSync = func() { c.stores[victim].Crash(); close(crashed) }
	sc.mu.Unlock()
	second := randBytes(r, 8<<10)
	if err := v.WriteAt(ctx, second, 64<<10, false); err != nil {
		t.Fatal(err)
	}
	copy(m[64<<10:], second)
	select {
	case <-crashed: // the early sync reached the victim
	case <-time.After(time.Second):
		t.Fatal("no early sync reached the victim after a write that followed a FLUSH")
	}
	err := v.Flush(ctx)
	if err != nil {
		if !errors.Is(err, torus.ErrUnavailable) {
			t.Fatalf("flush: %v, want success or ErrUnavailable", err)
		}
		t.Fatalf("flush failed although both peers are up: %v", err)
	}
	c.setDown(other, true)
	v2 := crashWriter(t, c, v)
	defer v2.Close(ctx)
	verify(t, ctx, v2, m)
}
