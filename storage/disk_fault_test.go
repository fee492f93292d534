package storage_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/vfs"
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
	d := openDiskFS(t, vfs.Inject(vfs.OS, func(op, path string) error {
		if fail && op == vfs.OpDatasync && filepath.Base(path) == id.String() {
			return fmt.Errorf("fdatasync: %w", syscall.EIO)
		}
		return nil
	}), t.TempDir(), 1<<20)
	defer d.Close()
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
}

// TestDiskTruncateFailure: when a failed append cannot be cut away, the
// segment is retired (its file has a torn tail), other segments go on.
func TestDiskTruncateFailure(t *testing.T) {
	ctx := context.Background()
	id := torus.SegmentID{Volume: 1, Seq: 1}
	broken := false
	d := openDiskFS(t, vfs.Inject(vfs.OS, func(op, path string) error {
		if broken && (op == vfs.OpWrite || op == vfs.OpTruncate) {
			return &os.PathError{Op: op, Path: path, Err: syscall.EIO}
		}
		return nil
	}), t.TempDir(), 1<<20)
	defer d.Close()
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
}
