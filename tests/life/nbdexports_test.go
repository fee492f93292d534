package life

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/internal/tlsconfig"
)

// TestNBDExportList: torusblk nbdserve with --tls-ca and --nbd-exports
// (certificates from `torusctl certs`), against real volumes, driven by
// nbdinfo with client certificates. Client "vm" (rw on vm-*) lists vm-a
// and vm-b but not db and writes vm-a with nbdcopy; client "ops" (ro on
// *) lists all three and sees them read-only. After the file is rewritten
// (ops loses everything) and torusblk gets SIGHUP, ops lists nothing.
func TestNBDExportList(t *testing.T) {
	nbdinfo := testutil.RequireBinary(t, "nbdinfo")
	c := startCluster(t, proccluster.Options{Daemons: 2, Replication: 2})
	for _, v := range []string{"vm-a", "vm-b", "db"} {
		createVolume(t, c, v, "4MiB", 0)
	}
	certs := filepath.Join(c.Dir, "nbd-certs")
	c.Ctl("certs", "init-ca", "--certs-dir", certs)
	c.Ctl("certs", "daemon", "--certs-dir", certs, "127.0.0.101", "127.0.0.102")
	c.Ctl("certs", "client", "--certs-dir", certs, "vm")
	c.Ctl("certs", "client", "--certs-dir", certs, "ops")
	list := filepath.Join(c.Dir, "exports")
	if err := os.WriteFile(list, []byte("vm rw vm-*\nops ro *\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f := tlsconfig.DaemonFiles(certs)
	p, addr := c.StartNBD("--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", f.CA, "--nbd-exports", list)
	dirFor := func(name string) string {
		d := filepath.Join(c.Dir, "nbd-"+name)
		os.MkdirAll(d, 0o700)
		cf := tlsconfig.ClientFiles(certs, name)
		for src, dst := range map[string]string{cf.CA: "ca-cert.pem", cf.Cert: "client-cert.pem", cf.Key: "client-key.pem"} {
			b, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(d, dst), b, 0o600)
		}
		return d
	}
	vm, ops := dirFor("vm"), dirFor("ops")
	nbds := func(dir, export string) string { return "nbds://" + addr + "/" + export + "?tls-certificates=" + dir }
	listed := func(dir string) string {
		out, _ := runErrLife(nbdinfo, "--list", "--json", nbds(dir, ""))
		var names []string
		for _, n := range []string{"vm-a", "vm-b", "db"} {
			if strings.Contains(out, `"export-name": "`+n+`"`) {
				names = append(names, n)
			}
		}
		return strings.Join(names, ",")
	}
	if got := listed(vm); got != "vm-a,vm-b" {
		t.Errorf("vm lists %q, want vm-a,vm-b", got)
	}
	if got := listed(ops); got != "vm-a,vm-b,db" {
		t.Errorf("ops lists %q, want vm-a,vm-b,db", got)
	}
	if out, err := runErrLife(nbdinfo, nbds(vm, "db")); err == nil {
		t.Errorf("vm attached db:\n%s", out)
	}
	if out, _ := runErrLife(nbdinfo, nbds(ops, "db")); !strings.Contains(out, "is_read_only: true") {
		t.Errorf("ops's ro grant: db not read-only:\n%s", out)
	}
	src, _ := randomFile(t, t.TempDir(), "a.img", 4<<20)
	nbdcopyRun(t, "--flush", src, nbds(vm, "vm-a"))

	if err := os.WriteFile(list, []byte("vm rw vm-*\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p.Signal(t, syscall.SIGHUP)
	eventually(t, 10*time.Second, 200*time.Millisecond, "ops loses its grant after SIGHUP", func() (bool, string) {
		got := listed(ops)
		return got == "", got
	})
	if got := listed(vm); got != "vm-a,vm-b" {
		t.Errorf("after reload vm lists %q, want vm-a,vm-b", got)
	}
}

// runErrLife runs a client for at most 30 s and returns its combined output.
func runErrLife(bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return string(out), err
}

// libnbdDir lays out a client certificate as libnbd expects
// (tls-certificates=DIR), with ca as the CA that verifies the server.
func libnbdDir(t *testing.T, f tlsconfig.Files, ca string) string {
	t.Helper()
	d := t.TempDir()
	for src, dst := range map[string]string{ca: "ca-cert.pem", f.Cert: "client-cert.pem", f.Key: "client-key.pem"} {
		if src == "" {
			continue
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, dst), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// TestNBDRefusals: torusblk nbdserve with client certificates required
// (--tls-ca) and an export list ("vm rw vm-a", "ops ro vm-a"), over a
// volume vm-a that client vm filled. Each of these nbdcopy writers into
// vm-a is refused, each a subtest: no client certificate, a certificate of
// another CA, an expired certificate of the right CA, a certificate of the
// right CA whose name the list does not grant ("guest"), and a read-only
// grant ("ops": the wrong role for writing). After each, vm-a reads back
// byte for byte what vm wrote.
func TestNBDRefusals(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 1, Replication: 1})
	createVolume(t, c, "vm-a", "4MiB", 0)
	certs := filepath.Join(c.Dir, "nbd-certs")
	c.Ctl("certs", "init-ca", "--certs-dir", certs)
	c.Ctl("certs", "daemon", "--certs-dir", certs, "127.0.0.101", "127.0.0.102")
	for _, n := range []string{"vm", "ops", "guest"} {
		c.Ctl("certs", "client", "--certs-dir", certs, n)
	}
	past := func() time.Time { return time.Now().Add(-48 * time.Hour) }
	if err := tlsconfig.IssueClient(certs, "vm-old", tlsconfig.IssueOptions{Lifetime: 24 * time.Hour, Now: past}); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	if err := tlsconfig.InitCA(other, tlsconfig.IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := tlsconfig.IssueClient(other, "vm", tlsconfig.IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(c.Dir, "exports")
	if err := os.WriteFile(list, []byte("vm rw vm-a\nvm-old rw vm-a\nops ro vm-a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f := tlsconfig.DaemonFiles(certs)
	_, addr := c.StartNBD("--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", f.CA, "--nbd-exports", list)
	ca := f.CA
	nbds := func(dir string) string { return "nbds://" + addr + "/vm-a?tls-certificates=" + dir }
	vm := libnbdDir(t, tlsconfig.ClientFiles(certs, "vm"), ca)
	dir := t.TempDir()
	src, want := randomFile(t, dir, "a.img", 4<<20)
	evil, _ := randomFile(t, dir, "evil.img", 4<<20)
	nbdcopyRun(t, "--flush", src, nbds(vm))

	for _, tc := range []struct {
		name string
		dir  string
	}{
		{"no certificate", libnbdDir(t, tlsconfig.Files{}, ca)},
		{"another CA", libnbdDir(t, tlsconfig.ClientFiles(other, "vm"), ca)},
		{"expired", libnbdDir(t, tlsconfig.ClientFiles(certs, "vm-old"), ca)},
		{"not in the export list", libnbdDir(t, tlsconfig.ClientFiles(certs, "guest"), ca)},
		{"read-only grant", libnbdDir(t, tlsconfig.ClientFiles(certs, "ops"), ca)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := testutil.RequireBinary(t, "nbdcopy")
			out, err := runErrLife(bin, "--flush", evil, nbds(tc.dir))
			t.Logf("refused: %s", strings.TrimSpace(out))
			if err == nil {
				t.Fatalf("nbdcopy into vm-a succeeded:\n%s", out)
			}
			got := filepath.Join(t.TempDir(), "got.img")
			nbdcopyRun(t, nbds(vm), got)
			b, err := os.ReadFile(got)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, want) {
				t.Fatal("vm-a changed after a refused write")
			}
		})
	}
}
