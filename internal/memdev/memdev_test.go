package memdev

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/torus-storage/torus"
)

func TestReadWriteSparse(t *testing.T) {
	ctx := context.Background()
	d := New(1<<20, false)
	buf := make([]byte, 100)
	if err := d.ReadAt(ctx, buf, 5000); err != nil || !bytes.Equal(buf, make([]byte, 100)) {
		t.Fatalf("fresh read: %v %x", err, buf)
	}
	p := bytes.Repeat([]byte{0xab}, 3000)
	if err := d.WriteAt(ctx, p, 513+4096, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 3000)
	if err := d.ReadAt(ctx, got, 513+4096); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("read back: %v", err)
	}
	if a := d.Allocated(); a != 4096 {
		t.Fatalf("allocated %d, want 4096", a)
	}
	ext, err := d.Extents(ctx, 0, 3*4096)
	if err != nil {
		t.Fatal(err)
	}
	want := []torus.Extent{{Offset: 0, Length: 4096, Zero: true}, {Offset: 4096, Length: 4096}, {Offset: 8192, Length: 4096, Zero: true}}
	if len(ext) != len(want) {
		t.Fatalf("extents %v, want %v", ext, want)
	}
	for i := range want {
		if ext[i] != want[i] {
			t.Fatalf("extents %v, want %v", ext, want)
		}
	}
	// Partial trim keeps the block; whole-block trim frees it.
	if err := d.Trim(ctx, 4096, 100); err != nil {
		t.Fatal(err)
	}
	if d.Allocated() != 4096 {
		t.Fatal("partial trim freed the block")
	}
	if err := d.WriteZeroes(ctx, 4096, 4096, true); err != nil {
		t.Fatal(err)
	}
	if d.Allocated() != 0 || d.Flushes() != 1 {
		t.Fatalf("allocated %d flushes %d", d.Allocated(), d.Flushes())
	}
}

func TestErrors(t *testing.T) {
	ctx := context.Background()
	d := New(8192, false)
	if err := d.ReadAt(ctx, make([]byte, 2), 8191); !errors.Is(err, torus.ErrOutOfRange) {
		t.Fatalf("out of range read: %v", err)
	}
	if err := d.Trim(ctx, -1, 2); !errors.Is(err, torus.ErrOutOfRange) {
		t.Fatalf("negative trim: %v", err)
	}
	ro := New(8192, true)
	if err := ro.WriteAt(ctx, []byte{1}, 0, false); !errors.Is(err, torus.ErrReadOnly) {
		t.Fatalf("read-only write: %v", err)
	}
	boom := errors.New("boom")
	d.SetFault(func(_ context.Context, op Op, _, _ int64) error {
		if op == OpFlush {
			return boom
		}
		return nil
	})
	if err := d.Flush(ctx); !errors.Is(err, boom) {
		t.Fatalf("fault: %v", err)
	}
	d.SetFault(nil)
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); !errors.Is(err, torus.ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
	d.Reopen()
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}
