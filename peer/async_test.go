package peer

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/storage"
)

// TestAppendAsyncOrder: appends started one after another reach the store
// in that order, all in flight at once; an append that does not fit
// (offset past the end) fails alone, and the wait of each reports its own
// answer.
func TestAppendAsyncOrder(t *testing.T) {
	ctx := context.Background()
	st := storage.NewMemory(1 << 30)
	_, addr := startServer(t, NewLocal(st, testutil.Logger(t)), ServerConfig{})
	c := dialT(t, addr, ClientConfig{})
	s := seg(1, 1, 1)
	var want []byte
	var waits []func() error
	for i := range 64 {
		p := bytes.Repeat([]byte{byte(i)}, 4096+i)
		waits = append(waits, c.AppendAsync(ctx, 1, s, int64(len(want)), p))
		want = append(want, p...)
		clear(p) // not retained once AppendAsync returns
	}
	bad := c.AppendAsync(ctx, 1, s, int64(len(want))+1, []byte("gap"))
	for i, w := range waits {
		if err := w(); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	if err := bad(); !errors.Is(err, torus.ErrConflict) {
		t.Fatalf("append past the end: %v, want ErrConflict", err)
	}
	got := make([]byte, len(want))
	if _, err := c.ReadAt(ctx, s, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("segment differs from the appends in order")
	}
	// Fenced and invalid appends fail through wait.
	if err := c.Fence(ctx, 1, 5); err != nil {
		t.Fatal(err)
	}
	if err := c.AppendAsync(ctx, 1, s, int64(len(want)), []byte("x"))(); !errors.Is(err, torus.ErrFenced) {
		t.Fatalf("append below the fence: %v, want ErrFenced", err)
	}
	if err := c.AppendAsync(ctx, 5, s, -1, []byte("x"))(); !errors.Is(err, torus.ErrInvalid) {
		t.Fatalf("negative offset: %v, want ErrInvalid", err)
	}
}
