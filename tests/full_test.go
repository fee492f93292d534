package tests

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testcluster"
	"github.com/torus-storage/torus/server"
	"github.com/torus-storage/torus/volume"
)

// TestFullStore fills the only daemon's store (--size 8 MiB) through a
// 64 MiB volume: writes fail with an out-of-space error, and everything
// flushed before is still there, also after reopening.
func TestFullStore(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 1, Replication: 1, Capacity: 8 << 20})
	c.CreateVolume("full", 64<<20)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v, err := c.Open(ctx, "full", volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	first := bytes.Repeat([]byte{0xa1}, 2<<20)
	if err := v.WriteAt(ctx, first, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte{0xb2}, 1<<20)
	var werr error
	for off := int64(4 << 20); off < 64<<20 && werr == nil; off += int64(len(chunk)) {
		werr = v.WriteAt(ctx, chunk, off, false)
		if werr == nil {
			werr = v.Flush(ctx)
		}
	}
	if werr == nil {
		t.Fatal("wrote 60 MiB into an 8 MiB store")
	}
	if !errors.Is(werr, torus.ErrNoSpace) {
		t.Errorf("write to a full store failed with %v, want an error matching torus.ErrNoSpace", werr)
	}
	t.Logf("full store: %v", werr)
	got := make([]byte, len(first))
	if err := v.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, first) {
		t.Fatalf("flushed data before the store filled: err %v, equal %v", err, bytes.Equal(got, first))
	}
	v.Close(ctx)
	v2, err := c.Open(ctx, "full", volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close(ctx)
	if err := v2.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, first) {
		t.Fatalf("after reopening: err %v, equal %v", err, bytes.Equal(got, first))
	}
}

// TestOverwriteOutrunsGC: overwriting a volume faster than the GC interval
// fills the store with garbage (the old copies of every block). A daemon
// whose store is past its first warning level collects at once, and a write
// refused for space waits for it (within RetryFor), so no write fails while
// most of the store is garbage. Before, GC ran only every GCInterval and a
// write failed with ErrNoSpace after four tries: in `torusd --dev` (a 4 GiB
// store, a 1 GiB volume) fio's sequential overwrite stopped with ENOSPC
// after about 13 s.
func TestOverwriteOutrunsGC(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 1, Replication: 1, Capacity: 24 << 20,
		Server: func(_ int, cfg *server.Config) { cfg.GCInterval = time.Hour }})
	c.CreateVolume("over", 4<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	v, err := c.Open(ctx, "over", volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	// 20 passes of 4 MiB: 80 MiB through a 24 MiB store.
	var p []byte
	for pass := range 20 {
		p = bytes.Repeat([]byte{byte(pass + 1)}, 1<<20)
		for off := int64(0); off < 4<<20; off += int64(len(p)) {
			if err := v.WriteAt(ctx, p, off, false); err != nil {
				t.Fatalf("pass %d, offset %d: %v", pass, off, err)
			}
		}
		if err := v.Flush(ctx); err != nil {
			t.Fatalf("pass %d: flush: %v", pass, err)
		}
	}
	got := make([]byte, 4<<20)
	if err := v.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bytes.Repeat(p[:1], len(got))) {
		t.Fatal("the last pass does not read back")
	}
}
