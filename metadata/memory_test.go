package metadata_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/metadata"
	"github.com/torus-storage/torus/metadata/metadatatest"
)

func TestMemoryConformance(t *testing.T) {
	metadatatest.Run(t, func(t *testing.T) torus.Metadata {
		m := metadata.NewMemory()
		t.Cleanup(func() { _ = m.Close() })
		return m
	})
}

func TestMemorySetFailure(t *testing.T) {
	ctx := context.Background()
	m := metadata.NewMemory()
	defer m.Close()
	if err := m.InitCluster(ctx, torus.ClusterConfig{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.CreateVolume(ctx, torus.VolumeInfo{Name: "v", Size: 4096}); err != nil {
		t.Fatal(err)
	}
	short, err := m.NewSession(ctx, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	long, err := m.NewSession(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Lock(ctx, short, "v", torus.WriterInfo{Owner: "w"}); err != nil {
		t.Fatal(err)
	}
	down := fmt.Errorf("etcd 127.0.0.1:1 unreachable: %w", torus.ErrUnavailable)
	m.SetFailure(down)
	if _, err := m.Volumes(ctx); !errors.Is(err, torus.ErrUnavailable) {
		t.Fatalf("Volumes during failure: %v, want ErrUnavailable", err)
	}
	if err := m.CommitHead(ctx, "v", 1, torus.Head{}); !errors.Is(err, torus.ErrUnavailable) {
		t.Fatalf("CommitHead during failure: %v, want ErrUnavailable", err)
	}
	select {
	case <-short.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("session with a 50ms TTL survived a failure of 5s")
	}
	m.SetFailure(nil)
	select {
	case <-long.Done():
		t.Fatal("session with a 1h TTL ended")
	default:
	}
	if _, ok, err := m.Writer(ctx, "v"); err != nil || ok {
		t.Fatalf("lock of the expired session: ok=%v err=%v, want gone", ok, err)
	}
	if _, err := m.Lock(ctx, long, "v", torus.WriterInfo{Owner: "w2"}); err != nil {
		t.Fatalf("Lock after recovery: %v", err)
	}
}

func TestMemorySessionCloseDuringFailure(t *testing.T) {
	ctx := context.Background()
	m := metadata.NewMemory()
	defer m.Close()
	_ = m.InitCluster(ctx, torus.ClusterConfig{})
	_, _ = m.CreateVolume(ctx, torus.VolumeInfo{Name: "v", Size: 4096})
	s, _ := m.NewSession(ctx, time.Hour)
	if _, err := m.Lock(ctx, s, "v", torus.WriterInfo{Owner: "w"}); err != nil {
		t.Fatal(err)
	}
	m.SetFailure(torus.ErrUnavailable)
	if err := s.Close(ctx); !errors.Is(err, torus.ErrUnavailable) {
		t.Fatalf("Close during failure: %v", err)
	}
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed by a failed Close")
	}
	m.SetFailure(nil)
	if _, ok, _ := m.Writer(ctx, "v"); ok {
		t.Fatal("lock of a session closed during the failure survived recovery")
	}
}
