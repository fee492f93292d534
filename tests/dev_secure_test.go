package tests

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/peer"
)

// TestDevSecure: torusd --dev --secure creates its certificates in
// DATA/certs on first start and uses them for every port: NBD requires
// TLS with a client certificate (nbdinfo over nbds:// with the
// nbd-client directory works, plain nbd:// is refused), the peer port
// refuses a plain client with an error naming TLS, and /metrics is served
// over HTTPS.
func TestDevSecure(t *testing.T) {
	testutil.SkipShort(t, "process test")
	nbdinfo := testutil.RequireBinary(t, "nbdinfo")
	dir := t.TempDir()
	ip := "127.0.0.1"
	nbdAddr := fmt.Sprintf("%s:%d", ip, proccluster.FreePort(t, ip))
	httpAddr := fmt.Sprintf("%s:%d", ip, proccluster.FreePort(t, ip))
	peerAddr := fmt.Sprintf("%s:%d", ip, proccluster.FreePort(t, ip))
	data := filepath.Join(dir, "data")
	p := &proccluster.Proc{Name: "torusd-dev-secure", Args: []string{proccluster.Bin(t, "torusd"), "--dev", "--secure",
		"--data-dir", data, "--nbd-listen", nbdAddr, "--http", httpAddr, "--peer-address", peerAddr,
		"--dev-etcd-client-url", fmt.Sprintf("http://%s:%d", ip, proccluster.FreePort(t, ip)),
		"--dev-etcd-peer-url", fmt.Sprintf("http://%s:%d", ip, proccluster.FreePort(t, ip))}}
	p.Start(t)
	t.Cleanup(func() {
		p.Kill(t)
		if t.Failed() {
			t.Logf("torusd output:\n%s", p.Output())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(p.Output(), "Torus is running securely") {
		if time.Now().After(deadline) || !p.Running() {
			t.Fatalf("torusd --dev --secure did not start:\n%s", p.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	certs := filepath.Join(data, "certs")
	for _, f := range []string{"ca.crt", "ca.key", "daemon.crt", "daemon.key", "client.root.crt", "client.root.key", "nbd-client/client-key.pem"} {
		if _, err := os.Stat(filepath.Join(certs, f)); err != nil {
			t.Fatalf("--secure did not create %s: %v", f, err)
		}
	}

	out, err := exec.Command(nbdinfo, "--size", "nbds://"+nbdAddr+"/demo?tls-certificates="+filepath.Join(certs, "nbd-client")).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != fmt.Sprint(1<<30) {
		t.Fatalf("nbdinfo over TLS with a client certificate: %v\n%s", err, out)
	}
	if out, err := exec.Command(nbdinfo, "--size", "nbd://"+nbdAddr+"/demo").CombinedOutput(); err == nil {
		t.Fatalf("plain nbdinfo was served by a --secure daemon:\n%s", out)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := peer.Dial(ctx, peerAddr, peer.ClientConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Usage(ctx); !errors.Is(err, torus.ErrPermission) || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("plain peer client: %v, want ErrPermission naming TLS", err)
	}

	pem, err := os.ReadFile(filepath.Join(certs, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	resp, err := hc.Get("https://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("https /metrics: %d", resp.StatusCode)
	}
}
