package storage_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/internal/vfs"
	"github.com/torus-storage/torus/storage"
	"github.com/torus-storage/torus/storage/storagetest"
)

// failing returns an FS whose operation op fails with errno while *on is
// true (a failing write writes half its bytes first, as a filesystem
// running out of space does).
func failing(op string, errno syscall.Errno, on *bool) vfs.FS {
	return vfs.Inject(vfs.OS, func(o, path string) error {
		if *on && o == op {
			return &os.PathError{Op: o, Path: path, Err: errno}
		}
		return nil
	})
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

func TestDiskFilesystemFull(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT} {
		t.Run(errno.Error(), func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			full := false
			d := openDiskFS(t, failing(vfs.OpWrite, errno, &full), dir, 1<<20)
			defer d.Close()
			a := torus.SegmentID{Volume: 1, Seq: 1}
			b := torus.SegmentID{Volume: 1, Seq: 2}
			if err := d.Append(ctx, a, 0, storagetest.Pattern(1, 0, 1000)); err != nil {
				t.Fatal(err)
			}
			full = true

			// An existing segment: the torn half is truncated away.
			err := d.Append(ctx, a, 1000, storagetest.Pattern(1, 1000, 4000))
			if !errors.Is(err, torus.ErrNoSpace) || !errors.Is(err, errno) {
				t.Fatalf("Append on a full filesystem: %v; want ErrNoSpace wrapping %v", err, errno)
			}
			if size := fileSize(t, filepath.Join(dir, "segments", "v1", a.String())); size != 1000 {
				t.Fatalf("file of %s is %d bytes after a failed append; want 1000", a, size)
			}
			// A new segment: no file is left behind.
			if err := d.Append(ctx, b, 0, storagetest.Pattern(2, 0, 4000)); !errors.Is(err, torus.ErrNoSpace) {
				t.Fatalf("Append of a new segment on a full filesystem: %v; want ErrNoSpace", err)
			}
			if _, err := os.Stat(filepath.Join(dir, "segments", "v1", b.String())); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("file of %s after a failed first append: %v; want none", b, err)
			}
			if _, err := d.Stat(ctx, b); !errors.Is(err, torus.ErrNotExist) {
				t.Fatalf("Stat(%s) = %v; want ErrNotExist", b, err)
			}
			if u := d.Usage(); u.Used != 1000 {
				t.Fatalf("Usage after failed appends = %+v; want Used 1000", u)
			}

			// Space comes back: appending resumes where it was.
			full = false
			if err := d.Append(ctx, a, 1000, storagetest.Pattern(1, 1000, 4000)); err != nil {
				t.Fatal(err)
			}
			if err := d.Append(ctx, b, 0, storagetest.Pattern(2, 0, 10)); err != nil {
				t.Fatal(err)
			}
			p := make([]byte, 5000)
			if _, err := d.ReadAt(ctx, a, p, 0); err != nil || !bytes.Equal(p, storagetest.Pattern(1, 0, 5000)) {
				t.Fatalf("ReadAt after recovery: %v or wrong bytes", err)
			}
			if u := d.Usage(); u.Used != 5010 {
				t.Fatalf("Usage = %+v; want Used 5010", u)
			}
		})
	}
}

func TestDiskWriteErrorIsNotNoSpace(t *testing.T) {
	ctx := context.Background()
	on := true
	d := openDiskFS(t, failing(vfs.OpWrite, syscall.EIO, &on), t.TempDir(), 1<<20)
	defer d.Close()
	id := torus.SegmentID{Volume: 1, Seq: 1}
	err := d.Append(ctx, id, 0, []byte("abcd"))
	if err == nil || errors.Is(err, torus.ErrNoSpace) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("Append with EIO: %v; want an error wrapping EIO, not ErrNoSpace", err)
	}
	if u := d.Usage(); u.Used != 0 {
		t.Fatalf("Usage = %+v; want nothing used", u)
	}
}

func TestDiskSyncFailureSticks(t *testing.T) {
	ctx := context.Background()
	id := torus.SegmentID{Volume: 1, Seq: 1}
	other := torus.SegmentID{Volume: 1, Seq: 2}
	fail := false
	fsys := vfs.Inject(vfs.OS, func(op, path string) error {
		if fail && op == vfs.OpDatasync && filepath.Base(path) == id.String() {
			return fmt.Errorf("fdatasync: %w", syscall.EIO)
		}
		return nil
	})
	dir := t.TempDir()
	d := openDiskFS(t, fsys, dir, 1<<20)
	defer func() { _ = d.Close() }()
	for _, s := range []torus.SegmentID{id, other} {
		if err := d.Append(ctx, s, 0, []byte("abcd")); err != nil {
			t.Fatal(err)
		}
	}
	fail = true
	if _, err := d.Sync(ctx, id); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Sync with EIO: %v", err)
	}
	// Linux reports a writeback error once; the store must keep failing
	// the segment rather than report a later Sync as success.
	fail = false
	if _, err := d.Sync(ctx, id); !errors.Is(err, torus.ErrCorrupt) {
		t.Fatalf("Sync after a failed sync: %v; want ErrCorrupt", err)
	}
	if err := d.Append(ctx, id, 4, []byte("e")); !errors.Is(err, torus.ErrCorrupt) {
		t.Fatalf("Append after a failed sync: %v; want ErrCorrupt", err)
	}
	if info, err := d.Stat(ctx, id); err != nil || info.Synced != 0 {
		t.Fatalf("Stat after a failed sync = %+v, %v; want Synced 0", info, err)
	}
	// Other segments are unaffected, and the failed one can be deleted.
	if _, err := d.Sync(ctx, other); err != nil {
		t.Fatal(err)
	}
	if err := d.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := d.Append(ctx, id, 0, []byte("fresh")); err != nil {
		t.Fatalf("Append to a recreated segment: %v", err)
	}
	if _, err := d.Sync(ctx, id); err != nil {
		t.Fatal(err)
	}
	// Delete removed the failure mark with the file: the new copy is
	// served after a restart.
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = openDiskFS(t, fsys, dir, 1<<20)
	if info, err := d.Stat(ctx, id); err != nil || info.Length != 5 {
		t.Fatalf("recreated segment after a restart = %+v, %v; want Length 5", info, err)
	}
}

// TestDiskTruncateFailure: when a failed append cannot be cut away, the
// segment is retired (its file has a torn tail), other segments go on; at
// the next open the torn copy is quarantined, not served.
func TestDiskTruncateFailure(t *testing.T) {
	ctx := context.Background()
	id := torus.SegmentID{Volume: 1, Seq: 1}
	broken := false
	fsys := vfs.Inject(vfs.OS, func(op, path string) error {
		if broken && (op == vfs.OpWrite || op == vfs.OpTruncate) {
			return &os.PathError{Op: op, Path: path, Err: syscall.EIO}
		}
		return nil
	})
	dir := t.TempDir()
	d := openDiskFS(t, fsys, dir, 1<<20)
	defer func() { _ = d.Close() }()
	if err := d.Append(ctx, id, 0, []byte("abcd")); err != nil {
		t.Fatal(err)
	}
	broken = true
	if err := d.Append(ctx, id, 4, []byte("efgh")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Append with EIO: %v", err)
	}
	broken = false
	if err := d.Append(ctx, id, 4, []byte("efgh")); !errors.Is(err, torus.ErrCorrupt) {
		t.Fatalf("Append after an append that could not be cut away: %v; want ErrCorrupt", err)
	}
	if info, err := d.Stat(ctx, id); err != nil || info.Length != 4 {
		t.Fatalf("Stat = %+v, %v; want Length 4", info, err)
	}
	if err := d.Append(ctx, torus.SegmentID{Volume: 1, Seq: 2}, 0, []byte("ok")); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d = openDiskFS(t, fsys, dir, 1<<20)
	if info, err := d.Stat(ctx, id); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("Stat of the torn copy after a restart = %+v, %v; want ErrNotExist", info, err)
	}
	if size := fileSize(t, filepath.Join(dir, "quarantine", id.String()+".1")); size != 6 {
		t.Fatalf("quarantined copy holds %d bytes; want 6 (4, and half of the failed append)", size)
	}
}

// TestDiskSyncFailureSurvivesRestart (issue 8, case 6): a segment whose
// fdatasync failed holds bytes in an unknown state. Linux reports the
// writeback error once, to the descriptor open at the time; after a restart
// a fresh descriptor reports nothing and the file size looks fine. The
// store must remember the failure across the restart (and across a power
// loss right after the failed Sync returned): the copy is lost, absent for
// Stat, List and ReadAt, so healing re-copies it from a good replica; its
// bytes are kept in the quarantine dir.
func TestDiskSyncFailureSurvivesRestart(t *testing.T) {
	for _, restart := range []string{"close", "power-loss"} {
		t.Run(restart, func(t *testing.T) {
			ctx := context.Background()
			id := torus.SegmentID{Volume: 1, Epoch: 1, Seq: 1}
			other := torus.SegmentID{Volume: 1, Epoch: 1, Seq: 2}
			mem := vfs.NewMemFS()
			fail := false
			fsys := vfs.Inject(mem, func(op, path string) error {
				if fail && op == vfs.OpDatasync && filepath.Base(path) == id.String() {
					return &os.PathError{Op: op, Path: path, Err: syscall.EIO}
				}
				return nil
			})
			const dir = "/data"
			d := openDiskFS(t, fsys, dir, 1<<20)
			for _, s := range []torus.SegmentID{id, other} {
				if err := d.Append(ctx, s, 0, storagetest.Pattern(s.Seq, 0, 100)); err != nil {
					t.Fatal(err)
				}
				if _, err := d.Sync(ctx, s); err != nil {
					t.Fatal(err)
				}
			}
			if err := d.Append(ctx, id, 100, storagetest.Pattern(id.Seq, 100, 50)); err != nil {
				t.Fatal(err)
			}
			fail = true
			if _, err := d.Sync(ctx, id); !errors.Is(err, syscall.EIO) {
				t.Fatalf("Sync with EIO: %v", err)
			}
			fail = false
			if restart == "close" {
				if err := d.Close(); err != nil {
					t.Fatal(err)
				}
			} else {
				mem.Crash(nil) // d is abandoned
			}

			d = openDiskFS(t, fsys, dir, 1<<20)
			defer d.Close()
			if info, err := d.Stat(ctx, id); !errors.Is(err, torus.ErrNotExist) {
				t.Fatalf("Stat(%s) after restart = %+v, %v; want ErrNotExist: its fsync failed before the restart", id, info, err)
			}
			if _, err := d.ReadAt(ctx, id, make([]byte, 10), 0); !errors.Is(err, torus.ErrNotExist) {
				t.Fatalf("ReadAt(%s) after restart: %v; want ErrNotExist", id, err)
			}
			list, err := d.List(ctx, 1)
			if err != nil {
				t.Fatal(err)
			}
			if len(list) != 1 || list[0].ID != other || list[0].Length != 100 {
				t.Fatalf("List after restart = %+v; want only %s (100 bytes)", list, other)
			}
			if u := d.Usage(); u.Used != 100 {
				t.Fatalf("Usage after restart = %+v; want Used 100 (quarantined bytes do not count)", u)
			}
			// The bytes are kept for forensics, with the reason.
			q := filepath.Join(dir, "quarantine")
			ents, err := mem.ReadDir(q)
			if err != nil {
				t.Fatalf("quarantine dir: %v", err)
			}
			var names []string
			for _, e := range ents {
				names = append(names, e.Name)
			}
			if want := []string{id.String() + ".1", id.String() + ".1.reason"}; !slices.Equal(names, want) {
				t.Fatalf("quarantine dir holds %q; want %q", names, want)
			}
			if reason := readMemFile(t, mem, filepath.Join(q, id.String()+".1.reason")); !strings.Contains(string(reason), "input/output error") {
				t.Fatalf("reason file = %q; want the fsync error", reason)
			}
			if got := readMemFile(t, mem, filepath.Join(q, id.String()+".1")); len(got) < 100 || !bytes.Equal(got[:100], storagetest.Pattern(id.Seq, 0, 100)) {
				t.Fatalf("quarantined copy holds %d bytes, not the segment's", len(got))
			}
			// Healing can copy the segment back from a good replica.
			p := storagetest.Pattern(id.Seq, 0, 150)
			if err := d.Append(ctx, id, 0, p); err != nil {
				t.Fatalf("Append of a fresh copy after the quarantine: %v", err)
			}
			if n, err := d.Sync(ctx, id); err != nil || n != 150 {
				t.Fatalf("Sync of the fresh copy = %d, %v; want 150", n, err)
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			// The fresh copy is not quarantined at the next open.
			d = openDiskFS(t, fsys, dir, 1<<20)
			got := make([]byte, 150)
			if _, err := d.ReadAt(ctx, id, got, 0); err != nil || !bytes.Equal(got, p) {
				t.Fatalf("fresh copy after another restart: %v or wrong bytes", err)
			}
		})
	}
}

func readMemFile(t *testing.T, fsys vfs.FS, name string) []byte {
	t.Helper()
	f, err := fsys.OpenFile(name, os.O_RDWR)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, size)
	if _, err := f.ReadAt(p, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

// errorLog counts the Error records of a logger.
type errorLog struct {
	slog.Handler
	n *atomic.Int32
}

func (h errorLog) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelError {
		h.n.Add(1)
	}
	return h.Handler.Handle(ctx, r)
}

func (h errorLog) WithAttrs(as []slog.Attr) slog.Handler {
	return errorLog{h.Handler.WithAttrs(as), h.n}
}

func (h errorLog) WithGroup(name string) slog.Handler {
	return errorLog{h.Handler.WithGroup(name), h.n}
}

// TestDiskFailureMarkUnwritable: when the failure mark cannot be written
// (EIO, or ENOSPC on a full filesystem), the store logs at Error, keeps
// refusing appends and syncs of the segment, retries the mark on each of
// them, and Close reports the segments still unmarked (ErrCorrupt). Once
// the mark can be written, the copy is quarantined at the next open.
func TestDiskFailureMarkUnwritable(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.EIO, syscall.ENOSPC} {
		for _, heals := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/heals=%v", errno, heals), func(t *testing.T) {
				ctx := context.Background()
				id := torus.SegmentID{Volume: 1, Epoch: 1, Seq: 1}
				mem := vfs.NewMemFS()
				failSync, failMark := false, false
				fsys := vfs.Inject(mem, func(op, path string) error {
					if failSync && op == vfs.OpDatasync && filepath.Base(path) == id.String() {
						return &os.PathError{Op: op, Path: path, Err: syscall.EIO}
					}
					if failMark && strings.HasSuffix(path, ".failed") {
						return &os.PathError{Op: op, Path: path, Err: errno}
					}
					return nil
				})
				var nErrors atomic.Int32
				logger := slog.New(errorLog{testutil.Logger(t).Handler(), &nErrors})
				d, err := storage.OpenDisk(ctx, storage.DiskConfig{Dir: "/data", Capacity: 1 << 20, FS: fsys, Logger: logger})
				if err != nil {
					t.Fatal(err)
				}
				if err := d.Append(ctx, id, 0, []byte("abcd")); err != nil {
					t.Fatal(err)
				}
				failSync, failMark = true, true
				if _, err := d.Sync(ctx, id); !errors.Is(err, syscall.EIO) {
					t.Fatalf("Sync with EIO: %v", err)
				}
				failSync = false
				if n := nErrors.Load(); n < 2 {
					t.Fatalf("%d Error records; want the failed sync and the unwritable mark", n)
				}
				if _, err := mem.OpenFile("/data/segments/v1/"+id.String()+".failed", os.O_RDWR); !errors.Is(err, fs.ErrNotExist) {
					t.Fatalf("mark file: %v; want none (its creation failed)", err)
				}
				if err := d.Append(ctx, id, 4, []byte("e")); !errors.Is(err, torus.ErrCorrupt) {
					t.Fatalf("Append while the mark is unwritable: %v; want ErrCorrupt", err)
				}
				failMark = !heals
				if _, err := d.Sync(ctx, id); !errors.Is(err, torus.ErrCorrupt) {
					t.Fatalf("Sync while the mark is unwritten: %v; want ErrCorrupt", err)
				}
				err = d.Close()
				if !heals {
					if !errors.Is(err, torus.ErrCorrupt) || !strings.Contains(err.Error(), id.String()) {
						t.Fatalf("Close with an unwritten mark: %v; want ErrCorrupt naming %s", err, id)
					}
					return
				}
				if err != nil {
					t.Fatalf("Close after the mark was written on retry: %v", err)
				}
				d = openDiskFS(t, fsys, "/data", 1<<20)
				defer d.Close()
				if _, err := d.Stat(ctx, id); !errors.Is(err, torus.ErrNotExist) {
					t.Fatalf("Stat after restart: %v; want ErrNotExist", err)
				}
			})
		}
	}
}

// TestDiskQuarantinePowerLoss cuts the power at every step of the
// quarantine done at open (an injected failure stops the open there, then
// MemFS.Crash, sometimes keeping unsynced directory changes): whatever
// survives, the next open never serves the failed copy, and serves the
// other segment intact.
func TestDiskQuarantinePowerLoss(t *testing.T) {
	ctx := context.Background()
	id := torus.SegmentID{Volume: 1, Epoch: 1, Seq: 1}
	other := torus.SegmentID{Volume: 1, Epoch: 1, Seq: 2}
	for seed := range uint64(30) {
		for stopAt := range 8 {
			rng := rand.New(rand.NewPCG(seed, uint64(stopAt)))
			mem := vfs.NewMemFS()
			failSync := false
			stop := -1 // count of open's renames and dir syncs before the failing one
			fsys := vfs.Inject(mem, func(op, path string) error {
				if failSync && op == vfs.OpDatasync && filepath.Base(path) == id.String() {
					return &os.PathError{Op: op, Path: path, Err: syscall.EIO}
				}
				if stop >= 0 && (op == vfs.OpRename || op == vfs.OpSyncDir) {
					if stop == 0 {
						return &os.PathError{Op: op, Path: path, Err: syscall.EIO}
					}
					stop--
				}
				return nil
			})
			d := openDiskFS(t, fsys, "/data", 1<<20)
			for _, s := range []torus.SegmentID{id, other} {
				if err := d.Append(ctx, s, 0, storagetest.Pattern(s.Seq, 0, 100)); err != nil {
					t.Fatal(err)
				}
				if _, err := d.Sync(ctx, s); err != nil {
					t.Fatal(err)
				}
			}
			failSync = true
			if err := d.Append(ctx, id, 100, []byte("unsynced")); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Sync(ctx, id); !errors.Is(err, syscall.EIO) {
				t.Fatalf("Sync with EIO: %v", err)
			}
			failSync = false
			mem.Crash(rng)
			stop = stopAt
			if d, err := storage.OpenDisk(ctx, storage.DiskConfig{Dir: "/data", Capacity: 1 << 20, FS: fsys, Logger: testutil.Logger(t)}); err == nil {
				_ = d.Close() // the quarantine finished before stopAt
			}
			stop = -1
			mem.Crash(rng)
			d = openDiskFS(t, fsys, "/data", 1<<20)
			if info, err := d.Stat(ctx, id); !errors.Is(err, torus.ErrNotExist) {
				t.Fatalf("seed %d stop %d: failed copy after power loss during quarantine: %+v, %v; want ErrNotExist", seed, stopAt, info, err)
			}
			got := make([]byte, 100)
			if _, err := d.ReadAt(ctx, other, got, 0); err != nil || !bytes.Equal(got, storagetest.Pattern(other.Seq, 0, 100)) {
				t.Fatalf("seed %d stop %d: other segment: %v or wrong bytes", seed, stopAt, err)
			}
			if _, err := mem.OpenFile("/data/segments/v1/"+id.String()+".failed", os.O_RDWR); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("seed %d stop %d: mark left in the segment dir after a complete open: %v", seed, stopAt, err)
			}
			_ = d.Close()
		}
	}
}
