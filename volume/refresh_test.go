package volume

import (
	"context"
	"testing"
	"time"

	"github.com/torus-storage/torus"
)

// TestRefreshRateLimited: a storm of metadata changes (daemon heartbeats)
// costs at most one refresh per RefreshInterval, and the last change is
// still picked up.
func TestRefreshRateLimited(t *testing.T) {
	c := newCluster(t, clusterOpts{replication: 2})
	c.create("v", 1<<20, 0)
	v, err := Open(context.Background(), c.deps(), "v", Options{RefreshInterval: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(context.Background())
	ctx := context.Background()
	s, err := c.meta.NewSession(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	start := time.Now()
	before := v.refreshes.Load()
	for time.Since(start) < time.Second {
		if err := c.meta.Heartbeat(ctx, s, c.ids[0], torus.Beat{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// ~200 changes in 1 s: at most 1 + 1s/300ms refreshes (+1 of slack).
	if n := v.refreshes.Load() - before; n < 1 || n > 5 {
		t.Errorf("%d refreshes for a second of heartbeats every 5ms, want 1..5", n)
	}
	// The last change is picked up: a volume resize shows within the interval.
	info, err := c.meta.Volume(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	info.Size = 2 << 20
	if err := c.meta.UpdateVolume(ctx, info); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for v.Size() != 2<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("size %d after 5 s, want %d", v.Size(), 2<<20)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := v.WriteAt(ctx, make([]byte, torus.BlockSize), 2<<20-torus.BlockSize, true); err != nil {
		t.Fatal(err)
	}
}
