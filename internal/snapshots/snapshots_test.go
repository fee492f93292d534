package snapshots

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/metadata"
)

// TestRetryJoinsPendingRequest: a Take that timed out leaves its request
// pending; a retry waits for that request instead of failing with ErrExist,
// and returns once the writer answers it.
func TestRetryJoinsPendingRequest(t *testing.T) {
	ctx := context.Background()
	m := metadata.NewMemory()
	t.Cleanup(func() { _ = m.Close() })
	if err := m.InitCluster(ctx, torus.ClusterConfig{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.CreateVolume(ctx, torus.VolumeInfo{Name: "v", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	s, err := m.NewSession(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	epoch, err := m.Lock(ctx, s, "v", torus.WriterInfo{Owner: "w"})
	if err != nil {
		t.Fatal(err)
	}
	closed := func(context.Context, torus.Metadata, string, string) error {
		t.Error("closed-volume hook called for an open volume")
		return nil
	}
	if err := Take(ctx, m, "v", "s", 100*time.Millisecond, closed); !errors.Is(err, ErrTimeout) {
		t.Fatalf("first Take: %v, want ErrTimeout", err)
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		_ = m.CreateSnapshot(ctx, epoch, torus.Snapshot{Volume: "v", Name: "s"})
		_ = m.DoneSnapshotRequest(ctx, "v", "s", "")
	}()
	if err := Take(ctx, m, "v", "s", 10*time.Second, closed); err != nil {
		t.Fatalf("retried Take: %v, want it to wait for the pending request", err)
	}
	if err := Take(ctx, m, "v", "s", time.Second, closed); !errors.Is(err, torus.ErrExist) {
		t.Fatalf("Take of an existing snapshot: %v, want ErrExist", err)
	}
}
