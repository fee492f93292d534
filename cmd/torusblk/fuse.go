package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/attach"
)

func newFuse(g *globals) *cobra.Command {
	var readOnly bool
	var lockWait time.Duration
	var httpListen string
	cmd := &cobra.Command{
		Use:   "fuse VOLUME[@SNAPSHOT] FILE",
		Short: "Serve a volume as the regular file FILE on a FUSE mount (blocks until SIGTERM or unmount)",
		Long: `Serve a volume as one regular file: FILE (created if missing) becomes the
mount point of a FUSE file system whose root is the volume, read and written
through the volume API in this process (no NBD hop). ` + "`losetup --direct-io=on`" + `
makes it a block device. fsync and close are the volume's FLUSH; the size is
the volume's and follows a resize. SIGTERM flushes, unmounts and releases the
volume's writer lock; if a loop device still holds FILE, it is unmounted lazily
and further I/O through it fails (EIO), never lost silently.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			name, file := args[0], args[1]
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			ex, done, err := g.clusterExports(log, "fuse "+file)
			if err != nil {
				return err
			}
			defer done()
			keepReloading(ctx, g.peerTLS)
			exports, stopHTTP, err := withMetrics(ex, httpListen, log)
			if err != nil {
				return err
			}
			defer stopHTTP()
			dev, err := attach.OpenWaiting(ctx, exports, name, readOnly, lockWait, log)
			if err != nil {
				return fmt.Errorf("open %s: %w", name, err)
			}
			return serveFuse(ctx, dev, name, file, log)
		},
	}
	cmd.Flags().BoolVar(&readOnly, "read-only", false, "serve the volume read-only (no writer lock; a point-in-time view)")
	cmd.Flags().StringVar(&httpListen, "http", "", "address:port to serve /metrics (Prometheus: the volume's client metrics, as nbdserve) and /healthz on; empty: none")
	cmd.Flags().DurationVar(&lockWait, "lock-wait", 0, "how long to wait for the writer lock when another writer holds it (e.g. the lease of a crashed torusblk, which expires within 10 s); 0: fail at once")
	return cmd
}

// serveFuse mounts dev as file and serves it until ctx ends (SIGTERM) or
// the file is unmounted from outside; then it flushes, unmounts and closes
// dev.
func serveFuse(ctx context.Context, dev torus.Device, name, file string, log *slog.Logger) (err error) {
	closeDev := func() error {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return dev.Close(cctx)
	}
	f, err := os.OpenFile(file, os.O_CREATE|os.O_RDONLY, 0o600)
	if err != nil {
		return errors.Join(fmt.Errorf("mount point: %w", err), closeDev())
	}
	fi, err := f.Stat()
	f.Close()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%s is not a regular file", file)
	}
	if err != nil {
		return errors.Join(fmt.Errorf("mount point: %w", err), closeDev())
	}
	ioctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := fuse.NewServer(newFuseFile(ioctx, dev, log), file, &fuse.MountOptions{
		FsName:            "torus:" + name,
		Name:              "torus",
		DirectMountStrict: true,
		MaxWrite:          fuse.MAX_KERNEL_WRITE,
		MaxBackground:     64,
		DisableXAttrs:     true,
	})
	if err != nil {
		return errors.Join(fmt.Errorf("mount %s: %w", file, err), closeDev())
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve()
	}()
	log.Info("serving volume as a file", "volume", name, "file", file, "size", dev.Size(), "read_only", dev.ReadOnly())
	select {
	case <-ctx.Done():
		log.Info("shutting down: flushing and unmounting", "file", file)
	case <-served:
		log.Info("unmounted from outside; closing the volume", "file", file)
		return closeDev()
	}
	var ferr error
	if !dev.ReadOnly() {
		ferr = dev.Flush(ioctx)
	}
	if uerr := srv.Unmount(); uerr != nil {
		// A loop device (or an open descriptor) still holds the file.
		// Detach the mount; closing the volume makes every later request
		// fail, and our exit closes /dev/fuse, which ends the connection.
		log.Warn("file still in use (a loop device?): unmounting lazily; further I/O through it fails", "file", file, "err", uerr)
		if derr := unix.Unmount(file, unix.MNT_DETACH); derr != nil {
			log.Warn("lazy unmount", "file", file, "err", derr)
		}
	} else {
		<-served
	}
	return errors.Join(ferr, closeDev())
}
