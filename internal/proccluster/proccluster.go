// Package proccluster runs a Torus cluster of real processes for tests:
// Debian's etcd, torusd daemons and torusblk NBD servers, each a child
// process on its own 127.0.0.x address, which tests can SIGKILL, restart,
// stop and resume.
//
// Binaries come from $TORUS_BIN (set by `make test`) or are built once per
// test binary into a temporary directory.
package proccluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/netns"
	"github.com/torus-storage/torus/internal/testutil"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// Bin returns the path of a Torus binary (torusd, torusctl, torusblk,
// torus-csi): from TORUS_BIN when it holds it, else built once per test
// binary.
func Bin(t testing.TB, name string) string {
	t.Helper()
	if dir := os.Getenv("TORUS_BIN"); dir != "" {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "torus-bin-")
		if buildErr != nil {
			return
		}
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		cmd := exec.Command("go", "build", "-o", buildDir+"/", "./cmd/torusd", "./cmd/torusctl", "./cmd/torusblk", "./cmd/torus-csi")
		cmd.Dir = root
		out, err := cmd.CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, name)
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// FreePort returns a free TCP port on ip.
func FreePort(t testing.TB, ip string) int {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Proc is a child process the cluster owns.
type Proc struct {
	Name string
	Args []string
	Env  []string
	// NS, when set, runs the process in that network namespace (see
	// Cluster.NewHost).
	NS   *netns.NS
	cmd  *exec.Cmd
	log  *lockedBuffer
	mu   sync.Mutex
	done chan struct{}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  *bytes.Buffer
}

func (w *lockedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// Start starts (or restarts) the process.
func (p *Proc) Start(t testing.TB) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.log == nil {
		p.log = &lockedBuffer{b: &bytes.Buffer{}}
	}
	cmd := exec.Command(p.Args[0], p.Args[1:]...)
	cmd.Env = append(os.Environ(), p.Env...)
	w := p.log
	cmd.Stdout = w
	cmd.Stderr = w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	fmt.Fprintf(w, "=== start %s\n", strings.Join(p.Args, " "))
	start := cmd.Start
	if p.NS != nil {
		start = func() error { return p.NS.Start(cmd) }
	}
	if err := start(); err != nil {
		t.Fatalf("starting %s: %v", p.Name, err)
	}
	p.cmd = cmd
	done := make(chan struct{})
	p.done = done
	go func() {
		cmd.Wait()
		close(done)
	}()
}

// Running reports whether the process is alive.
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Signal sends sig and, for SIGKILL and SIGTERM, waits for the exit.
func (p *Proc) Signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, sig)
	if sig == syscall.SIGKILL || sig == syscall.SIGTERM {
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			t.Errorf("%s did not exit within 60s of %v", p.Name, sig)
		}
	}
}

// Kill sends SIGKILL and waits.
func (p *Proc) Kill(t testing.TB) { p.Signal(t, syscall.SIGKILL) }

// ExitCode is the exit status after the process ended.
func (p *Proc) ExitCode() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.ProcessState == nil {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Pid is the process ID, 0 when not started.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Output returns what the process printed so far.
func (p *Proc) Output() string {
	p.mu.Lock()
	log := p.log
	p.mu.Unlock()
	if log == nil {
		return ""
	}
	return log.String()
}

// Cluster is etcd plus daemons, started by New.
type Cluster struct {
	t   testing.TB
	Dir string
	// EtcdURL is etcd's client URL; with Options.EtcdMembers > 1 the
	// members' URLs, comma-separated (what --etcd takes).
	EtcdURL string
	// Etcd is the first etcd member; EtcdMembers all of them.
	Etcd        *Proc
	EtcdMembers []*Proc
	// EtcdURLs are the members' client URLs, in order.
	EtcdURLs []string
	// EtcdCerts is the certificates directory of an EtcdTLS cluster: its
	// own CA, etcd.eN.crt per member and client.torus.crt, which every
	// Torus process gets through TORUS_ETCD_CERT/KEY/CA.
	EtcdCerts string
	// EtcdEnv is given to every torusd, torusblk and torusctl started
	// after it is set (TORUS_ETCD_*; Options.EtcdSetup may add to it).
	EtcdEnv []string
	Daemons []*Daemon
	NBD     []*Proc
	// Opts are the options New was called with (defaults filled in).
	Opts Options
	// hosts are the network namespaces made by NewHost.
	hosts []*Host
	// Certs is the certificates directory of a Secure cluster.
	Certs string
	// links are the daemons' proxies (Options.Links).
	links []*netns.Proxy
}

// PeerEnv is the environment that gives torusblk or torusctl client
// certificate name of a Secure cluster (nil for a plain one).
func (c *Cluster) PeerEnv(name string) []string {
	if c.Certs == "" {
		return nil
	}
	return []string{
		"TORUS_PEER_CERT=" + filepath.Join(c.Certs, "client."+name+".crt"),
		"TORUS_PEER_KEY=" + filepath.Join(c.Certs, "client."+name+".key"),
		"TORUS_PEER_CA=" + filepath.Join(c.Certs, "ca.crt"),
	}
}

// Daemon is one torusd.
type Daemon struct {
	*Proc
	IP string
	// PeerAddr is the peer address the daemon advertises in etcd: what
	// writers and other daemons dial. With Options.Links it is PeerLink's
	// address, and the daemon listens on ListenAddr behind it.
	PeerAddr   string
	ListenAddr string
	HTTPAddr   string
	DataDir    string
	// PeerLink (Options.Links) carries every connection into the daemon's
	// peer port: from writers and from the other daemons. Blackhole,
	// SetDelay or Reset it to fault every link into the daemon at once.
	PeerLink *netns.Proxy
	// EtcdLink (Options.Links) carries the daemon's etcd connections.
	EtcdLink *netns.Proxy
}

// Options configures a process cluster.
type Options struct {
	Daemons      int
	Replication  int
	SegmentSize  string // e.g. "4MiB"
	DaemonArgs   []string
	HeartbeatTTL string // e.g. "2s"
	DownGrace    string // e.g. "3s"
	// NoAutoJoin starts daemons without --auto-join: they register as
	// "new" and join with `torusctl peer add`.
	NoAutoJoin bool
	// InitArgs are extra flags of `torusctl init` (e.g. "--checkpoint-every", "64").
	InitArgs []string
	// Secure runs the peer protocol with mutual TLS: `torusctl certs`
	// writes a CA, one daemon certificate for 127.0.0.11-127.0.0.40 and
	// client certificates "blk" (torusblk, through TORUS_PEER_* in its
	// environment) and "ctl" (torusctl) into Cluster.Certs. etcd and
	// HTTP stay plain.
	Secure bool
	// EtcdMembers is the size of the etcd cluster (default 1), each
	// member on its own 127.0.0.5x address.
	EtcdMembers int
	// EtcdTLS runs etcd with TLS between members and for clients
	// (--client-cert-auth), with certificates from `torusctl certs`.
	EtcdTLS bool
	// EtcdSetup runs once etcd answers, before `torusctl init` (to
	// create users and enable authentication, say).
	EtcdSetup func(c *Cluster)
	// Locations gives daemon i `--location Locations[i]` (e.g.
	// "host=a") instead of its own zone z<i>; daemons past the end of
	// the list get the zone.
	Locations []string
	// Links puts a proxy (netns.Proxy, in the test process) on each
	// daemon's links: Daemon.PeerLink in front of its peer port (the
	// daemon advertises the proxy's address with --advertise-address, so
	// writers and daemons alike reach it only through the proxy) and
	// Daemon.EtcdLink between it and etcd (its --etcd). No namespace is
	// needed.
	Links bool
}

// New starts etcd, `torusctl init`, and the daemons, and waits until every
// daemon is ready. Everything is killed by t.Cleanup; on failure the
// processes' output is logged.
func New(t testing.TB, o Options) *Cluster {
	t.Helper()
	etcdBin := testutil.RequireBinary(t, "etcd")
	if o.Daemons == 0 {
		o.Daemons = 3
	}
	if o.Replication == 0 {
		o.Replication = 2
	}
	c := &Cluster{t: t, Dir: t.TempDir(), Opts: o}
	c.etcdProcs(etcdBin)
	t.Cleanup(func() {
		if t.Failed() {
			c.DumpLogs()
		}
		for _, p := range c.NBD {
			p.Kill(t)
		}
		for _, d := range c.Daemons {
			d.Kill(t)
		}
		for _, e := range c.EtcdMembers {
			e.Kill(t)
		}
		for _, h := range c.hosts {
			h.close()
		}
		for _, l := range c.links {
			l.Close()
		}
	})
	if o.Secure {
		c.Certs = filepath.Join(c.Dir, "certs")
		hosts := []string{"certs", "daemon", "--certs-dir", c.Certs}
		for i := 0; i < 30; i++ {
			hosts = append(hosts, fmt.Sprintf("127.0.0.%d", 11+i))
		}
		for _, args := range [][]string{{"certs", "init-ca", "--certs-dir", c.Certs}, hosts,
			{"certs", "client", "--certs-dir", c.Certs, "blk"}, {"certs", "client", "--certs-dir", c.Certs, "ctl"}} {
			c.Ctl(args...)
		}
	}
	for _, e := range c.EtcdMembers {
		e.Start(t)
	}
	for _, u := range c.EtcdURLs {
		c.WaitEtcd(u, 30*time.Second)
	}
	if o.EtcdSetup != nil {
		o.EtcdSetup(c)
	}
	args := []string{"init", "--replication", fmt.Sprint(o.Replication)}
	if o.SegmentSize != "" {
		args = append(args, "--segment-size", o.SegmentSize)
	}
	c.Ctl(append(args, o.InitArgs...)...)
	for i := 0; i < o.Daemons; i++ {
		c.AddDaemon(o)
	}
	for _, d := range c.Daemons {
		c.WaitHTTP("http://"+d.HTTPAddr+"/readyz", 30*time.Second)
	}
	return c
}

// AddDaemon starts one more torusd on the next 127.0.0.x address.
func (c *Cluster) AddDaemon(o Options) *Daemon {
	t := c.t
	t.Helper()
	i := len(c.Daemons)
	ip := fmt.Sprintf("127.0.0.%d", 11+i)
	d := &Daemon{IP: ip, DataDir: filepath.Join(c.Dir, fmt.Sprintf("d%d", i))}
	d.ListenAddr = fmt.Sprintf("%s:%d", ip, FreePort(t, ip))
	d.PeerAddr = d.ListenAddr
	d.HTTPAddr = fmt.Sprintf("%s:%d", ip, FreePort(t, ip))
	etcd := c.EtcdURL
	if o.Links {
		d.PeerLink = c.link(ip, d.ListenAddr)
		d.PeerAddr = d.PeerLink.Addr()
		u, err := url.Parse(c.EtcdURL)
		if err != nil {
			t.Fatal(err)
		}
		d.EtcdLink = c.link(ip, u.Host)
		etcd = "http://" + d.EtcdLink.Addr()
	}
	args := []string{Bin(t, "torusd"), "--etcd", etcd, "--data-dir", d.DataDir, "--size", "4GiB",
		"--peer-address", d.ListenAddr, "--advertise-address", d.PeerAddr,
		"--http", d.HTTPAddr, "--log-level", "debug"}
	if i < len(o.Locations) {
		args = append(args, "--location", o.Locations[i])
	} else {
		args = append(args, "--zone", fmt.Sprintf("z%d", i))
	}
	if !o.NoAutoJoin {
		args = append(args, "--auto-join")
	}
	if o.HeartbeatTTL != "" {
		args = append(args, "--heartbeat-ttl", o.HeartbeatTTL)
	}
	if o.DownGrace != "" {
		args = append(args, "--down-grace", o.DownGrace)
	}
	if c.Certs != "" {
		args = append(args, "--peer-cert", filepath.Join(c.Certs, "daemon.crt"),
			"--peer-key", filepath.Join(c.Certs, "daemon.key"), "--peer-ca", filepath.Join(c.Certs, "ca.crt"))
	}
	args = append(args, o.DaemonArgs...)
	d.Proc = &Proc{Name: fmt.Sprintf("torusd-%d", i), Args: args, Env: append([]string(nil), c.EtcdEnv...)}
	d.Start(t)
	c.Daemons = append(c.Daemons, d)
	return d
}

// link starts a proxy listening on a free port of ip, forwarding to
// upstream; it lives until the cluster is cleaned up.
func (c *Cluster) link(ip, upstream string) *netns.Proxy {
	c.t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		c.t.Fatalf("proxy listener on %s: %v", ip, err)
	}
	p := netns.NewProxy(ln, upstream, nil)
	c.links = append(c.links, p)
	return p
}

// StartNBD starts `torusblk nbdserve` on a fresh 127.0.0.x address and
// returns the process and its address. In a Secure cluster it reaches the
// daemons with client certificate "blk".
func (c *Cluster) StartNBD(extra ...string) (*Proc, string) {
	return c.StartNBDEnv(c.PeerEnv("blk"), extra...)
}

// StartNBDEnv is StartNBD with env (TORUS_PEER_*) instead of the
// cluster's client certificate.
func (c *Cluster) StartNBDEnv(env []string, extra ...string) (*Proc, string) {
	t := c.t
	t.Helper()
	ip := fmt.Sprintf("127.0.0.%d", 101+len(c.NBD))
	addr := fmt.Sprintf("%s:%d", ip, FreePort(t, ip))
	p := &Proc{Name: fmt.Sprintf("torusblk-%d", len(c.NBD)),
		Args: append([]string{Bin(t, "torusblk"), "--etcd", c.EtcdURL, "--log-level", "debug", "nbdserve", "--listen", addr}, extra...),
		Env:  append(append([]string(nil), c.EtcdEnv...), env...)}
	p.Start(t)
	c.NBD = append(c.NBD, p)
	c.WaitTCP(addr, 30*time.Second)
	return p, addr
}

// Ctl runs torusctl against the cluster and returns its stdout; a failure
// fails the test.
func (c *Cluster) Ctl(args ...string) string {
	c.t.Helper()
	out, err := c.CtlErr(args...)
	if err != nil {
		c.t.Fatalf("torusctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// CtlErr runs torusctl and returns its combined output and error.
func (c *Cluster) CtlErr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, Bin(c.t, "torusctl"), append([]string{"--etcd", c.EtcdURL}, args...)...)
	cmd.Env = append(append(os.Environ(), c.EtcdEnv...), c.PeerEnv("ctl")...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// WaitHTTP waits until url answers 200.
func (c *Cluster) WaitHTTP(url string, d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		resp, err := http.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			c.DumpLogs()
			c.t.Fatalf("%s not ready after %v (last error %v)", url, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WaitTCP waits until addr accepts connections.
func (c *Cluster) WaitTCP(addr string, d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			c.DumpLogs()
			c.t.Fatalf("%s not accepting after %v: %v", addr, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// DumpLogs logs the tail of every process's output, Debug lines left out.
// With TORUS_KEEP_LOGS=DIR the whole output of every process is also
// written to DIR/TEST/PROCESS.log.
func (c *Cluster) DumpLogs() {
	procs := append([]*Proc(nil), c.EtcdMembers...)
	for _, d := range c.Daemons {
		procs = append(procs, d.Proc)
	}
	procs = append(procs, c.NBD...)
	for _, p := range procs {
		if p == nil {
			continue
		}
		out := p.Output()
		if dir := os.Getenv("TORUS_KEEP_LOGS"); dir != "" {
			d := filepath.Join(dir, strings.ReplaceAll(c.t.Name(), "/", "_"))
			if err := os.MkdirAll(d, 0o755); err == nil {
				os.WriteFile(filepath.Join(d, p.Name+".log"), []byte(out), 0o644)
			}
		}
		var keep []string
		dropped := 0
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "level=DEBUG") {
				dropped++
				continue
			}
			keep = append(keep, line)
		}
		out = strings.Join(keep, "\n")
		if dropped > 0 {
			out += fmt.Sprintf("\n(%d debug lines left out; TORUS_KEEP_LOGS=DIR keeps everything)", dropped)
		}
		if len(out) > 8000 {
			out = "...\n" + out[len(out)-8000:]
		}
		c.t.Logf("--- %s output:\n%s", p.Name, out)
	}
}

// CtlJSON runs `torusctl -o json ARGS...` and decodes its stdout into v.
// Stderr (warnings) is kept out of the decoding and returned in the error.
func (c *Cluster) CtlJSON(v any, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, Bin(c.t, "torusctl"), append([]string{"--etcd", c.EtcdURL, "-o", "json"}, args...)...)
	cmd.Env = append(append(os.Environ(), c.EtcdEnv...), c.PeerEnv("ctl")...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("torusctl %s: %v: %s%s", strings.Join(args, " "), err, stderr.String(), stdout.String())
	}
	if err := json.Unmarshal(stdout.Bytes(), v); err != nil {
		return fmt.Errorf("torusctl %s: decoding %q: %v", strings.Join(args, " "), stdout.String(), err)
	}
	return nil
}
