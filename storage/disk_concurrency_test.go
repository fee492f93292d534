package storage_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/storage"
)

// blockingWrites makes appends to the segment named blocked wait until
// release is closed, signalling entered first.
func blockingWrites(blocked torus.SegmentID, entered chan<- struct{}, release <-chan struct{}) func(*os.File, []byte, int64) (int, error) {
	return func(f *os.File, p []byte, off int64) (int, error) {
		if filepath.Base(f.Name()) == blocked.String() {
			entered <- struct{}{}
			<-release
		}
		return f.WriteAt(p, off)
	}
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
	d := openDisk(t, t.TempDir(), 1<<20)
	defer d.Close()
	slow := torus.SegmentID{Volume: 1, Seq: 1}
	other := torus.SegmentID{Volume: 1, Seq: 2}
	for _, id := range []torus.SegmentID{slow, other} {
		if err := d.Append(ctx, id, 0, []byte("0123456789")); err != nil {
			t.Fatal(err)
		}
	}
	entered, release := make(chan struct{}), make(chan struct{})
	storage.SetWriteHook(d, blockingWrites(slow, entered, release))
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
	done(t, "Sync of another segment", func() error { return d.Sync(ctx, other) })
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
	d := openDisk(t, t.TempDir(), 1<<20)
	defer d.Close()
	id := torus.SegmentID{Volume: 1, Seq: 1}
	if err := d.Append(ctx, id, 0, []byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	storage.SetSyncHook(d, func(f *os.File) error {
		entered <- struct{}{}
		<-release
		return f.Sync()
	})
	syncErr := make(chan error, 1)
	go func() { syncErr <- d.Sync(ctx, id) }()
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
	d := openDisk(t, dir, 1<<20)
	id := torus.SegmentID{Volume: 1, Seq: 1}
	entered, release := make(chan struct{}), make(chan struct{})
	storage.SetWriteHook(d, blockingWrites(id, entered, release))
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
