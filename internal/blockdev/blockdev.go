// Package blockdev holds what the CSI node service and the FlexVolume
// driver do to a freshly attached block device: find out whether it holds
// a filesystem (never guessing "empty" after a read error), and format it.
package blockdev

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/torus-storage/torus"
)

// emptyProbe is how much of a device is read before formatting.
const emptyProbe = 1 << 20

// mkfsTimeout bounds one mkfs.
const mkfsTimeout = 10 * time.Minute

// Probe reports the filesystem on dev ("" when the device reads as
// empty). It reads the first MiB first: a read error is an error, never
// "empty", so a device that cannot be read is never formatted. A device
// whose first MiB is not all zeros and that blkid does not recognise is
// refused (ErrInUse): it holds data this node cannot name.
func Probe(ctx context.Context, dev string) (string, error) {
	f, err := os.Open(dev)
	if err != nil {
		return "", fmt.Errorf("open %s: %w: %w", dev, torus.ErrUnavailable, err)
	}
	buf := make([]byte, emptyProbe)
	k, err := io.ReadFull(f, buf)
	f.Close()
	if err != nil && !(errors.Is(err, io.ErrUnexpectedEOF) && k > 0) {
		return "", fmt.Errorf("read the first MiB of %s (not formatting a device that cannot be read): %w: %w", dev, torus.ErrUnavailable, err)
	}
	zero := !bytes.ContainsFunc(buf[:k], func(r rune) bool { return r != 0 })
	out, err := exec.CommandContext(ctx, "blkid", "-p", "-o", "export", dev).Output()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee) && ee.ExitCode() == 2: // nothing found
		if !zero {
			return "", fmt.Errorf("%w: %s holds data but blkid finds no signature: not formatting it", torus.ErrInUse, dev)
		}
		return "", nil
	case err != nil:
		return "", fmt.Errorf("blkid -p %s (not formatting): %w", dev, err)
	}
	vals := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			vals[k] = v
		}
	}
	if t := vals["TYPE"]; t != "" {
		return t, nil
	}
	return "", fmt.Errorf("%w: %s has a signature that is not a filesystem (%s): not formatting it", torus.ErrInUse, dev, strings.TrimSpace(strings.ReplaceAll(string(out), "\n", " ")))
}

// Mkfs makes a filesystem of type fs on dev.
func Mkfs(ctx context.Context, fs, dev string) error {
	var args []string
	switch fs {
	case "ext4", "ext3":
		args = []string{"-F", "-q", dev}
	case "xfs", "btrfs":
		args = []string{"-f", "-q", dev}
	default:
		return fmt.Errorf("%w: filesystem %q", torus.ErrInvalid, fs)
	}
	ctx, cancel := context.WithTimeout(ctx, mkfsTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "mkfs."+fs, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mkfs.%s %s: %w: %s", fs, dev, err, bytes.TrimSpace(out))
	}
	return nil
}
