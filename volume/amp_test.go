package volume

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
)

// TestWriteAmplification measures bytes stored per byte written for 4 KiB
// random writes, and etcd commits per flush.
func TestWriteAmplification(t *testing.T) {
	ctx := context.Background()
	const replication = 2
	c := newCluster(t, clusterOpts{replication: replication, segmentSize: 32 << 20, checkpointEvery: 8})
	const size = 64 << 20
	c.create("vol", size, 0)
	v := c.open("vol", Options{})
	defer v.Close(ctx)
	r := rand.New(rand.NewPCG(41, 42))
	buf := make([]byte, torus.BlockSize)
	const writes, perFlush = 2500, 16
	before := v.Stats()
	for i := 0; i < writes; i++ {
		for j := range buf {
			buf[j] = byte(r.Uint32())
		}
		off := r.Int64N(size/torus.BlockSize) * torus.BlockSize
		if err := v.WriteAt(ctx, buf, off, false); err != nil {
			t.Fatal(err)
		}
		if i%perFlush == perFlush-1 {
			if err := v.Flush(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	st := v.Stats()
	written := float64(writes * torus.BlockSize)
	stored := float64(c.storedBytes(torus.KindData))
	perReplica := stored / replication / written
	flushes := st.Flushes - before.Flushes
	commits := st.EtcdCommits - before.EtcdCommits
	t.Logf("4 KiB random writes: %d bytes written, %.0f stored on %d replicas: %.4f per replica; %d flushes, %d etcd commits (%.3f per flush), %d batches",
		writes*torus.BlockSize, stored, replication, perReplica, flushes, commits, float64(commits)/float64(flushes), st.Batches)
	if perReplica >= 1.1 || perReplica < 1 {
		t.Errorf("write amplification %.4f per replica, want in [1, 1.1)", perReplica)
	}
	if want := float64(RecordSize(RecordHeader{Type: RecordWrite, Count: 1})) / torus.BlockSize; perReplica > want+1e-9 {
		t.Errorf("write amplification %.4f above the record format's %.4f", perReplica, want)
	}
	if commits != 0 {
		t.Errorf("%d etcd commits for %d flushes within one segment, want 0", commits, flushes)
	}

	// With small segments the seals show up: still at most one commit per
	// flush on average (one per 1 MiB segment here, amortized).
	c2 := newCluster(t, clusterOpts{replication: replication, segmentSize: 1 << 20, checkpointEvery: 4})
	c2.create("vol", size, 0)
	v2 := c2.open("vol", Options{})
	defer v2.Close(ctx)
	before = v2.Stats()
	var maxPerFlush int64
	last := before.EtcdCommits
	for i := 0; i < writes; i++ {
		off := r.Int64N(size/torus.BlockSize) * torus.BlockSize
		if err := v2.WriteAt(ctx, buf, off, false); err != nil {
			t.Fatal(err)
		}
		if i%perFlush == perFlush-1 {
			if err := v2.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			now := v2.Stats().EtcdCommits
			maxPerFlush = max(maxPerFlush, now-last)
			last = now
		}
	}
	if maxPerFlush > 1 {
		t.Errorf("up to %d etcd commits between two flushes, want at most 1", maxPerFlush)
	}
	st = v2.Stats()
	flushes, commits = st.Flushes-before.Flushes, st.EtcdCommits-before.EtcdCommits
	ck := float64(st.CheckpointBytes) / replication / written
	t.Logf("1 MiB segments: %d flushes, %d etcd commits (%.3f per flush), %d seals, %d checkpoints (%d bytes, +%.4f per byte written)",
		flushes, commits, float64(commits)/float64(flushes), st.SegmentsSealed, st.Checkpoints, st.CheckpointBytes, ck)
	if float64(commits) > float64(flushes) {
		t.Errorf("%d etcd commits for %d flushes, want at most one per flush", commits, flushes)
	}
}

// memDevice is the baseline: a byte slice behind a mutex.
type memDevice struct {
	mu sync.Mutex
	b  []byte
}

func (d *memDevice) WriteAt(_ context.Context, p []byte, off int64, _ bool) error {
	d.mu.Lock()
	copy(d.b[off:], p)
	d.mu.Unlock()
	return nil
}

type writer interface {
	WriteAt(ctx context.Context, p []byte, off int64, fua bool) error
}

func runWrites(b *testing.B, w writer, size int64, n, workers int) time.Duration {
	ctx := context.Background()
	start := time.Now()
	var wg sync.WaitGroup
	for g := 0; g < workers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			buf := make([]byte, torus.BlockSize)
			for i := g; i < n; i += workers {
				buf[0] = byte(i)
				if err := w.WriteAt(ctx, buf, r.Int64N(size/torus.BlockSize)*torus.BlockSize, false); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
}

// BenchmarkRandomWrite4K writes 4 KiB blocks at random aligned offsets to a
// volume (3 in-process peers, replication 2) and to a plain in-memory
// baseline in the same run, and reports the time ratio.
func BenchmarkRandomWrite4K(b *testing.B) {
	for _, workers := range []int{1, 16} {
		b.Run(map[int]string{1: "serial", 16: "parallel16"}[workers], func(b *testing.B) {
			ctx := context.Background()
			const size = 256 << 20
			c := newCluster(b, clusterOpts{replication: 2, segmentSize: 32 << 20})
			c.create("vol", size, 0)
			v := c.open("vol", Options{})
			defer v.Close(ctx)
			base := &memDevice{b: make([]byte, size)}
			b.SetBytes(torus.BlockSize)
			b.ResetTimer()
			tv := runWrites(b, v, size, b.N, workers)
			tb := runWrites(b, base, size, b.N, workers)
			b.StopTimer()
			b.ReportMetric(float64(tv.Nanoseconds())/float64(b.N), "vol-ns/op")
			b.ReportMetric(float64(tb.Nanoseconds())/float64(b.N), "base-ns/op")
			b.ReportMetric(float64(tv)/float64(max(tb, 1)), "ratio")
		})
	}
}
