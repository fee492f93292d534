package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/torus-storage/torus/nbd"

	"github.com/torus-storage/torus/internal/tlsconfig"
)

// security is torusd's TLS: the peer port's certificates (nil: plain) and
// the HTTP port's (nil: plain HTTP).
type security struct {
	peer, http *tlsconfig.Reloader
	dir        string // with --dev --secure: the certificates directory
	nbdDir     string // with --dev --secure: the client files for libnbd/qemu
	exports    string // with --dev --secure: the NBD export list file
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
		sec.exports = f.nbdExports
		if sec.exports == "" {
			sec.exports = filepath.Join(sec.dir, DefaultExportList)
			if err := writeDefaultExportList(sec.exports); err != nil {
				return sec, err
			}
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

// DefaultExportList is the export list torusd --dev --secure creates in
// DATA-DIR/certs when --nbd-exports is not given.
const DefaultExportList = "nbd-exports"

// defaultExportList grants the client certificate --secure creates
// ("root") read-write access to every volume.
const defaultExportList = `# NBD export list of torusd --dev --secure (docs/security.md, "NBD export lists").
# NAME   ACCESS  EXPORT...   (volume names or globs; vol@snap for snapshots)
root     rw      *
`

// writeDefaultExportList writes defaultExportList to path unless a file is
// already there (an edited list survives restarts).
func writeDefaultExportList(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("--secure: %w", err)
	}
	if _, err := f.WriteString(defaultExportList); err != nil {
		f.Close()
		return fmt.Errorf("--secure: %w", err)
	}
	return f.Close()
}

// keepExportList reads the export list again on each SIGHUP until ctx
// ends; a list that does not parse is logged and the previous one stays.
func keepExportList(ctx context.Context, list *nbd.ExportListFile, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if err := list.Reload(); err != nil {
				log.Warn("export list not reloaded; keeping the previous one", "err", err)
			} else {
				log.Info("export list reloaded", "file", list.Path())
			}
		}
	}
}
