package nbd

import (
	"context"
	"errors"
	"net"
	"os"
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
