package volume

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
)

// TestCrashPrefix: random operations, flushes at random points, then the
// writer dies and every peer loses power at once. The recovered volume must
// equal the model after some prefix of the operations that includes every
// operation before the last successful flush: the log is replayed in order
// and only the unsynced tail can be lost.
func TestCrashPrefix(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, peers: 3, checkpointEvery: 2})
	const size = 256 << 10
	c.create("vol", size, 0)
	r := rand.New(rand.NewPCG(71, 72))
	m := make(model, size)
	for round := 0; round < 5; round++ {
		v := c.open("vol", Options{})
		verify(t, ctx, v, m)
		// states[i] is the model after i operations since the last flush.
		states := []model{append(model(nil), m...)}
		ops := 20 + r.IntN(100)
		for i := 0; i < ops; i++ {
			workload(t, ctx, v, m, r, 1)
			states = append(states, append(model(nil), m...))
			if r.IntN(15) == 0 {
				if err := v.Flush(ctx); err != nil {
					t.Fatal(err)
				}
				states = states[len(states)-1:]
			}
		}
		c.meta.ExpireSession(v.session.ID())
		waitFenced(t, v)
		for _, st := range c.stores {
			st.Crash()
		}
		v.Close(ctx)
		v2 := c.open("vol", Options{})
		got := make([]byte, size)
		if err := v2.ReadAt(ctx, got, 0); err != nil {
			t.Fatal(err)
		}
		match := -1
		for k := len(states) - 1; k >= 0; k-- {
			if bytes.Equal(got, states[k]) {
				match = k
				break
			}
		}
		if match < 0 {
			t.Fatalf("round %d: recovered volume is no prefix of the %d operations since the last flush", round, len(states)-1)
		}
		t.Logf("round %d: recovered %d of %d unflushed operations", round, match, len(states)-1)
		m = states[match]
		verify(t, ctx, v2, m)
		if err := v2.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
}
