package tlsconfig

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/peer"
)

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(path, path[:len(path)-len(".crt")]+".key")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// TestIssue: init-ca, daemon and client write the documented files, keys
// 0600, the right roles, key usages and SANs, and refuse to overwrite.
func TestIssue(t *testing.T) {
	dir := t.TempDir()
	if err := IssueClient(dir, "app", IssueOptions{}); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("client before CA: %v, want ErrNotExist", err)
	}
	if err := InitCA(dir, IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := IssueDaemon(dir, []string{"127.0.0.1", "node1.example"}, IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := IssueClient(dir, "app", IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{CAKey, DaemonKey, "client.app.key"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", name, fi.Mode().Perm())
		}
	}
	d := readCert(t, filepath.Join(dir, DaemonCert))
	if peer.RoleOf(d) != peer.RoleDaemon || d.Subject.CommonName != "127.0.0.1" ||
		len(d.IPAddresses) != 1 || len(d.DNSNames) != 1 || len(d.ExtKeyUsage) != 2 {
		t.Errorf("daemon certificate: role %q cn %q ips %v dns %v eku %v", peer.RoleOf(d), d.Subject.CommonName, d.IPAddresses, d.DNSNames, d.ExtKeyUsage)
	}
	c := readCert(t, ClientFiles(dir, "app").Cert)
	if peer.RoleOf(c) != peer.RoleClient || c.Subject.CommonName != "app" ||
		len(c.ExtKeyUsage) != 1 || c.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
		t.Errorf("client certificate: role %q cn %q eku %v", peer.RoleOf(c), c.Subject.CommonName, c.ExtKeyUsage)
	}
	if life := c.NotAfter.Sub(c.NotBefore); life < 365*24*time.Hour || life > 3*365*24*time.Hour {
		t.Errorf("client certificate valid for %v", life)
	}
	for name, f := range map[string]func() error{
		"init-ca": func() error { return InitCA(dir, IssueOptions{}) },
		"daemon":  func() error { return IssueDaemon(dir, []string{"x"}, IssueOptions{}) },
		"client":  func() error { return IssueClient(dir, "app", IssueOptions{}) },
	} {
		if err := f(); !errors.Is(err, torus.ErrExist) {
			t.Errorf("%s again: %v, want ErrExist", name, err)
		}
	}
	if err := IssueClient(dir, "app", IssueOptions{Overwrite: true}); err != nil {
		t.Fatal(err)
	}
	if readCert(t, ClientFiles(dir, "app").Cert).SerialNumber.Cmp(c.SerialNumber) == 0 {
		t.Error("--overwrite kept the old certificate")
	}
	if err := IssueClient(dir, "../evil", IssueOptions{}); !errors.Is(err, torus.ErrInvalid) {
		t.Errorf("bad name: %v, want ErrInvalid", err)
	}
}

// TestReload: a connection made after Reload presents the new certificate
// while a connection made before keeps working; a broken file keeps the
// old certificate; Watch notices changed files.
func TestReload(t *testing.T) {
	dir := t.TempDir()
	if _, err := EnsureDev(dir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	srvR, err := New("test server", DaemonFiles(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	cliR, err := New("test client", ClientFiles(dir, "root"), nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvR.Server())
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
			go io.Copy(c, c) // echo
		}
	}()
	dial := func() (*tls.Conn, *x509.Certificate) {
		t.Helper()
		c, err := tls.Dial("tcp", ln.Addr().String(), cliR.Client("127.0.0.1"))
		if err != nil {
			t.Fatal(err)
		}
		st := c.ConnectionState()
		if st.Version != tls.VersionTLS13 {
			t.Fatalf("TLS version %x", st.Version)
		}
		return c, st.PeerCertificates[0]
	}
	echo := func(c *tls.Conn) {
		t.Helper()
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
			t.Fatalf("echo: %q %v", buf, err)
		}
	}
	old, oldCert := dial()
	defer old.Close()
	echo(old)

	if err := IssueDaemon(dir, []string{"127.0.0.1"}, IssueOptions{Overwrite: true}); err != nil {
		t.Fatal(err)
	}
	if err := srvR.Reload(); err != nil {
		t.Fatal(err)
	}
	fresh, newCert := dial()
	defer fresh.Close()
	if newCert.SerialNumber.Cmp(oldCert.SerialNumber) == 0 {
		t.Fatal("a connection after the reload got the old certificate")
	}
	echo(old)
	echo(fresh)

	// A broken key file: the reload fails, the current certificate stays.
	os.WriteFile(filepath.Join(dir, DaemonKey), []byte("garbage"), 0o600)
	if err := srvR.Reload(); err == nil {
		t.Fatal("reload of a garbage key succeeded")
	}
	c3, cert3 := dial()
	c3.Close()
	if cert3.SerialNumber.Cmp(newCert.SerialNumber) != 0 {
		t.Fatal("a failed reload changed the certificate")
	}

	// Watch picks up files that change.
	if err := IssueDaemon(dir, []string{"127.0.0.1"}, IssueOptions{Overwrite: true}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := testContext(t)
	defer cancel()
	go srvR.Watch(ctx, 10*time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, cert := dial()
		c.Close()
		if cert.SerialNumber.Cmp(newCert.SerialNumber) != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Watch did not reload changed files")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestClientRequiresDaemonRole: a server presenting a client certificate
// (same CA) is refused by Client with ErrPermission.
func TestClientRequiresDaemonRole(t *testing.T) {
	dir := t.TempDir()
	if _, err := EnsureDev(dir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if err := IssueClient(dir, "impostor", IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	// A client certificate cannot even serve: it lacks ServerAuth. Check
	// the role rule on its own through VerifyConnection.
	leaf := readCert(t, ClientFiles(dir, "impostor").Cert)
	r, err := New("c", ClientFiles(dir, "root"), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = r.Client("127.0.0.1").VerifyConnection(tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}})
	if !errors.Is(err, torus.ErrPermission) || !errors.Is(err, ErrNotDaemon) {
		t.Fatalf("client certificate as server: %v, want ErrPermission", err)
	}
}

func testContext(t *testing.T) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// TestKeepReloadsOnSignal: a value on the hup channel (SIGHUP in the
// binaries) reloads the files.
func TestKeepReloadsOnSignal(t *testing.T) {
	dir := t.TempDir()
	if _, err := EnsureDev(dir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	r, err := New("t", DaemonFiles(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	first := r.cur.Load()
	ctx, cancel := testContext(t)
	hup := make(chan os.Signal, 1)
	done := make(chan struct{})
	go func() { Keep(ctx, hup, time.Hour, r, nil); close(done) }()
	hup <- syscall.SIGHUP
	deadline := time.Now().Add(10 * time.Second)
	for r.cur.Load() == first {
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP did not reload")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}

// TestKeepWithoutReloadersTakesSignals: with nothing to reload, Keep still
// receives from hup until ctx ends, so the binary's signal.Notify stays in
// force and SIGHUP does not kill it (torusblk without certificates once
// died of it).
func TestKeepWithoutReloadersTakesSignals(t *testing.T) {
	ctx, cancel := testContext(t)
	hup := make(chan os.Signal) // unbuffered: a send completes only if Keep receives
	done := make(chan struct{})
	go func() { Keep(ctx, hup, time.Hour, nil, nil); close(done) }()
	for i := 0; i < 3; i++ {
		select {
		case hup <- syscall.SIGHUP:
		case <-done:
			t.Fatal("Keep returned with ctx live")
		case <-time.After(10 * time.Second):
			t.Fatal("Keep did not receive SIGHUP")
		}
	}
	cancel()
	<-done
}
