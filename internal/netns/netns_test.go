//go:build linux

package netns

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func newNS(t *testing.T) *NS {
	t.Helper()
	ns, err := New()
	if errors.Is(err, ErrUnsupported) && os.Getenv("TORUS_REQUIRE_TOOLS") != "1" {
		t.Skipf("no network namespaces here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

func TestIsolation(t *testing.T) {
	ns := newNS(t)
	ln, err := ns.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("inside"))
			c.Close()
		}
	}()
	// From inside: reachable.
	c, err := ns.Dial(ln.Addr().String())
	if err != nil {
		t.Fatalf("dial inside: %v", err)
	}
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "inside" {
		t.Fatalf("inside read %q", got)
	}
	// From outside the same address is a different loopback: no listener.
	if c, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		b, _ := io.ReadAll(c)
		c.Close()
		if string(b) == "inside" {
			t.Fatal("the namespace's listener is reachable from outside")
		}
	}
	// The host listener is not reachable from inside.
	host, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	if c, err := ns.Dial(host.Addr().String()); err == nil {
		c.Close()
		t.Fatal("a host listener is reachable from inside the namespace")
	}
}

func TestStartInside(t *testing.T) {
	ns := newNS(t)
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("readlink", "/proc/self/ns/net")
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := ns.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	child := strings.TrimSpace(out.String())
	if child == "" || child == self {
		t.Fatalf("child namespace %q, ours %q: want a different one", child, self)
	}
	// The calling goroutine's thread went back: we are still in ours.
	if now, _ := os.Readlink("/proc/thread-self/ns/net"); now != self {
		t.Fatalf("thread left in namespace %q", now)
	}
}

func TestProxyBlackholeAndHeal(t *testing.T) {
	ns := newNS(t)
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	// Same address inside the namespace as outside.
	ln, err := ns.Listen(up.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	p := NewProxy(ln, up.Addr().String(), nil)
	defer p.Close()
	c, err := ns.Dial(up.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo := func(msg string, d time.Duration) (string, error) {
		c.SetDeadline(time.Now().Add(d))
		if _, err := c.Write([]byte(msg)); err != nil {
			return "", err
		}
		b := make([]byte, len(msg))
		n, err := io.ReadFull(c, b)
		return string(b[:n]), err
	}
	if got, err := echo("hello", 5*time.Second); err != nil || got != "hello" {
		t.Fatalf("through the proxy: %q, %v", got, err)
	}
	p.Blackhole()
	if got, err := echo("lost?", 300*time.Millisecond); err == nil {
		t.Fatalf("echo through a cut link returned %q", got)
	}
	p.Heal()
	// The bytes written during the cut are delivered late.
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 5)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "lost?" {
		t.Fatalf("held bytes after heal: %q, %v", b, err)
	}
	if got, err := echo("again", 5*time.Second); err != nil || got != "again" {
		t.Fatalf("after heal: %q, %v", got, err)
	}
	to, from := p.Forwarded()
	if to != 15 || from != 15 {
		t.Fatalf("forwarded %d/%d bytes, want 15/15", to, from)
	}
	p.Reset()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(b); err == nil {
		t.Fatal("read after Reset succeeded")
	}
	// New connections while cut are held, then served on heal.
	p.Blackhole()
	c2, err := ns.Dial(up.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.Write([]byte("x"))
	c2.SetDeadline(time.Now().Add(200 * time.Millisecond))
	if n, _ := c2.Read(b); n != 0 {
		t.Fatal("a new connection was served while the link was cut")
	}
	p.Heal()
	c2.SetDeadline(time.Now().Add(5 * time.Second))
	if n, err := c2.Read(b); n != 1 || b[0] != 'x' {
		t.Fatalf("new connection after heal: %d %v", n, err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

// echoServer listens on 127.0.0.1 and echoes every connection.
func echoServer(t *testing.T) net.Listener {
	t.Helper()
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return up
}

// TestProxyDelayAndReset needs no namespace: a proxy on 127.0.0.1 in
// front of an echo server, slowed down, then reset.
func TestProxyDelayAndReset(t *testing.T) {
	up := echoServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := NewProxy(ln, up.Addr().String(), nil)
	defer p.Close()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo := func(msg string) (time.Duration, error) {
		start := time.Now()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			return 0, err
		}
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(c, b); err != nil {
			return 0, err
		}
		if string(b) != msg {
			return 0, errors.New("echo differs: " + string(b))
		}
		return time.Since(start), nil
	}
	if _, err := echo("warm"); err != nil {
		t.Fatal(err)
	}
	p.SetDelay(100*time.Millisecond, 200*time.Millisecond)
	took, err := echo("slow")
	if err != nil {
		t.Fatal(err)
	}
	if took < 300*time.Millisecond || took > 2*time.Second {
		t.Fatalf("round trip through a 100+200 ms link took %v", took)
	}
	// Order is kept across a change of delay.
	p.SetDelay(0, 300*time.Millisecond)
	c.Write([]byte("a"))
	time.Sleep(20 * time.Millisecond)
	p.SetDelay(0, 0)
	c.Write([]byte("b"))
	b := make([]byte, 2)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "ab" {
		t.Fatalf("bytes after lowering the delay: %q, %v", b, err)
	}
	if n := p.Conns(); n != 1 {
		t.Fatalf("Conns = %d, want 1", n)
	}
	p.Reset()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(b)
	if err == nil || !strings.Contains(err.Error(), "reset") {
		t.Fatalf("read after Reset: %v, want connection reset", err)
	}
	// A new connection after the reset is served.
	c, err = net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := echo("again"); err != nil {
		t.Fatal(err)
	}
}
