package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"github.com/torus-storage/torus/internal/tlsconfig"
)

// security is torusd's TLS: the peer port's certificates (nil: plain) and
// the HTTP port's (nil: plain HTTP).
type security struct {
	peer, http *tlsconfig.Reloader
	dir        string // with --dev --secure: the certificates directory
	nbdDir     string // with --dev --secure: the client files for libnbd/qemu
}

func (s security) peerServer() *tls.Config {
	if s.peer == nil {
		return nil
	}
	return s.peer.Server()
}

func (s security) httpServer() *tls.Config {
	if s.http == nil {
		return nil
	}
	return s.http.Server()
}

// loadSecurity loads the TLS files of the flags; with --dev --secure it
// creates DATA-DIR/certs on first start (a CA, a daemon certificate for
// the peer address's host, localhost and 127.0.0.1, and client "root").
func loadSecurity(f *flags, log *slog.Logger) (security, error) {
	var sec security
	peerFiles := tlsconfig.Files{Cert: f.peerCert, Key: f.peerKey, CA: f.peerCA}
	httpFiles := tlsconfig.Files{Cert: f.httpCert, Key: f.httpKey}
	if f.secure {
		sec.dir = filepath.Join(f.dataDir, "certs")
		hosts := []string{"127.0.0.1", "localhost"}
		for _, a := range []string{f.peerAddr, f.advertise, f.nbdListen, f.httpAddr} {
			if h, _, err := net.SplitHostPort(a); err == nil && h != "" && h != "127.0.0.1" && h != "localhost" {
				hosts = append(hosts, h)
			}
		}
		created, err := tlsconfig.EnsureDev(sec.dir, hosts)
		if err != nil {
			return sec, fmt.Errorf("--secure: creating certificates in %s: %w", sec.dir, err)
		}
		if created {
			log.Info("created certificates for --secure", "dir", sec.dir, "hosts", hosts)
		}
		sec.nbdDir = filepath.Join(sec.dir, "nbd-client")
		if err := writeNBDClientDir(sec.dir, sec.nbdDir); err != nil {
			return sec, err
		}
		peerFiles = tlsconfig.DaemonFiles(sec.dir)
		httpFiles = tlsconfig.Files{Cert: peerFiles.Cert, Key: peerFiles.Key}
	}
	var err error
	if sec.peer, err = tlsconfig.Peer(peerFiles, log); err != nil {
		return sec, err
	}
	if httpFiles.Enabled() {
		if sec.http, err = tlsconfig.New("http TLS", httpFiles, log); err != nil {
			return sec, err
		}
	}
	return sec, nil
}

// writeNBDClientDir lays out client "root"'s files as libnbd and qemu
// (GnuTLS x509 credentials) expect them: ca-cert.pem, client-cert.pem,
// client-key.pem.
func writeNBDClientDir(certs, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	cf := tlsconfig.ClientFiles(certs, "root")
	for src, dst := range map[string]string{cf.CA: "ca-cert.pem", cf.Cert: "client-cert.pem", cf.Key: "client-key.pem"} {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}
