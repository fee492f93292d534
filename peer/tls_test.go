package peer_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/tlsconfig"
	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/storage"
)

// syncBuffer is a log destination tests read while the server writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// tlsDaemon is a peer server requiring mutual TLS, over a memory store that
// holds one segment, with its refusals recorded.
type tlsDaemon struct {
	addr  string
	dir   string // certificates: ca, daemon, client.root
	store *storage.Memory
	log   *syncBuffer

	mu      sync.Mutex
	refused []string // "role op"
}

var tlsSeg = torus.SegmentID{Volume: 7, Epoch: 3, Seq: 1, Kind: torus.KindData}

func startTLSDaemon(t testing.TB) *tlsDaemon {
	t.Helper()
	d := &tlsDaemon{dir: t.TempDir(), store: storage.NewMemory(1 << 20), log: &syncBuffer{}}
	if _, err := tlsconfig.EnsureDev(d.dir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	r, err := tlsconfig.New("peer TLS", tlsconfig.DaemonFiles(d.dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := d.store.Append(ctx, tlsSeg, 0, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	local := peer.NewLocal(d.store, nil)
	srv := peer.NewServer(local, peer.ServerConfig{
		TLS: r.Server(),
		Refused: func(id peer.Identity, role, op string) {
			d.mu.Lock()
			d.refused = append(d.refused, role+" "+op)
			d.mu.Unlock()
		},
	}, slog.New(slog.NewTextHandler(d.log, nil)))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d.addr = ln.Addr().String()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return d
}

func (d *tlsDaemon) refusals() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.refused...)
}

// dial connects with the certificate files f (nil Files: plain TCP).
func dial(t *testing.T, addr string, f *tlsconfig.Files) (*peer.Client, error) {
	t.Helper()
	cfg := peer.ClientConfig{RequestTimeout: 10 * time.Second}
	if f != nil {
		r, err := tlsconfig.New("client TLS", *f, nil)
		if err != nil {
			t.Fatal(err)
		}
		cfg.TLS = r.Client
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return peer.Dial(ctx, addr, cfg, nil)
}

// unchanged checks the segment still holds exactly "hello".
func (d *tlsDaemon) unchanged(t *testing.T) {
	t.Helper()
	buf := make([]byte, 16)
	n, _ := d.store.ReadAt(context.Background(), tlsSeg, buf, 0)
	if string(buf[:n]) != "hello" {
		t.Fatalf("segment holds %q after a refused request, want %q", buf[:n], "hello")
	}
}

// TestTLSPlainClientRefused: a plain client's request to a TLS daemon fails
// with ErrPermission and a message naming TLS; the refusal is counted.
func TestTLSPlainClientRefused(t *testing.T) {
	d := startTLSDaemon(t)
	c, err := dial(t, d.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Delete(context.Background(), tlsSeg)
	if !errors.Is(err, torus.ErrPermission) || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("plain Delete: %v, want ErrPermission naming TLS", err)
	}
	d.unchanged(t)
	if got := d.refusals(); len(got) != 1 || got[0] != "plain delete" {
		t.Fatalf("refusals %q", got)
	}
}

// TestTLSPlainDaemonRefusesTLSClient: a TLS client to a plain daemon gets
// an error that says to check the daemon's TLS.
func TestTLSPlainDaemonRefusesTLSClient(t *testing.T) {
	srv := peer.NewServer(peer.NewLocal(storage.NewMemory(1<<20), nil), peer.ServerConfig{}, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	dir := t.TempDir()
	if _, err := tlsconfig.EnsureDev(dir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	f := tlsconfig.ClientFiles(dir, "root")
	_, err = dial(t, ln.Addr().String(), &f)
	if err == nil || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("TLS client to a plain daemon: %v, want a TLS error", err)
	}
}

// TestTLSWrongCARefused: a client whose certificate comes from another CA
// cannot make any request; a client trusting another CA refuses the
// daemon (ErrPermission).
func TestTLSWrongCARefused(t *testing.T) {
	d := startTLSDaemon(t)
	other := t.TempDir()
	if _, err := tlsconfig.EnsureDev(other, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	// Another CA's client certificate, trusting our daemon's CA.
	f := tlsconfig.ClientFiles(other, "root")
	f.CA = tlsconfig.DaemonFiles(d.dir).CA
	c, err := dial(t, d.addr, &f)
	if err == nil {
		// TLS 1.3: the client learns of the refusal on its first read.
		_, err = c.Stat(context.Background(), tlsSeg)
		c.Close()
	}
	// The daemon's alert names the certificate, unless it closed the
	// connection before the client read it (the client then sees the
	// connection lost): either way the call fails, and the refusal is
	// counted below.
	if err == nil || !strings.Contains(err.Error(), "certificate") && !errors.Is(err, torus.ErrUnavailable) {
		t.Fatalf("another CA's client certificate: %v, want a certificate error or a lost connection", err)
	}
	// (The client may have dialed twice: once in Dial, again in Stat if
	// the first connection was already gone.)
	handshakesRefused := func() bool {
		got := d.refusals()
		for _, r := range got {
			if r != "unauthenticated handshake" {
				return false
			}
		}
		return len(got) > 0
	}
	deadline := time.Now().Add(5 * time.Second)
	for !handshakesRefused() {
		if time.Now().After(deadline) {
			t.Fatalf("refusals %q, want the failed handshake counted", d.refusals())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Our client certificate, but trusting another CA: the daemon is refused.
	f = tlsconfig.ClientFiles(d.dir, "root")
	f.CA = tlsconfig.DaemonFiles(other).CA
	if _, err := dial(t, d.addr, &f); !errors.Is(err, torus.ErrPermission) {
		t.Fatalf("daemon signed by an untrusted CA: %v, want ErrPermission", err)
	}
	d.unchanged(t)
}

// TestTLSExpiredClientRefused: an expired client certificate is refused.
func TestTLSExpiredClientRefused(t *testing.T) {
	d := startTLSDaemon(t)
	old := time.Now().Add(-48 * time.Hour)
	if err := tlsconfig.IssueClient(d.dir, "expired", tlsconfig.IssueOptions{Lifetime: time.Hour, Now: func() time.Time { return old }}); err != nil {
		t.Fatal(err)
	}
	f := tlsconfig.ClientFiles(d.dir, "expired")
	c, err := dial(t, d.addr, &f)
	if err == nil {
		_, err = c.Stat(context.Background(), tlsSeg)
		c.Close()
	}
	if err == nil {
		t.Fatal("an expired client certificate was accepted")
	}
}

// TestTLSClientRole: a client certificate may append and sync at a real
// epoch, read, stat, list, fence and ask usage; it may not delete or
// append/sync at the repair epoch (refused, logged with its name, counted,
// the segment unchanged). A daemon certificate may do both.
func TestTLSClientRole(t *testing.T) {
	d := startTLSDaemon(t)
	ctx := context.Background()
	cf := tlsconfig.ClientFiles(d.dir, "root")
	c, err := dial(t, d.addr, &cf)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	if err := c.Delete(ctx, tlsSeg); !errors.Is(err, torus.ErrPermission) {
		t.Fatalf("client Delete: %v, want ErrPermission", err)
	}
	if err := c.Append(ctx, torus.RepairEpoch, tlsSeg, 5, []byte("evil")); !errors.Is(err, torus.ErrPermission) {
		t.Fatalf("client Append at RepairEpoch: %v, want ErrPermission", err)
	}
	if _, err := c.Sync(ctx, torus.RepairEpoch, tlsSeg); !errors.Is(err, torus.ErrPermission) {
		t.Fatalf("client Sync at RepairEpoch: %v, want ErrPermission", err)
	}
	d.unchanged(t)
	if got, want := fmt.Sprint(d.refusals()), "[client delete client append client sync]"; got != want {
		t.Fatalf("refusals %s, want %s", got, want)
	}
	if log := d.log.String(); !strings.Contains(log, "peer request refused") || !strings.Contains(log, "identity=root") {
		t.Fatalf("refusal not logged with the identity:\n%s", log)
	}

	// What a client may do.
	buf := make([]byte, 5)
	if _, err := c.ReadAt(ctx, tlsSeg, buf, 0); err != nil || string(buf) != "hello" {
		t.Fatalf("client ReadAt: %q %v", buf, err)
	}
	if _, err := c.Stat(ctx, tlsSeg); err != nil {
		t.Fatal(err)
	}
	if _, err := c.List(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Usage(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Append(ctx, 3, tlsSeg, 5, []byte(" you")); err != nil {
		t.Fatalf("client Append at its epoch: %v", err)
	}
	if _, err := c.Sync(ctx, 3, tlsSeg); err != nil {
		t.Fatal(err)
	}
	if err := c.Fence(ctx, 7, 4); err != nil {
		t.Fatalf("client Fence: %v", err)
	}
	// Fencing holds for it as for anyone.
	if err := c.Append(ctx, 3, tlsSeg, 9, []byte("!")); !errors.Is(err, torus.ErrFenced) {
		t.Fatalf("client Append after fence: %v, want ErrFenced", err)
	}

	// A daemon certificate may repair and delete; it is fenced too.
	df := tlsconfig.DaemonFiles(d.dir)
	dc, err := dial(t, d.addr, &df)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	if err := dc.Append(ctx, 3, tlsSeg, 9, []byte("!")); !errors.Is(err, torus.ErrFenced) {
		t.Fatalf("daemon Append at a fenced epoch: %v, want ErrFenced", err)
	}
	if err := dc.Append(ctx, torus.RepairEpoch, tlsSeg, 9, []byte("!")); err != nil {
		t.Fatalf("daemon Append at RepairEpoch: %v", err)
	}
	if err := dc.Delete(ctx, tlsSeg); err != nil {
		t.Fatalf("daemon Delete: %v", err)
	}
	if len(d.refusals()) != 3 {
		t.Fatalf("the daemon's requests were refused: %q", d.refusals())
	}
}

// TestTLSReload: after the daemon's certificate is replaced and reloaded, a
// new connection is served with the new certificate, while a client
// connected before keeps using its connection (no redial, no failed call).
func TestTLSReload(t *testing.T) {
	dir := t.TempDir()
	if _, err := tlsconfig.EnsureDev(dir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	r, err := tlsconfig.New("peer TLS", tlsconfig.DaemonFiles(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := peer.NewServer(peer.NewLocal(storage.NewMemory(1<<20), nil), peer.ServerConfig{TLS: r.Server()}, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	defer srv.Close()
	cr, err := tlsconfig.New("client", tlsconfig.ClientFiles(dir, "root"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var dials int
	var mu sync.Mutex
	cfg := peer.ClientConfig{TLS: cr.Client, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dials++
		mu.Unlock()
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	ctx := context.Background()
	old, err := peer.Dial(ctx, ln.Addr().String(), cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	serial := func() string {
		t.Helper()
		c, err := tls.Dial("tcp", ln.Addr().String(), cr.Client("127.0.0.1"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := serial()
	if err := tlsconfig.IssueDaemon(dir, []string{"127.0.0.1"}, tlsconfig.IssueOptions{Overwrite: true}); err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(); err != nil {
		t.Fatal(err)
	}
	if after := serial(); after == before {
		t.Fatal("a connection after the reload was served the old certificate")
	}
	for i := 0; i < 10; i++ {
		if _, err := old.Usage(ctx); err != nil {
			t.Fatalf("the connection made before the reload: %v", err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if dials != 1 {
		t.Fatalf("the old client dialed %d times, want 1 (its connection must survive the reload)", dials)
	}
}
