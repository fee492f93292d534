// Command torus-csi is Torus's CSI driver: the csi package served on a unix
// socket, with etcd and the peers wired in. See docs/kubernetes.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/csi"
	"github.com/torus-storage/torus/internal/attach"
	"github.com/torus-storage/torus/internal/etcdflags"
	"github.com/torus-storage/torus/internal/tlsconfig"
	"github.com/torus-storage/torus/internal/version"
	etcdmeta "github.com/torus-storage/torus/metadata/etcd"
	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/volume"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "torus-csi: %v\n", err)
		os.Exit(1)
	}
}

type flags struct {
	csi                       csi.Config
	mode                      string
	showVersion               bool
	etcd, prefix              string
	etcdClient                etcdflags.Flags
	peerCert, peerKey, peerCA string
	logLevel                  string
	torusblk                  string
	attachBackend             attach.Backend
}

// parse reads the flags; defaults come from the environment as for
// torusctl and torusd (TORUS_ETCD, TORUS_ETCD_PREFIX; CSI_ENDPOINT and
// NODE_ID as CSI sidecars' manifests usually set them).
func parse(args []string, getenv func(string) string, stderr io.Writer) (flags, error) {
	var f flags
	fs := flag.NewFlagSet("torus-csi", flag.ContinueOnError)
	fs.SetOutput(stderr)
	def := func(env, d string) string {
		if v := getenv(env); v != "" {
			return v
		}
		return d
	}
	fs.StringVar(&f.csi.Endpoint, "endpoint", def("CSI_ENDPOINT", "unix:///csi/csi.sock"), "CSI endpoint, unix:///PATH (env CSI_ENDPOINT)")
	fs.StringVar(&f.mode, "mode", "all", "services to serve: controller, node or all")
	fs.StringVar(&f.csi.NodeID, "node-id", getenv("NODE_ID"), "this node's ID, required for node and all (env NODE_ID)")
	fs.StringVar(&f.csi.Zone, "zone", getenv("TORUS_ZONE"), "node modes: this node's zone, reported as topology segment "+csi.TopologyZoneKey+" for capacity by zone (env TORUS_ZONE)")
	fs.StringVar(&f.csi.DriverName, "driver-name", csi.DefaultDriverName, "CSI driver name (the StorageClass provisioner)")
	fs.DurationVar(&f.csi.SnapshotTimeout, "snapshot-timeout", csi.DefaultSnapshotTimeout, "how long CreateSnapshot waits for an attached volume's writer")
	fs.StringVar(&f.csi.StateDir, "state-dir", csi.DefaultStateDir, "node modes: directory of the node service's state files (a host directory)")
	fs.StringVar(&f.csi.DefaultFSType, "default-fs-type", "ext4", "node modes: filesystem of a mount volume whose capability names none")
	fs.StringVar(&f.etcd, "etcd", def("TORUS_ETCD", "http://127.0.0.1:2379"), "etcd endpoints, comma-separated (env TORUS_ETCD)")
	fs.StringVar(&f.prefix, "etcd-prefix", def("TORUS_ETCD_PREFIX", etcdmeta.DefaultPrefix), "key prefix of the cluster in etcd (env TORUS_ETCD_PREFIX)")
	f.etcdClient.Register(fs, getenv)
	fs.StringVar(&f.peerCert, "peer-cert", getenv("TORUS_PEER_CERT"), "client certificate for mutual TLS to the daemons (env TORUS_PEER_CERT)")
	fs.StringVar(&f.peerKey, "peer-key", getenv("TORUS_PEER_KEY"), "key of --peer-cert (env TORUS_PEER_KEY)")
	fs.StringVar(&f.peerCA, "peer-ca", getenv("TORUS_PEER_CA"), "CA that signed the daemons' certificates (env TORUS_PEER_CA)")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.BoolVar(&f.showVersion, "version", false, "print the version, commit and format versions and exit")
	fs.StringVar(&f.torusblk, "torusblk", "", "node modes: the torusblk binary that serves attached volumes (torusblk fuse); default: torusblk next to this binary, else on PATH")
	backend := fs.String("attach-backend", def("TORUS_ATTACH_BACKEND", "auto"), "node modes: how volumes become block devices: nbd (kernel NBD, survives torusblk restarts), fuse (torusblk fuse + loop) or auto (nbd where the nbd module is loaded) (env TORUS_ATTACH_BACKEND)")
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	b, err := attach.ParseBackend(*backend)
	if err != nil {
		return f, err
	}
	f.attachBackend = b
	if fs.NArg() > 0 {
		return f, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	f.csi.Mode = csi.Mode(f.mode)
	f.csi.Version = version.Version
	f.csi.EnsureDefaults()
	if err := f.csi.Validate(); err != nil {
		return f, err
	}
	return f, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer) error {
	f, err := parse(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if f.showVersion {
		_, err := fmt.Fprintln(os.Stdout, version.String("torus-csi"))
		return err
	}
	if err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	ptls, err := tlsconfig.Peer(tlsconfig.Files{Cert: f.peerCert, Key: f.peerKey, CA: f.peerCA}, log)
	if err != nil {
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go tlsconfig.Keep(ctx, hup, tlsconfig.DefaultWatchInterval, ptls)
	ecfg := etcdmeta.Config{Endpoints: etcdflags.Endpoints(f.etcd), Prefix: f.prefix, Logger: log}
	if err := f.etcdClient.Apply(&ecfg); err != nil {
		return err
	}
	meta, err := etcdmeta.New(ctx, ecfg)
	if err != nil {
		return fmt.Errorf("cannot reach etcd at %s (set --etcd or TORUS_ETCD): %w", f.etcd, err)
	}
	defer meta.Close()
	pool := peer.NewPool(peer.NewResolver(meta, 0).Resolve, peer.ClientConfig{TLS: tlsconfig.PeerClient(ptls)}, log)
	defer pool.Close()
	var attacher csi.Attacher
	if f.csi.Mode != csi.ModeController {
		a, err := newAttacher(f, meta, log)
		if err != nil {
			return err
		}
		// Devices whose torusblk nbd died with this plugin (a node-plugin
		// restart) are taken over now, before the kernel's dead-connection
		// timeout fails their held I/O, not at the next NodeStage.
		revived, err := a.ReviveAll(ctx)
		for _, at := range revived {
			log.Info("torus-csi: attach process restarted", "volume", at.Volume, "device", at.Device)
		}
		if err != nil {
			log.Warn("torus-csi: restarting attach processes", "err", err)
		}
		attacher = a.CSI()
	}
	d, err := csi.New(f.csi, csi.Deps{
		Meta:     meta,
		Attacher: attacher,
		SnapshotClosed: func(ctx context.Context, md torus.Metadata, vol, name string) error {
			return volume.SnapshotClosed(ctx, volume.Deps{Meta: md, Peers: pool, Identity: ptls.CommonName(), Logger: log}, vol, name)
		},
		Logger: log,
	})
	if err != nil {
		return err
	}
	if err := d.Start(ctx); err != nil {
		return err
	}
	<-ctx.Done()
	log.Info("torus-csi: stopping")
	return d.Close()
}

// newAttacher is the node service's attach backend (--attach-backend):
// detached `torusblk nbd` processes on kernel NBD devices, or `torusblk
// fuse` processes and loop devices, recorded under STATEDIR/attach, with
// this process's etcd and peer settings passed on.
func newAttacher(f flags, meta torus.Metadata, log *slog.Logger) (*attach.Attacher, error) {
	bin, err := torusblkPath(f.torusblk)
	if err != nil {
		return nil, err
	}
	args, err := torusblkArgs(f)
	if err != nil {
		return nil, err
	}
	return attach.New(attach.Options{Bin: bin, StateDir: filepath.Join(f.csi.StateDir, "attach"), Args: args, Meta: meta,
		Backend: f.attachBackend, Logger: log.With("component", "attach")})
}

// torusblkArgs are torusblk's global flags for this process's cluster.
func torusblkArgs(f flags) ([]string, error) {
	return attach.Cluster{Etcd: f.etcd, Prefix: f.prefix, EtcdClient: f.etcdClient,
		PeerCert: f.peerCert, PeerKey: f.peerKey, PeerCA: f.peerCA, LogLevel: f.logLevel}.Args()
}

// torusblkPath resolves --torusblk: the flag's value, else torusblk next
// to this binary, else on PATH.
func torusblkPath(flag string) (string, error) {
	if flag != "" {
		return filepath.Abs(flag)
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "torusblk")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath("torusblk")
	if err != nil {
		return "", fmt.Errorf("node mode needs torusblk (the attach backend): none next to torus-csi nor on PATH; set --torusblk: %w", err)
	}
	return filepath.Abs(p)
}
