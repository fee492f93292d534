package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/snapshots"
)

// splitSnap parses VOLUME@NAME.
func splitSnap(s string) (volume, name string, err error) {
	volume, name, ok := strings.Cut(s, "@")
	if !ok {
		return "", "", fmt.Errorf("%w: %q is not VOLUME@SNAPSHOT", torus.ErrInvalid, s)
	}
	if err := checkName("volume", volume); err != nil {
		return "", "", err
	}
	if err := checkName("snapshot", name); err != nil {
		return "", "", err
	}
	return volume, name, nil
}

func (a *app) snapshotCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "snapshot", Aliases: []string{"snap"}, Short: "Create, list, delete and restore snapshots"}
	var timeout time.Duration
	create := &cobra.Command{
		Use:   "create VOLUME@NAME",
		Short: "Take a snapshot (asks the volume's writer if it is open)",
		Long: `create takes a snapshot. If the volume is open, its writer is asked to take
it (flush, seal, checkpoint, record) and create waits for the answer up to
--timeout. If the volume has no writer, torusctl opens it briefly as writer
(through the peers) and takes the snapshot itself.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			vol, name, err := splitSnap(args[0])
			if err != nil {
				return err
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				if err := CreateSnapshot(ctx, md, vol, name, timeout, func(ctx context.Context, md torus.Metadata, vol, name string) error {
					return a.deps.SnapshotClosedVolume(ctx, md, a.g, vol, name)
				}); err != nil {
					return err
				}
				s, err := md.Snapshot(ctx, vol, name)
				if err != nil {
					return err
				}
				return a.say(s, "created snapshot %s@%s", vol, name)
			})
		},
	}
	create.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for the writer's answer")

	list := &cobra.Command{
		Use:   "list VOLUME",
		Short: "List a volume's snapshots",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			vol := strings.TrimSuffix(args[0], "@")
			if err := checkName("volume", vol); err != nil {
				return err
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				snaps, err := md.Snapshots(ctx, vol)
				if err != nil {
					return err
				}
				return a.emit(snaps, func(w io.Writer) {
					row(w, "SNAPSHOT", "CREATED", "SEGMENTS")
					for _, s := range snaps {
						n := len(s.Head.Sealed)
						if s.Head.Checkpoint != nil {
							n++
						}
						row(w, s.Volume+"@"+s.Name, s.Created.UTC().Format(time.RFC3339), n)
					}
				})
			})
		},
	}
	del := &cobra.Command{
		Use:   "delete VOLUME@NAME",
		Short: "Delete a snapshot (its segments are collected by GC)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			vol, name, err := splitSnap(args[0])
			if err != nil {
				return err
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				if err := md.DeleteSnapshot(ctx, vol, name); err != nil {
					return err
				}
				return a.say(map[string]string{"deleted": vol + "@" + name}, "deleted snapshot %s@%s", vol, name)
			})
		},
	}
	restore := &cobra.Command{
		Use:   "restore VOLUME@NAME",
		Short: "Make a volume's content its snapshot's again (the volume must not be attached)",
		Long: `restore makes VOLUME read exactly as it did when snapshot NAME was taken: its
head takes the snapshot's checkpoint in one etcd transaction, whatever the
size; every write since is dropped and collected by GC. The snapshot stays.
The volume must not be attached: restore is refused, naming the writer, while
anything has it open for writing.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			vol, name, err := splitSnap(args[0])
			if err != nil {
				return err
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				h, err := snapshots.Restore(ctx, md, vol, name)
				if err != nil {
					return err
				}
				return a.say(h, "restored %s to snapshot %s", vol, name)
			})
		},
	}
	cmd.AddCommand(create, list, del, restore)
	return cmd
}

// ErrSnapshotTimeout is returned by CreateSnapshot when the writer did not
// answer in time (snapshots.ErrTimeout).
var ErrSnapshotTimeout = snapshots.ErrTimeout

// CreateSnapshot takes snapshot volume@name: snapshots.Take.
func CreateSnapshot(ctx context.Context, md torus.Metadata, volume, name string, timeout time.Duration,
	closed func(ctx context.Context, md torus.Metadata, volume, name string) error) error {
	return snapshots.Take(ctx, md, volume, name, timeout, closed)
}
