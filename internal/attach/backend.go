package attach

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/attach/nbdnl"
)

// Backend is how an Attacher makes a volume a block device.
type Backend string

const (
	// BackendAuto is kernel NBD where the kernel has the nbd module, FUSE
	// + loop otherwise (the default).
	BackendAuto Backend = ""
	// BackendNBD is a detached `torusblk nbd` per volume: a kernel NBD
	// device that survives its process (ServeKernel).
	BackendNBD Backend = "nbd"
	// BackendFUSE is a detached `torusblk fuse` per volume and a loop
	// device in direct-I/O mode.
	BackendFUSE Backend = "fuse"
)

// ParseBackend reads "auto" (or ""), "nbd" or "fuse". Errors wrap
// torus.ErrInvalid.
func ParseBackend(s string) (Backend, error) {
	switch s {
	case "", "auto":
		return BackendAuto, nil
	case "nbd":
		return BackendNBD, nil
	case "fuse":
		return BackendFUSE, nil
	}
	return "", fmt.Errorf("attach: %w: backend %q: auto, nbd or fuse", torus.ErrInvalid, s)
}

// chooseBackend resolves want given the outcome of probing the kernel's
// NBD netlink interface (nil: available).
func chooseBackend(want Backend, probe error) (Backend, error) {
	switch want {
	case BackendFUSE:
		return BackendFUSE, nil
	case BackendNBD:
		if probe != nil {
			return "", fmt.Errorf("attach: backend nbd: %w", probe)
		}
		return BackendNBD, nil
	case BackendAuto:
		if probe != nil {
			return BackendFUSE, nil
		}
		return BackendNBD, nil
	}
	return "", fmt.Errorf("attach: %w: backend %q", torus.ErrInvalid, want)
}

// ProbeKernelNBD reports whether the kernel's NBD netlink interface is
// there (nil) or why not (nbdnl.ErrNoFamily without the module).
func ProbeKernelNBD(ctx context.Context) error {
	c, err := nbdnl.Open(ctx)
	if err != nil {
		return err
	}
	return c.Close()
}

// kernelDir holds the records of the torusblk nbd processes.
func (a *Attacher) kernelDir() string { return filepath.Join(a.opt.StateDir, "nbd") }

// waitKernel waits until st's torusblk nbd process has recorded its device
// and the device has at least size bytes; it fills st.Device.
func (a *Attacher) waitKernel(ctx context.Context, st *state, size int64) error {
	ctx, cancel := context.WithTimeout(ctx, a.opt.ReadyTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if !procAlive(st.PID, st.StartTime) {
			return fmt.Errorf("attach %s: torusblk nbd exited: %s", st.Volume, a.logTail(st.Volume))
		}
		ks, ok, err := loadKernelState(KernelStatePath(a.kernelDir(), st.Volume), st.Volume)
		if err != nil {
			return err
		}
		if ok && ks.PID == st.PID {
			st.Device = nbdPath(ks.Index)
			if nbdSize(st.Device) >= size {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("attach %s: %w: kernel NBD device not serving %d bytes: %w; log: %s", st.Volume, torus.ErrUnavailable, size, ctx.Err(), a.logTail(st.Volume))
		case <-tick.C:
		}
	}
}

// nbdSize is a block device's size from sysfs: 0 for an NBD device that is
// not configured (or does not exist).
func nbdSize(dev string) int64 {
	b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "size"))
	if err != nil {
		return 0
	}
	var sectors int64
	if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &sectors); err != nil {
		return 0
	}
	return sectors * 512
}

// held reports whether the kernel still holds st's NBD device (configured,
// with this volume's backend identifier where the kernel shows it)
// although its process is gone: a restarted torusblk nbd takes it over.
func (a *Attacher) held(st state) bool {
	if st.Backend != BackendNBD || st.Device == "" || nbdSize(st.Device) == 0 || procAlive(st.PID, st.StartTime) {
		return false
	}
	index, err := NBDIndex(st.Device)
	if err != nil {
		return false
	}
	b, known := sysfsBackend(index)
	return !known || b == backendID(st.Volume)
}

// revive restarts the torusblk nbd process of an attachment whose device
// the kernel still holds: it reconfigures the device with a new
// connection from its record, and held I/O resumes.
func (a *Attacher) revive(ctx context.Context, st state) (state, error) {
	a.log.Warn("attach: torusblk nbd is gone but the kernel holds its device; restarting it", "volume", st.Volume, "device", st.Device, "old_pid", st.PID)
	size, err := a.size(ctx, st.Volume)
	if err != nil {
		return st, err
	}
	if err := a.start(&st); err != nil {
		return st, err
	}
	if err := a.save(st); err != nil {
		return st, err
	}
	if err := a.waitKernel(ctx, &st, size); err != nil {
		return st, err
	}
	return st, a.save(st)
}

// refuseOpen fails with ErrInUse while something (a mounted file system)
// holds dev open.
func refuseOpen(volume, dev string) error {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("detach %s: %w: %s is open (mounted?)", volume, torus.ErrInUse, dev)
		}
		return nil
	}
	unix.Close(fd)
	return nil
}
