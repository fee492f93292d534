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
