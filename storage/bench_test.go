package storage_test

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/storage"
)

// benchDir is where benchmarks write: $TORUS_BENCH_DIR (to measure a
// particular disk) or a temporary dir.
func benchDir(b *testing.B) string {
	if d := os.Getenv("TORUS_BENCH_DIR"); d != "" {
		dir, err := os.MkdirTemp(d, "storage-bench-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		return dir
	}
	return b.TempDir()
}

type benchPair struct {
	d     *storage.Disk
	plain string // directory of the plain files
}

func newBenchPair(b *testing.B) benchPair {
	dir := benchDir(b)
	d, err := storage.OpenDisk(context.Background(), storage.DiskConfig{Dir: filepath.Join(dir, "store"), Capacity: 1 << 50})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	plain := filepath.Join(dir, "plain")
	if err := os.Mkdir(plain, 0o755); err != nil {
		b.Fatal(err)
	}
	return benchPair{d: d, plain: plain}
}

// report publishes both sides' costs and their ratio (store / plain; 1.0
// means the store adds nothing).
func report(b *testing.B, store, plain time.Duration, bytesPerOp int64) {
	n := float64(b.N)
	b.ReportMetric(float64(store.Nanoseconds())/n, "store-ns/op")
	b.ReportMetric(float64(plain.Nanoseconds())/n, "plain-ns/op")
	b.ReportMetric(float64(store)/float64(plain), "store/plain")
	if bytesPerOp > 0 {
		b.ReportMetric(float64(bytesPerOp)*n/store.Seconds()/1e6, "store-MB/s")
		b.ReportMetric(float64(bytesPerOp)*n/plain.Seconds()/1e6, "plain-MB/s")
	}
}

// timePair times storeOp and plainOp, running them in alternating order on
// alternate iterations so that neither always pays for the other's
// writeback.
func timePair(i int, storeOp, plainOp func()) (store, plain time.Duration) {
	if i%2 == 0 {
		t0 := time.Now()
		storeOp()
		t1 := time.Now()
		plainOp()
		return t1.Sub(t0), time.Since(t1)
	}
	t0 := time.Now()
	plainOp()
	t1 := time.Now()
	storeOp()
	return time.Since(t1), t1.Sub(t0)
}

// BenchmarkAppendSync4K compares Append of 4 KiB + Sync with a plain file's
// pwrite + fdatasync of 4 KiB, interleaved in the same loop so both see the
// same disk and the same load.
func BenchmarkAppendSync4K(b *testing.B) {
	ctx := context.Background()
	p := newBenchPair(b)
	f, err := os.OpenFile(filepath.Join(p.plain, "f"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	id := torus.SegmentID{Volume: 1, Epoch: 1, Seq: 1}
	buf := make([]byte, 4096)
	var store, plain time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		off := int64(i) * 4096
		storeOp := func() {
			if err := p.d.Append(ctx, id, off, buf); err != nil {
				b.Fatal(err)
			}
			if _, err := p.d.Sync(ctx, id); err != nil {
				b.Fatal(err)
			}
		}
		plainOp := func() {
			if _, err := f.WriteAt(buf, off); err != nil {
				b.Fatal(err)
			}
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				b.Fatal(err)
			}
		}
		ts, tp := timePair(i, storeOp, plainOp)
		store += ts
		plain += tp
	}
	b.StopTimer()
	report(b, store, plain, 4096)
}

// BenchmarkAppend1M compares Append of 1 MiB (no sync) with a plain file's
// pwrite of 1 MiB: the store's overhead on the throughput path. Both roll to
// a new file every 32 MiB (the default segment size), syncing and deleting
// the old one, so the disk use stays bounded.
func BenchmarkAppend1M(b *testing.B) {
	ctx := context.Background()
	p := newBenchPair(b)
	const chunk, perFile = 1 << 20, 32
	buf := make([]byte, chunk)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	var f *os.File
	roll := func(i int) {
		if f != nil {
			_ = unix.Fdatasync(int(f.Fd()))
			f.Close()
			os.Remove(f.Name())
		}
		var err error
		f, err = os.OpenFile(filepath.Join(p.plain, "f"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			b.Fatal(err)
		}
	}
	var store, plain time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		seq := uint64(i / perFile)
		id := torus.SegmentID{Volume: 1, Epoch: 1, Seq: seq}
		off := int64(i%perFile) * chunk
		if off == 0 {
			b.StopTimer()
			if seq > 0 {
				prev := torus.SegmentID{Volume: 1, Epoch: 1, Seq: seq - 1}
				_, _ = p.d.Sync(ctx, prev)
				_ = p.d.Delete(ctx, prev)
			}
			roll(i)
			b.StartTimer()
		}
		ts, tp := timePair(i, func() {
			if err := p.d.Append(ctx, id, off, buf); err != nil {
				b.Fatal(err)
			}
		}, func() {
			if _, err := f.WriteAt(buf, off); err != nil {
				b.Fatal(err)
			}
		})
		store += ts
		plain += tp
	}
	b.StopTimer()
	f.Close()
	report(b, store, plain, chunk)
}

// BenchmarkAppendParallel appends 64 KiB chunks to one segment per
// goroutine: the store's scaling across segments.
func BenchmarkAppendParallel(b *testing.B) {
	ctx := context.Background()
	p := newBenchPair(b)
	buf := make([]byte, 64<<10)
	var next atomic.Uint64
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		id := torus.SegmentID{Volume: 1, Epoch: 1, Seq: next.Add(1)}
		var off int64
		for pb.Next() {
			if err := p.d.Append(ctx, id, off, buf); err != nil {
				b.Error(err)
				return
			}
			off += int64(len(buf))
			if off >= 32<<20 {
				_ = p.d.Delete(ctx, id)
				off = 0
			}
		}
	})
}
