package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/internal/tlsconfig"
	"github.com/torus-storage/torus/peer"
)

func startConfigured(t *testing.T, meta torus.Metadata, adjust func(*Config)) *Server {
	t.Helper()
	cfg := Config{DataDir: t.TempDir(), Capacity: 64 << 20, HTTPListen: "127.0.0.1:0", AutoJoin: true, HeartbeatTTL: time.Second}
	adjust(&cfg)
	s, err := New(cfg, meta, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func get(t *testing.T, c *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestPprofOffByDefault: /debug/pprof answers 404 unless Config.Pprof;
// /metrics, /healthz and /readyz answer either way.
func TestPprofOffByDefault(t *testing.T) {
	meta := initMeta(t)
	off := startConfigured(t, meta, func(*Config) {})
	on := startConfigured(t, meta, func(c *Config) { c.Pprof = true })
	for _, c := range []struct {
		s    *Server
		want int
	}{{off, 404}, {on, 200}} {
		if code, _ := get(t, http.DefaultClient, "http://"+c.s.HTTPAddr()+"/debug/pprof/"); code != c.want {
			t.Errorf("pprof %v: /debug/pprof/ answered %d, want %d", c.s.cfg.Pprof, code, c.want)
		}
		for _, p := range []string{"/metrics", "/healthz", "/readyz"} {
			if code, body := get(t, http.DefaultClient, "http://"+c.s.HTTPAddr()+p); code != 200 {
				t.Errorf("%s: %d %s", p, code, body)
			}
		}
	}
}

// TestSecureDaemon: a daemon with peer mutual TLS and HTTPS: a client
// certificate's Delete is refused and counted in torus_peer_refused_total
// on /metrics (served over HTTPS, readable without a client certificate);
// a daemon certificate's Delete goes through.
func TestSecureDaemon(t *testing.T) {
	dir := t.TempDir()
	if _, err := tlsconfig.EnsureDev(dir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	r, err := tlsconfig.New("peer TLS", tlsconfig.DaemonFiles(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	hr, err := tlsconfig.New("http TLS", tlsconfig.Files{Cert: tlsconfig.DaemonFiles(dir).Cert, Key: tlsconfig.DaemonFiles(dir).Key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	meta := initMeta(t)
	s := startConfigured(t, meta, func(c *Config) {
		c.PeerTLS, c.PeerClientTLS, c.HTTPTLS = r.Server(), r.Client, hr.Server()
	})
	ctx := context.Background()
	// The segment is the next one of a volume that exists (the one its
	// head names as next to open), so that the daemon's own GC, which
	// may run at any moment after start, keeps it: only the refused
	// Delete could remove it.
	v, err := meta.CreateVolume(ctx, torus.VolumeInfo{Name: "v", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	head, err := meta.Head(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	seg := torus.SegmentID{Volume: v.ID, Epoch: head.Epoch, Seq: head.NextSeq, Kind: torus.KindData}
	if err := s.Local().Append(ctx, head.Epoch, seg, 0, []byte("data")); err != nil {
		t.Fatal(err)
	}
	cr, err := tlsconfig.New("client", tlsconfig.ClientFiles(dir, "root"), nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := peer.Dial(ctx, s.PeerAddr(), peer.ClientConfig{TLS: cr.Client}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Delete(ctx, seg); !errors.Is(err, torus.ErrPermission) {
		t.Fatalf("client Delete: %v, want ErrPermission", err)
	}
	if _, err := s.Store().Stat(ctx, seg); err != nil {
		t.Fatalf("segment gone after a refused Delete: %v", err)
	}

	pem, err := os.ReadFile(tlsconfig.DaemonFiles(dir).CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	code, body := get(t, hc, "https://"+s.HTTPAddr()+"/metrics")
	if code != 200 || !strings.Contains(body, `torus_peer_refused_total{op="delete",peer="`+s.ID()+`",role="client"} 1`) {
		t.Fatalf("/metrics over HTTPS: %d, refusal not counted:\n%s", code, grepLines(body, "refused"))
	}
	if resp, err := http.Get("http://" + s.HTTPAddr() + "/metrics"); err == nil && resp.StatusCode == 200 {
		resp.Body.Close()
		t.Fatal("plain HTTP served metrics on an HTTPS port")
	}

	dr, err := tlsconfig.New("daemon", tlsconfig.DaemonFiles(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := peer.Dial(ctx, s.PeerAddr(), peer.ClientConfig{TLS: dr.Client}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	if err := dc.Delete(ctx, seg); err != nil {
		t.Fatalf("daemon Delete: %v", err)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
