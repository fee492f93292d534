// Package attach makes Torus volumes block devices on this machine, with
// one of two backends (Options.Backend; by default kernel NBD where the
// kernel has the nbd module, FUSE + loop otherwise):
//
//   - nbd: a detached `torusblk nbd VOLUME` process attaches the volume to a
//     kernel NBD device through netlink and serves it (ServeKernel, also
//     in this package). The device survives that process: if it dies, the
//     kernel holds the device's I/O, and the Attacher restarts the process,
//     which hands the device a new connection.
//   - fuse: a detached `torusblk fuse VOLUME FILE` process serves the
//     volume as the regular file FILE (a FUSE mount, straight from the
//     volume API) and a loop device in direct-I/O mode makes FILE a block
//     device.
//
// The process runs in its own session (Setsid), so it outlives the caller
// (the CSI node plugin) and is not in its process group: a SIGKILL of the
// caller leaves the data path running. Each attachment is recorded in a
// versioned state file under Options.StateDir (VOLUME.json, with the
// backend, the PID, its start time and the device), so a restarted caller
// finds its attachments there and checks that the process and the device
// are still the ones it started.
//
// Every method is idempotent, and the methods are serialized per volume
// (calls for different volumes run in parallel): Attach of an attached
// volume returns it, Detach of one not attached succeeds.
package attach

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus"
)

// Options configures an Attacher.
type Options struct {
	// Bin is the torusblk binary.
	Bin string
	// StateDir holds the state files, the FUSE files (VOLUME.fuse) and the
	// processes' logs (VOLUME.log). It must outlive the caller (a host
	// directory); it is created if missing.
	StateDir string
	// Args go before `fuse` or `nbd` on torusblk's command line: --etcd,
	// --etcd-prefix, the TLS flags, --log-level.
	Args []string
	// Meta gives the volumes' sizes: Attach waits until the device (the
	// FUSE file) has it, Resize until it has the grown one.
	Meta torus.Metadata
	// Backend is the backend of new attachments (BackendAuto: nbd where
	// ProbeKernelNBD succeeds, fuse otherwise). A recorded attachment
	// keeps the backend it was made with.
	Backend Backend
	// ProbeKernelNBD checks for the kernel's NBD netlink interface
	// (default: the package's ProbeKernelNBD).
	ProbeKernelNBD func(context.Context) error
	// ReadyTimeout bounds how long Attach waits for the FUSE file (default
	// 1 minute); StopTimeout how long Detach waits for the process to
	// exit after SIGTERM before it sends SIGKILL (default 30 s).
	ReadyTimeout time.Duration
	StopTimeout  time.Duration
	// LockWait is how long torusblk waits for the writer lock of a volume
	// another process holds (torusblk --lock-wait; default 30 s): after a
	// crash of the previous torusblk, its lease expires within the lock
	// TTL (volume.DefaultLockTTL, 10 s).
	LockWait time.Duration
	// Logger: Info for attach and detach, Warn for a dead attachment
	// cleaned up or a process killed. Default: discard.
	Logger *slog.Logger
}

// Attachment is an attached volume.
type Attachment struct {
	Volume  string  `json:"volume"`
	Backend Backend `json:"backend"`          // nbd or fuse
	File    string  `json:"file,omitempty"`   // fuse: the FUSE file serving the volume
	Device  string  `json:"device,omitempty"` // the loop or NBD device, once set up
	// PID is the torusblk fuse or torusblk nbd process.
	PID      int  `json:"pid"`
	ReadOnly bool `json:"read_only,omitempty"`
	// Alive reports (List only) whether the process and the device are
	// still the ones recorded.
	Alive bool `json:"-"`
}

// Attacher attaches volumes through torusblk nbd, or torusblk fuse and
// loop devices.
type Attacher struct {
	opt     Options
	log     *slog.Logger
	backend Backend // of new attachments: nbd or fuse

	mu    sync.Mutex
	locks map[string]*volumeLock // by volume; held by the volume's current call
}

type volumeLock struct {
	mu    sync.Mutex
	users int // calls holding or waiting for mu; the entry goes at 0
}

// lock serializes the calls for one volume.
func (a *Attacher) lock(volume string) (unlock func()) {
	a.mu.Lock()
	l := a.locks[volume]
	if l == nil {
		l = &volumeLock{}
		a.locks[volume] = l
	}
	l.users++
	a.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		a.mu.Lock()
		if l.users--; l.users == 0 {
			delete(a.locks, volume)
		}
		a.mu.Unlock()
	}
}

// New returns an Attacher, choosing the backend of new attachments
// (Options.Backend). Errors wrap torus.ErrInvalid; with BackendNBD where the
// kernel has no NBD netlink interface, the probe's error
// (nbdnl.ErrNoFamily, torus.ErrUnavailable).
func New(opt Options) (*Attacher, error) {
	if opt.Bin == "" || opt.Meta == nil {
		return nil, fmt.Errorf("attach: %w: Options needs Bin and Meta", torus.ErrInvalid)
	}
	if !filepath.IsAbs(opt.StateDir) {
		return nil, fmt.Errorf("attach: %w: state directory %q must be an absolute path", torus.ErrInvalid, opt.StateDir)
	}
	if opt.ReadyTimeout <= 0 {
		opt.ReadyTimeout = time.Minute
	}
	if opt.StopTimeout <= 0 {
		opt.StopTimeout = 30 * time.Second
	}
	if opt.LockWait <= 0 {
		opt.LockWait = 30 * time.Second
	}
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opt.ProbeKernelNBD == nil {
		opt.ProbeKernelNBD = ProbeKernelNBD
	}
	var probe error
	if opt.Backend != BackendFUSE {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		probe = opt.ProbeKernelNBD(ctx)
		cancel()
	}
	backend, err := chooseBackend(opt.Backend, probe)
	if err != nil {
		return nil, err
	}
	if opt.Backend == BackendAuto && backend == BackendFUSE {
		log.Info("attach: kernel NBD not available; attaching through FUSE and loop devices", "why", probe)
	}
	if err := os.MkdirAll(opt.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("attach: state directory: %w", err)
	}
	return &Attacher{opt: opt, log: log, backend: backend, locks: make(map[string]*volumeLock)}, nil
}

// Backend is the backend of new attachments: BackendNBD or BackendFUSE.
func (a *Attacher) Backend() Backend { return a.backend }

// Attach attaches volume (VOLUME or VOLUME@SNAPSHOT, read-only if readOnly)
// and returns its attachment once the device exists with the volume's
// size. An attached volume is returned as it is (with its own ReadOnly and
// backend); an NBD attachment whose process died but whose device the
// kernel still holds gets a new process, which takes the device over (the
// same device, its I/O resumed); any other recorded attachment whose
// process or device is gone is cleaned up and attached again. Errors:
// ErrInvalid for a bad name, ErrNotExist for an unknown volume, the
// torusblk process's failure (its log's tail) otherwise.
func (a *Attacher) Attach(ctx context.Context, volume string, readOnly bool) (Attachment, error) {
	if err := validVolume(volume); err != nil {
		return Attachment{}, fmt.Errorf("attach: %w", err)
	}
	defer a.lock(volume)()
	st, ok, err := a.load(volume)
	if err != nil {
		return Attachment{}, err
	}
	if ok {
		if a.alive(st) {
			return st.Attachment, nil
		}
		if a.held(st) {
			st, err := a.revive(ctx, st)
			if err != nil {
				return Attachment{}, err
			}
			a.log.Info("attach: reattached", "volume", volume, "device", st.Device, "pid", st.PID)
			return st.Attachment, nil
		}
		a.log.Warn("attach: recorded attachment is dead; cleaning it up", "volume", volume, "pid", st.PID, "device", st.Device)
		if err := a.cleanup(ctx, st); err != nil {
			return Attachment{}, err
		}
	}
	size, err := a.size(ctx, volume)
	if err != nil {
		return Attachment{}, err
	}
	st = state{Attachment: Attachment{Volume: volume, Backend: a.backend, ReadOnly: readOnly}}
	if a.backend == BackendFUSE {
		st.File = filepath.Join(a.opt.StateDir, volume+".fuse")
		unmountStale(st.File)
	}
	if err := a.start(&st); err != nil {
		return Attachment{}, err
	}
	fail := func(err error) (Attachment, error) {
		cerr := a.cleanup(context.WithoutCancel(ctx), st)
		return Attachment{}, errors.Join(err, cerr)
	}
	if err := a.save(st); err != nil {
		return fail(err)
	}
	if st.Backend == BackendNBD {
		if err := a.waitKernel(ctx, &st, size); err != nil {
			return fail(err)
		}
		if err := a.save(st); err != nil {
			return fail(err)
		}
		a.log.Info("attach: attached", "volume", volume, "backend", st.Backend, "device", st.Device, "pid", st.PID, "read_only", readOnly)
		return st.Attachment, nil
	}
	if err := a.waitFile(ctx, st, size); err != nil {
		return fail(err)
	}
	args := []string{"--direct-io=on", "--find", "--show"}
	if readOnly {
		args = append(args, "--read-only")
	}
	out, err := exec.CommandContext(ctx, "losetup", append(args, st.File)...).CombinedOutput()
	if err != nil {
		return fail(fmt.Errorf("attach %s: losetup: %w: %s", volume, err, bytes.TrimSpace(out)))
	}
	st.Device = strings.TrimSpace(string(out))
	if err := a.save(st); err != nil {
		return fail(err)
	}
	dio, _ := os.ReadFile(filepath.Join("/sys/block", filepath.Base(st.Device), "loop", "dio"))
	if strings.TrimSpace(string(dio)) != "1" {
		a.log.Warn("attach: the loop device is not in direct-I/O mode; I/O goes through the page cache of the FUSE file", "volume", volume, "device", st.Device)
	}
	a.log.Info("attach: attached", "volume", volume, "backend", st.Backend, "device", st.Device, "file", st.File, "pid", st.PID, "read_only", readOnly)
	return st.Attachment, nil
}

// start starts the detached torusblk fuse or nbd process and fills st's
// PID and start time.
func (a *Attacher) start(st *state) error {
	logf, err := os.OpenFile(a.logPath(st.Volume), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("attach: log file: %w", err)
	}
	defer logf.Close()
	args := append([]string(nil), a.opt.Args...)
	if st.Backend == BackendNBD {
		args = append(args, "nbd", "--state-dir", a.kernelDir())
	} else {
		args = append(args, "fuse")
	}
	args = append(args, "--lock-wait", a.opt.LockWait.String())
	if st.ReadOnly {
		args = append(args, "--read-only")
	}
	args = append(args, st.Volume)
	if st.Backend == BackendFUSE {
		args = append(args, st.File)
	}
	cmd := exec.Command(a.opt.Bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	// Its own session: not in the caller's process group, no controlling
	// terminal; it outlives the caller.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("attach %s: start %s: %w", st.Volume, a.opt.Bin, err)
	}
	st.PID = cmd.Process.Pid
	// No goroutine waits for it: it must not depend on this process. A
	// child that exits is reaped by reap (WNOHANG) when next looked at.
	_ = cmd.Process.Release()
	st.StartTime, err = procStart(st.PID)
	if err != nil {
		return fmt.Errorf("attach %s: process %d: %w", st.Volume, st.PID, err)
	}
	return nil
}

func (a *Attacher) logPath(volume string) string {
	return filepath.Join(a.opt.StateDir, volume+".log")
}

// logTail is the end of a volume's process log, for errors.
func (a *Attacher) logTail(volume string) string {
	b, _ := os.ReadFile(a.logPath(volume))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

func (a *Attacher) size(ctx context.Context, volume string) (int64, error) {
	vol, _, _ := strings.Cut(volume, "@")
	v, err := a.opt.Meta.Volume(ctx, vol)
	if err != nil {
		return 0, fmt.Errorf("attach %s: %w", volume, err)
	}
	return v.Size, nil
}

// waitFile waits until st.File is a FUSE mount of at least size bytes,
// failing early if the process exits.
func (a *Attacher) waitFile(ctx context.Context, st state, size int64) error {
	ctx, cancel := context.WithTimeout(ctx, a.opt.ReadyTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if !procAlive(st.PID, st.StartTime) {
			return fmt.Errorf("attach %s: torusblk fuse exited: %s", st.Volume, a.logTail(st.Volume))
		}
		if isFuse(st.File) {
			if fi, err := os.Stat(st.File); err == nil && fi.Size() >= size {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("attach %s: %w: FUSE file %s not served with %d bytes: %w; log: %s", st.Volume, torus.ErrUnavailable, st.File, size, ctx.Err(), a.logTail(st.Volume))
		case <-tick.C:
		}
	}
}

// Detach detaches volume: refused with ErrInUse while something, such as
// a mounted file system, holds the device open; fuse: the loop device,
// then SIGTERM to the process (which flushes, unmounts and releases the
// volume's lock); nbd: SIGTERM to the process (which disconnects the
// device, flushes and releases the lock; a process that died while the
// kernel holds its device is restarted first, so that this happens);
// after StopTimeout, SIGKILL; then the files. A volume not attached is
// success.
func (a *Attacher) Detach(ctx context.Context, volume string) error {
	if err := validVolume(volume); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	defer a.lock(volume)()
	st, ok, err := a.load(volume)
	if err != nil || !ok {
		return err
	}
	if a.held(st) {
		if err := refuseOpen(volume, st.Device); err != nil {
			return err
		}
		if st, err = a.revive(ctx, st); err != nil {
			return err
		}
	}
	if err := a.cleanup(ctx, st); err != nil {
		return err
	}
	a.log.Info("attach: detached", "volume", volume, "device", st.Device, "pid", st.PID)
	return nil
}

// cleanup undoes what st records, whatever is still there.
func (a *Attacher) cleanup(ctx context.Context, st state) error {
	if st.Backend == BackendNBD {
		if st.Device != "" && procAlive(st.PID, st.StartTime) {
			if err := refuseOpen(st.Volume, st.Device); err != nil {
				return err
			}
		}
		if err := a.stop(st); err != nil {
			return err
		}
		_ = os.Remove(a.logPath(st.Volume))
		return a.remove(st.Volume)
	}
	if st.Device != "" && loopBacking(st.Device) == st.File {
		if err := refuseOpen(st.Volume, st.Device); err != nil {
			return err
		}
		if out, err := exec.CommandContext(ctx, "losetup", "-d", st.Device).CombinedOutput(); err != nil {
			return fmt.Errorf("detach %s: losetup -d %s: %w: %s", st.Volume, st.Device, err, bytes.TrimSpace(out))
		}
		// The loop device lets go of the file asynchronously.
		deadline := time.Now().Add(10 * time.Second)
		for loopBacking(st.Device) == st.File && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := a.stop(st); err != nil {
		return err
	}
	unmountStale(st.File)
	if err := os.Remove(st.File); err != nil && !errors.Is(err, os.ErrNotExist) {
		a.log.Warn("attach: remove FUSE file", "file", st.File, "err", err)
	}
	_ = os.Remove(a.logPath(st.Volume))
	return a.remove(st.Volume)
}

// stop ends st's process: SIGTERM, then SIGKILL after StopTimeout.
func (a *Attacher) stop(st state) error {
	if !procAlive(st.PID, st.StartTime) {
		return nil
	}
	_ = syscall.Kill(st.PID, syscall.SIGTERM)
	if waitExit(st.PID, st.StartTime, a.opt.StopTimeout) {
		return nil
	}
	a.log.Warn("attach: torusblk did not exit after SIGTERM; killing it", "volume", st.Volume, "backend", st.Backend, "pid", st.PID, "after", a.opt.StopTimeout)
	_ = syscall.Kill(st.PID, syscall.SIGKILL)
	if waitExit(st.PID, st.StartTime, 10*time.Second) {
		return nil
	}
	return fmt.Errorf("detach %s: process %d does not exit", st.Volume, st.PID)
}

// Get reports volume's attachment: ok=false when none is recorded or the
// recorded one is dead (its process or device gone; the next Attach
// cleans it up, or restarts the process of an NBD device the kernel
// holds).
func (a *Attacher) Get(volume string) (Attachment, bool, error) {
	if err := validVolume(volume); err != nil {
		return Attachment{}, false, fmt.Errorf("attach: %w", err)
	}
	defer a.lock(volume)()
	st, ok, err := a.load(volume)
	if err != nil || !ok {
		return Attachment{}, false, err
	}
	if !a.alive(st) {
		return Attachment{}, false, nil
	}
	st.Alive = true
	return st.Attachment, true, nil
}

// List returns every recorded attachment, sorted by volume, each with
// Alive set.
func (a *Attacher) List() ([]Attachment, error) {
	names, err := filepath.Glob(filepath.Join(a.opt.StateDir, "*.json"))
	if err != nil {
		return nil, err
	}
	var out []Attachment
	for _, n := range names { // Glob sorts
		st, ok, err := a.load(strings.TrimSuffix(filepath.Base(n), ".json"))
		if err != nil {
			return nil, err
		}
		if ok {
			st.Alive = a.alive(st)
			out = append(out, st.Attachment)
		}
	}
	return out, nil
}

// ReviveAll restarts the torusblk nbd process of every recorded
// attachment whose process died while the kernel holds its device (the
// caller's start after a node reboot of the plugin, or after a crash of
// the data path): each takes its device over again before the kernel's
// dead-connection timeout fails the held I/O. It returns the attachments
// it revived; an error for one does not stop the others (they are
// joined).
func (a *Attacher) ReviveAll(ctx context.Context) ([]Attachment, error) {
	names, err := filepath.Glob(filepath.Join(a.opt.StateDir, "*.json"))
	if err != nil {
		return nil, err
	}
	var out []Attachment
	var errs []error
	for _, n := range names {
		volume := strings.TrimSuffix(filepath.Base(n), ".json")
		at, ok, err := a.reviveOne(ctx, volume)
		if err != nil {
			errs = append(errs, err)
		} else if ok {
			out = append(out, at)
		}
	}
	return out, errors.Join(errs...)
}

func (a *Attacher) reviveOne(ctx context.Context, volume string) (Attachment, bool, error) {
	if validVolume(volume) != nil {
		return Attachment{}, false, nil // not a state file
	}
	defer a.lock(volume)()
	st, ok, err := a.load(volume)
	if err != nil || !ok || !a.held(st) {
		return Attachment{}, false, err
	}
	st, err = a.revive(ctx, st)
	if err != nil {
		return Attachment{}, false, err
	}
	return st.Attachment, true, nil
}

// Resize makes an attached volume's device follow its grown size. fuse:
// it waits until the FUSE file shows the size the metadata gives (the
// process sees a resize within about a second), then `losetup -c`; nbd:
// it waits until the device has it (the process resizes it within about a
// second). Errors: ErrNotExist when the volume is not attached.
func (a *Attacher) Resize(ctx context.Context, volume string) error {
	if err := validVolume(volume); err != nil {
		return fmt.Errorf("resize: %w", err)
	}
	defer a.lock(volume)()
	st, ok, err := a.load(volume)
	if err != nil {
		return err
	}
	if !ok || st.Device == "" || !a.alive(st) {
		return fmt.Errorf("resize %s: %w: not attached", volume, torus.ErrNotExist)
	}
	size, err := a.size(ctx, volume)
	if err != nil {
		return err
	}
	if st.Backend == BackendNBD {
		if err := a.waitKernel(ctx, &st, size); err != nil {
			return err
		}
		a.log.Info("attach: resized", "volume", volume, "device", st.Device, "size", size)
		return nil
	}
	if err := a.waitFile(ctx, st, size); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "losetup", "-c", st.Device).CombinedOutput(); err != nil {
		return fmt.Errorf("resize %s: losetup -c %s: %w: %s", volume, st.Device, err, bytes.TrimSpace(out))
	}
	a.log.Info("attach: resized", "volume", volume, "device", st.Device, "size", size)
	return nil
}

// alive reports whether st's process is the one started and, once set up,
// its device still serves the volume (fuse: the loop device still backs
// st's file; nbd: the device is configured).
func (a *Attacher) alive(st state) bool {
	if !procAlive(st.PID, st.StartTime) {
		return false
	}
	if st.Device == "" {
		return true
	}
	if st.Backend == BackendNBD {
		return nbdSize(st.Device) > 0
	}
	return loopBacking(st.Device) == st.File
}

// fuseMagic is FUSE_SUPER_MAGIC, statfs's f_type of a FUSE mount.
const fuseMagic = 0x65735546

func isFuse(path string) bool {
	var s unix.Statfs_t
	return unix.Statfs(path, &s) == nil && s.Type == fuseMagic
}

// unmountStale detaches whatever is mounted on file: the mount of a
// process that died answers ENOTCONN to statfs, so it is not recognized as
// FUSE, but it still covers the file. Not mounted is no error.
func unmountStale(file string) {
	for unix.Unmount(file, unix.MNT_DETACH) == nil {
	}
}

// loopBacking is the file behind a loop device, "" when none.
func loopBacking(dev string) string {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// procStart is a process's start time (/proc/PID/stat field 22).
func procStart(pid int) (uint64, error) {
	_, start, err := procStat(pid)
	return start, err
}

// procStat reads a process's state letter and start time.
func procStat(pid int) (byte, uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// PID (COMM) STATE ... : COMM may hold spaces and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %w", pid, io.ErrUnexpectedEOF)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %w", pid, io.ErrUnexpectedEOF)
	}
	var start uint64
	if _, err := fmt.Sscan(f[19], &start); err != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return f[0][0], start, nil
}

// procAlive reports whether pid is still the process that started at
// start and has not exited (a zombie has). It reaps pid first if it is
// this process's exited child.
func procAlive(pid int, start uint64) bool {
	var ws syscall.WaitStatus
	_, _ = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
	s, st, err := procStat(pid)
	return err == nil && st == start && s != 'Z' && s != 'X'
}

func waitExit(pid int, start uint64, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for procAlive(pid, start) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}
