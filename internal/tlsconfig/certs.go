package tlsconfig

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/peer"
)

// File names in a certificates directory (torusctl certs --certs-dir).
const (
	CACert     = "ca.crt"
	CAKey      = "ca.key"
	DaemonCert = "daemon.crt"
	DaemonKey  = "daemon.key"
)

// Default lifetimes of issued certificates.
const (
	DefaultCALifetime   = 10 * 365 * 24 * time.Hour
	DefaultCertLifetime = 2 * 365 * 24 * time.Hour
)

// IssueOptions tune InitCA, IssueDaemon and IssueClient.
type IssueOptions struct {
	// Overwrite replaces existing files; without it an existing file
	// fails the call with an error wrapping torus.ErrExist.
	Overwrite bool
	// Lifetime of the certificate; 0: DefaultCALifetime for a CA,
	// DefaultCertLifetime otherwise.
	Lifetime time.Duration
	// Now is the clock (tests issue expired certificates); default
	// time.Now.
	Now func() time.Time
}

func (o IssueOptions) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

// DaemonFiles are the peer TLS files of a daemon in dir.
func DaemonFiles(dir string) Files {
	return Files{Cert: filepath.Join(dir, DaemonCert), Key: filepath.Join(dir, DaemonKey), CA: filepath.Join(dir, CACert)}
}

// ClientFiles are the peer TLS files of client name in dir.
func ClientFiles(dir, name string) Files {
	return Files{Cert: filepath.Join(dir, "client."+name+".crt"), Key: filepath.Join(dir, "client."+name+".key"),
		CA: filepath.Join(dir, CACert)}
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// InitCA creates a CA (ECDSA P-256) in dir: ca.crt and ca.key (mode 0600).
func InitCA(dir string, o IssueOptions) error {
	crt, key := filepath.Join(dir, CACert), filepath.Join(dir, CAKey)
	if err := checkFree(o, crt, key); err != nil {
		return err
	}
	life := o.Lifetime
	if life == 0 {
		life = DefaultCALifetime
	}
	now := o.now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "Torus CA", Organization: []string{"Torus"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(life),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl.SerialNumber, err = serial()
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		return err
	}
	return writePair(dir, crt, key, der, priv)
}

// IssueDaemon issues dir/daemon.crt and daemon.key, signed by the CA in
// dir, for the given hosts (IP addresses or DNS names: every address
// clients and other daemons dial). Its common name is the first host; it
// carries the daemon role and serves as both TLS server and client.
func IssueDaemon(dir string, hosts []string, o IssueOptions) error {
	if len(hosts) == 0 {
		return fmt.Errorf("%w: a daemon certificate needs at least one host (IP address or DNS name)", torus.ErrInvalid)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: hosts[0], Organization: []string{"Torus"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{peer.RoleURI(peer.RoleDaemon)},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return issue(dir, filepath.Join(dir, DaemonCert), filepath.Join(dir, DaemonKey), tmpl, o)
}

// IssueClient issues dir/client.NAME.crt and client.NAME.key, signed by
// the CA in dir: common name NAME, the client role, TLS client only.
func IssueClient(dir, name string, o IssueOptions) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: client name %q: use letters, digits, '.', '_' and '-'", torus.ErrInvalid, name)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, Organization: []string{"Torus"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{peer.RoleURI(peer.RoleClient)},
	}
	f := ClientFiles(dir, name)
	return issue(dir, f.Cert, f.Key, tmpl, o)
}

// EtcdFiles are the files of etcd member name in dir: its certificate
// (etcd's --cert-file and --peer-cert-file), key and the CA.
func EtcdFiles(dir, name string) Files {
	return Files{Cert: filepath.Join(dir, "etcd."+name+".crt"), Key: filepath.Join(dir, "etcd."+name+".key"),
		CA: filepath.Join(dir, CACert)}
}

// IssueEtcd issues dir/etcd.NAME.crt and etcd.NAME.key, signed by the CA
// in dir, for etcd member NAME reached at hosts (IP addresses or DNS
// names): TLS server and client usage, as etcd uses one certificate for
// clients and for its peers. It carries no Torus role, so it opens no
// daemon's peer port.
func IssueEtcd(dir, name string, hosts []string, o IssueOptions) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: etcd member name %q: use letters, digits, '.', '_' and '-'", torus.ErrInvalid, name)
	}
	if len(hosts) == 0 {
		return fmt.Errorf("%w: an etcd certificate needs at least one host (IP address or DNS name)", torus.ErrInvalid)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name, Organization: []string{"Torus"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	f := EtcdFiles(dir, name)
	return issue(dir, f.Cert, f.Key, tmpl, o)
}

// EnsureDev makes sure dir holds a CA, a daemon certificate for hosts and
// a client certificate "root", creating what is missing (torusd --dev
// --secure on first start). It reports whether it created anything.
func EnsureDev(dir string, hosts []string) (bool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, err
	}
	created := false
	if !exists(filepath.Join(dir, CACert)) {
		if err := InitCA(dir, IssueOptions{}); err != nil {
			return false, err
		}
		created = true
	}
	if !exists(filepath.Join(dir, DaemonCert)) {
		if err := IssueDaemon(dir, hosts, IssueOptions{}); err != nil {
			return created, err
		}
		created = true
	}
	if !exists(ClientFiles(dir, "root").Cert) {
		if err := IssueClient(dir, "root", IssueOptions{}); err != nil {
			return created, err
		}
		created = true
	}
	return created, nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func issue(dir, crt, key string, tmpl *x509.Certificate, o IssueOptions) error {
	if err := checkFree(o, crt, key); err != nil {
		return err
	}
	ca, caKey, err := loadCA(dir)
	if err != nil {
		return err
	}
	life := o.Lifetime
	if life == 0 {
		life = DefaultCertLifetime
	}
	now := o.now()
	tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(life)
	if tmpl.NotAfter.After(ca.NotAfter) {
		tmpl.NotAfter = ca.NotAfter
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	if tmpl.SerialNumber, err = serial(); err != nil {
		return err
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &priv.PublicKey, caKey)
	if err != nil {
		return err
	}
	return writePair(dir, crt, key, der, priv)
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	crtPEM, err := os.ReadFile(filepath.Join(dir, CACert))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("%w: no CA in %s (run `torusctl certs init-ca --certs-dir %s` first)", torus.ErrNotExist, dir, dir)
		}
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKey))
	if err != nil {
		return nil, nil, fmt.Errorf("reading the CA key: %w", err)
	}
	b, _ := pem.Decode(crtPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, nil, fmt.Errorf("%w: %s: no certificate", torus.ErrInvalid, CACert)
	}
	ca, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, nil, err
	}
	k, _ := pem.Decode(keyPEM)
	if k == nil {
		return nil, nil, fmt.Errorf("%w: %s: no key", torus.ErrInvalid, CAKey)
	}
	key, err := x509.ParseECPrivateKey(k.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", CAKey, err)
	}
	return ca, key, nil
}

func checkFree(o IssueOptions, paths ...string) error {
	if o.Overwrite {
		return nil
	}
	for _, p := range paths {
		if exists(p) {
			return fmt.Errorf("%w: %s (use --overwrite to replace it)", torus.ErrExist, p)
		}
	}
	return nil
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// writePair writes the key (0600) then the certificate (0644), each to a
// temporary file renamed into place, so that a reloader never reads half a
// file.
func writePair(dir, crt, key string, der []byte, priv *ecdsa.PrivateKey) error {
	kder, err := x509.MarshalECPrivateKey(priv)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := writeFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return writeFile(crt, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
