package storage_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/internal/vfs"
	"github.com/torus-storage/torus/storage"
	"github.com/torus-storage/torus/storage/storagetest"
)

func openDisk(t *testing.T, dir string, capacity int64) *storage.Disk {
	t.Helper()
	d, err := storage.OpenDisk(context.Background(), storage.DiskConfig{Dir: dir, Capacity: capacity, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatalf("OpenDisk(%s): %v", dir, err)
	}
	return d
}

// openDiskFS opens a store on fsys (real dirs on vfs.OS, or a fake FS).
func openDiskFS(t *testing.T, fsys vfs.FS, dir string, capacity int64) *storage.Disk {
	t.Helper()
	d, err := storage.OpenDisk(context.Background(), storage.DiskConfig{Dir: dir, Capacity: capacity, Logger: testutil.Logger(t), FS: fsys})
	if err != nil {
		t.Fatalf("OpenDisk(%s): %v", dir, err)
	}
	return d
}

func TestDiskConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T, capacity int64) torus.Store {
		return openDisk(t, t.TempDir(), capacity)
	})
}

// TestDiskConformanceMemFS runs the suite on the in-memory filesystem the
// power-loss tests use, so those tests exercise a store that conforms.
func TestDiskConformanceMemFS(t *testing.T) {
	storagetest.Run(t, func(t *testing.T, capacity int64) torus.Store {
		return openDiskFS(t, vfs.NewMemFS(), "/data", capacity)
	})
}

// TestDiskConformanceSmallCache runs the suite with a cache of 2 files, so
// eviction happens all the time, including while files are in use.
func TestDiskConformanceSmallCache(t *testing.T) {
	storagetest.Run(t, func(t *testing.T, capacity int64) torus.Store {
		d, err := storage.OpenDisk(context.Background(), storage.DiskConfig{
			Dir: t.TempDir(), Capacity: capacity, Logger: testutil.Logger(t), MaxOpenFiles: 1,
		})
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

func TestDiskConfigValidate(t *testing.T) {
	ctx := context.Background()
	for _, cfg := range []storage.DiskConfig{
		{Dir: "", Capacity: 1},
		{Dir: t.TempDir(), Capacity: 0},
		{Dir: t.TempDir(), Capacity: -5},
		{Dir: t.TempDir(), Capacity: 1, MaxOpenFiles: -1},
	} {
		if d, err := storage.OpenDisk(ctx, cfg); !errors.Is(err, torus.ErrInvalid) {
			if d != nil {
				d.Close()
			}
			t.Errorf("OpenDisk(%+v): %v; want ErrInvalid", cfg, err)
		}
	}
}

func TestDiskLayoutAndReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openDisk(t, dir, 1<<20)
	a := torus.SegmentID{Volume: 7, Epoch: 2, Seq: 3, Kind: torus.KindData}
	b := torus.SegmentID{Volume: 8, Epoch: 1, Seq: 1, Kind: torus.KindCheckpoint}
	pa := storagetest.Pattern(1, 0, 5000)
	pb := storagetest.Pattern(2, 0, 300)
	if err := d.Append(ctx, a, 0, pa); err != nil {
		t.Fatal(err)
	}
	if err := d.Append(ctx, b, 0, pb); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Sync(ctx, a); err != nil {
		t.Fatal(err)
	}
	// One file per segment, named by SegmentID.String(), under v<volume>.
	got, err := os.ReadFile(filepath.Join(dir, "segments", "v7", "v7-e2-s3-k0"))
	if err != nil || !bytes.Equal(got, pa) {
		t.Fatalf("segment file of %s: %d bytes, %v; want the appended bytes", a, len(got), err)
	}
	if _, err := os.Stat(filepath.Join(dir, "segments", "v8", "v8-e1-s1-k1")); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	// Stray files are ignored; an empty segment file (a crash between
	// create and write) is removed.
	for _, name := range []string{"v7/notes.txt", "v7/v8-e1-s1-k0", "v7/v7-e01-s1-k0", "junk"} {
		if err := os.WriteFile(filepath.Join(dir, "segments", name), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	empty := filepath.Join(dir, "segments", "v7", "v7-e9-s9-k0")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	d = openDisk(t, dir, 1<<20)
	defer d.Close()
	if u := d.Usage(); u.Used != 5300 || u.Capacity != 1<<20 {
		t.Fatalf("Usage after reopen = %+v; want {5300 %d}", u, 1<<20)
	}
	l, err := d.List(ctx, 0)
	if err != nil || len(l) != 2 {
		t.Fatalf("List after reopen = %+v, %v; want 2 segments", l, err)
	}
	for _, info := range l {
		// A reopened store syncs what it found.
		if info.Synced != info.Length {
			t.Errorf("after reopen %+v: want Synced = Length", info)
		}
	}
	if _, err := os.Stat(empty); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("empty segment file still there after open: %v", err)
	}
	p := make([]byte, len(pa))
	if n, err := d.ReadAt(ctx, a, p, 0); err != nil || n != len(pa) || !bytes.Equal(p, pa) {
		t.Fatalf("ReadAt after reopen = %d, %v", n, err)
	}
	// Appending continues at the length found on disk.
	if err := d.Append(ctx, b, 300, []byte("more")); err != nil {
		t.Fatal(err)
	}
	if err := d.Append(ctx, b, 0, pb); err != nil {
		t.Fatalf("identical retry after reopen: %v", err)
	}
}

func TestDiskLock(t *testing.T) {
	dir := t.TempDir()
	d := openDisk(t, dir, 1<<20)
	_, err := storage.OpenDisk(context.Background(), storage.DiskConfig{Dir: dir, Capacity: 1 << 20})
	var le *storage.DirLockedError
	if !errors.As(err, &le) || !errors.Is(err, torus.ErrLocked) {
		t.Fatalf("second OpenDisk of %s: %v; want *DirLockedError matching ErrLocked", dir, err)
	}
	if le.Dir != dir || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "pid ") {
		t.Fatalf("lock error %q does not name the dir and the holder", err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	// Released by Close.
	d = openDisk(t, dir, 1<<20)
	d.Close()
}

func TestDiskOverCapacityAtOpen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openDisk(t, dir, 1<<20)
	id := torus.SegmentID{Volume: 1, Seq: 1}
	if err := d.Append(ctx, id, 0, make([]byte, 10000)); err != nil {
		t.Fatal(err)
	}
	d.Close()
	// Reopened with a smaller capacity: it opens, counts what is there,
	// refuses appends, and frees space on delete.
	d = openDisk(t, dir, 5000)
	defer d.Close()
	if u := d.Usage(); u.Used != 10000 || u.Capacity != 5000 {
		t.Fatalf("Usage = %+v; want {10000 5000}", u)
	}
	if err := d.Append(ctx, id, 10000, []byte{1}); !errors.Is(err, torus.ErrNoSpace) {
		t.Fatalf("Append over capacity: %v; want ErrNoSpace", err)
	}
	if err := d.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if u := d.Usage(); u.Used != 0 {
		t.Fatalf("Usage after delete = %+v", u)
	}
	if err := d.Append(ctx, id, 0, []byte{1}); err != nil {
		t.Fatal(err)
	}
}

func TestDiskManySegmentsSmallCache(t *testing.T) {
	ctx := context.Background()
	d, err := storage.OpenDisk(ctx, storage.DiskConfig{Dir: t.TempDir(), Capacity: 1 << 30, MaxOpenFiles: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const n = 50
	for round := range 3 {
		for i := range n {
			id := torus.SegmentID{Volume: uint64(i%5 + 1), Seq: uint64(i)}
			off := int64(round * 100)
			if err := d.Append(ctx, id, off, storagetest.Pattern(uint64(i), off, 100)); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Sync(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
	}
	if open := storage.OpenFiles(d); open > 4 {
		t.Fatalf("%d files open; want at most 4", open)
	}
	for i := range n {
		id := torus.SegmentID{Volume: uint64(i%5 + 1), Seq: uint64(i)}
		p := make([]byte, 300)
		if _, err := d.ReadAt(ctx, id, p, 0); err != nil || !bytes.Equal(p, storagetest.Pattern(uint64(i), 0, 300)) {
			t.Fatalf("segment %s: %v or wrong bytes", id, err)
		}
	}
}
