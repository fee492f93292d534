package volume

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/peer"
)

// opCount counts a pool's requests by op (ClientConfig.ObservePeer).
type opCount struct {
	mu sync.Mutex
	n  map[string]int
}

func (o *opCount) observe(_, op string, _ time.Duration, _ error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n == nil {
		o.n = make(map[string]int)
	}
	o.n[op]++
}

func (o *opCount) take() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := o.n
	o.n = nil
	return n
}

// scatterStride is the stride scatter writes blocks in: each 64 KiB of the
// volume then holds 16 blocks that are not contiguous in any segment.
const scatterStride = 16

// scatter writes the first blocks blocks of v one 4 KiB block at a time in
// stride order (0, 16, 32, ..., 1, 17, ...), block b holding b's pattern,
// and flushes: a 64 KiB read of any aligned range then maps to 16 runs.
func scatter(t testing.TB, v *Volume, blocks int) {
	t.Helper()
	ctx := context.Background()
	buf := make([]byte, torus.BlockSize)
	for k := range scatterStride {
		for b := k; b < blocks; b += scatterStride {
			fillBlock(buf, b)
			if err := v.WriteAt(ctx, buf, int64(b)*torus.BlockSize, false); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func fillBlock(buf []byte, b int) {
	for i := range buf {
		buf[i] = byte(b*7 + i/512)
	}
}

func checkScattered(t testing.TB, p []byte, off int64) {
	t.Helper()
	want := make([]byte, torus.BlockSize)
	for i := 0; i < len(p); i += torus.BlockSize {
		b := int((off + int64(i)) / torus.BlockSize)
		fillBlock(want, b)
		if !bytes.Equal(p[i:i+torus.BlockSize], want) {
			t.Fatalf("block %d read wrong", b)
		}
	}
}

// hideVector is a PeerPool whose services are not torus.VectorReaders:
// a volume over it reads every run with its own ReadAt (the path before
// ReadV). corrupt, when set, is a pool whose ReadV flips a byte of the
// first range it returns intact.
type hideVector struct {
	torus.PeerPool
	corrupt bool
}

type plainService struct{ torus.PeerService }

type corruptingService struct {
	torus.PeerService
	vr torus.VectorReader
}

func (c corruptingService) ReadV(ctx context.Context, ranges []torus.ReadRange) error {
	err := c.vr.ReadV(ctx, ranges)
	for i := range ranges {
		if g := &ranges[i]; err == nil && g.Err == nil && g.N > 0 {
			g.P[0] ^= 0xff
			break
		}
	}
	return err
}

func (h hideVector) Peer(ctx context.Context, id string) (torus.PeerService, error) {
	svc, err := h.PeerPool.Peer(ctx, id)
	if err != nil {
		return nil, err
	}
	if vr, ok := svc.(torus.VectorReader); ok && h.corrupt {
		return corruptingService{svc, vr}, nil
	}
	return plainService{svc}, nil
}

// TestReadVectorsScatteredRuns: a 64 KiB read of blocks written at random
// (16 runs in one segment, on the same first replica) is one ReadV request
// to that replica, not 16 ReadAts, and reads the right bytes.
func TestReadVectorsScatteredRuns(t *testing.T) {
	ctx := context.Background()
	var ops opCount
	c := newWireClusterConfig(t, t.TempDir(), true, 3, 2, peer.ClientConfig{ObservePeer: ops.observe})
	if _, err := c.meta.CreateVolume(ctx, torus.VolumeInfo{Name: "vol", Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	v, err := Open(ctx, Deps{Meta: c.meta, Peers: c.pool, Logger: testutil.Logger(t)}, "vol", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	scatter(t, v, 1024)
	ops.take()
	p := make([]byte, 64<<10)
	for _, off := range []int64{0, 64 << 10, 1 << 20} {
		if err := v.ReadAt(ctx, p, off); err != nil {
			t.Fatal(err)
		}
		checkScattered(t, p, off)
		n := ops.take()
		if n["readv"] != 1 || n["readat"] != 0 {
			t.Fatalf("64 KiB read of 16 scattered runs at %d: requests %v, want one readv", off, n)
		}
	}
}

// TestReadVectorBadRangeReadAlone: a range a ReadV returns that does not
// match the index's CRC is read again on its own (fetch, every replica in
// turn); the others are used as they came; the read returns the right
// bytes.
func TestReadVectorBadRangeReadAlone(t *testing.T) {
	ctx := context.Background()
	var ops opCount
	c := newWireClusterConfig(t, t.TempDir(), true, 3, 2, peer.ClientConfig{ObservePeer: ops.observe})
	if _, err := c.meta.CreateVolume(ctx, torus.VolumeInfo{Name: "vol", Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	w, err := Open(ctx, Deps{Meta: c.meta, Peers: c.pool, Logger: testutil.Logger(t)}, "vol", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(ctx)
	scatter(t, w, 256)
	r, err := Open(ctx, Deps{Meta: c.meta, Peers: hideVector{PeerPool: c.pool, corrupt: true}, Logger: testutil.Logger(t)}, "vol", Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close(ctx)
	ops.take()
	p := make([]byte, 64<<10)
	if err := r.ReadAt(ctx, p, 0); err != nil {
		t.Fatal(err)
	}
	checkScattered(t, p, 0)
	if n := ops.take(); n["readv"] != 1 || n["readat"] != 1 {
		t.Fatalf("requests %v, want one readv and one readat (the bad range alone)", n)
	}
}

// BenchmarkScatteredRead64K is fio's 64 KiB random read over a volume
// written at random in 4 KiB blocks, without NBD: each read is 16 runs on
// the same first replica, over the peer protocol on loopback TCP (memory
// stores, replication 2). The baseline, timed in the same loop on
// alternate iterations, is the same read by a volume whose peers do not
// read vectors (a ReadAt per run, the path before ReadV). It reports
// vec-ns/op and base-ns/op per 64 KiB read and their ratio vec/base.
func BenchmarkScatteredRead64K(b *testing.B) {
	ctx := context.Background()
	c := newWireCluster(b, b.TempDir(), true, 3, 2)
	const size = 64 << 20
	if _, err := c.meta.CreateVolume(ctx, torus.VolumeInfo{Name: "vol", Size: size}); err != nil {
		b.Fatal(err)
	}
	w, err := Open(ctx, Deps{Meta: c.meta, Peers: c.pool, Logger: testutil.Logger(b)}, "vol", Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close(ctx)
	scatter(b, w, size/torus.BlockSize)
	base, err := Open(ctx, Deps{Meta: c.meta, Peers: hideVector{PeerPool: c.pool}, Logger: testutil.Logger(b)}, "vol", Options{ReadOnly: true})
	if err != nil {
		b.Fatal(err)
	}
	defer base.Close(ctx)
	p := make([]byte, 64<<10)
	read := func(v *Volume, i int) time.Duration {
		off := int64((uint64(i)*2654435761)%uint64(size/len(p))) * int64(len(p))
		t0 := time.Now()
		if err := v.ReadAt(ctx, p, off); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0)
	}
	for i := range 64 {
		read(w, i)
		read(base, i)
	}
	checkScattered(b, p, int64((uint64(63)*2654435761)%uint64(size/len(p)))*int64(len(p)))
	b.ReportAllocs()
	var tv, tb time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			tv += read(w, i)
			tb += read(base, i)
		} else {
			tb += read(base, i)
			tv += read(w, i)
		}
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(tv.Nanoseconds())/n, "vec-ns/op")
	b.ReportMetric(float64(tb.Nanoseconds())/n, "base-ns/op")
	b.ReportMetric(float64(tv)/float64(tb), "vec/base")
}
