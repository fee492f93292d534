// Command torusblk is the client side of Torus: it serves volumes over NBD
// (nbdserve), attaches them through the kernel's NBD driver (nbd), and
// serves one volume as a regular file on a FUSE mount (fuse), which a loop
// device makes a block device without NBD.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"

	"github.com/torus-storage/torus/export"
	"github.com/torus-storage/torus/internal/devmetrics"
	"github.com/torus-storage/torus/internal/etcdflags"
	"github.com/torus-storage/torus/internal/tlsconfig"
	"github.com/torus-storage/torus/internal/version"
	etcdmeta "github.com/torus-storage/torus/metadata/etcd"
	"github.com/torus-storage/torus/nbd"
	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/volume"
)

type globals struct {
	etcd, prefix              string
	etcdClient                etcdflags.Flags
	peerCert, peerKey, peerCA string
	logLevel                  string
	peerTLS                   *tlsconfig.Reloader // loaded by connect
}

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "torusblk:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "torusblk",
		Short:         "Serve and attach Torus volumes as block devices",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.String("torusblk"),
	}
	root.SetVersionTemplate("{{.Version}}\n")
	def := os.Getenv("TORUS_ETCD")
	if def == "" {
		def = "http://127.0.0.1:2379"
	}
	root.PersistentFlags().StringVar(&g.etcd, "etcd", def, "etcd endpoints, comma-separated (env TORUS_ETCD)")
	prefix := os.Getenv("TORUS_ETCD_PREFIX")
	if prefix == "" {
		prefix = etcdmeta.DefaultPrefix
	}
	root.PersistentFlags().StringVar(&g.prefix, "etcd-prefix", prefix, "key prefix of the cluster in etcd (env TORUS_ETCD_PREFIX)")
	g.etcdClient.Register(root.PersistentFlags(), os.Getenv)
	root.PersistentFlags().StringVar(&g.peerCert, "peer-cert", os.Getenv("TORUS_PEER_CERT"), "client certificate for mutual TLS to the daemons (env TORUS_PEER_CERT)")
	root.PersistentFlags().StringVar(&g.peerKey, "peer-key", os.Getenv("TORUS_PEER_KEY"), "key of --peer-cert (env TORUS_PEER_KEY)")
	root.PersistentFlags().StringVar(&g.peerCA, "peer-ca", os.Getenv("TORUS_PEER_CA"), "CA that signed the daemons' certificates (env TORUS_PEER_CA)")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "debug, info, warn or error")
	root.AddCommand(newNBDServe(g), newNBDAttach(g), newFuse(g))
	addFlex(root, g, os.Args) // flex.go: FlexVolume driver
	return root
}

func (g *globals) logger() (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %v", err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})), nil
}

func (g *globals) connect(ctx context.Context, log *slog.Logger) (*etcdmeta.Store, *peer.Pool, error) {
	ptls, err := tlsconfig.Peer(tlsconfig.Files{Cert: g.peerCert, Key: g.peerKey, CA: g.peerCA}, log)
	if err != nil {
		return nil, nil, err
	}
	g.peerTLS = ptls
	ecfg := etcdmeta.Config{Endpoints: etcdflags.Endpoints(g.etcd), Prefix: g.prefix, Logger: log}
	if err := g.etcdClient.Apply(&ecfg); err != nil {
		return nil, nil, err
	}
	meta, err := etcdmeta.New(ctx, ecfg)
	if err != nil {
		return nil, nil, err
	}
	pool := peer.NewPool(peer.NewResolver(meta, 0).Resolve, peer.ClientConfig{TLS: tlsconfig.PeerClient(ptls)}, log)
	return meta, pool, nil
}

// keepReloading reloads the peer and NBD certificates on SIGHUP and when
// their files change, until ctx ends.
func keepReloading(ctx context.Context, rs ...*tlsconfig.Reloader) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		tlsconfig.Keep(ctx, hup, tlsconfig.DefaultWatchInterval, rs...)
	}()
}

func newNBDServe(g *globals) *cobra.Command {
	var listen, httpListen, certFile, keyFile, caFile, exportsFile string
	var tlsRequired, readOnly bool
	cmd := &cobra.Command{
		Use:   "nbdserve",
		Short: "Serve every volume over NBD (export name = volume name, vol@snap for snapshots)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			nbdTLS, err := loadTLS(certFile, keyFile, caFile, log)
			if err != nil {
				return err
			}
			var tlsCfg *tls.Config
			if nbdTLS != nil {
				tlsCfg = nbdTLS.Server()
			}
			if tlsRequired && tlsCfg == nil {
				return errors.New("--tls-required needs --tls-cert and --tls-key")
			}
			var authz nbd.Authorizer
			var exportsList *exportList
			if exportsFile != "" {
				if caFile == "" {
					return errors.New("--nbd-exports needs --tls-ca: clients are named by their certificates")
				}
				if exportsList, err = loadExportList(exportsFile, log); err != nil {
					return err
				}
				authz = exportsList
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			if exportsList != nil {
				exportsList.keep(ctx)
			}
			meta, pool, err := g.connect(ctx, log)
			if err != nil {
				return err
			}
			defer meta.Close()
			defer pool.Close()
			keepReloading(ctx, g.peerTLS, nbdTLS)
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			host, _ := os.Hostname()
			owner := fmt.Sprintf("torusblk@%s nbd %s pid %d", host, ln.Addr(), os.Getpid())
			var exports nbd.Exports = export.New(volume.Deps{Meta: meta, Peers: pool, Identity: g.peerTLS.CommonName(), Logger: log}, owner)
			exports, stopHTTP, err := withMetrics(exports, httpListen, log)
			if err != nil {
				return err
			}
			defer stopHTTP()
			srv := nbd.NewServer(nbd.Config{TLS: tlsCfg, TLSRequired: tlsRequired || authz != nil, ReadOnly: readOnly, Authorizer: authz}, exports, log)
			errc := make(chan error, 1)
			go func() { errc <- srv.Serve(ln) }()
			log.Info("serving NBD", "listen", ln.Addr().String(), "tls", tlsCfg != nil, "tls_required", tlsRequired)
			select {
			case <-ctx.Done():
			case err := <-errc:
				if errors.Is(err, nbd.ErrServerClosed) {
					err = nil
				}
				return err
			}
			log.Info("shutting down: completing requests, flushing and releasing volumes")
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			return srv.Shutdown(sctx)
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:10809", "address:port to serve NBD on")
	cmd.Flags().StringVar(&httpListen, "http", "", "address:port to serve /metrics (Prometheus, per volume) and /healthz on; empty: none")
	cmd.Flags().StringVar(&certFile, "tls-cert", "", "server certificate (PEM) for NBD_OPT_STARTTLS")
	cmd.Flags().StringVar(&keyFile, "tls-key", "", "server key (PEM)")
	cmd.Flags().StringVar(&caFile, "tls-ca", "", "CA (PEM) of client certificates; when set, clients must present one it signed")
	cmd.Flags().BoolVar(&tlsRequired, "tls-required", false, "refuse clients that do not start TLS")
	cmd.Flags().StringVar(&exportsFile, "nbd-exports", "", "export list: per client certificate name (CN or URI SAN), which volumes (names or globs) and rw or ro; needs --tls-ca, implies --tls-required; reloaded on SIGHUP (docs/security.md)")
	cmd.Flags().BoolVar(&readOnly, "read-only", false, "serve every export read-only")
	return cmd
}

// serveHTTP serves /metrics from reg and /healthz on ln until closed.
// withMetrics instruments exports with per-volume client metrics served on
// httpListen's /metrics; with no address it returns exports as they are.
// stop closes the HTTP server.
func withMetrics(exports nbd.Exports, httpListen string, log *slog.Logger) (_ nbd.Exports, stop func(), err error) {
	if httpListen == "" {
		return exports, func() {}, nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	hln, err := net.Listen("tcp", httpListen)
	if err != nil {
		return nil, nil, err
	}
	hsrv := serveHTTP(hln, reg, log)
	log.Info("serving metrics", "http", hln.Addr().String())
	return devmetrics.New(reg).Exports(exports), func() { hsrv.Close() }, nil
}

func serveHTTP(ln net.Listener, reg *prometheus.Registry, log *slog.Logger) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	hsrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hsrv.Serve(ln); err != nil && err != http.ErrServerClosed {
			log.Warn("http server stopped", "err", err)
		}
	}()
	return hsrv
}

// loadTLS loads the NBD server's certificate (nil: no STARTTLS). With a CA,
// clients must present a certificate it verifies.
func loadTLS(certFile, keyFile, caFile string, log *slog.Logger) (*tlsconfig.Reloader, error) {
	if certFile == "" && keyFile == "" {
		if caFile != "" {
			return nil, errors.New("--tls-ca needs --tls-cert and --tls-key")
		}
		return nil, nil
	}
	if certFile == "" || keyFile == "" {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	return tlsconfig.New("nbd TLS", tlsconfig.Files{Cert: certFile, Key: keyFile, CA: caFile}, log)
}

// clusterExports connects to the cluster and returns the exports a
// torusblk attach process serves, their writers owned as "torusblk@HOST
// WHAT pid PID", and the function that closes the connections. The
// metadata client lives until that is called, past SIGTERM: the final
// flush and unlock need it.
func (g *globals) clusterExports(log *slog.Logger, what string) (*export.Exports, func(), error) {
	meta, pool, err := g.connect(context.Background(), log)
	if err != nil {
		return nil, nil, err
	}
	host, _ := os.Hostname()
	owner := fmt.Sprintf("torusblk@%s %s pid %d", host, what, os.Getpid())
	ex := export.New(volume.Deps{Meta: meta, Peers: pool, Identity: g.peerTLS.CommonName(), Logger: log}, owner)
	return ex, func() {
		pool.Close()
		meta.Close()
	}, nil
}
