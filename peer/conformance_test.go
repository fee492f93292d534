package peer

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/storage"
	"github.com/torus-storage/torus/storage/storagetest"
)

// wireStore is a torus.Store reached through the whole peer stack:
// Client -> TCP -> Server -> Local -> storage.Memory, writing at
// RepairEpoch (unfenced). It lets the store conformance suite check that the
// protocol preserves every documented outcome.
type wireStore struct {
	c      *Client
	srv    *Server
	mu     sync.Mutex
	closed bool
}

func (w *wireStore) Append(ctx context.Context, seg torus.SegmentID, off int64, p []byte) error {
	return w.c.Append(ctx, torus.RepairEpoch, seg, off, p)
}
func (w *wireStore) Sync(ctx context.Context, seg torus.SegmentID) (int64, error) {
	return w.c.Sync(ctx, torus.RepairEpoch, seg)
}
func (w *wireStore) ReadAt(ctx context.Context, seg torus.SegmentID, p []byte, off int64) (int, error) {
	return w.c.ReadAt(ctx, seg, p, off)
}
func (w *wireStore) Stat(ctx context.Context, seg torus.SegmentID) (torus.SegmentInfo, error) {
	return w.c.Stat(ctx, seg)
}
func (w *wireStore) List(ctx context.Context, volume uint64) ([]torus.SegmentInfo, error) {
	return w.c.List(ctx, volume)
}
func (w *wireStore) Delete(ctx context.Context, seg torus.SegmentID) error {
	return w.c.Delete(ctx, seg)
}
func (w *wireStore) Usage() torus.Usage {
	u, _ := w.c.Usage(context.Background())
	return u
}
func (w *wireStore) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return fmt.Errorf("wire store: %w", torus.ErrClosed)
	}
	w.closed = true
	w.c.Close()
	return nil
}

func TestStoreConformanceOverTheWire(t *testing.T) {
	storagetest.Run(t, func(t *testing.T, capacity int64) torus.Store {
		mem := storage.NewMemory(capacity)
		srv, addr := startServer(t, NewLocal(mem, testutil.Logger(t)), ServerConfig{})
		c, err := Dial(context.Background(), addr, ClientConfig{}, testutil.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		return &wireStore{c: c, srv: srv}
	})
}
