package proccluster

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"time"

	"github.com/torus-storage/torus/internal/netns"
)

// Host is a separate "machine" for processes: a network namespace of its
// own whose only way to etcd and to the daemons is a proxy per service
// (netns.Proxy), listening inside the namespace on the service's real
// address. Cut partitions the host from the cluster; Heal reconnects it
// (data held during the cut is delivered late, as after a real partition).
// Tests reach servers inside the host with Dial.
type Host struct {
	NS *netns.NS

	mu      sync.Mutex
	proxies map[string]*netns.Proxy // by upstream address
}

// NewHost makes a host linked to etcd and to every daemon started so far
// (Link adds more). Without permission to create network namespaces the
// test is skipped, unless TORUS_REQUIRE_TOOLS=1, where it fails.
func (c *Cluster) NewHost() *Host {
	t := c.t
	t.Helper()
	h, err := c.TryNewHost()
	if err != nil {
		if errors.Is(err, netns.ErrUnsupported) && os.Getenv("TORUS_REQUIRE_TOOLS") != "1" {
			t.Skipf("network namespaces unavailable: %v", err)
		}
		t.Fatal(err)
	}
	return h
}

// TryNewHost is NewHost returning the error (netns.ErrUnsupported without
// the permission) instead of skipping.
func (c *Cluster) TryNewHost() (*Host, error) {
	t := c.t
	t.Helper()
	ns, err := netns.New()
	if err != nil {
		return nil, err
	}
	h := &Host{NS: ns, proxies: map[string]*netns.Proxy{}}
	c.hosts = append(c.hosts, h)
	u, err := url.Parse(c.EtcdURL)
	if err != nil {
		return nil, err
	}
	h.Link(t, u.Host)
	for _, d := range c.Daemons {
		h.Link(t, d.PeerAddr)
	}
	return h, nil
}

// tb is the part of testing.TB Link needs.
type tb interface {
	Helper()
	Fatalf(format string, args ...any)
}

// Link makes addr (a host:port outside) reachable from inside the host at
// the same address, through a proxy.
func (h *Host) Link(t tb, addr string) *netns.Proxy {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if p, ok := h.proxies[addr]; ok {
		return p
	}
	ln, err := h.NS.Listen(addr)
	if err != nil {
		t.Fatalf("host: listening on %s inside the namespace: %v", addr, err)
	}
	p := netns.NewProxy(ln, addr, nil)
	h.proxies[addr] = p
	return p
}

// Proxy returns the link to addr, nil if there is none.
func (h *Host) Proxy(addr string) *netns.Proxy {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.proxies[addr]
}

// Cut blackholes every link of the host: a network partition.
func (h *Host) Cut() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range h.proxies {
		p.Blackhole()
	}
}

// Heal ends the partition.
func (h *Host) Heal() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range h.proxies {
		p.Heal()
	}
}

// Dial connects to addr from inside the host.
func (h *Host) Dial(addr string) (net.Conn, error) { return h.NS.Dial(addr) }

func (h *Host) close() {
	h.mu.Lock()
	ps := h.proxies
	h.proxies = map[string]*netns.Proxy{}
	h.mu.Unlock()
	for _, p := range ps {
		p.Close()
	}
	h.NS.Close()
}

// StartNBDOn starts `torusblk nbdserve` inside host h; reach it with
// h.Dial(addr).
func (c *Cluster) StartNBDOn(h *Host, extra ...string) (*Proc, string) {
	t := c.t
	t.Helper()
	ip := fmt.Sprintf("127.0.0.%d", 101+len(c.NBD))
	addr := fmt.Sprintf("%s:%d", ip, FreePort(t, ip))
	p := &Proc{Name: fmt.Sprintf("torusblk-%d", len(c.NBD)), NS: h.NS,
		Args: append([]string{Bin(t, "torusblk"), "--etcd", c.EtcdURL, "--log-level", "debug", "nbdserve", "--listen", addr}, extra...)}
	p.Start(t)
	c.NBD = append(c.NBD, p)
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := h.Dial(addr)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			c.DumpLogs()
			t.Fatalf("%s (inside host) not accepting after 30s: %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return p, addr
}
