package storage_test

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/vfs"
	"github.com/torus-storage/torus/storage"
)

// wbFS is the real filesystem with files that record StartWriteback.
type wbFS struct {
	vfs.FS
	mu    sync.Mutex
	calls [][2]int64 // {off, n}
}

type wbFile struct {
	vfs.File
	fs *wbFS
}

func (f *wbFS) OpenFile(name string, flag int) (vfs.File, error) {
	file, err := f.FS.OpenFile(name, flag)
	if err != nil {
		return nil, err
	}
	return wbFile{file, f}, nil
}

func (f wbFile) StartWriteback(off, n int64) error {
	f.fs.mu.Lock()
	f.fs.calls = append(f.fs.calls, [2]int64{off, n})
	f.fs.mu.Unlock()
	return f.File.(vfs.Writebacker).StartWriteback(off, n)
}

// TestWritebackStarted: appends hand each WritebackChunk of a segment to
// the kernel's writeback once, in order and without overlap; the data reads
// back and syncs as before; a negative chunk never starts any.
func TestWritebackStarted(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		chunk int64
		want  [][2]int64
	}{
		{4 << 20, [][2]int64{{0, 4 << 20}, {4 << 20, 4 << 20}}},
		{-1, nil},
	} {
		fs := &wbFS{FS: vfs.OS}
		d, err := storage.OpenDisk(ctx, storage.DiskConfig{Dir: filepath.Join(t.TempDir(), "s"), Capacity: 1 << 30,
			FS: fs, WritebackChunk: c.chunk})
		if err != nil {
			t.Fatal(err)
		}
		seg := torus.SegmentID{Volume: 1, Epoch: 1, Seq: 1}
		var want []byte
		for i := range 10 {
			p := bytes.Repeat([]byte{byte(i + 1)}, 1<<20)
			if err := d.Append(ctx, seg, int64(len(want)), p); err != nil {
				t.Fatal(err)
			}
			want = append(want, p...)
		}
		if n, err := d.Sync(ctx, seg); err != nil || n != int64(len(want)) {
			t.Fatalf("chunk %d: sync: %d, %v", c.chunk, n, err)
		}
		got := make([]byte, len(want))
		if _, err := d.ReadAt(ctx, seg, got, 0); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("chunk %d: read back: %v, equal %v", c.chunk, err, bytes.Equal(got, want))
		}
		fs.mu.Lock()
		calls := slices.Clone(fs.calls)
		fs.mu.Unlock()
		if !slices.Equal(calls, c.want) {
			t.Errorf("chunk %d: writeback started for %v, want %v", c.chunk, calls, c.want)
		}
		d.Close()
	}
}

// BenchmarkSealSync is the stall of a sequential stream at each seal: a
// 32 MiB segment appended 1 MiB at a time at about 256 MiB/s (the rate of
// a replicated sequential write here), then Sync. Iterations alternate
// between a store that starts writeback every 4 MiB and one that never
// does, in the same run on the same disk; it reports both Syncs' mean
// time and their ratio (with / without; lower is better).
func BenchmarkSealSync(b *testing.B) {
	ctx := context.Background()
	dir := benchDir(b)
	open := func(name string, chunk int64) *storage.Disk {
		d, err := storage.OpenDisk(ctx, storage.DiskConfig{Dir: filepath.Join(dir, name), Capacity: 1 << 50, WritebackChunk: chunk})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { d.Close() })
		return d
	}
	with, without := open("with", 4<<20), open("without", -1)
	p := bytes.Repeat([]byte{0x5a}, 1<<20)
	var tWith, tWithout time.Duration
	seal := func(d *storage.Disk, seq uint64) time.Duration {
		seg := torus.SegmentID{Volume: 1, Epoch: 1, Seq: seq}
		tick := time.NewTicker(4 * time.Millisecond)
		defer tick.Stop()
		for off := int64(0); off < 32<<20; off += int64(len(p)) {
			if err := d.Append(ctx, seg, off, p); err != nil {
				b.Fatal(err)
			}
			<-tick.C
		}
		t0 := time.Now()
		if _, err := d.Sync(ctx, seg); err != nil {
			b.Fatal(err)
		}
		el := time.Since(t0)
		if err := d.Delete(ctx, seg); err != nil {
			b.Fatal(err)
		}
		return el
	}
	b.ResetTimer()
	for i := range b.N {
		if i%2 == 0 {
			tWith += seal(with, uint64(i+1))
			tWithout += seal(without, uint64(i+1))
		} else {
			tWithout += seal(without, uint64(i+1))
			tWith += seal(with, uint64(i+1))
		}
	}
	n := float64(b.N)
	b.ReportMetric(float64(tWith.Microseconds())/n/1000, "sync-ms-writeback")
	b.ReportMetric(float64(tWithout.Microseconds())/n/1000, "sync-ms-none")
	b.ReportMetric(float64(tWith)/float64(tWithout), "with/without")
}
