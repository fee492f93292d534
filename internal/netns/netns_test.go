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
