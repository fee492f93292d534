package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testcluster"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/volume"
)

// fuseProc is a real `torusblk fuse` process (the binary, not this
// package's code in the test process: a FUSE server must not be its own
// client).
type fuseProc struct {
	cmd  *exec.Cmd
	file string
	out  *syncBuf
	done chan struct{}
	err  error
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startFuse(t *testing.T, c *testcluster.Cluster, vol string, size int64, extra ...string) *fuseProc {
	t.Helper()
	testutil.SkipShort(t, "runs torusblk fuse processes")
	testutil.Require(t, "root (FUSE mounts)", testutil.Root())
	_, err := os.Stat("/dev/fuse")
	testutil.Require(t, "/dev/fuse", err)
	file := filepath.Join(t.TempDir(), vol+".fuse")
	args := append([]string{"--etcd", strings.Join(c.Endpoints, ","), "--log-level", "debug", "fuse"}, extra...)
	p := &fuseProc{file: file, out: &syncBuf{}, done: make(chan struct{})}
	p.cmd = exec.Command(proccluster.Bin(t, "torusblk"), append(args, vol, file)...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		_ = unix.Unmount(file, unix.MNT_DETACH)
		if t.Failed() {
			t.Logf("torusblk fuse output:\n%s", p.out.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		var s unix.Statfs_t
		if unix.Statfs(file, &s) == nil && s.Type == 0x65735546 {
			if fi, err := os.Stat(file); err == nil && fi.Size() == size {
				return p
			}
		}
		select {
		case <-p.done:
			t.Fatalf("torusblk fuse exited (%v):\n%s", p.err, p.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not served with %d bytes after 30 s:\n%s", file, size, p.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *fuseProc) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		t.Fatalf("torusblk fuse did not exit within %v:\n%s", d, p.out.String())
		return nil
	}
}

func readVolume(t *testing.T, c *testcluster.Cluster, vol string, off int64, n int) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	v, err := c.Open(ctx, vol, volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	b := make([]byte, n)
	if err := v.ReadAt(ctx, b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// TestFuseFsyncDurable: data written to the FUSE file and fsynced is in
// the volume even when the process is SIGKILLed right after (fsync is the
// volume's FLUSH); the file reads back what was written, has the volume's
// size, follows a resize, and refuses a truncate; --http serves the
// volume's client metrics.
func TestFuseFsyncDurable(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 1, Replication: 1})
	c.CreateVolume("vol1", 32<<20)
	httpAddr := fmt.Sprintf("127.0.0.1:%d", proccluster.FreePort(t, "127.0.0.1"))
	p := startFuse(t, c, "vol1", 32<<20, "--http", httpAddr)
	f, err := os.OpenFile(p.file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	data := randBytes(3 << 20)
	const off = 1<<20 + 4096
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync: %v", err)
	}
	back := make([]byte, len(data))
	if _, err := f.ReadAt(back, off); err != nil || !bytes.Equal(back, data) {
		t.Fatalf("read back through the file: %v, equal %v", err, bytes.Equal(back, data))
	}
	if err := f.Truncate(1 << 20); !errors.Is(err, syscall.EPERM) {
		t.Errorf("truncate: %v, want EPERM", err)
	}
	f.Close()
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var written float64
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, `torus_client_bytes_total{dir="write",volume="vol1"} `); ok {
			_, _ = fmt.Sscan(v, &written)
		}
	}
	if written != float64(len(data)) {
		t.Errorf("metrics: %v bytes written to vol1, want %d", written, len(data))
	}

	ctx := context.Background()
	v, err := c.Meta.Volume(ctx, "vol1")
	if err != nil {
		t.Fatal(err)
	}
	v.Size = 48 << 20
	if err := c.Meta.UpdateVolume(ctx, v); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		fi, err := os.Stat(p.file)
		if err == nil && fi.Size() == 48<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("file size after resize: %v %v", fi.Size(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = p.wait(t, 30*time.Second)
	if !bytes.Equal(readVolume(t, c, "vol1", off, len(data)), data) {
		t.Fatal("fsynced data is not in the volume after a SIGKILL of torusblk fuse")
	}
}

// TestFuseSIGTERM: SIGTERM flushes what was written without fsync,
// unmounts the file, releases the writer lock and exits 0.
func TestFuseSIGTERM(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 1, Replication: 1})
	c.CreateVolume("vol1", 16<<20)
	p := startFuse(t, c, "vol1", 16<<20)
	data := randBytes(1 << 20)
	f, err := os.OpenFile(p.file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	// No fsync, and the descriptor stays open (a close would flush).
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	f.Close()
	if err := p.wait(t, 30*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.out.String())
	}
	var s unix.Statfs_t
	if err := unix.Statfs(p.file, &s); err != nil || s.Type == 0x65735546 {
		t.Fatalf("%s still a FUSE mount after SIGTERM (%v)", p.file, err)
	}
	if w, ok, err := c.Meta.Writer(context.Background(), "vol1"); err != nil || ok {
		t.Fatalf("writer after SIGTERM: %+v %v %v, want none", w, ok, err)
	}
	if !bytes.Equal(readVolume(t, c, "vol1", 0, len(data)), data) {
		t.Fatal("data written before SIGTERM is not in the volume")
	}
}

// TestFuseReadOnly: --read-only serves the volume without taking its lock;
// opening the file for writing fails with EROFS.
func TestFuseReadOnly(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 1, Replication: 1})
	c.CreateVolume("vol1", 16<<20)
	p := startFuse(t, c, "vol1", 16<<20, "--read-only")
	if _, err := os.OpenFile(p.file, os.O_RDWR, 0); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("open for writing: %v, want EROFS", err)
	}
	if _, ok, err := c.Meta.Writer(context.Background(), "vol1"); err != nil || ok {
		t.Fatalf("a read-only attach holds the writer lock (%v, %v)", ok, err)
	}
	f, err := os.Open(p.file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 4096)
	if _, err := f.ReadAt(b, 8<<20); err != nil || !bytes.Equal(b, make([]byte, 4096)) {
		t.Fatalf("read of a fresh volume: %v", err)
	}
}

// TestFuseFencedEIO: once another writer takes the volume over (the lock
// forced and taken again: a new epoch), writes through the file fail with
// EIO at the latest at fsync; nothing is acknowledged and lost.
func TestFuseFencedEIO(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 1, Replication: 1})
	c.CreateVolume("vol1", 16<<20)
	p := startFuse(t, c, "vol1", 16<<20)
	f, err := os.OpenFile(p.file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(randBytes(4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Meta.ForceUnlock(ctx, "vol1"); err != nil {
		t.Fatal(err)
	}
	v, err := c.Open(ctx, "vol1", volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	_, werr := f.WriteAt(randBytes(64<<10), 1<<20)
	serr := f.Sync()
	if !errors.Is(werr, syscall.EIO) && !errors.Is(serr, syscall.EIO) {
		t.Fatalf("write %v, fsync %v after a takeover: want EIO", werr, serr)
	}
	t.Logf("after the takeover: write %v, fsync %v", werr, serr)
}

// TestFuseSIGTERMWhileLooped: SIGTERM while a loop device still holds the
// file: the process flushes, unmounts lazily and exits, and I/O through
// the loop device afterwards fails (EIO) instead of being lost silently;
// what was fsynced before is in the volume.
func TestFuseSIGTERMWhileLooped(t *testing.T) {
	testutil.RequireBinary(t, "losetup")
	c := testcluster.New(t, testcluster.Options{Daemons: 1, Replication: 1})
	c.CreateVolume("vol1", 16<<20)
	p := startFuse(t, c, "vol1", 16<<20)
	out, err := exec.Command("losetup", "--direct-io=on", "--find", "--show", p.file).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := randBytes(64 << 10)
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t, 30*time.Second); err != nil {
		t.Fatalf("exit after SIGTERM with a loop device on the file: %v\n%s", err, p.out.String())
	}
	if !strings.Contains(p.out.String(), "unmounting lazily") {
		t.Errorf("no lazy unmount logged:\n%s", p.out.String())
	}
	_, werr := f.WriteAt(randBytes(4096), 1<<20)
	serr := f.Sync()
	if werr == nil && serr == nil {
		t.Fatal("write and fsync through the loop device succeeded after torusblk fuse exited")
	}
	t.Logf("after exit: write %v, fsync %v", werr, serr)
	if !bytes.Equal(readVolume(t, c, "vol1", 0, len(data)), data) {
		t.Fatal("data fsynced before SIGTERM is not in the volume")
	}
}

// unsynced is how many bytes of vol's segments on the cluster's daemons
// are appended but not yet on stable storage (what a power loss of the
// daemons would drop).
func unsynced(t *testing.T, c *testcluster.Cluster, vol string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := c.Meta.Volume(ctx, vol)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, d := range c.Daemons {
		ps, err := c.Pool.Peer(ctx, d.ID())
		if err != nil {
			t.Fatal(err)
		}
		segs, err := ps.List(ctx, info.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range segs {
			n += s.Length - s.Synced
		}
	}
	return n
}

// TestFuseFsyncSyncsReplicas: fsync of the FUSE file is the volume's
// FLUSH: before it, written bytes sit in the daemon unsynced; once it
// returns, every appended byte of the volume is on the daemon's stable
// storage (exactly what a power loss keeps).
func TestFuseFsyncSyncsReplicas(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 1, Replication: 1})
	c.CreateVolume("vol1", 16<<20)
	p := startFuse(t, c, "vol1", 16<<20)
	f, err := os.OpenFile(p.file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(randBytes(64<<10), 4096); err != nil {
		t.Fatal(err)
	}
	// The write is acknowledged once queued; wait until it is appended.
	var before int64
	for deadline := time.Now().Add(5 * time.Second); before == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		before = unsynced(t, c, "vol1")
	}
	if before == 0 {
		t.Fatal("no unsynced bytes after a write without fsync: the test cannot tell fsync from no fsync")
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if after := unsynced(t, c, "vol1"); after != 0 {
		t.Fatalf("%d bytes unsynced on the daemon after fsync of the file (%d before)", after, before)
	}
	t.Logf("unsynced bytes: %d before fsync, 0 after", before)
}
