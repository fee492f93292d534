package etcdflags

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/pflag"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/tlsconfig"
	etcdmeta "github.com/torus-storage/torus/metadata/etcd"
)

func TestRegisterEnvAndFlags(t *testing.T) {
	certs := t.TempDir()
	if err := tlsconfig.InitCA(certs, tlsconfig.IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := tlsconfig.IssueClient(certs, "torus", tlsconfig.IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	cf := tlsconfig.ClientFiles(certs, "torus")
	env := map[string]string{"TORUS_ETCD_CERT": cf.Cert, "TORUS_ETCD_USER": "torus"}
	var f Flags
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	f.Register(fs, func(k string) string { return env[k] })
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := fs.Parse([]string{"--etcd-key", cf.Key, "--etcd-password-file", pw}); err != nil {
		t.Fatal(err)
	}
	var cfg etcdmeta.Config
	if err := f.Apply(&cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.CertFile != cf.Cert || cfg.KeyFile != cf.Key || cfg.Username != "torus" || cfg.Password != "s3cret" || cfg.TLS == nil {
		t.Fatalf("config %+v", cfg)
	}

	// pflag (torusctl, torusblk) takes the same helper.
	var g Flags
	ps := pflag.NewFlagSet("y", pflag.ContinueOnError)
	g.Register(ps, func(string) string { return "" })
	if err := ps.Parse([]string{"--etcd-ca", "ca.crt"}); err != nil {
		t.Fatal(err)
	}
	if g.CA != "ca.crt" || g.User != "" {
		t.Fatalf("pflag: %+v", g)
	}
}

func TestApplyRefuses(t *testing.T) {
	for _, f := range []Flags{
		{PasswordFile: "/nonexistent"},            // no user
		{User: "u", PasswordFile: "/nonexistent"}, // unreadable
		{Cert: "/nonexistent.crt", Key: "/nonexistent.key"},
		{Cert: "/nonexistent.crt"}, // no key
	} {
		var cfg etcdmeta.Config
		if err := f.Apply(&cfg); !errors.Is(err, torus.ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", f, err)
		}
	}
}

func TestEndpoints(t *testing.T) {
	got := Endpoints(" https://a:2379,,https://b:2379 ")
	if len(got) != 2 || got[0] != "https://a:2379" || got[1] != "https://b:2379" {
		t.Fatalf("%q", got)
	}
}
