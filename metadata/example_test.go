package metadata_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/metadata"
)

// A writer takes a volume, commits a head, and is fenced once its lease
// is lost and another writer takes over.
func ExampleMemory() {
	ctx := context.Background()
	m := metadata.NewMemory()
	defer m.Close()
	_ = m.InitCluster(ctx, torus.ClusterConfig{})
	_, _ = m.CreateVolume(ctx, torus.VolumeInfo{Name: "vol", Size: 1 << 30})

	s1, _ := m.NewSession(ctx, 10*time.Second)
	e1, _ := m.Lock(ctx, s1, "vol", torus.WriterInfo{Owner: "writer-1"})
	fmt.Println("writer-1 epoch", e1, m.CommitHead(ctx, "vol", e1, torus.Head{Epoch: e1, NextSeq: 1}))

	s2, _ := m.NewSession(ctx, 10*time.Second)
	_, err := m.Lock(ctx, s2, "vol", torus.WriterInfo{Owner: "writer-2"})
	fmt.Println(err)

	m.ExpireSession(s1.ID()) // writer-1's lease runs out
	<-s1.Done()
	e2, _ := m.Lock(ctx, s2, "vol", torus.WriterInfo{Owner: "writer-2"})
	fmt.Println("writer-2 epoch", e2)
	err = m.CommitHead(ctx, "vol", e1, torus.Head{Epoch: e1, NextSeq: 2})
	fmt.Println("writer-1 fenced:", errors.Is(err, torus.ErrFenced))
	// Output:
	// writer-1 epoch 1 <nil>
	// metadata: lock: torus: volume "vol" is locked by writer-1 (epoch 1)
	// writer-2 epoch 2
	// writer-1 fenced: true
}
