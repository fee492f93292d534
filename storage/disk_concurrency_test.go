package storage_test

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/vfs"
)

// blocking returns an FS on which op on the file of segment blocked waits
// until release is closed, signalling entered first; while *on is true.
func blocking(op string, blocked torus.SegmentID, on *atomic.Bool, entered chan<- struct{}, release <-chan struct{}) vfs.FS {
	return vfs.Inject(vfs.OS, func(o, path string) error {
		if on.Load() && o == op && filepath.Base(path) == blocked.String() {
			entered <- struct{}{}
			<-release
		}
		return nil
	})
}

func done(t *testing.T, what string, f func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- f() }()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s is blocked by an append to another segment in progress", what)
	}
}

// TestDiskPerSegmentLocking holds an append to one segment in the middle of
// its write and checks that everything else goes on: reads and stats of
// that segment, appends, syncs and deletes of others, List and Usage.
func TestDiskPerSegmentLocking(t *testing.T) {
	ctx := context.Background()
	slow := torus.SegmentID{Volume: 1, Seq: 1}
	other := torus.SegmentID{Volume: 1, Seq: 2}
	var on atomic.Bool
	entered, release := make(chan struct{}), make(chan struct{})
	d := openDiskFS(t, blocking(vfs.OpWrite, slow, &on, entered, release), t.TempDir(), 1<<20)
	defer d.Close()
	for _, id := range []torus.SegmentID{slow, other} {
		if err := d.Append(ctx, id, 0, []byte("0123456789")); err != nil {
			t.Fatal(err)
		}
	}
	on.Store(true)
	appendErr := make(chan error, 1)
	go func() { appendErr <- d.Append(ctx, slow, 10, []byte("abcdef")) }()
	<-entered

	done(t, "ReadAt of the segment being appended to", func() error {
		p := make([]byte, 10)
		_, err := d.ReadAt(ctx, slow, p, 0)
		return err
	})
	done(t, "Stat of the segment being appended to", func() error {
		_, err := d.Stat(ctx, slow)
		return err
	})
	done(t, "Append to another segment", func() error { return d.Append(ctx, other, 10, []byte("x")) })
	done(t, "Sync of another segment", func() error { _, err := d.Sync(ctx, other); return err })
	done(t, "Append to a new segment", func() error { return d.Append(ctx, torus.SegmentID{Volume: 2}, 0, []byte("x")) })
	done(t, "Delete of another segment", func() error { return d.Delete(ctx, other) })
	done(t, "List", func() error { _, err := d.List(ctx, 0); return err })

	close(release)
	if err := <-appendErr; err != nil {
		t.Fatal(err)
	}
	if info, err := d.Stat(ctx, slow); err != nil || info.Length != 16 {
		t.Fatalf("Stat after the slow append = %+v, %v", info, err)
	}
}

// TestDiskSyncDoesNotBlockAppends holds a Sync in its fdatasync and appends
// to the same segment meanwhile.
func TestDiskSyncDoesNotBlockAppends(t *testing.T) {
	ctx := context.Background()
	id := torus.SegmentID{Volume: 1, Seq: 1}
	var on atomic.Bool
	entered, release := make(chan struct{}), make(chan struct{})
	d := openDiskFS(t, blocking(vfs.OpDatasync, id, &on, entered, release), t.TempDir(), 1<<20)
	defer d.Close()
	if err := d.Append(ctx, id, 0, []byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	on.Store(true)
	syncErr := make(chan error, 1)
	go func() { _, err := d.Sync(ctx, id); syncErr <- err }()
	<-entered
	done(t, "Append during a Sync of the same segment", func() error { return d.Append(ctx, id, 10, []byte("abc")) })
	close(release)
	if err := <-syncErr; err != nil {
		t.Fatal(err)
	}
	// The Sync covered the length at its start, not the later append.
	if info, err := d.Stat(ctx, id); err != nil || info.Synced != 10 || info.Length != 13 {
		t.Fatalf("Stat = %+v, %v; want Synced 10, Length 13", info, err)
	}
}

// TestDiskCloseWaits checks that Close waits for an append in progress and
// that the append's bytes are whole afterwards.
func TestDiskCloseWaits(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	id := torus.SegmentID{Volume: 1, Seq: 1}
	var on atomic.Bool
	on.Store(true)
	entered, release := make(chan struct{}), make(chan struct{})
	d := openDiskFS(t, blocking(vfs.OpWrite, id, &on, entered, release), dir, 1<<20)
	appendErr := make(chan error, 1)
	go func() { appendErr <- d.Append(ctx, id, 0, []byte("hello")) }()
	<-entered
	closed := make(chan error, 1)
	go func() { closed <- d.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while an append was in progress", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := <-appendErr; err != nil {
		t.Fatal(err)
	}
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	d = openDisk(t, dir, 1<<20)
	defer d.Close()
	if info, err := d.Stat(ctx, id); err != nil || info.Length != 5 {
		t.Fatalf("after reopen: %+v, %v; want Length 5", info, err)
	}
}
