package life

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"

	fuseattach "github.com/torus-storage/torus/internal/attach"
	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testutil"
)

// fileLoop writes files of 64 KiB into dir, each fsynced with its
// directory, until stopped; done counts the files whose fsyncs returned.
type fileLoop struct {
	dir  string
	seed uint64
	mu   sync.Mutex
	done int
	errs []error
	stop chan struct{}
	wg   sync.WaitGroup
}

func fileData(seed uint64, i int) []byte {
	r := rand.New(rand.NewPCG(seed, uint64(i)))
	b := make([]byte, 64<<10)
	for j := range b {
		b[j] = byte(r.Uint32())
	}
	return b
}

func (l *fileLoop) name(i int) string { return filepath.Join(l.dir, fmt.Sprintf("f%05d", i)) }

func (l *fileLoop) start() {
	l.stop = make(chan struct{})
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-l.stop:
				return
			default:
			}
			if err := l.write(i); err != nil {
				l.mu.Lock()
				l.errs = append(l.errs, fmt.Errorf("file %d: %w", i, err))
				l.mu.Unlock()
				time.Sleep(50 * time.Millisecond)
				continue
			}
			l.mu.Lock()
			l.done = i + 1
			l.mu.Unlock()
		}
	}()
}

func (l *fileLoop) write(i int) error {
	f, err := os.OpenFile(l.name(i), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(fileData(l.seed, i)); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	d, err := os.Open(l.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (l *fileLoop) state() (int, []error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.done, append([]error(nil), l.errs...)
}

func (l *fileLoop) halt() { close(l.stop); l.wg.Wait() }

// verify checks files 0..n-1 under dir.
func (l *fileLoop) verify(dir string, n int) error {
	for i := 0; i < n; i++ {
		b, err := os.ReadFile(filepath.Join(dir, filepath.Base(l.name(i))))
		if err != nil {
			return err
		}
		if !bytes.Equal(b, fileData(l.seed, i)) {
			return fmt.Errorf("file %d: content differs", i)
		}
	}
	return nil
}

// requireAttachTools requires what the FUSE + loop attach backend and
// ext4 need (root, /dev/fuse, losetup, mkfs.ext4) and returns fsck.ext4.
func requireAttachTools(t *testing.T) (fsck string) {
	t.Helper()
	testutil.Require(t, "root (FUSE, loop devices, mounts)", testutil.Root())
	_, err := os.Stat("/dev/fuse")
	testutil.Require(t, "/dev/fuse", err)
	testutil.RequireBinary(t, "mkfs.ext4")
	testutil.RequireBinary(t, "losetup")
	return testutil.RequireBinary(t, "fsck.ext4")
}

// running reports whether pid exists and has not exited. A process
// whose parent died is reparented to PID 1 and may stay a zombie here.
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}

// cleanupAttachments undoes whatever attachments stay under stateDir after
// a failed test: the staging mount, the loop devices, the processes.
func cleanupAttachments(t *testing.T, staging, stateDir string) {
	t.Cleanup(func() {
		_ = unix.Unmount(staging, unix.MNT_DETACH)
		list, _ := filepath.Glob(filepath.Join(stateDir, "*.json"))
		for _, p := range list {
			b, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			var pid int
			var dev string
			if i := bytes.Index(b, []byte(`"pid": `)); i >= 0 {
				fmt.Sscan(string(b[i+7:]), &pid)
			}
			if i := bytes.Index(b, []byte(`"device": "`)); i >= 0 {
				rest := b[i+11:]
				dev = string(rest[:bytes.IndexByte(rest, '"')])
			}
			if dev != "" {
				_, _ = runCmd(10*time.Second, "losetup", "-d", dev)
			}
			if pid > 0 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		mounts, _ := filepath.Glob(filepath.Join(stateDir, "*.fuse"))
		for _, m := range mounts {
			_ = unix.Unmount(m, unix.MNT_DETACH)
		}
	})
}

// TestCSINodePluginKill: real etcd, torusd, torus-csi and torusblk
// processes, the production attach backend (torusblk fuse + a direct-I/O
// loop device). The node service stages an ext4 volume; a loop writes and
// fsyncs files in the mounted file system; the torus-csi node process is
// SIGKILLed mid-loop: the writes and fsyncs keep succeeding (the data path
// is the detached torusblk process, which is still the one recorded), the
// restarted node process finds its stage (NodeStage is idempotent, the
// node reports the volume accessible), and after NodeUnstage (unmount, detach)
// the volume, attached again read-only, passes fsck.ext4 -fn and holds
// every fsynced file.
func TestCSINodePluginKill(t *testing.T) {
	fsck := requireAttachTools(t)
	c := startCluster(t, proccluster.Options{Daemons: 1, Replication: 1})
	createVolume(t, c, "pv1", "256MiB", 0)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	staging := filepath.Join(dir, "staging")
	cleanupAttachments(t, staging, filepath.Join(state, "attach"))
	torusblk := proccluster.Bin(t, "torusblk")
	nodeArgs := []string{"--mode", "node", "--node-id", "node-a", "--state-dir", state, "--torusblk", torusblk}
	node, conn := csiProc(t, c, "node-a", dir, nodeArgs...)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	mnt := &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	stage := func(conn *grpc.ClientConn) error {
		_, err := csipb.NewNodeClient(conn).NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: "pv1", StagingTargetPath: staging, VolumeCapability: mnt})
		return err
	}
	start := time.Now()
	if err := stage(conn); err != nil {
		t.Fatalf("NodeStage: %v", err)
	}
	t.Logf("staged (attach, mkfs.ext4, mount) in %v", time.Since(start).Round(time.Millisecond))
	a, err := fuseattach.New(fuseattach.Options{Bin: torusblk, StateDir: filepath.Join(state, "attach"), Meta: metaClient(t, c)})
	if err != nil {
		t.Fatal(err)
	}
	at, ok, err := a.Get("pv1")
	if err != nil || !ok {
		t.Fatalf("attachment after stage: %+v %v %v", at, ok, err)
	}

	loop := &fileLoop{dir: filepath.Join(staging, "data"), seed: uint64(seed(t))}
	if err := os.Mkdir(loop.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	loop.start()
	defer func() {
		select {
		case <-loop.stop:
		default:
			loop.halt()
		}
	}()
	waitFiles := func(n int, what string) {
		t.Helper()
		eventually(t, 60*time.Second, 20*time.Millisecond, what, func() (bool, string) {
			done, errs := loop.state()
			if len(errs) > 0 {
				t.Fatalf("%s: write+fsync failed: %v", what, errs)
			}
			return done >= n, fmt.Sprintf("%d files fsynced", done)
		})
	}
	waitFiles(20, "files before the kill")
	node.Kill(t)
	atKill, _ := loop.state()
	t.Logf("SIGKILLed the node plugin after %d fsynced files", atKill)
	waitFiles(atKill+30, "files after the node plugin's SIGKILL")
	if got, ok, err := a.Get("pv1"); err != nil || !ok || got.PID != at.PID || got.Device != at.Device {
		t.Fatalf("attachment after the node plugin's SIGKILL: %+v %v %v, want %+v", got, ok, err, at)
	}

	_, conn = csiProc(t, c, "node-a-2", dir, nodeArgs...)
	if err := stage(conn); err != nil {
		t.Fatalf("NodeStage after the restart: %v", err)
	}
	if _, err := csipb.NewNodeClient(conn).NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: "pv1", VolumePath: staging}); err != nil {
		t.Fatalf("NodeGetVolumeStats after the restart: %v", err)
	}
	h, err := csipb.NewNodeClient(conn).NodeGetVolumeHealth(ctx, &csipb.NodeGetVolumeHealthRequest{VolumeId: "pv1"})
	if err != nil {
		t.Fatalf("NodeGetVolumeHealth after the restart: %v", err)
	}
	for _, e := range h.GetVolumeHealth().GetHealthStatuses() {
		if e.GetStatus() == csipb.VolumeHealthErrorType_INACCESSIBLE {
			t.Fatalf("volume inaccessible after the restart: %s: %s", e.GetReason(), e.GetMessage())
		}
	}
	if got, ok, _ := a.Get("pv1"); !ok || got.PID != at.PID {
		t.Fatalf("the restarted node plugin replaced the attachment: %+v, want pid %d", got, at.PID)
	}
	afterRestart, _ := loop.state()
	waitFiles(afterRestart+10, "files after the restart")
	loop.halt()
	n, errs := loop.state()
	if len(errs) > 0 {
		t.Fatalf("write+fsync errors: %v", errs)
	}
	t.Logf("%d files written and fsynced; %d after the kill", n, n-atKill)

	if _, err := csipb.NewNodeClient(conn).NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: "pv1", StagingTargetPath: staging}); err != nil {
		t.Fatalf("NodeUnstage: %v", err)
	}
	if _, ok, _ := a.Get("pv1"); ok {
		t.Fatal("still attached after NodeUnstage")
	}
	if running(at.PID) {
		t.Errorf("torusblk fuse (pid %d) still runs after NodeUnstage", at.PID)
	}

	// The volume as Torus has it: attached again read-only, checked and
	// read.
	ro, err := fuseattach.New(fuseattach.Options{Bin: torusblk, StateDir: filepath.Join(dir, "check"), Meta: metaClient(t, c),
		Args: []string{"--etcd", c.EtcdURL}})
	if err != nil {
		t.Fatal(err)
	}
	rat, err := ro.Attach(ctx, "pv1", true)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Detach(context.Background(), "pv1")
	if out, err := runCmd(2*time.Minute, fsck, "-fn", rat.Device); err != nil {
		t.Fatalf("fsck.ext4 -fn: %v\n%s", err, out)
	}
	check := filepath.Join(dir, "check-mnt")
	if err := os.Mkdir(check, 0o755); err != nil {
		t.Fatal(err)
	}
	mustRun(t, 30*time.Second, "mount", "-o", "ro,noload", rat.Device, check)
	defer func() { _, _ = runCmd(30*time.Second, "umount", check) }()
	if err := loop.verify(filepath.Join(check, "data"), n); err != nil {
		t.Fatalf("after unstage, read back through a new read-only attach: %v", err)
	}
}
