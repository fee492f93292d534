package nbd

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torus-storage/torus"
)

func TestClientHandshake(t *testing.T) {
	ex := newMemExports()
	ex.add("vol", 8<<20)
	ex.add("vol@s", 4<<20)
	_, addr := startServer(t, Config{}, ex)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name string
		size int64
		ro   bool
	}{{"vol", 8 << 20, false}, {"vol@s", 4 << 20, true}} {
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		e, err := ClientHandshake(ctx, conn, tc.name)
		if err != nil {
			t.Fatal(err)
		}
		if e.Size != tc.size || e.ReadOnly() != tc.ro || e.MaxBlock != MaxRequestSize || e.MinBlock != 1 || e.Flags&tflagSendDF != 0 {
			t.Fatalf("%s: %+v", tc.name, e)
		}
		// Transmission with simple replies, as the kernel speaks it.
		c := &rawClient{t: t, conn: conn}
		c.send(cmdRead, 0, 5, 0, 512, nil)
		if h, errno, d := c.simpleReply(512); h != 5 || errno != 0 || len(d) != 512 {
			t.Fatalf("read: %d %d", h, errno)
		}
		conn.Close()
	}
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := ClientHandshake(ctx, conn, "missing"); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("unknown export: %v", err)
	}
}

// TestServeConn serves one end of a socketpair, as torusblk does for the
// kernel client.
func TestServeConn(t *testing.T) {
	ex := newMemExports()
	dev := ex.add("vol", 8<<20)
	srv := NewServer(Config{}, ex, nil)
	a, b := socketPair(t)
	served := make(chan error, 1)
	go func() { served <- srv.ServeConn(a) }()
	e, err := ClientHandshake(context.Background(), b, "vol")
	if err != nil || e.Size != 8<<20 {
		t.Fatalf("handshake: %+v %v", e, err)
	}
	c := &rawClient{t: t, conn: b}
	c.send(cmdWrite, cmdFlagFUA, 1, 4096, 2, []byte("hi"))
	if _, errno, _ := c.simpleReply(0); errno != 0 {
		t.Fatalf("write errno %d", errno)
	}
	c.send(cmdDisc, 0, 2, 0, 0, nil)
	if err := <-served; err != nil {
		t.Fatalf("ServeConn: %v", err)
	}
	if !dev.IsClosed() {
		t.Fatal("device not closed after the connection ended")
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := srv.ServeConn(a); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("ServeConn after Shutdown: %v", err)
	}
}

func TestAttachKernelNoDriver(t *testing.T) {
	a, b := socketPair(t)
	defer a.Close()
	defer b.Close()
	err := AttachKernel(context.Background(), "/dev/nbd-does-not-exist", a, "vol")
	if !errors.Is(err, torus.ErrUnavailable) || !strings.Contains(err.Error(), "kernel NBD driver not available: modprobe nbd") {
		t.Fatalf("AttachKernel without a device: %v", err)
	}
}

// TestAttachKernel attaches /dev/nbd0 to an export over a socketpair,
// writes through the block device and reads the data from the export.
func TestAttachKernel(t *testing.T) {
	if _, err := os.Stat("/dev/nbd0"); err != nil {
		t.Skip("kernel NBD driver not available (no /dev/nbd0): modprobe nbd")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	ex := newMemExports()
	dev := ex.add("vol", 16<<20)
	srv := NewServer(Config{}, ex, nil)
	a, b := socketPair(t)
	go srv.ServeConn(a)
	ctx, cancel := context.WithCancel(context.Background())
	attached := make(chan error, 1)
	go func() { attached <- AttachKernel(ctx, "/dev/nbd0", b, "vol") }()
	var f *os.File
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if f, err = os.OpenFile("/dev/nbd0", os.O_RDWR|syscall.O_DIRECT, 0); err == nil {
			st, _ := f.Stat()
			if sz, _ := f.Seek(0, 2); sz == 16<<20 && st != nil {
				break
			}
			f.Close()
		}
		if time.Now().After(deadline) {
			t.Fatal("/dev/nbd0 did not come up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	buf := make([]byte, 4096)
	copy(buf, "kernel")
	if _, err := f.WriteAt(buf, 8192); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	cancel()
	if err := <-attached; err != nil {
		t.Fatal(err)
	}
	srv.Shutdown(context.Background())
	dev.Reopen()
	got := make([]byte, 6)
	dev.ReadAt(context.Background(), got, 8192)
	if string(got) != "kernel" {
		t.Fatalf("export holds %q", got)
	}
}

func socketPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	conv := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conv(fds[0]), conv(fds[1])
}
