// Package tlsconfig builds the TLS configurations of every Torus binary from
// certificate files, and reloads them: torusd's peer and HTTP ports, and the
// peer clients of torusd, torusblk, torusctl and torus-csi. It also issues
// the certificates `torusctl certs` and `torusd --dev --secure` write
// (certs.go). docs/security.md describes the model.
//
// Every configuration allows TLS 1.3 only. Servers present the current
// certificate of a Reloader and, with a CA, require and verify client
// certificates; clients present theirs and verify the daemon's against the
// CA and the host dialed, and require the daemon role (peer.RoleDaemon).
// Reloading swaps the certificate, key and CA for connections made after
// it; established connections keep theirs.
package tlsconfig

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/peer"
)

// Files names a certificate, its key and the CA bundle that verifies the
// other side. All PEM.
type Files struct {
	Cert, Key, CA string
}

// Enabled reports whether any file is set.
func (f Files) Enabled() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

// Validate checks that the files form a usable set: certificate and key
// together, and with needCA a CA too (mutual TLS).
func (f Files) Validate(what string, needCA bool) error {
	switch {
	case !f.Enabled():
		return nil
	case f.Cert == "" || f.Key == "":
		return fmt.Errorf("%w: %s: certificate and key go together", torus.ErrInvalid, what)
	case needCA && f.CA == "":
		return fmt.Errorf("%w: %s: a CA is needed to verify the other side", torus.ErrInvalid, what)
	}
	return nil
}

// state is one loaded set of files.
type state struct {
	cert  *tls.Certificate
	pool  *x509.CertPool // nil without a CA file
	stamp string         // what the files looked like when loaded
}

// Reloader holds the current contents of a Files set. It is safe for
// concurrent use; the configurations it returns read the current contents
// at every handshake.
type Reloader struct {
	files Files
	what  string
	log   *slog.Logger
	cur   atomic.Pointer[state]
	mu    sync.Mutex // serializes Reload
}

// New loads files (certificate and key required; CA optional) and returns
// their reloader. what names the set in errors and logs ("peer TLS").
func New(what string, files Files, logger *slog.Logger) (*Reloader, error) {
	if files.Cert == "" || files.Key == "" {
		return nil, fmt.Errorf("%w: %s: certificate and key go together", torus.ErrInvalid, what)
	}
	return newReloader(what, files, logger)
}

// newReloader is New without the certificate requirement (Etcd: a CA
// alone is a valid etcd client configuration).
func newReloader(what string, files Files, logger *slog.Logger) (*Reloader, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{files: files, what: what, log: logger}
	st, err := r.load()
	if err != nil {
		return nil, err
	}
	r.cur.Store(st)
	return r, nil
}

// Files returns the files the reloader reads.
func (r *Reloader) Files() Files { return r.files }

// stamp describes the files' sizes and modification times.
func (r *Reloader) stamp() string {
	var b bytes.Buffer
	for _, p := range []string{r.files.Cert, r.files.Key, r.files.CA} {
		if p == "" {
			continue
		}
		if fi, err := os.Stat(p); err == nil {
			fmt.Fprintf(&b, "%s:%d:%d;", p, fi.Size(), fi.ModTime().UnixNano())
		} else {
			fmt.Fprintf(&b, "%s:missing;", p)
		}
	}
	return b.String()
}

func (r *Reloader) load() (*state, error) {
	stamp := r.stamp()
	st := &state{stamp: stamp}
	if r.files.Cert != "" || r.files.Key != "" {
		cert, err := tls.LoadX509KeyPair(r.files.Cert, r.files.Key)
		if err != nil {
			return nil, fmt.Errorf("%s: loading %s and %s: %w", r.what, r.files.Cert, r.files.Key, err)
		}
		st.cert = &cert
	}
	if r.files.CA != "" {
		pem, err := os.ReadFile(r.files.CA)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r.what, err)
		}
		st.pool = x509.NewCertPool()
		if !st.pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: %s: no certificate in %s", torus.ErrInvalid, r.what, r.files.CA)
		}
	}
	return st, nil
}

// CommonName is the subject common name of the current certificate: the
// identity a peer client shows the daemons ("" for a nil Reloader or one
// without a certificate).
func (r *Reloader) CommonName() string {
	if r == nil {
		return ""
	}
	st := r.cur.Load()
	if st == nil || st.cert == nil || len(st.cert.Certificate) == 0 {
		return ""
	}
	leaf := st.cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(st.cert.Certificate[0]); err != nil {
			return ""
		}
	}
	return leaf.Subject.CommonName
}

// Reload reads the files again. On error the current contents stay in use
// (a half-written certificate does not take a port down).
func (r *Reloader) Reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := r.load()
	if err != nil {
		r.log.Warn("certificate reload failed; keeping the current ones", "what", r.what, "err", err)
		return err
	}
	r.cur.Store(st)
	r.log.Info("certificates reloaded", "what", r.what, "cert", r.files.Cert, "subject", leafName(st.cert))
	return nil
}

// Watch reloads the files whenever their size or modification time
// changes, checking every interval, until ctx ends.
func (r *Reloader) Watch(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.ReloadIfChanged()
	}
}

// ReloadIfChanged reloads the files when their size or modification time
// differ from those of the files loaded last; on error the current
// contents stay (Reload).
func (r *Reloader) ReloadIfChanged() {
	if r.stamp() != r.cur.Load().stamp {
		r.Reload()
	}
}

func leafName(c *tls.Certificate) string {
	if c == nil {
		return ""
	}
	if c.Leaf != nil {
		return c.Leaf.Subject.CommonName
	}
	if len(c.Certificate) > 0 {
		if l, err := x509.ParseCertificate(c.Certificate[0]); err == nil {
			return l.Subject.CommonName
		}
	}
	return ""
}

// Server returns a server configuration presenting the current
// certificate. With a CA file, clients must present a certificate it
// verifies (mutual TLS); without, client certificates are not asked for
// (the HTTP port).
func (r *Reloader) Server() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			st := r.cur.Load()
			cfg := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*st.cert}}
			if st.pool != nil {
				cfg.ClientAuth = tls.RequireAndVerifyClientCert
				cfg.ClientCAs = st.pool
			}
			return cfg, nil
		},
	}
}

// ErrNotDaemon is wrapped (with torus.ErrPermission) when the server's
// certificate has no daemon role.
var ErrNotDaemon = errors.New("tlsconfig: the server's certificate is not a daemon's")

// Client returns a client configuration for dialing a daemon at host: it
// presents the current certificate and verifies the daemon's against the
// current CA and host, and requires it to carry the daemon role. It fits
// peer.ClientConfig.TLS.
func (r *Reloader) Client(host string) *tls.Config {
	st := r.cur.Load()
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		ServerName:   host,
		RootCAs:      st.pool,
		Certificates: []tls.Certificate{*st.cert},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("%w: %w", torus.ErrPermission, ErrNotDaemon)
			}
			if role := peer.RoleOf(cs.PeerCertificates[0]); role != peer.RoleDaemon {
				return fmt.Errorf("%w: %w (%q has role %q)", torus.ErrPermission, ErrNotDaemon,
					cs.PeerCertificates[0].Subject.CommonName, role.RoleLabel())
			}
			return nil
		},
	}
}

// PeerClient is the peer client's TLS hook for r; nil when r is nil (plain).
func PeerClient(r *Reloader) func(host string) *tls.Config {
	if r == nil {
		return nil
	}
	return r.Client
}

// Etcd loads the etcd client's TLS files (--etcd-cert, --etcd-key,
// --etcd-ca): nil (plain, or the system roots for https endpoints) when
// none is set. The certificate is optional (an etcd without
// --client-cert-auth needs only its CA), but certificate and key go
// together.
func Etcd(files Files, logger *slog.Logger) (*Reloader, error) {
	if !files.Enabled() {
		return nil, nil
	}
	if err := files.Validate("etcd TLS (--etcd-cert, --etcd-key, --etcd-ca)", false); err != nil {
		return nil, err
	}
	return newReloader("etcd TLS", files, logger)
}

// ErrNoServerCertificate is wrapped when a server presents no certificate.
var ErrNoServerCertificate = errors.New("tlsconfig: the server presented no certificate")

// EtcdClient returns the configuration of an etcd client (TLS 1.2 and up,
// as etcd allows). At every handshake, that is whenever the client
// connects or reconnects to an etcd member, it first reloads the files if
// they changed (ReloadIfChanged), so a rotated client certificate or CA
// bundle is used from the next connection on without a restart and without
// touching established connections; it presents the current certificate
// (none without one) and verifies etcd's against the current CA (the
// system roots without one) and the host dialed.
func (r *Reloader) EtcdClient() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			r.ReloadIfChanged()
			if st := r.cur.Load(); st.cert != nil {
				return st.cert, nil
			}
			return &tls.Certificate{}, nil // none: the server decides
		},
		// The server's certificate is verified in VerifyConnection
		// against the CA current at the handshake; the static check
		// would use a CA fixed when the configuration was made.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			r.ReloadIfChanged()
			if len(cs.PeerCertificates) == 0 {
				return fmt.Errorf("%s: %w", r.what, ErrNoServerCertificate)
			}
			opts := x509.VerifyOptions{Roots: r.cur.Load().pool, DNSName: cs.ServerName, Intermediates: x509.NewCertPool()}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
				return fmt.Errorf("%s: %w", r.what, err)
			}
			return nil
		},
	}
}
