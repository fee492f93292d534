package attach

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/attach/nbdnl"
	"github.com/torus-storage/torus/internal/statefile"
	"github.com/torus-storage/torus/nbd"
)

// Netlink is what ServeKernel needs of the kernel's NBD netlink interface:
// *nbdnl.Conn, or a fake in tests.
type Netlink interface {
	Connect(ctx context.Context, r nbdnl.Connect) (uint32, error)
	Reconfigure(ctx context.Context, r nbdnl.Reconfigure) error
	Disconnect(ctx context.Context, index uint32) error
	Status(ctx context.Context, index int) ([]nbdnl.Device, error)
}

// KernelConfig configures ServeKernel (`torusblk nbd`).
type KernelConfig struct {
	// Volume is VOLUME or VOLUME@SNAPSHOT.
	Volume string
	// Device is /dev/nbdN, or "" for any free device.
	Device string
	// StateDir holds VOLUME.nbd.json, the record a restarted process
	// reattaches from. It must outlive the process (it need not outlive
	// a reboot, which the device does not either).
	StateDir string
	ReadOnly bool
	// DeadConnTimeout is how long the kernel holds the device's I/O after
	// this process dies, waiting for a restarted one (default 2 minutes:
	// more than a restart plus the writer lock's TTL, which the new
	// process waits out through LockWait).
	DeadConnTimeout time.Duration
	// LockWait is how long the volume's open waits while another writer
	// (the previous, killed process's lease) holds its lock (default 30 s).
	LockWait time.Duration
	// ResizeInterval is how often the volume's size is compared with the
	// device's (default 1 s); a grown volume grows the device.
	ResizeInterval time.Duration
	Netlink        Netlink
	// Exports opens the volume (export.New in production).
	Exports nbd.Exports
	// DeviceBackend reads a device's backend identifier (ok=false when the
	// kernel does not say; default: /sys/block/nbdN/backend). A recorded
	// device whose identifier is another's is not reattached: after a
	// reboot, or a record that outlived its device, the index may be
	// another volume's.
	DeviceBackend func(index uint32) (backend string, ok bool)
	// Attached, if set, is called once the device serves the volume.
	Attached func(device string)
	// Logger: Info for attach, reattach, resize and detach; Warn for a
	// stale record. Default: discard.
	Logger *slog.Logger
}

func (c *KernelConfig) ensureDefaults() {
	if c.DeadConnTimeout <= 0 {
		c.DeadConnTimeout = 2 * time.Minute
	}
	if c.LockWait <= 0 {
		c.LockWait = 30 * time.Second
	}
	if c.ResizeInterval <= 0 {
		c.ResizeInterval = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.DeviceBackend == nil {
		c.DeviceBackend = sysfsBackend
	}
}

// sysfsBackend reads /sys/block/nbdN/backend (Linux 5.14 and later, for
// devices connected through netlink).
func sysfsBackend(index uint32) (string, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/sys/block/nbd%d/backend", index))
	if err != nil {
		return "", false
	}
	return strings.TrimSpace(string(b)), true
}

// Validate checks c. Errors wrap torus.ErrInvalid.
func (c *KernelConfig) Validate() error {
	if err := validVolume(c.Volume); err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	if c.Device != "" {
		if _, err := NBDIndex(c.Device); err != nil {
			return err
		}
	}
	if !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("attach: %w: state directory %q must be an absolute path", torus.ErrInvalid, c.StateDir)
	}
	if c.Netlink == nil || c.Exports == nil {
		return fmt.Errorf("attach: %w: KernelConfig needs Netlink and Exports", torus.ErrInvalid)
	}
	return nil
}

// NBDIndex is N of /dev/nbdN. Errors wrap torus.ErrInvalid.
func NBDIndex(dev string) (uint32, error) {
	s, ok := strings.CutPrefix(dev, "/dev/nbd")
	n, err := strconv.ParseUint(s, 10, 31)
	if !ok || err != nil {
		return 0, fmt.Errorf("attach: %w: %q is not a kernel NBD device (/dev/nbdN)", torus.ErrInvalid, dev)
	}
	return uint32(n), nil
}

// KernelStateVersion is the version of `torusblk nbd`'s state files.
const KernelStateVersion = 1

// kernelState is STATEDIR/VOLUME.nbd.json (testdata/nbd-state-v1.json):
// which device serves the volume and which process serves the device.
// It is written once the device is connected and removed on detach.
type kernelState struct {
	Version  int    `json:"version"`
	Volume   string `json:"volume"`
	Index    uint32 `json:"index"`   // /dev/nbdIndex
	Backend  string `json:"backend"` // NBD_ATTR_BACKEND_IDENTIFIER
	ReadOnly bool   `json:"read_only,omitempty"`
	// PID and StartTime name the serving process (StartTime: see state).
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
}

func encodeKernelState(s kernelState) ([]byte, error) {
	s.Version = KernelStateVersion
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func decodeKernelState(b []byte) (kernelState, error) {
	var s kernelState
	if err := json.Unmarshal(b, &s); err != nil {
		return kernelState{}, fmt.Errorf("attach: nbd state: %w: %w", torus.ErrCorrupt, err)
	}
	if s.Version != KernelStateVersion {
		return kernelState{}, fmt.Errorf("attach: nbd state: %w: version %d (this torusblk reads %d)", torus.ErrCorrupt, s.Version, KernelStateVersion)
	}
	if validVolume(s.Volume) != nil || s.PID <= 0 || s.Backend == "" {
		return kernelState{}, fmt.Errorf("attach: nbd state: %w: volume %q, pid %d, backend %q", torus.ErrCorrupt, s.Volume, s.PID, s.Backend)
	}
	return s, nil
}

// KernelStatePath is where ServeKernel records volume's attachment.
func KernelStatePath(stateDir, volume string) string {
	return filepath.Join(stateDir, volume+".nbd.json")
}

func loadKernelState(path, volume string) (kernelState, bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return kernelState{}, false, nil
	}
	if err != nil {
		return kernelState{}, false, fmt.Errorf("attach: read nbd state: %w", err)
	}
	s, err := decodeKernelState(b)
	if err != nil {
		return kernelState{}, false, fmt.Errorf("%w (%s)", err, path)
	}
	if s.Volume != volume {
		return kernelState{}, false, fmt.Errorf("attach: nbd state %s: %w: names volume %q", path, torus.ErrCorrupt, s.Volume)
	}
	return s, true, nil
}

// kernelBlockSize is the logical block size of the device.
const kernelBlockSize = 4096

// ServeKernel attaches cfg.Volume to a kernel NBD device through netlink
// and serves it, in this process, over a socketpair whose other end the
// kernel holds, until ctx ends (then it disconnects the device, flushes
// and releases the volume) or the device is disconnected from outside.
//
// The device outlives this process: if it dies (SIGKILL), the kernel
// holds the device's I/O for DeadConnTimeout. A ServeKernel for the same
// volume and state directory started within that time finds the record,
// sees the device still connected (NBD_CMD_STATUS) and hands it a new
// socket (NBD_CMD_RECONFIGURE): held I/O resumes, nothing is lost that was
// flushed. A grown volume grows the device (NBD_CMD_RECONFIGURE with the
// size).
//
// Errors: ErrInvalid for a bad config; ErrInUse when a live process
// already serves the volume, the record names another device than
// cfg.Device, or the kernel reports the device busy; the volume's open
// errors (ErrNotExist, ErrLocked after LockWait); the kernel's errors
// (nbdnl).
func ServeKernel(ctx context.Context, cfg KernelConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg.ensureDefaults()
	log := cfg.Logger.With("volume", cfg.Volume)
	nl := cfg.Netlink
	path := KernelStatePath(cfg.StateDir, cfg.Volume)
	want := -1
	if cfg.Device != "" {
		i, _ := NBDIndex(cfg.Device)
		want = int(i)
	}
	st, ok, err := loadKernelState(path, cfg.Volume)
	if err != nil {
		return err
	}
	reattach := false
	if ok {
		if st.PID != os.Getpid() && procAlive(st.PID, st.StartTime) {
			return fmt.Errorf("attach %s: %w: served as /dev/nbd%d by process %d", cfg.Volume, torus.ErrInUse, st.Index, st.PID)
		}
		devs, err := nl.Status(ctx, int(st.Index))
		if err != nil {
			return fmt.Errorf("attach %s: %w", cfg.Volume, err)
		}
		other, known := cfg.DeviceBackend(st.Index)
		switch {
		case connected(devs, st.Index) && (!known || other == st.Backend):
			if want >= 0 && uint32(want) != st.Index {
				return fmt.Errorf("attach %s: %w: attached as /dev/nbd%d (%s), not %s; detach it first", cfg.Volume, torus.ErrInUse, st.Index, path, cfg.Device)
			}
			reattach, want = true, int(st.Index)
		default:
			why := "no longer connected"
			if connected(devs, st.Index) {
				why = fmt.Sprintf("connected to another backend (%q)", other)
			}
			log.Warn("attach: recorded device is "+why+"; attaching anew", "device", nbdPath(st.Index), "state", path)
			if err := statefile.Remove(path); err != nil {
				return fmt.Errorf("attach: %w", err)
			}
		}
	}

	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("attach: socketpair: %w", err)
	}
	srvConn, err := fdConn(fds[0], "nbd-server")
	if err != nil {
		unix.Close(fds[1])
		return err
	}
	kernelEnd := os.NewFile(uintptr(fds[1]), "nbd-kernel")
	defer kernelEnd.Close() // the kernel holds its own reference
	ex := &waitingExports{Exports: cfg.Exports, wait: cfg.LockWait, log: log}
	srv := nbd.NewServer(nbd.Config{ReadOnly: cfg.ReadOnly}, ex, cfg.Logger)
	served := make(chan error, 1)
	go func() { served <- srv.ServeConn(srvConn) }()
	shutdown := func() error {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	}
	fail := func(err error) error {
		serr := shutdown()
		<-served // ServeConn's own end: the handshake's or the shutdown's
		return errors.Join(err, serr)
	}

	hs, err := net.FileConn(kernelEnd) // a duplicate, for the handshake
	if err != nil {
		return fail(fmt.Errorf("attach: %w", err))
	}
	e, err := nbd.ClientHandshake(ctx, hs, cfg.Volume)
	hs.Close()
	if err != nil {
		return fail(fmt.Errorf("attach %s: %w", cfg.Volume, err))
	}
	backend := backendID(cfg.Volume)
	sock := []int{int(kernelEnd.Fd())}
	var index uint32
	if reattach {
		index = st.Index
		err = nl.Reconfigure(ctx, nbdnl.Reconfigure{Index: index, Sockets: sock, Backend: st.Backend})
	} else {
		index, err = nl.Connect(ctx, nbdnl.Connect{Index: want, Sockets: sock, SizeBytes: uint64(e.Size),
			BlockSizeBytes: kernelBlockSize, ServerFlags: uint64(e.Flags), DeadConnTimeout: cfg.DeadConnTimeout, Backend: backend})
		st = kernelState{Volume: cfg.Volume, Index: index, Backend: backend, ReadOnly: cfg.ReadOnly}
	}
	if err != nil {
		return fail(fmt.Errorf("attach %s: %w", cfg.Volume, err))
	}
	kernelEnd.Close()
	dev := nbdPath(index)
	st.PID = os.Getpid()
	if st.StartTime, err = procStart(st.PID); err == nil {
		var b []byte
		if b, err = encodeKernelState(st); err == nil {
			err = statefile.Write(path, b, 0o600)
		}
	}
	if err != nil {
		// Without a record no restart could take the device over: do not
		// leave it attached.
		derr := nl.Disconnect(context.WithoutCancel(ctx), index)
		return fail(errors.Join(fmt.Errorf("attach %s: state: %w", cfg.Volume, err), derr))
	}
	if reattach {
		log.Info("attach: reattached the kernel NBD device to this process", "device", dev, "size", e.Size)
	} else {
		log.Info("attach: attached through kernel NBD", "device", dev, "size", e.Size, "read_only", cfg.ReadOnly, "dead_conn_timeout", cfg.DeadConnTimeout)
	}
	if cfg.Attached != nil {
		cfg.Attached(dev)
	}

	size := e.Size
	tick := time.NewTicker(cfg.ResizeInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			log.Info("attach: detaching", "device", dev)
			derr := nl.Disconnect(context.WithoutCancel(ctx), index)
			if derr != nil {
				derr = fmt.Errorf("detach %s: %w", dev, derr)
			}
			serr := shutdown()
			<-served
			if derr != nil {
				return errors.Join(derr, serr) // the record stays: a retry can find the device
			}
			return errors.Join(serr, statefile.Remove(path))
		case err := <-served:
			// The kernel closed its end: the device was disconnected from
			// outside (nbd-client -d, NBD_CMD_DISCONNECT).
			log.Info("attach: the kernel closed the connection; the device is detached", "device", dev, "err", err)
			return errors.Join(shutdown(), statefile.Remove(path))
		case <-tick.C:
			n := ex.size()
			if n <= 0 || n == size {
				continue
			}
			if err := nl.Reconfigure(ctx, nbdnl.Reconfigure{Index: index, SizeBytes: uint64(n), Backend: st.Backend}); err != nil {
				log.Warn("attach: resizing the device failed; retrying", "device", dev, "size", n, "err", err)
				continue
			}
			log.Info("attach: resized", "device", dev, "from", size, "to", n)
			size = n
		}
	}
}

// backendID is the NBD_ATTR_BACKEND_IDENTIFIER of volume's device.
func backendID(volume string) string { return "torus:" + volume }

func nbdPath(index uint32) string { return fmt.Sprintf("/dev/nbd%d", index) }

func connected(devs []nbdnl.Device, index uint32) bool {
	for _, d := range devs {
		if d.Index == index {
			return d.Connected
		}
	}
	return false
}

func fdConn(fd int, name string) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("attach: %w", err)
	}
	return c, nil
}

// waitingExports opens through OpenWaiting and remembers the device it
// opened, whose size ServeKernel follows.
type waitingExports struct {
	nbd.Exports
	wait time.Duration
	log  *slog.Logger

	mu  sync.Mutex
	dev torus.Device
}

func (w *waitingExports) Open(ctx context.Context, name string, readOnly bool) (torus.Device, error) {
	d, err := OpenWaiting(ctx, w.Exports, name, readOnly, w.wait, w.log)
	if err == nil {
		w.mu.Lock()
		w.dev = d
		w.mu.Unlock()
	}
	return d, err
}

func (w *waitingExports) size() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dev == nil {
		return 0
	}
	return w.dev.Size()
}

// OpenWaiting opens a volume through ex, retrying while another writer
// holds its lock (torus.ErrLocked), for up to wait: after a crash of the
// previous writer its lease expires within the lock TTL.
func OpenWaiting(ctx context.Context, ex nbd.Exports, name string, readOnly bool, wait time.Duration, log *slog.Logger) (torus.Device, error) {
	deadline := time.Now().Add(wait)
	for {
		octx, cancel := context.WithTimeout(ctx, time.Minute)
		dev, err := ex.Open(octx, name, readOnly)
		cancel()
		if err == nil || !errors.Is(err, torus.ErrLocked) || time.Now().After(deadline) {
			return dev, err
		}
		log.Info("volume locked by another writer; waiting for its lease to end", "volume", name, "err", err, "until", deadline.Format(time.RFC3339))
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(500 * time.Millisecond):
		}
	}
}
