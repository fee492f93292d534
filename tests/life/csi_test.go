package life

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/torus-storage/torus/internal/proccluster"
)

// csiProc starts bin/torus-csi with args plus --etcd and a socket under
// dir, waits until it answers Probe's transport (the socket accepts), and
// returns the process and a connection to it.
func csiProc(t *testing.T, c *proccluster.Cluster, name, dir string, args ...string) (*proccluster.Proc, *grpc.ClientConn) {
	t.Helper()
	return csiProcOn(t, c, nil, name, dir, args...)
}

// csiProcOn is csiProc on host h (a network namespace; nil: this one).
// Its unix socket is reachable from here whatever the namespace.
func csiProcOn(t *testing.T, c *proccluster.Cluster, h *proccluster.Host, name, dir string, args ...string) (*proccluster.Proc, *grpc.ClientConn) {
	t.Helper()
	sock := filepath.Join(dir, name+".sock")
	p := &proccluster.Proc{Name: name, Args: append([]string{proccluster.Bin(t, "torus-csi"),
		"--endpoint", "unix://" + sock, "--etcd", c.EtcdURL, "--log-level", "debug"}, args...)}
	if h != nil {
		p.NS = h.NS
	}
	p.Start(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.Output())
		}
		p.Kill(t)
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if nc, err := net.Dial("unix", sock); err == nil {
			nc.Close()
			break
		}
		if !p.Running() || time.Now().After(deadline) {
			t.Fatalf("%s did not serve %s (running %v):\n%s", name, sock, p.Running(), p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return p, conn
}

// TestCSIPublishSurvivesRestart: real etcd, torusd and torus-csi processes.
// Two node services register node-a and node-b; the controller publishes a
// volume to node-a and refuses node-b, naming node-a. After a SIGKILL and
// restart of the controller the attachment is still there (it lives in
// etcd): node-b is still refused, node-a's publish is idempotent, and
// node-b's node service refuses to stage it. Unpublish of node-a lets
// node-b in. With etcd killed, publish is Unavailable and names etcd.
func TestCSIPublishSurvivesRestart(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 1, Replication: 1})
	createVolume(t, c, "pv1", "64MiB", 0)
	dir := t.TempDir()
	_, _ = csiProc(t, c, "node-a", dir, "--mode", "node", "--node-id", "node-a", "--state-dir", filepath.Join(dir, "state-a"))
	_, nbConn := csiProc(t, c, "node-b", dir, "--mode", "node", "--node-id", "node-b", "--state-dir", filepath.Join(dir, "state-b"))
	ctlProc, ctlConn := csiProc(t, c, "controller", dir, "--mode", "controller")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	block := &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}},
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	publish := func(conn *grpc.ClientConn, node string) error {
		_, err := csipb.NewControllerClient(conn).ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: "pv1", NodeId: node, VolumeCapability: block})
		return err
	}
	wantRefusal := func(err error, code codes.Code, naming, what string) {
		t.Helper()
		if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), naming) {
			t.Fatalf("%s: %v, want %s naming %q", what, err, code, naming)
		}
	}

	wantRefusal(publish(ctlConn, "node-c"), codes.NotFound, "node-c", "publish to a node that never registered")
	if err := publish(ctlConn, "node-a"); err != nil {
		t.Fatalf("publish to node-a: %v", err)
	}
	wantRefusal(publish(ctlConn, "node-b"), codes.FailedPrecondition, "node-a", "publish to node-b")

	ctlProc.Kill(t)
	ctlProc, ctlConn = csiProc(t, c, "controller-2", dir, "--mode", "controller")
	wantRefusal(publish(ctlConn, "node-b"), codes.FailedPrecondition, "node-a", "publish to node-b after the controller's restart")
	if err := publish(ctlConn, "node-a"); err != nil {
		t.Fatalf("publish to node-a again after the restart: %v", err)
	}
	_, err := csipb.NewNodeClient(nbConn).NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "pv1",
		StagingTargetPath: filepath.Join(dir, "staging-b"), VolumeCapability: block})
	wantRefusal(err, codes.FailedPrecondition, "node-a", "stage on node-b of a volume published to node-a")

	if _, err := csipb.NewControllerClient(ctlConn).ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: "pv1", NodeId: "node-a"}); err != nil {
		t.Fatalf("unpublish node-a: %v", err)
	}
	if err := publish(ctlConn, "node-b"); err != nil {
		t.Fatalf("publish to node-b after node-a's unpublish: %v", err)
	}

	c.Etcd.Kill(t)
	start := time.Now()
	err = publish(ctlConn, "node-b")
	wantRefusal(err, codes.Unavailable, strings.TrimPrefix(c.EtcdURL, "http://"), "publish with etcd down")
	t.Logf("publish with etcd down: %v after %v", status.Convert(err).Message(), time.Since(start).Round(time.Millisecond))
}
