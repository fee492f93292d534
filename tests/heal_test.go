package tests

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testcluster"
	"github.com/torus-storage/torus/server"
	"github.com/torus-storage/torus/volume"
)

// copies counts, for every sealed live segment of vol, the full copies held
// by running daemons, and the copies of any kind held by running daemons
// that hold more than the planner wants (surplus).
func copies(t *testing.T, c *testcluster.Cluster, vol string) (min, max int, sealed int) {
	t.Helper()
	ctx := context.Background()
	lens, err := volume.LiveSegmentLengths(ctx, c.Meta, c.Pool, vol, nil)
	if err != nil {
		t.Fatal(err)
	}
	held := make(map[torus.SegmentID]int)
	for _, d := range c.Daemons {
		if d == nil {
			continue
		}
		infos, err := d.Store().List(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, si := range infos {
			if n, ok := lens[si.ID]; ok && n >= 0 && si.Length >= n {
				held[si.ID]++
			}
		}
	}
	min = 1 << 30
	for id, n := range lens {
		if n <= 0 {
			continue
		}
		sealed++
		min = minInt(min, held[id])
		max = maxInt(max, held[id])
	}
	return min, max, sealed
}

func minInt(a, b int) int {
	if a < b {
		return a
	}
	return b
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}

// TestHealingAfterDaemonLoss: a daemon stays down past the grace period;
// the survivors re-replicate every sealed segment to two copies; when the
// daemon comes back its surplus copies are removed; the data verifies.
func TestHealingAfterDaemonLoss(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 3, Replication: 2, Server: func(i int, cfg *server.Config) {
		cfg.DownGrace = 2 * time.Second
	}})
	const size = 32 << 20
	c.CreateVolume("heal", size)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	v, err := c.Open(ctx, "heal", volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(3, 4))
	write := func(n int) {
		for i := 0; i < n; i++ {
			p := make([]byte, 64<<10)
			for j := range p {
				p[j] = byte(rng.Uint32())
			}
			off := int64(rng.IntN(size/len(p))) * int64(len(p))
			if err := v.WriteAt(ctx, p, off, false); err != nil {
				t.Fatal(err)
			}
			copy(model[off:], p)
		}
		if err := v.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	write(100)
	c.Stop(2)
	write(50) // continues on the two survivors
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "every sealed segment has 2 copies on the survivors", func() bool {
		lo, _, n := copies(t, c, "heal")
		return n > 0 && lo >= 2
	})
	c.Start(2)
	waitFor(t, 60*time.Second, "no segment has more than 2 copies after the daemon returned", func() bool {
		lo, hi, _ := copies(t, c, "heal")
		return lo >= 2 && hi == 2
	})
	v2, err := c.Open(ctx, "heal", volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close(ctx)
	got := make([]byte, size)
	if err := v2.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("data differs after healing")
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", d, what)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
