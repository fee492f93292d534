package csi_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/csi"
	"github.com/torus-storage/torus/internal/testcluster"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/volume"
)

// TestPublishTakeoverFences: over a real cluster (embedded etcd, one
// daemon) and real volume writers. node-a is published and writes; node-b
// is refused, naming node-a; after ControllerUnpublish of node-a (a node
// that is gone), node-b is published and its writer opens the volume; the
// old writer of node-a can no longer write or flush (ErrFenced), and
// node-b reads what node-a flushed before, not what it wrote after.
func TestPublishTakeoverFences(t *testing.T) {
	testutil.SkipShort(t, "an in-process cluster")
	c := testcluster.New(t, testcluster.Options{Daemons: 1, Replication: 1})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := csi.New(csi.Config{Endpoint: "unix://" + filepath.Join(t.TempDir(), "csi.sock"), Mode: csi.ModeController},
		csi.Deps{Meta: c.Meta, SnapshotClosed: func(context.Context, torus.Metadata, string, string) error { return nil }, Logger: c.Log})
	mustOK(t, err, "new driver")
	mustOK(t, d.Start(ctx), "start")
	t.Cleanup(func() { _ = d.Close() })
	conn, err := grpc.NewClient(d.Endpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	mustOK(t, err, "dial")
	defer conn.Close()
	ctl := csipb.NewControllerClient(conn)

	for _, n := range []string{"node-a", "node-b"} {
		mustOK(t, c.Meta.RegisterNode(ctx, n), "register "+n)
	}
	_, err = c.Meta.CreateVolume(ctx, torus.VolumeInfo{Name: "tk", Size: 16 << 20})
	mustOK(t, err, "create volume")
	pub := func(node string) error {
		_, err := ctl.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: "tk", NodeId: node, VolumeCapability: capBlock})
		return err
	}
	mustOK(t, pub("node-a"), "publish node-a")
	deps := volume.Deps{Meta: c.Meta, Peers: c.Pool, Logger: c.Log}
	a, err := volume.Open(ctx, deps, "tk", volume.Options{Owner: "writer on node-a", RetryFor: 2 * time.Second})
	mustOK(t, err, "open on node-a")
	defer a.Close(context.Background())
	before := bytes.Repeat([]byte{1}, torus.BlockSize)
	mustOK(t, a.WriteAt(ctx, before, 0, false), "node-a write")
	mustOK(t, a.Flush(ctx), "node-a flush")

	err = pub("node-b")
	wantCode(t, err, codes.FailedPrecondition, "publish node-b while node-a holds it")
	if !strings.Contains(status.Convert(err).Message(), "node-a") {
		t.Fatalf("refusal %q does not name node-a", err)
	}

	_, err = ctl.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: "tk", NodeId: "node-a"})
	mustOK(t, err, "unpublish node-a")
	mustOK(t, pub("node-b"), "publish node-b")
	b, err := volume.Open(ctx, deps, "tk", volume.Options{Owner: "writer on node-b"})
	mustOK(t, err, "open on node-b after the takeover")
	defer b.Close(context.Background())

	after := bytes.Repeat([]byte{2}, torus.BlockSize)
	werr := a.WriteAt(ctx, after, 0, false)
	if werr == nil {
		werr = a.Flush(ctx)
	}
	if !errors.Is(werr, torus.ErrFenced) {
		t.Fatalf("node-a's write+flush after the takeover: %v, want ErrFenced", werr)
	}
	got := make([]byte, torus.BlockSize)
	mustOK(t, b.ReadAt(ctx, got, 0), "node-b read")
	if !bytes.Equal(got, before) {
		t.Fatalf("node-b reads %x..., want node-a's flushed %x...", got[:4], before[:4])
	}
}
