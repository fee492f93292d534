package volume

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/metadata"
	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/storage"
)

// cluster is an in-process cluster: peer.Local over storage.Memory per
// peer, metadata.Memory, and a pool that can make peers unreachable.
type cluster struct {
	t      testing.TB
	meta   *metadata.Memory
	ids    []string
	stores map[string]*storage.Memory
	locals map[string]*peer.Local

	mu      sync.Mutex
	down    map[string]bool
	corrupt map[string]bool // reads from these peers have a byte flipped
	hang    map[string]bool // reads from these peers never answer (a blackholed link)
}

type clusterOpts struct {
	peers, replication int
	segmentSize        int64
	checkpointEvery    int
}

func newCluster(t testing.TB, o clusterOpts) *cluster {
	t.Helper()
	ctx := context.Background()
	if o.peers == 0 {
		o.peers = 3
	}
	if o.segmentSize == 0 {
		o.segmentSize = 1 << 20
	}
	c := &cluster{t: t, meta: metadata.NewMemory(), stores: map[string]*storage.Memory{},
		locals: map[string]*peer.Local{}, down: map[string]bool{}, corrupt: map[string]bool{}, hang: map[string]bool{}}
	t.Cleanup(func() { c.meta.Close() })
	cfg := torus.ClusterConfig{Replication: o.replication, SegmentSize: o.segmentSize, CheckpointEvery: o.checkpointEvery}
	if err := c.meta.InitCluster(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	spec, err := c.meta.Ring(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.meta.NewSession(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < o.peers; i++ {
		id := fmt.Sprintf("peer-%d", i)
		c.ids = append(c.ids, id)
		st := storage.NewMemory(1 << 30)
		c.stores[id] = st
		c.locals[id] = peer.NewLocal(st, testutil.Logger(t))
		if err := c.meta.PutPeer(ctx, torus.PeerInfo{ID: id, Address: id + ":1", Capacity: 1 << 30}); err != nil {
			t.Fatal(err)
		}
		if err := c.meta.Heartbeat(ctx, s, id, torus.Beat{}); err != nil {
			t.Fatal(err)
		}
		spec.Members = append(spec.Members, torus.RingMember{ID: id, Weight: 1 << 30})
	}
	spec.Version++
	if err := c.meta.SetRing(ctx, spec); err != nil {
		t.Fatal(err)
	}
	return c
}

// Peer implements torus.PeerPool.
func (c *cluster) Peer(ctx context.Context, id string) (torus.PeerService, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.locals[id]
	if !ok || c.down[id] {
		return nil, fmt.Errorf("test pool: peer %s: %w", id, torus.ErrUnavailable)
	}
	if c.corrupt[id] {
		return corruptPeer{l}, nil
	}
	if c.hang[id] {
		return hangingPeer{l}, nil
	}
	return l, nil
}

// hangingPeer's reads wait until their context ends: a replica behind a
// blackholed link.
type hangingPeer struct{ torus.PeerService }

func (hangingPeer) ReadAt(ctx context.Context, _ torus.SegmentID, _ []byte, _ int64) (int, error) {
	<-ctx.Done()
	return 0, fmt.Errorf("hanging peer: %w", errors.Join(torus.ErrUnavailable, ctx.Err()))
}

func (c *cluster) setHang(id string, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.hang[id] = on
}

// corruptPeer flips one bit of every block-sized-or-larger read: bit rot
// on that replica's disk.
type corruptPeer struct{ torus.PeerService }

func (p corruptPeer) ReadAt(ctx context.Context, seg torus.SegmentID, b []byte, off int64) (int, error) {
	n, err := p.PeerService.ReadAt(ctx, seg, b, off)
	if n >= torus.BlockSize {
		b[n/2] ^= 0x20
	}
	return n, err
}

func (c *cluster) setCorrupt(id string, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corrupt[id] = on
}

func (c *cluster) setDown(id string, down bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.down[id] = down
}

func (c *cluster) deps() Deps {
	return Deps{Meta: c.meta, Peers: c, Logger: testutil.Logger(c.t)}
}

func (c *cluster) create(name string, size int64, minReplicas int) torus.VolumeInfo {
	c.t.Helper()
	v, err := c.meta.CreateVolume(context.Background(), torus.VolumeInfo{Name: name, Size: size, MinReplicas: minReplicas})
	if err != nil {
		c.t.Fatal(err)
	}
	return v
}

func (c *cluster) open(name string, opt Options) *Volume {
	c.t.Helper()
	v, err := Open(context.Background(), c.deps(), name, opt)
	if err != nil {
		c.t.Fatalf("open %s: %v", name, err)
	}
	return v
}

// storedBytes sums the bytes of every segment of every store.
func (c *cluster) storedBytes(kind torus.SegmentKind) int64 {
	var n int64
	for _, st := range c.stores {
		segs, err := st.List(context.Background(), 0)
		if err != nil {
			c.t.Fatal(err)
		}
		for _, s := range segs {
			if s.ID.Kind == kind {
				n += s.Length
			}
		}
	}
	return n
}
