//go:build kernelnbd

// The real-kernel NBD tests, built only with `go test -tags kernelnbd
// ./cmd/torusblk` as root on a machine where `modprobe nbd` made /dev/nbd0.
// They are not in `make test`: its machines (CI's included) have no nbd
// module, and a test there could only skip, which TORUS_REQUIRE_TOOLS=1
// counts as a failure. Built, anything missing fails them.

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus/internal/attach"
	"github.com/torus-storage/torus/internal/attach/nbdnl"
	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testcluster"
	"github.com/torus-storage/torus/internal/testutil"
)

// requireKernelNBD fails the test unless it runs as root with a kernel
// NBD device: built only with -tags kernelnbd, these tests never skip.
func requireKernelNBD(t *testing.T) {
	t.Helper()
	if err := testutil.Root(); err != nil {
		t.Fatalf("kernelnbd tests: %v", err)
	}
	if _, err := os.Stat("/dev/nbd0"); err != nil {
		t.Fatalf("kernelnbd tests: %v (modprobe nbd)", err)
	}
}

// nbdProc is a real `torusblk nbd` process.
type nbdProc struct {
	cmd  *exec.Cmd
	out  *syncBuf
	done chan struct{}
	err  error
}

func startNBD(t *testing.T, c *testcluster.Cluster, stateDir, vol, dev string) *nbdProc {
	t.Helper()
	p := &nbdProc{out: &syncBuf{}, done: make(chan struct{})}
	p.cmd = exec.Command(proccluster.Bin(t, "torusblk"), "--etcd", strings.Join(c.Endpoints, ","), "--log-level", "debug",
		"nbd", "--state-dir", stateDir, "--dead-conn-timeout", "2m", vol, dev)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("torusblk nbd output:\n%s", p.out.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(p.out.String(), dev+"\n") {
		select {
		case <-p.done:
			t.Fatalf("torusblk nbd exited (%v):\n%s", p.err, p.out.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not attached after 60 s:\n%s", dev, p.out.String())
		}
	}
	return p
}

// sysSize is a block device's size in bytes from sysfs.
func sysSize(t *testing.T, dev string) int64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "size"))
	if err != nil {
		t.Fatal(err)
	}
	var sectors int64
	fmt.Sscan(strings.TrimSpace(string(b)), &sectors)
	return sectors * 512
}

// alignedBuf is a page-aligned buffer, for O_DIRECT.
func alignedBuf(t *testing.T, n int) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// TestNBDKernelSurvivesKill attaches a volume to /dev/nbd0 with the real
// kernel, writes and fsyncs, SIGKILLs torusblk nbd, starts a write while
// no process serves the device (the kernel holds it), restarts torusblk
// nbd with the same state directory (it reconfigures the device from its
// record), and reads everything back through the device and from the
// volume; then a resize grows the device and SIGTERM detaches.
// Built with -tags kernelnbd (requireKernelNBD).
func TestNBDKernelSurvivesKill(t *testing.T) {
	requireKernelNBD(t)
	const dev, size = "/dev/nbd0", 32 << 20
	c := testcluster.New(t, testcluster.Options{Daemons: 1, Replication: 1})
	c.CreateVolume("vol1", size)
	state := t.TempDir()
	p := startNBD(t, c, state, "vol1", dev)
	t.Cleanup(func() {
		if nl, err := nbdnl.Open(context.Background()); err == nil {
			_ = nl.Disconnect(context.Background(), 0)
			nl.Close()
		}
	})
	if got := sysSize(t, dev); got != size {
		t.Fatalf("%s has %d bytes, want %d", dev, got, size)
	}
	f, err := os.OpenFile(dev, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	first := alignedBuf(t, 1<<20)
	copy(first, randBytes(len(first)))
	if _, err := f.WriteAt(first, 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}

	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
	// I/O while nothing serves the device: held by the kernel until the
	// restarted process reconnects (dead-conn-timeout), not failed.
	second := alignedBuf(t, 64<<10)
	copy(second, randBytes(len(second)))
	held := make(chan error, 1)
	go func() {
		_, err := f.WriteAt(second, 8<<20)
		if err == nil {
			err = f.Sync()
		}
		held <- err
	}()
	time.Sleep(500 * time.Millisecond)

	p2 := startNBD(t, c, state, "vol1", dev)
	if !strings.Contains(p2.out.String(), "reattached") {
		t.Fatalf("the restarted torusblk nbd did not reattach:\n%s", p2.out.String())
	}
	select {
	case err := <-held:
		if err != nil {
			t.Fatalf("write held across the restart: %v", err)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("write held across the restart did not complete")
	}
	back := alignedBuf(t, len(first))
	if _, err := f.ReadAt(back, 4<<20); err != nil || !bytes.Equal(back, first) {
		t.Fatalf("read back through %s after the restart: %v, equal %v", dev, err, bytes.Equal(back, first))
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
	for sysSize(t, dev) != 48<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("%s has %d bytes after the volume grew to %d", dev, sysSize(t, dev), 48<<20)
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.Close()

	if err := p2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p2.done:
		if p2.err != nil {
			t.Fatalf("torusblk nbd after SIGTERM: %v", p2.err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("torusblk nbd did not exit after SIGTERM")
	}
	if _, err := os.Stat(attach.KernelStatePath(state, "vol1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("record after detach: %v", err)
	}
	if !bytes.Equal(readVolume(t, c, "vol1", 4<<20, len(first)), first) || !bytes.Equal(readVolume(t, c, "vol1", 8<<20, len(second)), second) {
		t.Fatal("the volume does not hold what was written through the device")
	}
}

// TestAttacherKernelNBD: internal/attach with the nbd backend and the real
// kernel (-tags kernelnbd, requireKernelNBD): Attach starts a detached torusblk nbd;
// after a SIGKILL of that process the attachment reads as dead while the
// kernel holds the device; ReviveAll restarts the process, which takes the
// same device over; after a second SIGKILL Attach does the same; the
// fsynced data reads back; Detach disconnects it.
func TestAttacherKernelNBD(t *testing.T) {
	requireKernelNBD(t)
	c := testcluster.New(t, testcluster.Options{Daemons: 1, Replication: 1})
	c.CreateVolume("vol1", 32<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	a, err := attach.New(attach.Options{Bin: proccluster.Bin(t, "torusblk"), StateDir: t.TempDir(), Meta: c.Meta, Logger: c.Log,
		Backend: attach.BackendNBD, Args: []string{"--etcd", strings.Join(c.Endpoints, ","), "--log-level", "debug"}})
	if err != nil {
		t.Fatal(err)
	}
	at, err := a.Attach(ctx, "vol1", false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Detach(context.Background(), "vol1") })
	if at.Backend != attach.BackendNBD || !strings.HasPrefix(at.Device, "/dev/nbd") || sysSize(t, at.Device) != 32<<20 {
		t.Fatalf("attachment %+v (size %d)", at, sysSize(t, at.Device))
	}
	data := alignedBuf(t, 1<<20)
	copy(data, randBytes(len(data)))
	f, err := os.OpenFile(at.Device, os.O_RDWR|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(at.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok, _ := a.Get("vol1"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Get still reports the attachment alive after SIGKILL")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// What a restarted node plugin does first (ReviveAll), and what a
	// NodeStage would do (Attach), both take the device over.
	revived, err := a.ReviveAll(ctx)
	if err != nil || len(revived) != 1 || revived[0].Device != at.Device || revived[0].PID == at.PID {
		t.Fatalf("ReviveAll: %+v, %v; want %s served by a new process", revived, err, at.Device)
	}
	again, err := a.Attach(ctx, "vol1", false)
	if err != nil || again != revived[0] {
		t.Fatalf("Attach after ReviveAll: %+v, %v; want %+v", again, err, revived[0])
	}
	if err := syscall.Kill(again.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		if _, ok, _ := a.Get("vol1"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Get still reports the attachment alive after the second SIGKILL")
		}
		time.Sleep(20 * time.Millisecond)
	}
	again, err = a.Attach(ctx, "vol1", false)
	if err != nil {
		t.Fatal(err)
	}
	if again.Device != at.Device || again.PID == revived[0].PID {
		t.Fatalf("Attach after a second SIGKILL: %+v, want the same device %s served by a new process", again, at.Device)
	}
	back := alignedBuf(t, len(data))
	if _, err := f.ReadAt(back, 2<<20); err != nil || !bytes.Equal(back, data) {
		t.Fatalf("read back through the kept-open device: %v, equal %v", err, bytes.Equal(back, data))
	}
	f.Close()
	if err := a.Detach(ctx, "vol1"); err != nil {
		t.Fatal(err)
	}
	if n := sysSize(t, at.Device); n != 0 {
		t.Fatalf("%s still has %d bytes after Detach", at.Device, n)
	}
}
