package volume_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/metadata"
	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/storage"
	"github.com/torus-storage/torus/volume"
)

// pool maps peer IDs to in-process services.
type pool map[string]torus.PeerService

func (p pool) Peer(_ context.Context, id string) (torus.PeerService, error) {
	if s, ok := p[id]; ok {
		return s, nil
	}
	return nil, fmt.Errorf("peer %s: %w", id, torus.ErrUnavailable)
}

// An in-process cluster of two peers with replication 2: write, flush,
// snapshot, close, and read the snapshot back.
func Example() {
	ctx := context.Background()
	meta := metadata.NewMemory()
	defer meta.Close()
	must := func(err error) {
		if err != nil {
			log.Fatal(err)
		}
	}
	must(meta.InitCluster(ctx, torus.ClusterConfig{Replication: 2}))
	s, err := meta.NewSession(ctx, time.Minute)
	must(err)
	spec, err := meta.Ring(ctx)
	must(err)
	peers := pool{}
	for _, id := range []string{"a", "b"} {
		peers[id] = peer.NewLocal(storage.NewMemory(0), nil)
		must(meta.PutPeer(ctx, torus.PeerInfo{ID: id, Address: id + ":1"}))
		must(meta.Heartbeat(ctx, s, id, torus.Beat{}))
		spec.Members = append(spec.Members, torus.RingMember{ID: id, Weight: 1})
	}
	spec.Version++
	must(meta.SetRing(ctx, spec))
	_, err = meta.CreateVolume(ctx, torus.VolumeInfo{Name: "disk", Size: 1 << 20})
	must(err)

	deps := volume.Deps{Meta: meta, Peers: peers}
	v, err := volume.Open(ctx, deps, "disk", volume.Options{Owner: "example"})
	must(err)
	must(v.WriteAt(ctx, []byte("hello, torus"), 100, false))
	must(v.Flush(ctx)) // durable on both replicas; no etcd request
	must(v.Snapshot(ctx, "first"))
	must(v.WriteAt(ctx, []byte("HELLO"), 100, true))
	must(v.Close(ctx))

	snap, err := volume.Open(ctx, deps, "disk", volume.Options{Snapshot: "first"})
	must(err)
	defer snap.Close(ctx)
	buf := make([]byte, 12)
	must(snap.ReadAt(ctx, buf, 100))
	fmt.Println(string(buf))
	// Output: hello, torus
}
