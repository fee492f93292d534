package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/report"
)

func (a *app) initCmd() *cobra.Command {
	var cfg torus.ClusterConfig
	var segSize string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Initialize the cluster's settings (once)",
		Long: `init writes the cluster-wide settings and the initial, empty ring. It fails
if the cluster is initialized already. Daemons (torusd) join the ring after.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if segSize != "" {
				n, err := ParseSize(segSize)
				if err != nil {
					return fmt.Errorf("--segment-size: %w", err)
				}
				cfg.SegmentSize = n
			}
			// The flags default to the defaults, so zero is an explicit,
			// invalid value here: no EnsureDefaults.
			if err := cfg.Validate(); err != nil {
				return err
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				if err := md.InitCluster(ctx, cfg); err != nil {
					if errors.Is(err, torus.ErrExist) {
						return fmt.Errorf("cluster is already initialized: %w", err)
					}
					return err
				}
				return a.say(cfg, "initialized cluster: replication %d, segment size %s, %d virtual nodes, checkpoint every %d segments",
					cfg.Replication, FormatSize(cfg.SegmentSize), cfg.VirtualNodes, cfg.CheckpointEvery)
			})
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Replication, "replication", torus.DefaultReplication, "copies of each segment (1..16)")
	f.StringVar(&segSize, "segment-size", "32MiB", "segment size before sealing (1MiB..1GiB, multiple of 4KiB)")
	f.IntVar(&cfg.VirtualNodes, "virtual-nodes", torus.DefaultVirtualNodes, "ring points per peer at average weight (1..4096)")
	f.IntVar(&cfg.CheckpointEvery, "checkpoint-every", torus.DefaultCheckpointEvery, "sealed segments between index checkpoints (1..1024)")
	return cmd
}

func (a *app) peerCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "peer", Short: "List, add and remove storage daemons"}
	cmd.AddCommand(a.peerAddCmd(), a.peerRemoveCmd())
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List peers with their state (up, down, draining, new, removed) and usage",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				peers, err := report.ReadPeers(ctx, md)
				if err != nil {
					return err
				}
				now := a.deps.Now()
				return a.emit(peers, func(w io.Writer) {
					row(w, "ID", "ADDRESS", "LOCATION", "STATE", "USED", "CAPACITY", "PENDING", "LAST SEEN")
					for _, p := range peers {
						seen := "-"
						if !p.LastSeen.IsZero() {
							seen = now.Sub(p.LastSeen).Round(time.Second).String() + " ago"
						}
						row(w, p.ID, dash(p.Address), dash(p.Location().String()), p.State, HumanSize(p.Used),
							HumanSize(p.Capacity), HumanSize(p.Pending), seen)
					}
				})
			})
		},
	})
	return cmd
}

func (a *app) ringCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "ring", Short: "Inspect and change the placement ring"}
	cmd.AddCommand(&cobra.Command{
		Use:   "get",
		Short: "Show the current ring",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				view, err := report.ReadRing(ctx, md)
				if err != nil {
					return err
				}
				ring := view.RingSpec
				names, err := volumeNames(ctx, md, ring)
				if err != nil {
					return err
				}
				return a.emit(view, func(w io.Writer) {
					fmt.Fprintf(w, "version %d, replication %d, %d virtual nodes, %d members\n",
						ring.Version, ring.Replication, ring.VirtualNodes, len(ring.Members))
					fmt.Fprintf(w, "format %d, failure domain %s; placement %s\n", max(ring.Format, torus.RingFormatZones),
						ruleName(ring), placementSummary(view.Placement))
					if len(ring.Members) > 0 {
						row(w, "ID", "LOCATION", "WEIGHT")
						for _, m := range ring.Members {
							row(w, m.ID, dash(m.Location().String()), m.Weight)
						}
					}
					writeVolumePlacement(w, ring, names)
				})
			})
		},
	})
	cmd.AddCommand(a.ringSetRuleCmd(), a.ringUnsetRuleCmd(), a.ringPinCmd(), a.ringUnpinCmd())
	cmd.AddCommand(&cobra.Command{
		Use:   "set-replication N",
		Short: "Change the replication factor (writes a new ring version)",
		Long: `set-replication writes a new ring version with replication N. Daemons
rebalance to the new placement. The cluster's init setting is not changed;
the ring's value is the one in force.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 1 || n > 16 {
				return fmt.Errorf("%w: replication %q must be an integer 1..16", torus.ErrInvalid, args[0])
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				ring, err := md.Ring(ctx)
				if err != nil {
					return err
				}
				if ring.Replication == n {
					return a.say(ring, "ring version %d already has replication %d", ring.Version, n)
				}
				ring.Version++
				ring.Replication = n
				if err := md.SetRing(ctx, ring); err != nil {
					if errors.Is(err, torus.ErrConflict) {
						return fmt.Errorf("the ring changed concurrently, retry: %w", err)
					}
					return err
				}
				if len(ring.Members) < n {
					fmt.Fprintf(a.errOut, "warning: replication %d but only %d ring members\n", n, len(ring.Members))
				}
				return a.say(ring, "ring version %d: replication %d", ring.Version, n)
			})
		},
	})
	return cmd
}
