package scrub_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/rebalance"
	"github.com/torus-storage/torus/scrub"
	"github.com/torus-storage/torus/storage"
	"github.com/torus-storage/torus/volume"
)

// copyFixture is a volume written to three on-disk stores and one more,
// empty, on-disk store served over the real peer protocol on loopback: the
// destination of the copies, as a healing daemon reaches another.
type copyFixture struct {
	c       *cluster
	segs    []copySeg
	ckpts   []copySeg // its checkpoint segments
	nblocks uint64
	dst     *peer.Client
	rawDir  string
}

type copySeg struct {
	id     torus.SegmentID
	length int64
	holder string
	path   string // the holder's segment file
}

// newCopyFixture writes size bytes to a volume with segments of segSize
// bytes; segs holds its sealed data segments at least half that long.
func newCopyFixture(b testing.TB, segSize, size int64) *copyFixture {
	ctx := context.Background()
	c := newCluster(b, segSize)
	c.write("big", size, 5, false)
	lens, err := volume.LiveSegmentLengths(ctx, c.meta, c, "big", nil)
	if err != nil {
		b.Fatal(err)
	}
	f := &copyFixture{c: c, nblocks: uint64(size / torus.BlockSize), rawDir: b.TempDir()}
	for id, n := range lens {
		if n <= 0 || (id.Kind == torus.KindData && n < segSize/2) {
			continue
		}
		h := c.holders(id)
		if len(h) == 0 {
			b.Fatalf("no holder of %s", id)
		}
		s := copySeg{id: id, length: n, holder: h[0],
			path: filepath.Join(c.dirs[h[0]], "segments", fmt.Sprintf("v%d", id.Volume), id.String())}
		if id.Kind == torus.KindData {
			f.segs = append(f.segs, s)
		} else {
			f.ckpts = append(f.ckpts, s)
		}
	}
	if len(f.segs) == 0 {
		b.Fatal("no sealed data segment")
	}
	slices.SortFunc(f.segs, func(a, b copySeg) int { return rebalance.CompareSegmentID(a.id, b.id) })

	log := testutil.Logger(b)
	st, err := storage.OpenDisk(ctx, storage.DiskConfig{Dir: b.TempDir(), Capacity: 8 << 30, Logger: log})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	srv := peer.NewServer(peer.NewLocal(st, log), peer.ServerConfig{}, log)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	if f.dst, err = peer.Dial(ctx, ln.Addr().String(), peer.ClientConfig{}, log); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.dst.Close() })
	return f
}

// copyOne copies s with scrub.Copy to the destination, from scratch.
func (f *copyFixture) copyOne(ctx context.Context, s copySeg) error {
	if err := f.dst.Delete(ctx, s.id); err != nil && !errors.Is(err, torus.ErrNotExist) {
		return err
	}
	n, err := scrub.Copy(ctx, f.c.locals[s.holder], f.dst, s.id, s.length, f.nblocks, scrub.CopyOptions{})
	if err == nil && n != s.length {
		err = errors.New("short copy")
	}
	return err
}

// rawCopy copies the file at from to a new file under dir with a plain
// read and write loop of 1 MiB and one fsync: the baseline.
func rawCopy(from, dir string) (int64, error) {
	in, err := os.Open(from)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	to := filepath.Join(dir, "copy")
	out, err := os.Create(to)
	if err != nil {
		return 0, err
	}
	defer os.Remove(to)
	n, err := io.CopyBuffer(struct{ io.Writer }{out}, struct{ io.Reader }{in}, make([]byte, 1<<20))
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// BenchmarkCopy measures scrub.Copy of sealed 32 MiB segments from a
// daemon's own store (peer.Local, the source healing uses first) to another
// on-disk store over the real peer protocol on loopback: read and verify,
// send, sync, read back and verify. Alternating with the copies, in the
// same run, the same segment files are copied with a plain read/write loop
// and one fsync each (rawCopy), the baseline the disk and page cache allow
// for the same bytes, with the same number of copies at once. It reports
// copy-MiB/s, raw-MiB/s and x-raw (copy ÷ raw; 1.0 = as fast as a plain
// file copy). BenchmarkCopy copies one segment at a time, BenchmarkCopy4
// four at once, as a healing daemon does (server's healCopies).
func BenchmarkCopy(b *testing.B) { benchCopy(b, 1) }

func BenchmarkCopy4(b *testing.B) { benchCopy(b, 4) }

func benchCopy(b *testing.B, par int) {
	ctx := context.Background()
	f := newCopyFixture(b, 32<<20, 160<<20)
	segs := f.segs[:min(len(f.segs), 4)]
	var per int64
	for _, s := range segs {
		per += s.length
	}
	b.SetBytes(per)
	// run runs fn on every segment, par at once, and returns the time.
	run := func(fn func(i int, s copySeg) error) time.Duration {
		t0 := time.Now()
		sem := make(chan struct{}, par)
		errs := make(chan error, len(segs))
		for i, s := range segs {
			sem <- struct{}{}
			go func() {
				defer func() { <-sem }()
				errs <- fn(i, s)
			}()
		}
		for range segs {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(t0)
	}
	for i := range segs {
		if err := os.MkdirAll(filepath.Join(f.rawDir, fmt.Sprint(i)), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	var tc, tr time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tc += run(func(_ int, s copySeg) error { return f.copyOne(ctx, s) })
		tr += run(func(i int, s copySeg) error {
			_, err := rawCopy(s.path, filepath.Join(f.rawDir, fmt.Sprint(i)))
			return err
		})
	}
	b.StopTimer()
	mib := float64(per) * float64(b.N) / (1 << 20)
	b.ReportMetric(mib/tc.Seconds(), "copy-MiB/s")
	b.ReportMetric(mib/tr.Seconds(), "raw-MiB/s")
	b.ReportMetric(tr.Seconds()/tc.Seconds(), "x-raw")
}
