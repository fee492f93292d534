package csi_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/csi"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/metadata"
)

// nodeFixture is a driver in mode all over metadata.Memory, with the loop
// attacher: real loop devices, real mkfs, mounts and bind mounts.
type nodeFixture struct {
	t     *testing.T
	ctx   context.Context
	meta  *metadata.Memory
	loop  *loopAttacher
	state string
	ctl   csipb.ControllerClient
	node  csipb.NodeClient
	stop  func() error // closes the client and the driver
}

const testNode = "node-a"

func newNodeFixture(t *testing.T) *nodeFixture {
	t.Helper()
	testutil.Require(t, "root (loop devices, mounts)", testutil.Root())
	for _, b := range []string{"losetup", "blkid", "mkfs.ext4", "resize2fs"} {
		testutil.RequireBinary(t, b)
	}
	ctx := context.Background()
	m := metadata.NewMemory()
	t.Cleanup(func() { _ = m.Close() })
	if err := m.InitCluster(ctx, torus.ClusterConfig{Replication: 1}); err != nil {
		t.Fatal(err)
	}
	f := &nodeFixture{t: t, ctx: ctx, meta: m, loop: newLoopAttacher(t, m, testNode), state: t.TempDir()}
	// Registered after the first TempDir, so it runs before the temporary
	// directories are removed: nothing a failed test mounted stays behind.
	t.Cleanup(func() { unmountUnder(t, os.TempDir()+"/"+strings.ReplaceAll(t.Name(), "/", "_")) })
	f.start(t)
	return f
}

// restart stops the driver and starts a new one on the same state
// directory and attacher.
func (f *nodeFixture) restart(t *testing.T) *nodeFixture {
	t.Helper()
	mustOK(t, f.stop(), "stop the driver")
	g := *f
	g.start(t)
	return &g
}

func (f *nodeFixture) start(t *testing.T) {
	t.Helper()
	ctx, m := f.ctx, f.meta
	d, err := csi.New(csi.Config{Endpoint: "unix://" + filepath.Join(t.TempDir(), "csi.sock"), Mode: csi.ModeAll, NodeID: testNode, StateDir: f.state},
		csi.Deps{
			Meta:           m,
			SnapshotClosed: func(context.Context, torus.Metadata, string, string) error { return nil },
			Attacher:       f.loop,
			Logger:         testutil.Logger(t),
		})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	conn, err := grpc.NewClient(d.Endpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	f.ctl, f.node = csipb.NewControllerClient(conn), csipb.NewNodeClient(conn)
	f.stop = func() error { _ = conn.Close(); return d.Close() }
}

func (f *nodeFixture) volume(name string, size int64) {
	f.t.Helper()
	if _, err := f.meta.CreateVolume(f.ctx, torus.VolumeInfo{Name: name, Size: size}); err != nil {
		f.t.Fatal(err)
	}
}

var (
	capExt4  = &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: "ext4"}}, AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	capBlock = &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}}, AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
)

func wantCode(t *testing.T, err error, c codes.Code, what string) {
	t.Helper()
	if status.Code(err) != c {
		t.Fatalf("%s: %v, want %s", what, err, c)
	}
}

func mustOK(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// unmountUnder lazily unmounts every mount whose path starts with prefix.
func unmountUnder(t *testing.T, prefix string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Error(err)
		return
	}
	lines := strings.Split(string(b), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if fs := strings.Fields(lines[i]); len(fs) > 4 && strings.HasPrefix(fs[4], prefix) {
			_ = unix.Unmount(fs[4], unix.MNT_DETACH)
		}
	}
}

func isMounted(t *testing.T, path string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if fs := strings.Fields(l); len(fs) > 4 && fs[4] == path {
			return true
		}
	}
	return false
}

// TestNodeMountLifecycle: publish to node-a and refusal of node-b; stage
// formats an empty device as ext4 and mounts it; publish bind-mounts it
// (read-only honoured); data survives unstage and restage (no reformat);
// a read-only stage mounts it read-only; stats report bytes and inodes;
// every step
// is idempotent; unstage cleans up the mount, the device and the state file.
func TestNodeMountLifecycle(t *testing.T) {
	f := newNodeFixture(t)
	ctx := f.ctx
	f.volume("v1", 64<<20)
	mustOK(t, f.meta.RegisterNode(ctx, "node-b"), "register node-b")

	_, err := f.ctl.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: "v1", NodeId: "ghost", VolumeCapability: capExt4})
	wantCode(t, err, codes.NotFound, "publish to an unknown node")
	_, err = f.ctl.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: "nope", NodeId: testNode, VolumeCapability: capExt4})
	wantCode(t, err, codes.NotFound, "publish a missing volume")
	for range 2 {
		_, err = f.ctl.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: "v1", NodeId: testNode, VolumeCapability: capExt4})
		mustOK(t, err, "publish to node-a")
	}
	_, err = f.ctl.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: "v1", NodeId: "node-b", VolumeCapability: capExt4})
	wantCode(t, err, codes.FailedPrecondition, "publish to node-b while on node-a")
	if !strings.Contains(status.Convert(err).Message(), testNode) {
		t.Fatalf("refusal %q does not name the node holding the volume", err)
	}
	_, err = f.ctl.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: "v1", NodeId: testNode, VolumeCapability: capExt4, Readonly: true})
	wantCode(t, err, codes.AlreadyExists, "publish again with readonly")

	staging := filepath.Join(t.TempDir(), "staging")
	stage := &csipb.NodeStageVolumeRequest{VolumeId: "v1", StagingTargetPath: staging, VolumeCapability: capExt4}
	for range 2 {
		_, err = f.node.NodeStageVolume(ctx, stage)
		mustOK(t, err, "stage")
	}
	dev := f.loop.device("v1")
	if out, err := exec.Command("blkid", "-p", "-o", "value", "-s", "TYPE", dev).Output(); err != nil || strings.TrimSpace(string(out)) != "ext4" {
		t.Fatalf("blkid %s = %q, %v; want ext4", dev, out, err)
	}
	if !isMounted(t, staging) {
		t.Fatal("staging path not mounted")
	}
	if _, err := os.Stat(filepath.Join(f.state, "volumes", "v1.json")); err != nil {
		t.Fatalf("no state file: %v", err)
	}

	tgt := filepath.Join(t.TempDir(), "pods", "target")
	pub := &csipb.NodePublishVolumeRequest{VolumeId: "v1", StagingTargetPath: staging, TargetPath: tgt, VolumeCapability: capExt4}
	for range 2 {
		_, err = f.node.NodePublishVolume(ctx, pub)
		mustOK(t, err, "publish")
	}
	data := bytes.Repeat([]byte("torus"), 1000)
	mustOK(t, os.WriteFile(filepath.Join(tgt, "f"), data, 0o644), "write through the target")
	roTgt := filepath.Join(t.TempDir(), "ro-target")
	_, err = f.node.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: "v1", StagingTargetPath: staging, TargetPath: roTgt, VolumeCapability: capExt4, Readonly: true})
	mustOK(t, err, "publish read-only")
	if err := os.WriteFile(filepath.Join(roTgt, "g"), data, 0o644); err == nil {
		t.Fatal("write through a read-only publish succeeded")
	}

	_, err = f.node.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: "v1", StagingTargetPath: staging})
	wantCode(t, err, codes.FailedPrecondition, "unstage while published")

	// Stats: bytes and inodes of the filesystem.
	stats, err := f.node.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: "v1", VolumePath: tgt})
	mustOK(t, err, "stats")
	if len(stats.Usage) != 2 || stats.Usage[0].Unit != csipb.VolumeUsage_BYTES || stats.Usage[0].Total < 50<<20 || stats.Usage[0].Used <= 0 ||
		stats.Usage[1].Unit != csipb.VolumeUsage_INODES || stats.Usage[1].Total == 0 || stats.Usage[1].Used == 0 {
		t.Fatalf("stats = %v", stats.Usage)
	}
	_, err = f.node.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: "v1", VolumePath: "/elsewhere"})
	wantCode(t, err, codes.NotFound, "stats at a path the volume is not at")

	h, err := f.node.NodeGetVolumeHealth(ctx, &csipb.NodeGetVolumeHealthRequest{VolumeId: "v1"})
	mustOK(t, err, "health")
	if len(h.VolumeHealth.HealthStatuses) != 0 {
		t.Fatalf("health of a healthy staged volume: %v", h.VolumeHealth.HealthStatuses)
	}

	for _, p := range []string{tgt, roTgt} {
		for range 2 {
			_, err = f.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "v1", TargetPath: p})
			mustOK(t, err, "unpublish")
		}
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("target %s still there after unpublish: %v", p, err)
		}
	}
	for range 2 {
		_, err = f.node.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: "v1", StagingTargetPath: staging})
		mustOK(t, err, "unstage")
	}
	if isMounted(t, staging) || f.loop.device("v1") != "" {
		t.Fatal("unstage left the mount or the device")
	}
	if _, err := os.Stat(filepath.Join(f.state, "volumes", "v1.json")); !os.IsNotExist(err) {
		t.Fatalf("state file still there after unstage: %v", err)
	}

	// Restage: the filesystem is kept (not reformatted), the data is there.
	_, err = f.node.NodeStageVolume(ctx, stage)
	mustOK(t, err, "restage")
	got, err := os.ReadFile(filepath.Join(staging, "f"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("file after restage: %d bytes, %v", len(got), err)
	}
	_, err = f.node.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: "v1", StagingTargetPath: staging})
	mustOK(t, err, "unstage again")

	// Read-only (SINGLE_NODE_READER_ONLY): a read-only device, mounted
	// without journal replay; reads work, writes fail.
	ro := &csipb.VolumeCapability{AccessType: capExt4.AccessType, AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY}}
	_, err = f.node.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "v1", StagingTargetPath: staging, VolumeCapability: ro})
	mustOK(t, err, "stage read-only")
	if got, err := os.ReadFile(filepath.Join(staging, "f")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("file on the read-only stage: %d bytes, %v", len(got), err)
	}
	if err := os.WriteFile(filepath.Join(staging, "h"), data, 0o644); err == nil {
		t.Fatal("write on a read-only stage succeeded")
	}
	_, err = f.node.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: "v1", StagingTargetPath: staging})
	mustOK(t, err, "unstage read-only")
}

// TestNodeNeverFormatsData: a device that holds data blkid cannot name is
// refused, and its bytes are left as they were.
func TestNodeNeverFormatsData(t *testing.T) {
	f := newNodeFixture(t)
	ctx := f.ctx
	f.volume("v2", 32<<20)
	a, err := f.loop.Attach(ctx, "v2", false)
	mustOK(t, err, "attach")
	junk := bytes.Repeat([]byte{0xa5}, 4096)
	mustOK(t, os.WriteFile(a.Device, junk, 0), "write junk")
	staging := filepath.Join(t.TempDir(), "staging")
	_, err = f.node.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "v2", StagingTargetPath: staging, VolumeCapability: capExt4})
	wantCode(t, err, codes.FailedPrecondition, "stage over unrecognised data")
	got := make([]byte, len(junk))
	fd, err := os.Open(a.Device)
	mustOK(t, err, "open")
	defer fd.Close()
	if _, err := fd.ReadAt(got, 0); err != nil || !bytes.Equal(got, junk) {
		t.Fatalf("the device's data changed (%v)", err)
	}
	if isMounted(t, staging) {
		t.Fatal("mounted after the refusal")
	}
}

// TestNodeBlockAndTakeover: a raw block volume is staged (attach only) and
// published as a device file; unpublish from the node removes its
// attachment and its writer lock, which the node reports as fenced, and
// another node can then be published to.
func TestNodeBlockAndTakeover(t *testing.T) {
	f := newNodeFixture(t)
	ctx := f.ctx
	f.volume("v3", 32<<20)
	mustOK(t, f.meta.RegisterNode(ctx, "node-b"), "register node-b")
	_, err := f.ctl.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: "v3", NodeId: testNode, VolumeCapability: capBlock})
	mustOK(t, err, "publish")
	staging := filepath.Join(t.TempDir(), "staging")
	_, err = f.node.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "v3", StagingTargetPath: staging, VolumeCapability: capBlock})
	mustOK(t, err, "stage block")
	if isMounted(t, staging) {
		t.Fatal("a block volume's staging path is mounted")
	}
	tgt := filepath.Join(t.TempDir(), "dev", "v3")
	_, err = f.node.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: "v3", StagingTargetPath: staging, TargetPath: tgt, VolumeCapability: capBlock})
	mustOK(t, err, "publish block")
	var st unix.Stat_t
	mustOK(t, unix.Stat(tgt, &st), "stat target")
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		t.Fatalf("target mode %o is not a block device", st.Mode)
	}
	w, err := os.OpenFile(tgt, os.O_WRONLY, 0)
	mustOK(t, err, "open target")
	msg := bytes.Repeat([]byte("b"), 4096)
	_, err = w.WriteAt(msg, 8192)
	mustOK(t, err, "write")
	mustOK(t, w.Sync(), "fsync")
	w.Close()
	stats, err := f.node.NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: "v3", VolumePath: tgt})
	mustOK(t, err, "block stats")
	if len(stats.Usage) != 1 || stats.Usage[0].Total != 32<<20 {
		t.Fatalf("block stats = %v", stats.Usage)
	}

	// node-a is gone as far as Kubernetes knows: unpublish it.
	_, err = f.ctl.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: "v3", NodeId: testNode})
	mustOK(t, err, "unpublish node-a")
	if _, ok, _ := f.meta.Writer(ctx, "v3"); ok {
		t.Fatal("node-a's writer lock survived the unpublish")
	}
	h, err := f.node.NodeGetVolumeHealth(ctx, &csipb.NodeGetVolumeHealthRequest{VolumeId: "v3"})
	mustOK(t, err, "health")
	if hs := h.VolumeHealth.HealthStatuses; len(hs) != 1 || hs[0].Reason != "WriterFenced" || hs[0].Status != csipb.VolumeHealthErrorType_INACCESSIBLE {
		t.Fatalf("health after the takeover = %v, want WriterFenced", hs)
	}
	_, err = f.ctl.ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: "v3", NodeId: "node-b", VolumeCapability: capBlock})
	mustOK(t, err, "publish to node-b after the unpublish")
	_, err = f.ctl.ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: "v3", NodeId: testNode})
	mustOK(t, err, "unpublish node-a again")
	if a, ok, _ := f.meta.Attachment(ctx, "v3"); !ok || a.Node != "node-b" {
		t.Fatalf("a repeated unpublish of node-a touched node-b's attachment: %+v %v", a, ok)
	}
	// node-a's stage of the volume is now refused: it is node-b's.
	_, err = f.node.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "v3", StagingTargetPath: filepath.Join(t.TempDir(), "s2"), VolumeCapability: capBlock})
	wantCode(t, err, codes.FailedPrecondition, "stage on node-a of a volume published to node-b")

	_, err = f.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "v3", TargetPath: tgt})
	mustOK(t, err, "unpublish block")
	_, err = f.node.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: "v3", StagingTargetPath: staging})
	mustOK(t, err, "unstage block")
	if f.loop.device("v3") != "" {
		t.Fatal("device still attached")
	}
}

// TestNodeExpandXFS: ControllerExpand grows the volume, NodeExpandVolume
// grows the device and the mounted XFS filesystem (online; ext4 online
// growth needs CAP_SYS_RESOURCE, which this sandbox lacks).
func TestNodeExpandXFS(t *testing.T) {
	f := newNodeFixture(t)
	testutil.RequireBinary(t, "mkfs.xfs")
	testutil.RequireBinary(t, "xfs_growfs")
	ctx := f.ctx
	f.volume("x1", 320<<20)
	capXFS := &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: "xfs"}}, AccessMode: capExt4.AccessMode}
	staging := filepath.Join(t.TempDir(), "staging")
	_, err := f.node.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "x1", StagingTargetPath: staging, VolumeCapability: capXFS})
	mustOK(t, err, "stage xfs")
	tgt := filepath.Join(t.TempDir(), "target")
	_, err = f.node.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: "x1", StagingTargetPath: staging, TargetPath: tgt, VolumeCapability: capXFS})
	mustOK(t, err, "publish xfs")
	_, err = f.node.NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumeId: "x1", VolumePath: tgt, CapacityRange: &csipb.CapacityRange{RequiredBytes: 640 << 20}})
	wantCode(t, err, codes.OutOfRange, "node expand past the volume's size")
	mustOK(t, f.meta.UpdateVolume(ctx, torus.VolumeInfo{Name: "x1", Size: 640 << 20}), "grow the volume")
	exp, err := f.node.NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumeId: "x1", VolumePath: tgt, CapacityRange: &csipb.CapacityRange{RequiredBytes: 640 << 20}})
	mustOK(t, err, "node expand")
	if exp.CapacityBytes != 640<<20 {
		t.Fatalf("expanded to %d bytes", exp.CapacityBytes)
	}
	var sfs unix.Statfs_t
	mustOK(t, unix.Statfs(tgt, &sfs), "statfs")
	if got := int64(sfs.Blocks) * int64(sfs.Bsize); got < 500<<20 { // 320 MiB before; XFS keeps its log out of f_blocks
		t.Fatalf("filesystem is %d bytes after expand, want about 640 MiB", got)
	}
	_, err = f.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "x1", TargetPath: tgt})
	mustOK(t, err, "unpublish")
	_, err = f.node.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: "x1", StagingTargetPath: staging})
	mustOK(t, err, "unstage")
}

// TestNodeRestart: the node service is stopped and a new one started on
// the same state directory (the attachment outlives it, as the production
// attach process does): staging again is idempotent, the mount and the
// data are intact, and unpublish and unstage clean up what the first
// process did.
func TestNodeRestart(t *testing.T) {
	f := newNodeFixture(t)
	ctx := f.ctx
	f.volume("r1", 64<<20)
	staging := filepath.Join(t.TempDir(), "staging")
	stage := &csipb.NodeStageVolumeRequest{VolumeId: "r1", StagingTargetPath: staging, VolumeCapability: capExt4}
	_, err := f.node.NodeStageVolume(ctx, stage)
	mustOK(t, err, "stage")
	tgt := filepath.Join(t.TempDir(), "target")
	_, err = f.node.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{VolumeId: "r1", StagingTargetPath: staging, TargetPath: tgt, VolumeCapability: capExt4})
	mustOK(t, err, "publish")
	mustOK(t, os.WriteFile(filepath.Join(tgt, "before"), []byte("kept"), 0o644), "write")

	g := f.restart(t)
	_, err = g.node.NodeStageVolume(ctx, stage)
	mustOK(t, err, "stage after the restart")
	if got, err := os.ReadFile(filepath.Join(tgt, "before")); err != nil || string(got) != "kept" {
		t.Fatalf("file after the restart: %q, %v", got, err)
	}
	_, err = g.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: "r1", TargetPath: tgt})
	mustOK(t, err, "unpublish after the restart")
	_, err = g.node.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: "r1", StagingTargetPath: staging})
	mustOK(t, err, "unstage after the restart")
	if isMounted(t, staging) || isMounted(t, tgt) || f.loop.device("r1") != "" {
		t.Fatal("the restarted node service left a mount or the device")
	}
	if _, err := os.Stat(filepath.Join(f.state, "volumes", "r1.json")); !os.IsNotExist(err) {
		t.Fatalf("state file after unstage: %v", err)
	}
}
