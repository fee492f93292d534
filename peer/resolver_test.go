package peer

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/metadata"
)

type countingMeta struct {
	*metadata.Memory
	calls int
}

func (c *countingMeta) Peers(ctx context.Context) ([]torus.PeerInfo, error) {
	c.calls++
	return c.Memory.Peers(ctx)
}

func TestResolverCaches(t *testing.T) {
	ctx := context.Background()
	m := &countingMeta{Memory: metadata.NewMemory()}
	cfg := torus.ClusterConfig{}
	cfg.EnsureDefaults()
	if err := m.InitCluster(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := m.PutPeer(ctx, torus.PeerInfo{ID: "a", Address: "127.0.0.1:1"}); err != nil {
		t.Fatal(err)
	}
	r := NewResolver(m, time.Hour)
	for i := 0; i < 100; i++ {
		addr, err := r.Resolve(ctx, "a")
		if err != nil || addr != "127.0.0.1:1" {
			t.Fatalf("Resolve(a) = %q, %v", addr, err)
		}
	}
	if m.calls != 1 {
		t.Fatalf("100 resolves read the peer list %d times, want 1", m.calls)
	}
	if _, err := r.Resolve(ctx, "b"); !errors.Is(err, torus.ErrUnavailable) {
		t.Fatalf("unknown peer: %v", err)
	}
	// A peer registered later is found once the refresh limit passes.
	if err := m.PutPeer(ctx, torus.PeerInfo{ID: "b", Address: "127.0.0.1:2"}); err != nil {
		t.Fatal(err)
	}
	r.minRefresh = 0
	if addr, err := r.Resolve(ctx, "b"); err != nil || addr != "127.0.0.1:2" {
		t.Fatalf("Resolve(b) after registration = %q, %v", addr, err)
	}
}
