package cli

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/peer"
)

// TestCerts: init-ca, daemon and client write the documented files (keys
// 0600) with the roles of docs/security.md, refuse to overwrite without
// --overwrite, and need no etcd.
func TestCerts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	for _, args := range [][]string{
		{"certs", "init-ca", "--certs-dir", dir},
		{"certs", "daemon", "--certs-dir", dir, "10.0.0.1", "node1.example"},
		{"certs", "client", "--certs-dir", dir, "blk"},
	} {
		out, _, err := run(t, nil, false, args...)
		if err != nil || !strings.Contains(out, "created") {
			t.Fatalf("%v: %q %v", args, out, err)
		}
	}
	for name, mode := range map[string]os.FileMode{"ca.crt": 0o644, "ca.key": 0o600, "daemon.crt": 0o644,
		"daemon.key": 0o600, "client.blk.crt": 0o644, "client.blk.key": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	roles := map[string]peer.Role{"daemon": peer.RoleDaemon, "client.blk": peer.RoleClient}
	for base, want := range roles {
		pair, err := tls.LoadX509KeyPair(filepath.Join(dir, base+".crt"), filepath.Join(dir, base+".key"))
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(pair.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		if got := peer.RoleOf(leaf); got != want {
			t.Errorf("%s: role %q, want %q", base, got, want)
		}
	}
	_, _, err := run(t, nil, false, "certs", "client", "--certs-dir", dir, "blk")
	if !errors.Is(err, torus.ErrExist) || !strings.Contains(err.Error(), "--overwrite") {
		t.Fatalf("client again: %v, want ErrExist naming --overwrite", err)
	}
	if _, _, err := run(t, nil, false, "certs", "client", "--certs-dir", dir, "--overwrite", "blk"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, nil, false, "certs", "daemon", "--certs-dir", t.TempDir(), "h"); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("daemon without a CA: %v, want ErrNotExist", err)
	}
}

// TestCertsEtcd: `certs etcd NAME HOST...` writes etcd.NAME.crt/key for
// the hosts, usable as etcd's server and peer certificate (both usages),
// with no Torus role, and verifying against the CA.
func TestCertsEtcd(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	for _, args := range [][]string{
		{"certs", "init-ca", "--certs-dir", dir},
		{"certs", "etcd", "--certs-dir", dir, "e0", "127.0.0.21", "etcd0.example"},
	} {
		if out, _, err := run(t, nil, false, args...); err != nil || !strings.Contains(out, "created") {
			t.Fatalf("%v: %q %v", args, out, err)
		}
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "etcd.e0.crt"), filepath.Join(dir, "etcd.e0.key"))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if got := peer.RoleOf(leaf); got != "" {
		t.Errorf("etcd certificate has role %q, want none", got)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "etcd0.example", KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("usage %v: %v", usage, err)
		}
	}
	if len(leaf.IPAddresses) != 1 || leaf.IPAddresses[0].String() != "127.0.0.21" {
		t.Errorf("IP SANs %v", leaf.IPAddresses)
	}
	if _, _, err := run(t, nil, false, "certs", "etcd", "--certs-dir", dir, "bad/name", "h"); !errors.Is(err, torus.ErrInvalid) {
		t.Errorf("bad member name: %v, want ErrInvalid", err)
	}
}
