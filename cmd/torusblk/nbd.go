package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/torus-storage/torus/internal/attach"
	"github.com/torus-storage/torus/internal/attach/nbdnl"
)

// newNBDAttach is `torusblk nbd`: attach.ServeKernel with the kernel's
// netlink interface and this process's cluster.
func newNBDAttach(g *globals) *cobra.Command {
	def := os.Getenv("TORUS_NBD_STATE_DIR")
	if def == "" {
		def = "/run/torus-nbd"
	}
	var stateDir string
	var readOnly bool
	var deadConn, lockWait time.Duration
	cmd := &cobra.Command{
		Use:   "nbd VOLUME[@SNAPSHOT] [/dev/nbdN]",
		Short: "Attach a volume through the kernel's NBD driver (netlink); blocks until SIGTERM, which detaches",
		Long: `Attach a volume to a kernel NBD device through the NBD netlink interface and
serve it from this process (over a socketpair). The device's path is printed
on stdout once it serves the volume. SIGTERM or SIGINT detaches: disconnect,
flush, release the volume.

The device survives this process: if it is killed, the kernel holds the
device's I/O for --dead-conn-timeout, and the same command started again
(same --state-dir) hands the device a new connection from the record
STATEDIR/VOLUME.nbd.json. A volume grown while attached grows the device.

Needs the nbd module (modprobe nbd); without it this fails at once. Where
there is no nbd module, use torusblk fuse and a loop device.`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			dir, err := filepath.Abs(stateDir)
			if err != nil {
				return err
			}
			cfg := attach.KernelConfig{Volume: args[0], StateDir: dir, ReadOnly: readOnly,
				DeadConnTimeout: deadConn, LockWait: lockWait, Logger: log,
				Attached: func(dev string) { fmt.Fprintln(cmd.OutOrStdout(), dev) }}
			if len(args) == 2 {
				cfg.Device = args[1]
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			// The kernel first: without the module, fail before reaching
			// for the cluster.
			nl, err := nbdnl.Open(ctx)
			if err != nil {
				return err
			}
			defer nl.Close()
			exports, done, err := g.clusterExports(log, "nbd "+args[0])
			if err != nil {
				return err
			}
			defer done()
			keepReloading(ctx, g.peerTLS)
			cfg.Netlink = nl
			cfg.Exports = exports
			return attach.ServeKernel(ctx, cfg)
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", def, "directory of the attachment records a restarted torusblk nbd reattaches from (env TORUS_NBD_STATE_DIR)")
	cmd.Flags().BoolVar(&readOnly, "read-only", false, "attach read-only (no writer lock)")
	cmd.Flags().DurationVar(&deadConn, "dead-conn-timeout", 2*time.Minute, "how long the kernel holds I/O after this process dies, waiting for a restarted one")
	cmd.Flags().DurationVar(&lockWait, "lock-wait", 30*time.Second, "how long to wait for the writer lock another writer holds (the lease of a killed torusblk expires within 10 s)")
	return cmd
}
