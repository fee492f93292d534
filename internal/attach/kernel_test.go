package attach

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/attach/nbdnl"
	"github.com/torus-storage/torus/internal/memdev"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/nbd"
)

// fakeKernel is the kernel's NBD client for ServeKernel's tests: Connect
// and Reconfigure take the socket (a duplicate, as the kernel takes a
// reference), and the test reads and writes through it with the
// transmission phase's simple requests, as the kernel does.
type fakeKernel struct {
	mu    sync.Mutex
	conns map[uint32]net.Conn // connected devices; nil: configured, connection dead
	sizes map[uint32]uint64
	backs map[uint32]string // NBD_ATTR_BACKEND_IDENTIFIER by device
	calls []string
	next  uint32 // the index Connect{Index: -1} gets
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{conns: map[uint32]net.Conn{}, sizes: map[uint32]uint64{}, backs: map[uint32]string{}, next: 2}
}

func (k *fakeKernel) take(fds []int) (net.Conn, error) {
	if len(fds) != 1 {
		return nil, fmt.Errorf("fake kernel: %d sockets, want 1", len(fds))
	}
	d, err := unix.Dup(fds[0])
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(d), "fake-kernel")
	defer f.Close()
	return net.FileConn(f)
}

func (k *fakeKernel) Connect(ctx context.Context, r nbdnl.Connect) (uint32, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	idx := k.next
	if r.Index >= 0 {
		idx = uint32(r.Index)
	}
	if _, ok := k.conns[idx]; ok {
		return 0, fmt.Errorf("fake kernel: %w: %w", torus.ErrInUse, unix.EBUSY)
	}
	if r.BlockSizeBytes != 4096 || r.DeadConnTimeout <= 0 || r.Backend == "" || r.ClientFlags != 0 {
		return 0, fmt.Errorf("fake kernel: unexpected connect %+v", r)
	}
	c, err := k.take(r.Sockets)
	if err != nil {
		return 0, err
	}
	k.conns[idx], k.sizes[idx], k.backs[idx] = c, r.SizeBytes, r.Backend
	k.calls = append(k.calls, fmt.Sprintf("connect %d size %d backend %s", idx, r.SizeBytes, r.Backend))
	return idx, nil
}

func (k *fakeKernel) Reconfigure(ctx context.Context, r nbdnl.Reconfigure) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	old, ok := k.conns[r.Index]
	if !ok {
		return fmt.Errorf("fake kernel: reconfigure of unconfigured %d: %w", r.Index, unix.EINVAL)
	}
	if r.SizeBytes != 0 {
		k.sizes[r.Index] = r.SizeBytes
		k.calls = append(k.calls, fmt.Sprintf("resize %d %d", r.Index, r.SizeBytes))
	}
	if k.backs[r.Index] != "" && r.Backend != k.backs[r.Index] {
		return fmt.Errorf("fake kernel: backend %q of a device of %q: %w", r.Backend, k.backs[r.Index], unix.EINVAL)
	}
	if len(r.Sockets) > 0 {
		if old != nil {
			return errors.New("fake kernel: reconfigure with a live connection (the kernel would ignore the socket)")
		}
		c, err := k.take(r.Sockets)
		if err != nil {
			return err
		}
		k.conns[r.Index] = c
		k.calls = append(k.calls, fmt.Sprintf("reconnect %d backend %s", r.Index, r.Backend))
	}
	return nil
}

func (k *fakeKernel) Disconnect(ctx context.Context, index uint32) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if c := k.conns[index]; c != nil {
		var req [28]byte
		binary.BigEndian.PutUint32(req[0:], 0x25609513)
		binary.BigEndian.PutUint16(req[6:], 2) // NBD_CMD_DISC
		c.Write(req[:])
		c.Close()
	}
	delete(k.conns, index)
	k.calls = append(k.calls, fmt.Sprintf("disconnect %d", index))
	return nil
}

func (k *fakeKernel) Status(ctx context.Context, index int) ([]nbdnl.Device, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	_, ok := k.conns[uint32(index)]
	return []nbdnl.Device{{Index: uint32(index), Connected: ok}}, nil
}

// backend is the device's /sys/block/nbdN/backend (KernelConfig.DeviceBackend).
func (k *fakeKernel) backend(index uint32) (string, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	b, ok := k.backs[index]
	return b, ok
}

// hold makes device index configured for backend with a dead connection,
// as another process left it.
func (k *fakeKernel) hold(index uint32, backend string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.conns[index], k.backs[index] = nil, backend
}

// die is the serving process's death: the connection drops, the device
// stays configured, waiting for a reconfigure.
func (k *fakeKernel) die(index uint32) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if c := k.conns[index]; c != nil {
		c.Close()
	}
	k.conns[index] = nil
}

func (k *fakeKernel) log() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return strings.Join(k.calls, "\n")
}

// io sends one simple request on device index's connection and returns
// the reply's data.
func (k *fakeKernel) io(t *testing.T, index uint32, typ uint16, off int64, data []byte, n int) []byte {
	t.Helper()
	k.mu.Lock()
	c := k.conns[index]
	k.mu.Unlock()
	if c == nil {
		t.Fatalf("device %d has no connection", index)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req := make([]byte, 28, 28+len(data))
	binary.BigEndian.PutUint32(req[0:], 0x25609513)
	binary.BigEndian.PutUint16(req[6:], typ)
	binary.BigEndian.PutUint64(req[8:], 42)
	binary.BigEndian.PutUint64(req[16:], uint64(off))
	binary.BigEndian.PutUint32(req[24:], uint32(max(n, len(data))))
	if _, err := c.Write(append(req, data...)); err != nil {
		t.Fatal(err)
	}
	var rep [16]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		t.Fatal(err)
	}
	if m, e := binary.BigEndian.Uint32(rep[0:]), binary.BigEndian.Uint32(rep[4:]); m != 0x67446698 || e != 0 {
		t.Fatalf("reply magic %#x error %d", m, e)
	}
	out := make([]byte, n)
	if _, err := io.ReadFull(c, out); err != nil {
		t.Fatal(err)
	}
	return out
}

func (k *fakeKernel) write(t *testing.T, index uint32, off int64, data []byte) {
	k.io(t, index, 1, off, data, 0)
	k.io(t, index, 3, 0, nil, 0) // FLUSH
}

func (k *fakeKernel) read(t *testing.T, index uint32, off int64, n int) []byte {
	return k.io(t, index, 0, off, nil, n)
}

// growDev is a memdev whose size the test can grow.
type growDev struct {
	*memdev.Device
	size atomic.Int64
}

func (g *growDev) Size() int64 { return g.size.Load() }

type oneExport struct {
	name string
	dev  *growDev
}

func (o oneExport) Open(ctx context.Context, name string, readOnly bool) (torus.Device, error) {
	if name != o.name {
		return nil, fmt.Errorf("%q: %w", name, torus.ErrNotExist)
	}
	o.dev.Reopen()
	return o.dev, nil
}
func (o oneExport) List(ctx context.Context) ([]nbd.ExportInfo, error) { return nil, nil }
func (o oneExport) Default(ctx context.Context) (string, error)        { return "", nil }

func newOneExport(name string, size int64) oneExport {
	d := &growDev{Device: memdev.New(64<<20, false)}
	d.size.Store(size)
	return oneExport{name: name, dev: d}
}

type serving struct {
	cancel context.CancelFunc
	done   chan error
	dev    chan string
}

func startKernel(t *testing.T, cfg KernelConfig) *serving {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &serving{cancel: cancel, done: make(chan error, 1), dev: make(chan string, 1)}
	cfg.Attached = func(d string) { s.dev <- d }
	if k, ok := cfg.Netlink.(*fakeKernel); ok {
		cfg.DeviceBackend = k.backend
	}
	cfg.Logger = testutil.Logger(t)
	go func() { s.done <- ServeKernel(ctx, cfg) }()
	t.Cleanup(func() { cancel(); <-s.done })
	return s
}

func (s *serving) attached(t *testing.T) string {
	t.Helper()
	select {
	case d := <-s.dev:
		return d
	case err := <-s.done:
		t.Fatalf("ServeKernel ended before attaching: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("not attached after 20 s")
	}
	return ""
}

func (s *serving) stop(t *testing.T) error {
	t.Helper()
	s.cancel()
	select {
	case err := <-s.done:
		s.done <- err // for the cleanup
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("ServeKernel did not return after its ctx ended")
	}
	return nil
}

// TestServeKernelAttachResizeDetach: connect with the handshake's size and
// flags, data through the device lands in the volume, a grown volume grows
// the device, ctx's end disconnects, flushes and removes the record.
func TestServeKernelAttachResizeDetach(t *testing.T) {
	k := newFakeKernel()
	ex := newOneExport("pv1", 16<<20)
	dir := t.TempDir()
	s := startKernel(t, KernelConfig{Volume: "pv1", StateDir: dir, Netlink: k, Exports: ex, ResizeInterval: 10 * time.Millisecond})
	if dev := s.attached(t); dev != "/dev/nbd2" {
		t.Fatalf("attached as %s, want the kernel's pick /dev/nbd2", dev)
	}
	st, ok, err := loadKernelState(KernelStatePath(dir, "pv1"), "pv1")
	if err != nil || !ok || st.Index != 2 || st.PID != os.Getpid() || st.Backend != "torus:pv1" {
		t.Fatalf("record %+v, %v, %v", st, ok, err)
	}
	data := bytes.Repeat([]byte("torus"), 1000)
	k.write(t, 2, 8192, data)
	got := make([]byte, len(data))
	if err := ex.dev.ReadAt(context.Background(), got, 8192); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("volume holds %q..., %v", got[:10], err)
	}
	ex.dev.size.Store(32 << 20)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(k.log(), "resize 2 33554432") {
		if time.Now().After(deadline) {
			t.Fatalf("no resize; kernel saw:\n%s", k.log())
		}
		time.Sleep(10 * time.Millisecond)
	}
	flushes := ex.dev.Flushes()
	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}
	if ex.dev.Flushes() <= flushes-1 || !ex.dev.IsClosed() {
		t.Fatalf("volume not flushed and closed on detach (flushes %d→%d, closed %v)", flushes, ex.dev.Flushes(), ex.dev.IsClosed())
	}
	if _, err := os.Stat(KernelStatePath(dir, "pv1")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("record after detach: %v", err)
	}
	want := "connect 2 size 16777216 backend torus:pv1\nresize 2 33554432\ndisconnect 2"
	if k.log() != want {
		t.Fatalf("kernel saw:\n%s\nwant:\n%s", k.log(), want)
	}
}

// deadPID is the PID of a process that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	c := exec.Command("true")
	if err := c.Run(); err != nil {
		t.Fatal(err)
	}
	return c.Process.Pid
}

// TestServeKernelReattach: the record of a process that died, whose device
// the kernel still holds, makes ServeKernel hand the device a new socket
// (RECONFIGURE, never a second CONNECT), and the data written before the
// death reads back through it.
func TestServeKernelReattach(t *testing.T) {
	k := newFakeKernel()
	ex := newOneExport("pv1", 16<<20)
	dir := t.TempDir()
	cfg := KernelConfig{Volume: "pv1", Device: "/dev/nbd5", StateDir: dir, Netlink: k, Exports: ex}
	s := startKernel(t, cfg)
	if dev := s.attached(t); dev != "/dev/nbd5" {
		t.Fatalf("attached as %s", dev)
	}
	data := bytes.Repeat([]byte{0xa5}, 4096)
	k.write(t, 5, 4096, data)
	// The first server's connection drops as if its process were killed;
	// the record now names a dead process (what SIGKILL leaves).
	k.die(5)
	// The first ServeKernel sees its connection closed as a detach from
	// outside and returns; it disconnects nothing.
	select {
	case err := <-s.done:
		s.done <- err
	case <-time.After(20 * time.Second):
		t.Fatal("ServeKernel did not see its connection drop")
	}
	st := kernelState{Volume: "pv1", Index: 5, Backend: "torus:pv1", PID: deadPID(t), StartTime: 1}
	b, _ := encodeKernelState(st)
	if err := os.WriteFile(KernelStatePath(dir, "pv1"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	k.mu.Lock()
	k.calls = nil
	k.mu.Unlock()

	s2 := startKernel(t, cfg)
	if dev := s2.attached(t); dev != "/dev/nbd5" {
		t.Fatalf("reattached as %s", dev)
	}
	if got := k.read(t, 5, 4096, 4096); !bytes.Equal(got, data) {
		t.Fatalf("read back %x..., want a5...", got[:8])
	}
	if log := k.log(); log != "reconnect 5 backend torus:pv1" {
		t.Fatalf("kernel saw:\n%s\nwant only the reconnect", log)
	}
	if st, _, _ := loadKernelState(KernelStatePath(dir, "pv1"), "pv1"); st.PID != os.Getpid() {
		t.Fatalf("record names pid %d after the reattach", st.PID)
	}
}

// TestServeKernelRefusals: a record of a live process, or of another
// device than asked, is refused with ErrInUse; a record whose device the
// kernel no longer has is dropped and the volume attached anew.
func TestServeKernelRefusals(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	write := func(st kernelState) {
		b, _ := encodeKernelState(st)
		if err := os.WriteFile(KernelStatePath(dir, "pv1"), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	start, err := procStart(os.Getppid())
	if err != nil {
		t.Fatal(err)
	}
	k := newFakeKernel()
	ex := newOneExport("pv1", 16<<20)
	write(kernelState{Volume: "pv1", Index: 1, Backend: "torus:pv1", PID: os.Getppid(), StartTime: start})
	err = ServeKernel(ctx, KernelConfig{Volume: "pv1", StateDir: dir, Netlink: k, Exports: ex})
	if !errors.Is(err, torus.ErrInUse) || !strings.Contains(err.Error(), fmt.Sprint(os.Getppid())) {
		t.Fatalf("record of a live process: %v, want ErrInUse naming it", err)
	}
	// Device 1 is held for pv1 (its process died): asking for another
	// device is refused.
	k.hold(1, "torus:pv1")
	write(kernelState{Volume: "pv1", Index: 1, Backend: "torus:pv1", PID: deadPID(t), StartTime: 1})
	err = ServeKernel(ctx, KernelConfig{Volume: "pv1", Device: "/dev/nbd4", StateDir: dir, Netlink: k, Exports: ex, DeviceBackend: k.backend})
	if !errors.Is(err, torus.ErrInUse) {
		t.Fatalf("record of another held device: %v, want ErrInUse", err)
	}
	// Device 7 is held by another volume (the record outlived its device,
	// and the index went to someone else): not reattached.
	k.hold(7, "torus:other")
	write(kernelState{Volume: "pv1", Index: 7, Backend: "torus:pv1", PID: deadPID(t), StartTime: 1})
	s := startKernel(t, KernelConfig{Volume: "pv1", StateDir: dir, Netlink: k, Exports: ex})
	if dev := s.attached(t); dev != "/dev/nbd2" {
		t.Fatalf("attached as %s, want a new device, not another volume's /dev/nbd7", dev)
	}
	if strings.Contains(k.log(), "reconnect") {
		t.Fatalf("reconnected another volume's device:\n%s", k.log())
	}
	if err := s.stop(t); err != nil {
		t.Fatal(err)
	}
	// Device 3 is in the record but no longer configured: the record is
	// stale; the named device is attached.
	write(kernelState{Volume: "pv1", Index: 3, Backend: "torus:pv1", PID: deadPID(t), StartTime: 1})
	s = startKernel(t, KernelConfig{Volume: "pv1", Device: "/dev/nbd4", StateDir: dir, Netlink: k, Exports: ex})
	if dev := s.attached(t); dev != "/dev/nbd4" {
		t.Fatalf("attached as %s after a stale record, want /dev/nbd4", dev)
	}
	for _, bad := range []KernelConfig{
		{Volume: "../x", StateDir: dir, Netlink: k, Exports: ex},
		{Volume: "pv1", Device: "/dev/sda", StateDir: dir, Netlink: k, Exports: ex},
		{Volume: "pv1", StateDir: "rel", Netlink: k, Exports: ex},
		{Volume: "pv1", StateDir: dir, Exports: ex},
	} {
		if err := ServeKernel(ctx, bad); !errors.Is(err, torus.ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", bad, err)
		}
	}
	if err := ServeKernel(ctx, KernelConfig{Volume: "nope", StateDir: dir, Netlink: k, Exports: ex}); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("unknown volume: %v, want ErrNotExist", err)
	}
}

// TestKernelStateGolden pins `torusblk nbd`'s record
// (testdata/nbd-state-v1.json).
func TestKernelStateGolden(t *testing.T) {
	s := kernelState{Volume: "pv1", Index: 3, Backend: "torus:pv1", PID: 4242, StartTime: 123456}
	b, err := encodeKernelState(s)
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "nbd-state-v1.json")
	if *rewrite {
		if err := os.WriteFile(golden, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("encoded record differs from %s (run with -rewrite and review the diff):\n%s", golden, b)
	}
	s.Version = KernelStateVersion
	if got, err := decodeKernelState(want); err != nil || got != s {
		t.Fatalf("decoded %+v, %v", got, err)
	}
	for _, bad := range []string{
		strings.Replace(string(want), `"version": 1`, `"version": 2`, 1),
		strings.Replace(string(want), `"pid": 4242`, `"pid": 0`, 1),
		strings.Replace(string(want), `"backend": "torus:pv1"`, `"backend": ""`, 1),
		`[`,
	} {
		if _, err := decodeKernelState([]byte(bad)); !errors.Is(err, torus.ErrCorrupt) {
			t.Errorf("decode %q: %v, want ErrCorrupt", bad, err)
		}
	}
}
