package csi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/torus-storage/torus"
)

// Mode selects the CSI services a driver process serves.
type Mode string

const (
	ModeController Mode = "controller" // Identity + Controller (the Deployment)
	ModeNode       Mode = "node"       // Identity + Node (the DaemonSet)
	ModeAll        Mode = "all"        // all three (tests, one-machine clusters)
)

// Defaults for Config.
const (
	DefaultDriverName      = "csi.torus.io"
	DefaultSnapshotTimeout = 30 * time.Second
	// DefaultVolumeSize is the size of a volume whose CreateVolume gives
	// no capacity range.
	DefaultVolumeSize = 1 << 30
	// DefaultStateDir is where the node service keeps its state files.
	DefaultStateDir = "/var/lib/torus-csi"
)

// Config configures a Driver.
type Config struct {
	// Endpoint is where the driver listens: unix:///PATH (or a bare
	// absolute PATH). A stale socket file there is removed.
	Endpoint string
	Mode     Mode
	// NodeID names this node in NodeGetInfo; required in node and all
	// modes.
	NodeID string
	// Zone is this node's zone (torus-csi --zone), reported in NodeGetInfo
	// as the topology segment TopologyZoneKey, so that capacity tracking
	// (GetCapacity with accessible_topology) counts each zone's daemons.
	// Volumes are reachable from every zone: topology never restricts
	// where one attaches. "" reports no topology.
	Zone string
	// DriverName is the CSI driver name (GetPluginInfo), the name a
	// StorageClass's provisioner field gives.
	DriverName string
	// Version is reported as the vendor version.
	Version string
	// SnapshotTimeout bounds how long CreateSnapshot waits for the writer
	// of an attached volume to take the snapshot.
	SnapshotTimeout time.Duration
	// StateDir is where the node service keeps a state file per staged
	// volume (volumes/VOLUME.json), read again after a restart. It must
	// outlive the process (a host directory).
	StateDir string
	// DefaultFSType is the filesystem of a mount volume whose capability
	// names none (fs_type ""): ext4 unless set.
	DefaultFSType string
}

// EnsureDefaults fills zero fields.
func (c *Config) EnsureDefaults() {
	if c.Mode == "" {
		c.Mode = ModeAll
	}
	if c.DriverName == "" {
		c.DriverName = DefaultDriverName
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.SnapshotTimeout == 0 {
		c.SnapshotTimeout = DefaultSnapshotTimeout
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.DefaultFSType == "" {
		c.DefaultFSType = "ext4"
	}
}

// Validate checks the configuration. Errors wrap torus.ErrInvalid.
func (c Config) Validate() error {
	if _, err := socketPath(c.Endpoint); err != nil {
		return err
	}
	switch c.Mode {
	case ModeController:
	case ModeNode, ModeAll:
		if c.NodeID == "" {
			return fmt.Errorf("csi: %w: mode %s needs a node ID (--node-id)", torus.ErrInvalid, c.Mode)
		}
		if err := torus.ValidNodeID(c.NodeID); err != nil {
			return fmt.Errorf("csi: --node-id: %w", err)
		}
		if c.DefaultFSType == "" || !supportedFS[c.DefaultFSType] {
			return fmt.Errorf("csi: %w: default filesystem %q (ext4, ext3, xfs, btrfs)", torus.ErrInvalid, c.DefaultFSType)
		}
		if !filepath.IsAbs(c.StateDir) {
			return fmt.Errorf("csi: %w: state directory %q must be an absolute path", torus.ErrInvalid, c.StateDir)
		}
	default:
		return fmt.Errorf("csi: %w: mode %q (use controller, node or all)", torus.ErrInvalid, c.Mode)
	}
	if c.SnapshotTimeout < 0 {
		return fmt.Errorf("csi: %w: negative snapshot timeout", torus.ErrInvalid)
	}
	return nil
}

func (c Config) controller() bool { return c.Mode == ModeController || c.Mode == ModeAll }
func (c Config) node() bool       { return c.Mode == ModeNode || c.Mode == ModeAll }

// socketPath extracts the socket path of a unix:// endpoint.
func socketPath(endpoint string) (string, error) {
	p := endpoint
	if rest, ok := strings.CutPrefix(endpoint, "unix://"); ok {
		p = rest
	} else if rest, ok := strings.CutPrefix(endpoint, "unix:"); ok {
		p = rest
	}
	if p == "" || !filepath.IsAbs(p) {
		return "", fmt.Errorf("csi: %w: endpoint %q must be unix:///ABSOLUTE/PATH", torus.ErrInvalid, endpoint)
	}
	return p, nil
}

// Deps are the driver's dependencies, wired by cmd/torus-csi and by tests.
type Deps struct {
	// Meta is the cluster's metadata (etcd).
	Meta torus.Metadata
	// SnapshotClosed snapshots a volume that has no writer by opening it
	// as writer briefly through the peers (volume.SnapshotClosed in
	// production). Required in controller mode.
	SnapshotClosed func(ctx context.Context, md torus.Metadata, volume, name string) error
	// Attacher attaches volumes as block devices on this node (see
	// Attacher). Without one, the node service's stage, expand and health
	// answer FailedPrecondition ("no attach backend").
	Attacher Attacher
	// Mounter mounts and unmounts (default mount.New("")); Exec runs the
	// filesystem resize tools (default k8s.io/utils/exec.New()).
	Mounter mount.Interface
	Exec    utilexec.Interface
	// Logger: Debug for every call, Info for calls that fail with a
	// client-side code (NotFound, AlreadyExists, InvalidArgument, ...),
	// Warn for Internal, Unavailable and DataLoss. Default: discard.
	Logger *slog.Logger
}

// Driver is a CSI plugin over a Torus cluster. Start serves it; Close
// stops it.
type Driver struct {
	cfg  Config
	meta torus.Metadata
	snap func(ctx context.Context, md torus.Metadata, volume, name string) error
	log  *slog.Logger

	// Node service.
	attacher Attacher
	mounter  mount.Interface
	exec     utilexec.Interface
	states   stateStore

	busyMu sync.Mutex
	busy   map[string]bool // volume and snapshot names with a call in flight

	mu      sync.Mutex
	srv     *grpc.Server
	lis     net.Listener
	path    string
	done    chan struct{} // closed when the serve goroutine returns
	closed  bool
	serveEr error
}

// New checks cfg and deps and returns a driver that is not serving yet.
func New(cfg Config, deps Deps) (*Driver, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Meta == nil {
		return nil, fmt.Errorf("csi: %w: no metadata store", torus.ErrInvalid)
	}
	if cfg.controller() && deps.SnapshotClosed == nil {
		return nil, fmt.Errorf("csi: %w: controller mode needs Deps.SnapshotClosed", torus.ErrInvalid)
	}
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	d := &Driver{cfg: cfg, meta: deps.Meta, snap: deps.SnapshotClosed, log: log, busy: make(map[string]bool),
		attacher: deps.Attacher, mounter: deps.Mounter, exec: deps.Exec, states: stateStore{dir: cfg.StateDir}}
	if d.mounter == nil {
		d.mounter = mount.New("")
	}
	if d.exec == nil {
		d.exec = defaultExec()
	}
	return d, nil
}

// Start listens on the endpoint and serves in a goroutine owned by the
// driver until Close. ctx bounds only the start.
func (d *Driver) Start(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("csi: start: %w", torus.ErrClosed)
	}
	if d.srv != nil {
		return fmt.Errorf("csi: %w: already started", torus.ErrInvalid)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.cfg.node() {
		// A controller publishes only to a node that registered.
		if err := d.meta.RegisterNode(ctx, d.cfg.NodeID); err != nil {
			return fmt.Errorf("csi: register node %s: %w", d.cfg.NodeID, err)
		}
	}
	path, _ := socketPath(d.cfg.Endpoint)
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("csi: endpoint directory: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("csi: remove stale socket %s: %w", path, err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("csi: listen on %s: %w", path, err)
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(d.intercept))
	csipb.RegisterIdentityServer(srv, &identity{d: d})
	if d.cfg.controller() {
		csipb.RegisterControllerServer(srv, &controller{d: d})
	}
	if d.cfg.node() {
		csipb.RegisterNodeServer(srv, &node{d: d})
	}
	d.srv, d.lis, d.path, d.done = srv, lis, path, make(chan struct{})
	go func() {
		defer close(d.done)
		if err := srv.Serve(lis); err != nil {
			d.mu.Lock()
			d.serveEr = err
			d.mu.Unlock()
		}
	}()
	d.log.Info("csi: serving", "endpoint", d.cfg.Endpoint, "mode", d.cfg.Mode, "driver", d.cfg.DriverName, "node", d.cfg.NodeID)
	return nil
}

// Endpoint is the endpoint clients dial: unix://PATH.
func (d *Driver) Endpoint() string {
	p, _ := socketPath(d.cfg.Endpoint)
	return "unix://" + p
}

// Close stops serving: calls in flight get up to 5 s to finish, then are
// cut off. It removes the socket and returns once the serve goroutine has
// ended. Idempotent.
func (d *Driver) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	srv, done, path := d.srv, d.done, d.path
	d.mu.Unlock()
	if srv == nil {
		return nil
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		srv.Stop()
		<-stopped
	}
	<-done
	_ = os.Remove(path)
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.serveEr
}

// intercept logs every call and its outcome.
func (d *Driver) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	method := info.FullMethod[strings.LastIndexByte(info.FullMethod, '/')+1:]
	switch code := status.Code(err); code {
	case codes.OK:
		d.log.Debug("csi: call", "method", method, "took", time.Since(start))
	case codes.Internal, codes.Unavailable, codes.DataLoss, codes.Unknown:
		d.log.Warn("csi: call failed", "method", method, "code", code, "err", err, "took", time.Since(start))
	default:
		d.log.Info("csi: call refused", "method", method, "code", code, "err", err)
	}
	return resp, err
}

// acquire marks key busy for one call; a second concurrent call on the
// same volume or snapshot gets Aborted, as the CSI spec recommends. The
// returned func releases it.
func (d *Driver) acquire(key string) (func(), error) {
	d.busyMu.Lock()
	defer d.busyMu.Unlock()
	if d.busy[key] {
		return nil, status.Errorf(codes.Aborted, "an operation on %s is already in progress", key)
	}
	d.busy[key] = true
	return func() {
		d.busyMu.Lock()
		delete(d.busy, key)
		d.busyMu.Unlock()
	}, nil
}
