package life

import (
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
