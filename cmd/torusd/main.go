// Command torusd is the Torus storage daemon. See README.md and
// docs/operations.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/export"
	"github.com/torus-storage/torus/internal/devmetrics"
	"github.com/torus-storage/torus/internal/etcdflags"
	"github.com/torus-storage/torus/internal/tlsconfig"
	"github.com/torus-storage/torus/internal/version"
	etcdmeta "github.com/torus-storage/torus/metadata/etcd"
	"github.com/torus-storage/torus/nbd"
	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/server"
	"github.com/torus-storage/torus/storage"
	"github.com/torus-storage/torus/volume"
)

type flags struct {
	etcd, prefix                  string
	config                        string
	showVersion                   bool
	etcdClient                    etcdflags.Flags
	dataDir, size                 string
	peerAddr, advertise, httpAddr string
	zone, location                string
	loc                           torus.Location
	autoJoin, dev                 bool
	nbdListen                     string
	devEtcdClient, devEtcdPeer    string
	rebalanceRate                 string
	downGrace, heartbeatTTL       time.Duration
	gcInterval, scrubInterval     time.Duration
	scrubRate                     string
	logLevel                      string
	peerCert, peerKey, peerCA     string
	httpCert, httpKey             string
	pprof, secure                 bool
	nbdExports                    string
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "torusd:", err)
		os.Exit(1)
	}
}

func parse(args []string) (*flags, error) {
	f := &flags{}
	fs := pflag.NewFlagSet("torusd", pflag.ContinueOnError)
	fs.SortFlags = false
	def := os.Getenv("TORUS_ETCD")
	fs.StringVar(&f.config, "config", os.Getenv("TORUS_CONFIG"), "file of settings, one `flag = value` per line (# comments); flags on the command line win (env TORUS_CONFIG)")
	fs.BoolVar(&f.showVersion, "version", false, "print the version, commit and format versions and exit")
	fs.StringVar(&f.etcd, "etcd", def, "etcd endpoints, comma-separated (env TORUS_ETCD)")
	prefix := os.Getenv("TORUS_ETCD_PREFIX")
	if prefix == "" {
		prefix = etcdmeta.DefaultPrefix
	}
	fs.StringVar(&f.prefix, "etcd-prefix", prefix, "key prefix of the cluster in etcd (env TORUS_ETCD_PREFIX)")
	f.etcdClient.Register(fs, os.Getenv)
	fs.StringVar(&f.dataDir, "data-dir", "torus-data", "directory for this daemon's data")
	fs.StringVar(&f.size, "size", "", "most bytes to store: 10GiB, 500MiB, or N% of the filesystem (default 1GiB; 4GiB with --dev)")
	fs.StringVar(&f.peerAddr, "peer-address", "127.0.0.1:40000", "address:port for the peer protocol")
	fs.StringVar(&f.advertise, "advertise-address", "", "address others use to reach the peer port (default --peer-address)")
	fs.StringVar(&f.httpAddr, "http", "127.0.0.1:4321", "address:port for /metrics, /healthz, /readyz (and /debug/pprof with --pprof; empty: off)")
	fs.StringVar(&f.location, "location", "", "failure-domain path for placement: zone=Z,rack=R,host=H (host defaults to the machine's hostname)")
	fs.StringVar(&f.zone, "zone", "", "deprecated: --location zone=Z")
	fs.StringVar(&f.peerCert, "peer-cert", os.Getenv("TORUS_PEER_CERT"), "daemon certificate for mutual TLS on the peer port; with --peer-key and --peer-ca, plain connections are refused (env TORUS_PEER_CERT)")
	fs.StringVar(&f.peerKey, "peer-key", os.Getenv("TORUS_PEER_KEY"), "key of --peer-cert (env TORUS_PEER_KEY)")
	fs.StringVar(&f.peerCA, "peer-ca", os.Getenv("TORUS_PEER_CA"), "CA that signs every daemon and client certificate of the cluster (env TORUS_PEER_CA)")
	fs.StringVar(&f.httpCert, "http-cert", os.Getenv("TORUS_HTTP_CERT"), "certificate for TLS on the HTTP port (env TORUS_HTTP_CERT)")
	fs.StringVar(&f.httpKey, "http-key", os.Getenv("TORUS_HTTP_KEY"), "key of --http-cert (env TORUS_HTTP_KEY)")
	fs.BoolVar(&f.pprof, "pprof", false, "serve /debug/pprof on the HTTP port")
	fs.BoolVar(&f.secure, "secure", false, "with --dev: TLS on the peer, NBD and HTTP ports, with certificates in DATA-DIR/certs (created on first start)")
	fs.StringVar(&f.nbdExports, "nbd-exports", "", "with --dev --secure: NBD export list (per client certificate name, which volumes, rw or ro; reloaded on SIGHUP; default DATA-DIR/certs/nbd-exports, created on first start granting client root rw on every volume)")
	fs.BoolVar(&f.autoJoin, "auto-join", false, "add this daemon to the ring at start")
	fs.BoolVar(&f.dev, "dev", false, "one-machine mode: embedded etcd, auto-join, NBD server, volume \"demo\"")
	fs.StringVar(&f.nbdListen, "nbd-listen", "127.0.0.1:10809", "with --dev: NBD server address")
	fs.StringVar(&f.devEtcdClient, "dev-etcd-client-url", "http://127.0.0.1:2379", "with --dev: embedded etcd client URL")
	fs.StringVar(&f.devEtcdPeer, "dev-etcd-peer-url", "http://127.0.0.1:2380", "with --dev: embedded etcd peer URL")
	fs.StringVar(&f.rebalanceRate, "rebalance-rate", "0", "healing/rebalancing copy rate per second, e.g. 100MiB (0: unlimited)")
	fs.DurationVar(&f.downGrace, "down-grace", 2*time.Minute, "how long a peer stays down before its data is re-replicated")
	fs.DurationVar(&f.heartbeatTTL, "heartbeat-ttl", 5*time.Second, "liveness lease TTL: a dead daemon shows down within this")
	fs.DurationVar(&f.gcInterval, "gc-interval", 30*time.Second, "how often unreferenced segments are swept")
	fs.DurationVar(&f.scrubInterval, "scrub-interval", server.DefaultScrubInterval, "how often the background scrub verifies each segment copy this daemon holds (0: off)")
	fs.StringVar(&f.scrubRate, "scrub-rate", "32MiB", "background scrub read rate per second (0: unlimited)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if f.showVersion {
		return f, nil
	}
	if f.config != "" {
		if err := applyConfig(fs, f.config); err != nil {
			return nil, err
		}
	}
	loc, err := location(f.location, f.zone, os.Hostname)
	if err != nil {
		return nil, err
	}
	f.loc = loc
	if !f.dev && f.etcd == "" {
		return nil, errors.New("--etcd is required (or --dev for a one-machine cluster with embedded etcd)")
	}
	if f.secure && !f.dev {
		return nil, errors.New("--secure goes with --dev (a multi-machine cluster takes --peer-cert, --peer-key and --peer-ca: see docs/security.md)")
	}
	if f.secure && (f.peerCert != "" || f.peerKey != "" || f.peerCA != "" || f.httpCert != "" || f.httpKey != "") {
		return nil, errors.New("--secure uses the certificates in DATA-DIR/certs: leave out --peer-* and --http-*")
	}
	if f.nbdExports != "" && !f.secure {
		return nil, errors.New("--nbd-exports goes with --dev --secure: clients are named by their certificates")
	}
	if (f.httpCert == "") != (f.httpKey == "") {
		return nil, errors.New("--http-cert and --http-key go together")
	}
	return f, nil
}

func run(args []string) error {
	f, err := parse(args)
	if err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil
		}
		return err
	}
	if f.showVersion {
		_, err := fmt.Println(version.String("torusd"))
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %v", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if err := os.MkdirAll(f.dataDir, 0o755); err != nil {
		return err
	}
	if f.size == "" {
		f.size = "1GiB"
		if f.dev {
			// Room for the 1 GiB demo volume to be rewritten several
			// times before garbage collection catches up.
			f.size = "4GiB"
		}
	}
	capacity, err := storage.ParseSize(f.size, f.dataDir)
	if err != nil {
		return fmt.Errorf("--size: %w", err)
	}
	rate := int64(0)
	if f.rebalanceRate != "0" && f.rebalanceRate != "" {
		if rate, err = storage.ParseSize(f.rebalanceRate, f.dataDir); err != nil {
			return fmt.Errorf("--rebalance-rate: %w", err)
		}
	}

	scrubRate := int64(-1) // unlimited
	if f.scrubRate != "0" && f.scrubRate != "" {
		if scrubRate, err = storage.ParseSize(f.scrubRate, f.dataDir); err != nil {
			return fmt.Errorf("--scrub-rate: %w", err)
		}
	}
	scrubInterval := f.scrubInterval
	if scrubInterval == 0 {
		scrubInterval = -1 // off
	}

	sec, err := loadSecurity(f, log)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go tlsconfig.Keep(ctx, hup, tlsconfig.DefaultWatchInterval, sec.peer, sec.http)

	endpoints := splitList(f.etcd)
	var embedded *etcdmeta.Embedded
	if f.dev {
		if len(endpoints) == 0 {
			embedded, err = etcdmeta.StartEmbedded(ctx, etcdmeta.EmbedConfig{
				Dir:       filepath.Join(f.dataDir, "etcd"),
				ClientURL: f.devEtcdClient,
				PeerURL:   f.devEtcdPeer,
				Logger:    log,
			})
			if err != nil {
				return fmt.Errorf("starting embedded etcd: %w", err)
			}
			defer embedded.Close()
			endpoints = embedded.Endpoints()
		}
		f.autoJoin = true
	}
	ecfg := etcdmeta.Config{Endpoints: endpoints, Prefix: f.prefix, Logger: log}
	if err := f.etcdClient.Apply(&ecfg); err != nil {
		return err
	}
	meta, err := connectEtcd(ctx, ecfg, log)
	if err != nil {
		return err
	}
	defer meta.Close()

	if f.dev {
		if err := devInit(ctx, meta); err != nil {
			return err
		}
	}
	srv, err := server.New(server.Config{
		DataDir: f.dataDir, Capacity: capacity,
		PeerListen: f.peerAddr, PeerAdvertise: f.advertise, HTTPListen: f.httpAddr,
		Location: f.loc, AutoJoin: f.autoJoin, RebalanceRate: rate,
		DownGrace: f.downGrace, HeartbeatTTL: f.heartbeatTTL, GCInterval: f.gcInterval,
		ScrubInterval: scrubInterval, ScrubRate: scrubRate,
		Pprof: f.pprof, HTTPTLS: sec.httpServer(), PeerTLS: sec.peerServer(), PeerClientTLS: tlsconfig.PeerClient(sec.peer),
	}, meta, log)
	if err != nil {
		return err
	}
	if err := srv.Start(ctx); err != nil {
		return err
	}
	defer srv.Close()

	var nbdSrv *nbd.Server
	if f.dev {
		if nbdSrv, err = devNBD(ctx, f, sec, meta, srv, log); err != nil {
			return err
		}
	}
	<-ctx.Done()
	log.Info("shutting down")
	if nbdSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := nbdSrv.Shutdown(sctx); err != nil {
			log.Error("nbd shutdown", "err", err)
		}
		cancel()
	}
	return srv.Close()
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// devInit initializes a one-machine cluster (replication 1) and the volume
// "demo" on first start.
func devInit(ctx context.Context, meta torus.Metadata) error {
	if _, err := meta.ClusterConfig(ctx); errors.Is(err, torus.ErrNotInitialized) {
		cfg := torus.ClusterConfig{Replication: 1}
		cfg.EnsureDefaults()
		if err := meta.InitCluster(ctx, cfg); err != nil && !errors.Is(err, torus.ErrExist) {
			return fmt.Errorf("initializing cluster: %w", err)
		}
	} else if err != nil {
		return err
	}
	return nil
}

func devNBD(ctx context.Context, f *flags, sec security, meta *etcdmeta.Store, srv *server.Server, log *slog.Logger) (*nbd.Server, error) {
	if _, err := meta.Volume(ctx, "demo"); errors.Is(err, torus.ErrNotExist) {
		if _, err := meta.CreateVolume(ctx, torus.VolumeInfo{Name: "demo", Size: 1 << 30}); err != nil && !errors.Is(err, torus.ErrExist) {
			return nil, fmt.Errorf("creating volume demo: %w", err)
		}
		if err := meta.SetDefaultExport(ctx, "demo"); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", f.nbdListen)
	if err != nil {
		return nil, fmt.Errorf("nbd listen: %w", err)
	}
	pool := peer.NewPool(peer.NewResolver(meta, 0).Resolve, peer.ClientConfig{TLS: tlsconfig.PeerClient(sec.peer)}, log)
	pool.SetLocal(srv.ID(), srv.Local())
	host, _ := os.Hostname()
	owner := fmt.Sprintf("torusd --dev@%s nbd %s pid %d", host, ln.Addr(), os.Getpid())
	nbdCfg := nbd.Config{}
	if f.secure {
		// The daemon's certificate, and client certificates of the
		// cluster CA required (FORCEDTLS); the export list says which
		// client may attach what.
		nbdCfg.TLS, nbdCfg.TLSRequired = sec.peer.Server(), true
		list, err := nbd.LoadExportListFile(sec.exports)
		if err != nil {
			return nil, fmt.Errorf("--nbd-exports: %w", err)
		}
		nbdCfg.Authorizer = list
		go keepExportList(ctx, list, log)
	}
	// The in-process writer's client metrics (latency, bytes, errors by
	// volume, as torusblk --http) go on the daemon's /metrics.
	exports := devmetrics.New(srv.Registry()).Exports(export.New(volume.Deps{Meta: meta, Peers: pool, Logger: log}, owner))
	nbdSrv := nbd.NewServer(nbdCfg, exports, log)
	go func() {
		if err := nbdSrv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, nbd.ErrServerClosed) {
			log.Error("nbd server stopped", "err", err)
		}
	}()
	addr := ln.Addr().String()
	if f.secure {
		fmt.Printf(`
Torus is running securely (one machine, etcd at %s, data in %s).
Peer, NBD and HTTP ports use TLS with the certificates in %s
(CA ca.crt; the NBD client certificate for libnbd and qemu is in %s;
the NBD export list is %s, read again on SIGHUP).
Volume "demo" (1 GiB) is served over NBD with TLS at %s. Try:

  nbdinfo 'nbds://%s/demo?tls-certificates=%s'
  bin/torusctl --peer-cert %s --peer-key %s --peer-ca %s volume list

Metrics: https://%s/metrics   Stop with Ctrl-C (volumes are flushed and released).
`, strings.Join(meta.Endpoints(), ","), f.dataDir, sec.dir, sec.nbdDir, sec.exports, addr, addr, sec.nbdDir,
			tlsconfig.ClientFiles(sec.dir, "root").Cert, tlsconfig.ClientFiles(sec.dir, "root").Key,
			tlsconfig.ClientFiles(sec.dir, "root").CA, srv.HTTPAddr())
		return nbdSrv, nil
	}
	fmt.Printf(`
Torus is running (one machine, etcd at %s, data in %s).
Volume "demo" (1 GiB) is served over NBD at %s. Try:

  nbdinfo nbd://%s/demo
  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' nbd://%s/demo
  qemu-img convert -n -O raw disk.img nbd://%s/demo
  mkdir -p /tmp/demo && nbdfuse /tmp/demo nbd://%s/demo &   # a file /tmp/demo/nbd; then losetup -f --show /tmp/demo/nbd
  bin/torusctl volume list

Metrics: http://%s/metrics   Stop with Ctrl-C (volumes are flushed and released).
`, strings.Join(meta.Endpoints(), ","), f.dataDir, addr, addr, addr, addr, addr, srv.HTTPAddr())
	return nbdSrv, nil
}

// connectEtcd connects to etcd, waiting while it is unreachable (a daemon
// started before etcd, or during an etcd restart, waits instead of exiting;
// SIGTERM ends the wait). Other errors (bad TLS files, say) end it at once.
func connectEtcd(ctx context.Context, cfg etcdmeta.Config, log *slog.Logger) (*etcdmeta.Store, error) {
	wait := time.Second
	for {
		meta, err := etcdmeta.New(ctx, cfg)
		if err == nil || !errors.Is(err, torus.ErrUnavailable) || ctx.Err() != nil {
			return meta, err
		}
		log.Warn("etcd unreachable; retrying", "endpoints", cfg.Endpoints, "in", wait, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("stopped while waiting for etcd: %w", err)
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// location resolves --location and the deprecated --zone: zone from either
// (they must agree when both are given), host from the machine's name
// (up to its first dot) when not given.
func location(flag, zone string, hostname func() (string, error)) (torus.Location, error) {
	loc, err := torus.ParseLocation(flag)
	if err != nil {
		return loc, fmt.Errorf("--location: %w", err)
	}
	if zone != "" {
		if loc.Zone != "" && loc.Zone != zone {
			return loc, fmt.Errorf("--zone %q and --location zone=%q disagree (--zone is deprecated: use --location)", zone, loc.Zone)
		}
		loc.Zone = zone
	}
	if loc.Host == "" {
		h, err := hostname()
		if err != nil {
			return loc, fmt.Errorf("--location: no host given and the hostname is unknown (%v): pass host=NAME", err)
		}
		loc.Host, _, _ = strings.Cut(h, ".")
	}
	if err := loc.Validate(); err != nil {
		return loc, fmt.Errorf("--location %s: %w (pass host=NAME if the hostname is not a valid value)", loc, err)
	}
	return loc, nil
}

// applyConfig sets the flags named in the config file path that the
// command line did not set. Each line is `name = value` (or `name: value`)
// with a flag's name, without dashes; blank lines and lines starting with #
// are skipped. An unknown name, a line without a value separator, or a
// value the flag refuses is an error naming the line.
func applyConfig(fs *pflag.FlagSet, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if j := strings.IndexByte(line, ':'); j >= 0 && (!ok || j < len(name)) {
			name, value, ok = line[:j], line[j+1:], true
		}
		name, value = strings.TrimSpace(name), strings.Trim(strings.TrimSpace(value), `"`)
		if !ok || name == "" {
			return fmt.Errorf("--config %s:%d: want `name = value`, got %q", path, i+1, line)
		}
		fl := fs.Lookup(name)
		if fl == nil || name == "config" || name == "version" {
			return fmt.Errorf("--config %s:%d: unknown setting %q (see torusd --help)", path, i+1, name)
		}
		if fl.Changed {
			continue // the command line wins
		}
		if err := fs.Set(name, value); err != nil {
			return fmt.Errorf("--config %s:%d: %s: %w", path, i+1, name, err)
		}
	}
	return nil
}
