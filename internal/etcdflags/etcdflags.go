// Package etcdflags is the one place the etcd client flags of torusd,
// torusctl, torusblk and torus-csi are defined: TLS files and
// authentication, each with a TORUS_* environment default. It works with
// both the standard flag package and pflag (both have StringVar), and
// imports neither.
package etcdflags

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/tlsconfig"
	etcdmeta "github.com/torus-storage/torus/metadata/etcd"
)

// FlagSet is what Register needs: *flag.FlagSet and *pflag.FlagSet both
// have it.
type FlagSet interface {
	StringVar(p *string, name, value, usage string)
}

// Flags are the etcd client settings shared by every binary.
type Flags struct {
	Cert, Key, CA      string // --etcd-cert, --etcd-key, --etcd-ca
	User, PasswordFile string // --etcd-user, --etcd-password-file
}

// Register defines --etcd-cert, --etcd-key, --etcd-ca, --etcd-user and
// --etcd-password-file on fs, defaulting to TORUS_ETCD_CERT,
// TORUS_ETCD_KEY, TORUS_ETCD_CA, TORUS_ETCD_USER and
// TORUS_ETCD_PASSWORD_FILE read through getenv.
func (f *Flags) Register(fs FlagSet, getenv func(string) string) {
	fs.StringVar(&f.Cert, "etcd-cert", getenv("TORUS_ETCD_CERT"), "TLS client certificate for etcd (env TORUS_ETCD_CERT)")
	fs.StringVar(&f.Key, "etcd-key", getenv("TORUS_ETCD_KEY"), "key of --etcd-cert (env TORUS_ETCD_KEY)")
	fs.StringVar(&f.CA, "etcd-ca", getenv("TORUS_ETCD_CA"), "CA bundle that signed etcd's certificates (env TORUS_ETCD_CA)")
	fs.StringVar(&f.User, "etcd-user", getenv("TORUS_ETCD_USER"), "etcd user, for an etcd with authentication enabled (env TORUS_ETCD_USER; without it and with --etcd-cert, etcd may take the certificate's common name)")
	fs.StringVar(&f.PasswordFile, "etcd-password-file", getenv("TORUS_ETCD_PASSWORD_FILE"), "file holding the password of --etcd-user (env TORUS_ETCD_PASSWORD_FILE)")
}

// Apply copies the settings into cfg, reading the password file (one
// line; a trailing newline is dropped). The TLS files are loaded into
// cfg.TLS, a configuration that reads them again whenever they changed at
// each new connection to etcd (tlsconfig.Reloader.EtcdClient): a rotated
// etcd client certificate or CA is used from the next connection on, with
// no restart. TLS files that do not load, a password file without a user,
// or one that cannot be read, fail with an error wrapping
// torus.ErrInvalid. The password is read once: etcd's client keeps the
// password it was created with.
func (f Flags) Apply(cfg *etcdmeta.Config) error {
	cfg.CertFile, cfg.KeyFile, cfg.CAFile = f.Cert, f.Key, f.CA
	r, err := tlsconfig.Etcd(tlsconfig.Files{Cert: f.Cert, Key: f.Key, CA: f.CA}, cfg.Logger)
	if err != nil {
		if errors.Is(err, torus.ErrInvalid) {
			return err
		}
		return fmt.Errorf("%w: %w", torus.ErrInvalid, err)
	}
	if r != nil {
		cfg.TLS = r.EtcdClient()
	}
	cfg.Username = f.User
	if f.PasswordFile == "" {
		return nil
	}
	if f.User == "" {
		return fmt.Errorf("%w: --etcd-password-file needs --etcd-user", torus.ErrInvalid)
	}
	b, err := os.ReadFile(f.PasswordFile)
	if err != nil {
		return fmt.Errorf("%w: --etcd-password-file: %w", torus.ErrInvalid, err)
	}
	cfg.Password = strings.TrimRight(string(b), "\r\n")
	return nil
}

// Endpoints splits a comma-separated --etcd value, dropping empty parts.
func Endpoints(s string) []string {
	var eps []string
	for _, e := range strings.Split(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			eps = append(eps, e)
		}
	}
	return eps
}
