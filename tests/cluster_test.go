package tests

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/testcluster"
	"github.com/torus-storage/torus/volume"
)

// TestClusterSurvivesDaemonLoss writes random data to a replication-2 volume
// on three daemons, flushes, stops one daemon abruptly, and reads every byte
// back from the survivors.
func TestClusterSurvivesDaemonLoss(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 3, Replication: 2})
	const size = 64 << 20
	c.CreateVolume("vol", size)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	v, err := c.Open(ctx, "vol", volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	model := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 150; i++ {
		n := 1 + rng.IntN(256<<10)
		off := rng.Int64N(size - int64(n))
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			t.Fatalf("write %d at %d: %v", n, off, err)
		}
		copy(model[off:], p)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	c.Stop(1)
	check := func(v *volume.Volume) {
		t.Helper()
		got := make([]byte, 1<<20)
		for off := int64(0); off < size; off += int64(len(got)) {
			if err := v.ReadAt(ctx, got, off); err != nil {
				t.Fatalf("read at %d: %v", off, err)
			}
			if !bytes.Equal(got, model[off:off+int64(len(got))]) {
				t.Fatalf("data differs in the MiB at %d", off)
			}
		}
	}
	check(v)
	if err := v.Close(ctx); err != nil {
		t.Logf("close with a daemon down: %v", err)
	}
	// A fresh writer recovers the volume from the two survivors.
	v2, err := c.Open(ctx, "vol", volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close(ctx)
	check(v2)
}
