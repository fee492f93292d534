package volume

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/storage"
)

// asyncPool hands out peers that offer AppendAsync the way peer.Client
// does: appends run in the order they were started, one at a time per
// peer, like requests on one connection.
type asyncPool struct {
	c     *cluster
	mu    sync.Mutex
	peers map[string]*asyncPeer
	wg    sync.WaitGroup
}

type asyncPeer struct {
	torus.PeerService
	jobs        chan func()
	outstanding atomic.Int64
	maxOut      atomic.Int64
}

func (ap *asyncPool) Peer(ctx context.Context, id string) (torus.PeerService, error) {
	ps, err := ap.c.Peer(ctx, id)
	if err != nil {
		return nil, err
	}
	ap.mu.Lock()
	defer ap.mu.Unlock()
	p := ap.peers[id]
	if p == nil {
		p = &asyncPeer{PeerService: ps, jobs: make(chan func(), 64)}
		ap.peers[id] = p
		ap.wg.Add(1)
		go func() {
			defer ap.wg.Done()
			for j := range p.jobs {
				j()
			}
		}()
	}
	return p, nil
}

func (ap *asyncPool) close() {
	ap.mu.Lock()
	for _, p := range ap.peers {
		close(p.jobs)
	}
	ap.mu.Unlock()
	ap.wg.Wait()
}

func (p *asyncPeer) AppendAsync(ctx context.Context, epoch uint64, seg torus.SegmentID, off int64, b []byte) func() error {
	b = bytes.Clone(b) // not retained by contract: the "wire" holds a copy
	n := p.outstanding.Add(1)
	for m := p.maxOut.Load(); n > m && !p.maxOut.CompareAndSwap(m, n); m = p.maxOut.Load() {
	}
	ch := make(chan error, 1)
	p.jobs <- func() {
		ch <- p.PeerService.Append(ctx, epoch, seg, off, b)
		p.outstanding.Add(-1)
	}
	return func() error {
		select {
		case err := <-ch:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// TestPipelinedAppends: many writers keep several batches in flight; a
// replica fails in the middle of the stream. Every acknowledged write reads
// back, before and after a reopen, and the failed replica left the segment.
func TestPipelinedAppends(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 3, segmentSize: 8 << 20})
	const size = 32 << 20
	c.create("vol", size, 1)
	pool := &asyncPool{c: c, peers: map[string]*asyncPeer{}}
	defer pool.close()
	deps := c.deps()
	deps.Peers = pool
	v, err := Open(ctx, deps, "vol", Options{Owner: "w"})
	if err != nil {
		t.Fatal(err)
	}
	m := make(model, size)
	var mmu sync.Mutex
	var failedWrites atomic.Int64
	writers := 16
	const perWriter = 40
	var faulted atomic.Bool
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			// Each writer owns every 16th 256 KiB stripe: no overlaps.
			// Writes are large enough (up to 256 KiB) to be pipelined.
			for i := range perWriter {
				if w == 0 && i == perWriter/2 && faulted.CompareAndSwap(false, true) {
					victim := openReplicas(v)[0]
					c.stores[victim].SetFault(func(op string, seg torus.SegmentID) error {
						if op == storage.OpAppend {
							return errors.New("disk on fire")
						}
						return nil
					})
				}
				stripe := int64(r.IntN(size/(256<<10)/writers)*writers+w) * (256 << 10)
				p := randBytes(r, (1+r.IntN(64))*torus.BlockSize)
				if err := v.WriteAt(ctx, p, stripe, false); err != nil {
					failedWrites.Add(1)
					continue
				}
				mmu.Lock()
				copy(m[stripe:], p)
				mmu.Unlock()
			}
		}()
	}
	wg.Wait()
	if n := failedWrites.Load(); n > 0 {
		t.Fatalf("%d writes failed; a replica fault should be absorbed by a roll", n)
	}
	if v.Stats().ReplicasDropped == 0 {
		t.Fatal("no replica dropped after an append fault")
	}
	var maxOut int64
	for _, p := range pool.peers {
		maxOut = max(maxOut, p.maxOut.Load())
	}
	if maxOut < 2 {
		t.Errorf("at most %d appends in flight per replica; want pipelining (2 or more)", maxOut)
	}
	verify(t, ctx, v, m)
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	v2 := c.open("vol", Options{})
	defer v2.Close(ctx)
	verify(t, ctx, v2, m)
}
