package tests

import (
	"bytes"
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
	"syscall"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/internal/tlsconfig"
	"github.com/torus-storage/torus/peer"
)

// TestDevSecure: torusd --dev --secure creates its certificates in
// DATA/certs on first start and uses them for every port: NBD requires
// TLS with a client certificate (nbdinfo over nbds:// with the
// nbd-client directory works, plain nbd:// is refused), the peer port
// refuses a plain client with an error naming TLS, and /metrics is served
// over HTTPS. The NBD client battery passes over nbds:// with the generated
// client certificate: qemu-img convert writes 1 MiB, nbdcopy reads it back
// equal. The default export list (DATA/certs/nbd-exports: client root rw
// on everything) is in force: a second client certificate of the same CA,
// "guest", is refused until the list grants it "ro demo" and torusd gets
// SIGHUP; then it sees demo read-only and cannot write it.
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
	for _, f := range []string{"ca.crt", "ca.key", "daemon.crt", "daemon.key", "client.root.crt", "client.root.key", "nbd-client/client-key.pem", "nbd-exports"} {
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

	devSecureBattery(t, p, nbdAddr, certs)

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
	// The HTTP port: pprof is off without --pprof; plain HTTP is not
	// served; a client trusting another CA refuses the daemon.
	if resp, err := hc.Get("https://" + httpAddr + "/debug/pprof/"); err != nil {
		t.Fatal(err)
	} else if resp.Body.Close(); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("https /debug/pprof/ without --pprof: %d, want 404", resp.StatusCode)
	}
	plain := &http.Client{Timeout: 5 * time.Second}
	if resp, err := plain.Get("http://" + httpAddr + "/metrics"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP /metrics served by an HTTPS port")
		}
	}
	other := t.TempDir()
	if err := tlsconfig.InitCA(other, tlsconfig.IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	opool := x509.NewCertPool()
	opool.AppendCertsFromPEM(mustRead(t, filepath.Join(other, tlsconfig.CACert)))
	oc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: opool}}}
	if resp, err := oc.Get("https://" + httpAddr + "/metrics"); err == nil {
		resp.Body.Close()
		t.Fatal("a client trusting another CA accepted the daemon's HTTPS certificate")
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// devSecureBattery is TestDevSecure's NBD part: qemu-img and nbdcopy over
// TLS, and the export list (default, then edited and reloaded on SIGHUP).
func devSecureBattery(t *testing.T, p *proccluster.Proc, nbdAddr, certs string) {
	t.Helper()
	nbdinfo := testutil.RequireBinary(t, "nbdinfo")
	nbdcopy := testutil.RequireBinary(t, "nbdcopy")
	qemuImg := testutil.RequireBinary(t, "qemu-img")
	root := filepath.Join(certs, "nbd-client")
	nbds := func(dir string) string { return "nbds://" + nbdAddr + "/demo?tls-certificates=" + dir }
	runOK := func(argv ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
		}
		return string(out)
	}
	tmp := t.TempDir()
	src, back := filepath.Join(tmp, "src"), filepath.Join(tmp, "back")
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>12)
	}
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(nbdAddr, ":")
	runOK(qemuImg, "convert", "-n", "-f", "raw",
		"--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+root, src, "--target-image-opts",
		"driver=nbd,server.type=inet,server.host="+host+",server.port="+port+",export=demo,tls-creds=tls0")
	runOK(nbdcopy, "--flush", nbds(root), back) // the whole 1 GiB volume: sparse
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < len(data) || !bytes.Equal(got[:len(data)], data) {
		t.Fatal("nbdcopy over nbds:// did not read back what qemu-img wrote over TLS")
	}
	os.Remove(back)

	// A second client of the same CA, not in the default export list.
	if err := tlsconfig.IssueClient(certs, "guest", tlsconfig.IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	guest := filepath.Join(tmp, "guest")
	os.MkdirAll(guest, 0o700)
	gf := tlsconfig.ClientFiles(certs, "guest")
	for srcf, dst := range map[string]string{gf.CA: "ca-cert.pem", gf.Cert: "client-cert.pem", gf.Key: "client-key.pem"} {
		b, err := os.ReadFile(srcf)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(guest, dst), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(nbdinfo, nbds(guest)).CombinedOutput(); err == nil {
		t.Fatalf("guest, not in the default export list, attached demo:\n%s", out)
	}
	list := filepath.Join(certs, "nbd-exports")
	old, err := os.ReadFile(list)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(list, append(old, []byte("guest ro demo\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	p.Signal(t, syscall.SIGHUP)
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := exec.Command(nbdinfo, nbds(guest)).CombinedOutput()
		if err == nil {
			if !strings.Contains(string(out), "is_read_only: true") {
				t.Fatalf("guest's ro grant: demo not read-only:\n%s", out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("guest still refused after the list granted it and SIGHUP:\n%s", out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if out, err := exec.Command(nbdcopy, src, nbds(guest)).CombinedOutput(); err == nil {
		t.Fatalf("nbdcopy into demo with guest's ro grant succeeded:\n%s", out)
	}
	// root's rw grant still holds.
	runOK(nbdcopy, "--flush", src, nbds(root))
}
