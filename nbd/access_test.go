package nbd

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/internal/tlsconfig"
)

const testExportList = `
# NAME          ACCESS EXPORT...
alice           rw     vm-*
bob             ro     vm-1 db@*
spiffe://t/bk   ro     *
bob             rw     vm-2   # a second line: the highest access wins
`

func TestExportListAuthorize(t *testing.T) {
	l, err := ParseExportList([]byte(testExportList))
	if err != nil {
		t.Fatal(err)
	}
	cert := func(cn string, uris ...string) *x509.Certificate {
		c := &x509.Certificate{Subject: pkix.Name{CommonName: cn}}
		for _, u := range uris {
			p, _ := url.Parse(u)
			c.URIs = append(c.URIs, p)
		}
		return c
	}
	for _, tc := range []struct {
		cert   *x509.Certificate
		export string
		want   Access
	}{
		{cert("alice"), "vm-1", AccessReadWrite},
		{cert("alice"), "vm-1@snap", AccessReadWrite}, // '*' spans '@'
		{cert("alice"), "db", AccessNone},
		{cert("bob"), "vm-1", AccessReadOnly},
		{cert("bob"), "vm-2", AccessReadWrite},
		{cert("bob"), "vm-3", AccessNone},
		{cert("bob"), "db", AccessNone},
		{cert("bob"), "db@daily", AccessReadOnly},
		{cert("x", "spiffe://t/bk"), "db", AccessReadOnly},
		{cert("Alice"), "vm-1", AccessNone}, // names match exactly
		{nil, "vm-1", AccessNone},
	} {
		if got := l.Authorize(tc.cert, tc.export); got != tc.want {
			t.Errorf("%v on %s: %v, want %v", Names(tc.cert), tc.export, got, tc.want)
		}
	}
	for _, bad := range []string{"alice rw", "alice rx vm", "alice rw [", "alice"} {
		if _, err := ParseExportList([]byte(bad)); !errors.Is(err, torus.ErrInvalid) {
			t.Errorf("%q: %v, want ErrInvalid", bad, err)
		}
	}
}

// nbdClientDir lays out client name's certificate from certs as libnbd
// expects (tls-certificates=DIR): ca-cert.pem, client-cert.pem,
// client-key.pem. Without name only the CA is there: no client
// certificate.
func nbdClientDir(t *testing.T, certs, name string) string {
	t.Helper()
	dir := t.TempDir()
	f := tlsconfig.ClientFiles(certs, name)
	files := map[string]string{f.CA: "ca-cert.pem"}
	if name != "" {
		files[f.Cert], files[f.Key] = "client-cert.pem", "client-key.pem"
	}
	for src, dst := range files {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestExportListClients: a TLS server with a CA (client certificates
// required and verified) and an export list, driven by real nbdinfo and
// nbdcopy with certificates from internal/tlsconfig. nbdinfo --list shows
// each client only what it may attach; a client refused an export cannot
// read it; a read-only grant makes the export read-only (nbdcopy into it
// fails and the device is unchanged) while a read-write grant writes; a
// client with no certificate, or one of another CA, is refused at the
// handshake.
func TestExportListClients(t *testing.T) {
	nbdinfo := testutil.RequireBinary(t, "nbdinfo")
	nbdcopy := testutil.RequireBinary(t, "nbdcopy")
	certs := t.TempDir()
	o := tlsconfig.IssueOptions{}
	if err := tlsconfig.InitCA(certs, o); err != nil {
		t.Fatal(err)
	}
	if err := tlsconfig.IssueDaemon(certs, []string{"127.0.0.1", "localhost"}, o); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"alice", "bob", "carol"} {
		if err := tlsconfig.IssueClient(certs, n, o); err != nil {
			t.Fatal(err)
		}
	}
	other := t.TempDir()
	if err := tlsconfig.InitCA(other, o); err != nil {
		t.Fatal(err)
	}
	if err := tlsconfig.IssueClient(other, "alice", o); err != nil {
		t.Fatal(err)
	}
	rl, err := tlsconfig.New("nbd TLS", tlsconfig.DaemonFiles(certs), testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	list, err := ParseExportList([]byte("alice rw vm-*\nbob ro vm-1\n"))
	if err != nil {
		t.Fatal(err)
	}
	ex := newMemExports()
	vm1 := ex.add("vm-1", 1<<20)
	ex.add("vm-2", 1<<20)
	ex.add("db", 1<<20)
	_, addr := startServer(t, Config{TLS: rl.Server(), TLSRequired: true, Authorizer: list}, ex)
	alice, bob, carol := nbdClientDir(t, certs, "alice"), nbdClientDir(t, certs, "bob"), nbdClientDir(t, certs, "carol")
	nbds := func(dir, export string) string { return "nbds://" + addr + "/" + export + "?tls-certificates=" + dir }

	listed := func(dir string) string {
		out, err := runErr(30*time.Second, nbdinfo, "--list", "--json", nbds(dir, ""))
		if err != nil && !strings.Contains(out, `"exports"`) {
			return "error: " + out
		}
		var names []string
		for _, n := range []string{"vm-1", "vm-2", "db"} {
			if strings.Contains(out, `"export-name": "`+n+`"`) {
				names = append(names, n)
			}
		}
		return strings.Join(names, ",")
	}
	for dir, want := range map[string]string{alice: "vm-1,vm-2", bob: "vm-1", carol: ""} {
		if got := listed(dir); got != want {
			t.Errorf("nbdinfo --list as %s: %q, want %q", filepath.Base(dir), got, want)
		}
	}
	if out, err := runErr(30*time.Second, nbdinfo, nbds(alice, "db")); err == nil {
		t.Errorf("alice attached db, which her grant does not name:\n%s", out)
	}
	if out := run(t, 30*time.Second, nbdinfo, nbds(bob, "vm-1")); !strings.Contains(out, "is_read_only: true") {
		t.Errorf("bob's ro grant: vm-1 not read-only:\n%s", out)
	}

	src := filepath.Join(t.TempDir(), "src")
	data := bytes.Repeat([]byte{0xa5}, 1<<20)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runErr(30*time.Second, nbdcopy, src, nbds(bob, "vm-1")); err == nil {
		t.Errorf("nbdcopy into vm-1 with bob's ro grant succeeded:\n%s", out)
	}
	buf := make([]byte, 4096)
	vm1.Reopen() // the server closed it when the last client left
	if err := vm1.ReadAt(t.Context(), buf, 0); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(buf, []byte{0xa5}) {
		t.Fatal("a read-only grant wrote to vm-1")
	}
	run(t, 30*time.Second, nbdcopy, "--flush", src, nbds(alice, "vm-1"))
	vm1.Reopen() // the server closed it when the last client left
	if err := vm1.ReadAt(t.Context(), buf, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, data[:4096]) {
		t.Fatal("alice's rw nbdcopy did not reach vm-1")
	}

	for name, dir := range map[string]string{"no certificate": nbdClientDir(t, certs, ""), "another CA": nbdClientDir(t, other, "alice")} {
		// The other CA's directory trusts the wrong server CA too; give
		// it ours so only its client certificate is foreign.
		if name == "another CA" {
			b, _ := os.ReadFile(filepath.Join(certs, tlsconfig.CACert))
			os.WriteFile(filepath.Join(dir, "ca-cert.pem"), b, 0o600)
		}
		if out, err := runErr(30*time.Second, nbdinfo, nbds(dir, "vm-1")); err == nil {
			t.Errorf("%s: nbdinfo attached vm-1:\n%s", name, out)
		}
	}
}
