package volume

import (
	"context"
	"testing"
	"time"

	"github.com/torus-storage/torus"
)

// TestPlacementAvoidsFullPeers: a peer whose heartbeat reports it 99 % full
// gets no new segments while other peers can take them.
func TestPlacementAvoidsFullPeers(t *testing.T) {
	c := newCluster(t, clusterOpts{peers: 3, replication: 2})
	ctx := context.Background()
	s, err := c.meta.NewSession(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	full := c.ids[0]
	if err := c.meta.Heartbeat(ctx, s, full, torus.Beat{Used: (1 << 30) / 100 * 99}); err != nil {
		t.Fatal(err)
	}
	c.create("vol", 16<<20, 0)
	v := c.open("vol", Options{})
	defer v.Close(ctx)
	for i := 0; i < 40; i++ {
		seg := torus.SegmentID{Volume: 1, Epoch: 1, Seq: uint64(100 + i)}
		ids := v.pick(seg)
		if len(ids) != 2 {
			t.Fatalf("pick(%v) = %v, want 2 peers", seg, ids)
		}
		for _, id := range ids {
			if id == full {
				t.Fatalf("pick(%v) = %v placed a segment on the full peer %s", seg, ids, full)
			}
		}
	}
}
