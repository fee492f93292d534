package life

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	fuseattach "github.com/torus-storage/torus/internal/attach"
	"github.com/torus-storage/torus/internal/proccluster"
)

// TestCSINodeDeath: a node dies as far as the cluster can tell. Node A's
// CSI node service runs in a network namespace of its own (host A); it
// stages an ext4 volume (torusblk fuse + loop, in that namespace too) and
// a write+fsync loop runs on it. Host A is cut off from everything. The
// controller unpublishes node A (it is gone) and publishes to node B, whose
// node service stages the volume: B's writer takes the volume over, which
// fences A's. B mounts; every file A fsynced is there. Host A comes back:
// nothing it writes after the takeover is acknowledged, the volume does
// not change by a byte (SHA-256 of the device before and after), and it
// checks clean (fsck.ext4 -fn) with every fsynced file intact.
func TestCSINodeDeath(t *testing.T) {
	fsck := requireAttachTools(t)
	c := startCluster(t, proccluster.Options{Daemons: 2, Replication: 2})
	createVolume(t, c, "pv1", "256MiB", 0)
	c.Ctl("volume", "set", "pv1", "min-replicas=1")
	hostA := c.NewHost()
	dir := t.TempDir()
	torusblk := proccluster.Bin(t, "torusblk")
	stateA, stateB := filepath.Join(dir, "state-a"), filepath.Join(dir, "state-b")
	stagingA, stagingB := filepath.Join(dir, "staging-a"), filepath.Join(dir, "staging-b")
	cleanupAttachments(t, stagingA, filepath.Join(stateA, "attach"))
	cleanupAttachments(t, stagingB, filepath.Join(stateB, "attach"))

	_, ctl := csiProc(t, c, "controller", dir, "--mode", "controller")
	_, nodeA := csiProcOn(t, c, hostA, "node-a", dir, "--mode", "node", "--node-id", "node-a", "--state-dir", stateA, "--torusblk", torusblk)
	_, nodeB := csiProc(t, c, "node-b", dir, "--mode", "node", "--node-id", "node-b", "--state-dir", stateB, "--torusblk", torusblk)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	mnt := &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	publish := func(node string) {
		t.Helper()
		if _, err := csipb.NewControllerClient(ctl).ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{
			VolumeId: "pv1", NodeId: node, VolumeCapability: mnt}); err != nil {
			t.Fatalf("publish to %s: %v", node, err)
		}
	}
	publish("node-a")
	if _, err := csipb.NewNodeClient(nodeA).NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "pv1",
		StagingTargetPath: stagingA, VolumeCapability: mnt}); err != nil {
		t.Fatalf("NodeStage on node A: %v", err)
	}
	loop := &fileLoop{dir: filepath.Join(stagingA, "data"), seed: uint64(seed(t))}
	if err := os.Mkdir(loop.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	loop.start()
	t.Cleanup(func() { // the loop may be blocked in an fsync of a writer cut off
		close(loop.stop)
		done := make(chan struct{})
		go func() { loop.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(45 * time.Second):
			t.Errorf("the write loop on node A did not stop")
		}
	})
	eventually(t, 60*time.Second, 20*time.Millisecond, "files fsynced on node A", func() (bool, string) {
		done, errs := loop.state()
		if len(errs) > 0 {
			t.Fatalf("write+fsync on node A failed before the cut: %v", errs)
		}
		return done >= 20, ""
	})

	// Host A is gone. Every fsync that returned before now, or that will
	// return while A is cut off, must survive.
	hostA.Cut()
	time.Sleep(2 * time.Second)
	fsynced, _ := loop.state()
	t.Logf("host A cut off after %d fsynced files", fsynced)

	if _, err := csipb.NewControllerClient(ctl).ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{
		VolumeId: "pv1", NodeId: "node-a"}); err != nil {
		t.Fatalf("unpublish of the dead node A: %v", err)
	}
	publish("node-b")
	start := time.Now()
	if _, err := csipb.NewNodeClient(nodeB).NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "pv1",
		StagingTargetPath: stagingB, VolumeCapability: mnt}); err != nil {
		t.Fatalf("NodeStage on node B after node A died: %v", err)
	}
	t.Logf("node B staged the volume %v after node A's unpublish", time.Since(start).Round(time.Millisecond))
	// Every fsync node A saw return (one in flight at the cut may return
	// late) must be on B.
	acked, _ := loop.state()
	if err := loop.verify(filepath.Join(stagingB, "data"), acked); err != nil {
		t.Fatalf("on node B, %d files fsynced on A: %v", acked, err)
	}

	if _, err := csipb.NewNodeClient(nodeB).NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: "pv1",
		StagingTargetPath: stagingB}); err != nil {
		t.Fatalf("NodeUnstage on node B: %v", err)
	}
	ro, err := fuseattach.New(fuseattach.Options{Bin: torusblk, StateDir: filepath.Join(dir, "check"), Meta: metaClient(t, c),
		Args: []string{"--etcd", c.EtcdURL}})
	if err != nil {
		t.Fatal(err)
	}
	// digest is the SHA-256 of the whole volume, read through a fresh
	// read-only attach.
	digest := func() (string, string) {
		t.Helper()
		rat, err := ro.Attach(ctx, "pv1", true)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(rat.Device)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		return hex.EncodeToString(h.Sum(nil)), rat.Device
	}
	before, _ := digest()
	if err := ro.Detach(ctx, "pv1"); err != nil {
		t.Fatal(err)
	}

	// Host A comes back: its writer is fenced, so whatever it still has
	// to write (its page cache, the loop's next files) is refused, and
	// the volume does not change by a byte.
	hostA.Heal()
	time.Sleep(5 * time.Second)
	// A may still see an fsync return that the cut held up (its data
	// committed before the cut): whatever A saw acknowledged must be on
	// the volume, which has not changed since B let go of it.
	acked, _ = loop.state()
	after, dev := digest()
	defer ro.Detach(context.Background(), "pv1")
	if after != before {
		t.Errorf("the volume changed after node A came back: sha256 %s, was %s", after, before)
	}
	if out, err := runCmd(2*time.Minute, fsck, "-fn", dev); err != nil {
		t.Fatalf("fsck.ext4 -fn after node A came back: %v\n%s", err, out)
	}
	check := filepath.Join(dir, "check-mnt")
	if err := os.Mkdir(check, 0o755); err != nil {
		t.Fatal(err)
	}
	mustRun(t, 30*time.Second, "mount", "-o", "ro,noload", dev, check)
	defer func() { _, _ = runCmd(30*time.Second, "umount", check) }()
	if err := loop.verify(filepath.Join(check, "data"), acked); err != nil {
		t.Fatalf("after node A came back: %v", err)
	}
}
