package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/snapshots"
	"github.com/torus-storage/torus/report"
	"github.com/torus-storage/torus/ring"
)

func (a *app) volumeCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "volume", Aliases: []string{"vol", "block"}, Short: "Create, list, resize, import, export and delete volumes"}
	cmd.AddCommand(a.volumeCreateCmd(), a.volumeCloneCmd(), a.volumeListCmd(), a.volumeDeleteCmd(), a.volumeResizeCmd(),
		a.volumeSetCmd(), a.volumeUnlockCmd(), a.volumeDefaultExportCmd(), a.volumeScrubCmd(),
		a.volumeImportCmd(), a.volumeExportCmd())
	return cmd
}

func checkName(what, name string) error {
	if err := torus.ValidName(name); err != nil {
		return fmt.Errorf("bad %s name: %w", what, err)
	}
	return nil
}

// ParseLabel parses one --label argument, KEY=VALUE (VALUE may be empty),
// and checks it with torus.ValidLabelKey and torus.ValidLabelValue.
func ParseLabel(kv string) (key, value string, err error) {
	key, value, ok := strings.Cut(kv, "=")
	if !ok {
		return "", "", fmt.Errorf("%w: label %q is not KEY=VALUE", torus.ErrInvalid, kv)
	}
	if err := torus.ValidLabelKey(key); err != nil {
		return "", "", err
	}
	if err := torus.ValidLabelValue(value); err != nil {
		return "", "", fmt.Errorf("label %q: %w", key, err)
	}
	return key, value, nil
}

func (a *app) volumeCreateCmd() *cobra.Command {
	var minReplicas, replication int
	var labelArgs []string
	cmd := &cobra.Command{
		Use:   "create NAME SIZE [--replication N] [--label KEY=VALUE]...",
		Short: "Create a volume (SIZE like 4096, 512MiB, 1GiB; a multiple of 4KiB)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if err := checkName("volume", name); err != nil {
				return err
			}
			size, err := ParseVolumeSize(args[1])
			if err != nil {
				return err
			}
			if minReplicas < 0 {
				return fmt.Errorf("--min-replicas: %w: %d is negative", torus.ErrInvalid, minReplicas)
			}
			var labels map[string]string
			for _, kv := range labelArgs {
				k, v, err := ParseLabel(kv)
				if err != nil {
					return fmt.Errorf("--label: %w", err)
				}
				if labels == nil {
					labels = make(map[string]string)
				}
				labels[k] = v
			}
			if err := torus.ValidLabels(labels); err != nil {
				return fmt.Errorf("--label: %w", err)
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				if err := checkReplication(ctx, md, replication, minReplicas); err != nil {
					return err
				}
				v, err := md.CreateVolume(ctx, torus.VolumeInfo{Name: name, Size: size, MinReplicas: minReplicas,
					Replication: replication, Labels: labels})
				if errors.Is(err, torus.ErrExist) {
					return fmt.Errorf("volume %q already exists: %w", name, err)
				}
				if err != nil {
					return err
				}
				return a.say(v, "created volume %s (%s, id %d)", v.Name, FormatSize(v.Size), v.ID)
			})
		},
	}
	cmd.Flags().IntVar(&minReplicas, "min-replicas", 0, "replicas a FLUSH needs (0: the replication factor)")
	cmd.Flags().IntVar(&replication, "replication", 0, "copies of each segment of this volume (0: the cluster's); at most the ring's failure domains")
	cmd.Flags().StringArrayVar(&labelArgs, "label", nil, "a label KEY=VALUE kept with the volume (repeatable)")
	return cmd
}

// checkReplication refuses a volume replication the ring cannot place
// (ring.CheckReplication) and a min-replicas above it.
func checkReplication(ctx context.Context, md torus.Metadata, replication, minReplicas int) error {
	if replication == 0 {
		return nil
	}
	if replication > 0 && minReplicas > replication {
		return fmt.Errorf("--min-replicas: %w: %d exceeds --replication %d", torus.ErrInvalid, minReplicas, replication)
	}
	spec, err := md.Ring(ctx)
	if err != nil {
		return err
	}
	if err := ring.CheckReplication(spec, replication); err != nil {
		return fmt.Errorf("--replication: %w", err)
	}
	return nil
}

func (a *app) volumeCloneCmd() *cobra.Command {
	var sizeArg string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "clone SRC[@SNAPSHOT] NEW [--size SIZE]",
		Short: "Create NEW as a copy-on-write clone of a snapshot, or of a volume as it is now",
		Long: `clone creates volume NEW sharing the segments of SRC@SNAPSHOT: it costs one
etcd transaction, whatever the size, and the two volumes diverge as they are
written. Without @SNAPSHOT it clones SRC as it is now: a snapshot is taken
first (through SRC's writer if it is attached, as snapshot create does) and
deleted once the clone exists. SRC and its snapshots may be deleted later:
the segments the clone still names are kept. --size may grow the clone
(never below SRC's size). The clone keeps SRC's replication settings.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, snap, hasSnap := strings.Cut(args[0], "@")
			if err := checkName("volume", src); err != nil {
				return err
			}
			if hasSnap {
				if err := checkName("snapshot", snap); err != nil {
					return err
				}
			}
			name := args[1]
			if err := checkName("volume", name); err != nil {
				return err
			}
			var size int64
			if sizeArg != "" {
				var err error
				if size, err = ParseVolumeSize(sizeArg); err != nil {
					return fmt.Errorf("--size: %w", err)
				}
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				sv, err := md.Volume(ctx, src)
				if err != nil {
					return err
				}
				v, err := snapshots.Clone(ctx, md, src, snap, torus.VolumeInfo{Name: name, Size: size,
					MinReplicas: sv.MinReplicas, Replication: sv.Replication}, timeout,
					func(ctx context.Context, md torus.Metadata, vol, name string) error {
						return a.deps.SnapshotClosedVolume(ctx, md, a.g, vol, name)
					})
				if errors.Is(err, torus.ErrExist) {
					return fmt.Errorf("volume %q already exists: %w", name, err)
				}
				if err != nil {
					return err
				}
				from := src
				if hasSnap {
					from += "@" + snap
				}
				return a.say(v, "created volume %s (%s, id %d) as a clone of %s", v.Name, FormatSize(v.Size), v.ID, from)
			})
		},
	}
	cmd.Flags().StringVar(&sizeArg, "size", "", "size of the clone (default: the source's)")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for an attached source's writer to take the snapshot")
	return cmd
}

func (a *app) volumeListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List volumes with size, space used, writer, write policy and health",
		Long: `list shows each volume. USED, HEALTH, UNDER-REPL (live segments with too
few copies) and PENDING (bytes healing still has to copy) come from the
status the daemons publish every few seconds; "-" means not reported yet.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				rows, err := report.ReadVolumes(ctx, md)
				if err != nil {
					return err
				}
				return a.emit(rows, func(w io.Writer) {
					row(w, "NAME", "SIZE", "USED", "WRITER", "MIN-REPLICAS", "HEALTH", "UNDER-REPL", "PENDING")
					for _, r := range rows {
						writer := "-"
						if r.Writer != "" {
							writer = fmt.Sprintf("%s (epoch %d)", r.Writer, r.Epoch)
						}
						minr := "default"
						if r.MinReplicas > 0 {
							minr = strconv.Itoa(r.MinReplicas)
						}
						used, health, under, pending := "-", "-", "-", "-"
						if r.Health != nil {
							used, health, pending = HumanSize(*r.Used), *r.Health, HumanSize(*r.PendingBytes)
							under = strconv.Itoa(*r.UnderReplicated)
						}
						row(w, r.Name, FormatSize(r.Size), used, writer, minr, health, under, pending)
					}
					for _, r := range rows {
						if r.Damage != "" {
							fmt.Fprintf(w, "%s: damaged: %s\n", r.Name, r.Damage)
						}
					}
				})
			})
		},
	}
}

func (a *app) volumeDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a volume and its snapshots (refused while it is open)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				err := md.DeleteVolume(ctx, name)
				var le *torus.LockedError
				if errors.As(err, &le) {
					return fmt.Errorf("cannot delete volume %q: it is open by %s (epoch %d); detach it first, or if that writer is dead, `torusctl volume unlock %s --force`: %w",
						name, le.Holder, le.Epoch, name, err)
				}
				if err != nil {
					return err
				}
				return a.say(map[string]string{"deleted": name}, "deleted volume %s", name)
			})
		},
	}
}

func (a *app) volumeResizeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "resize NAME SIZE",
		Short: "Grow a volume (volumes never shrink)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			size, err := ParseVolumeSize(args[1])
			if err != nil {
				return err
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				v, err := md.Volume(ctx, name)
				if err != nil {
					return err
				}
				if size < v.Size {
					return fmt.Errorf("%w: cannot shrink volume %q from %s to %s: volumes only grow",
						torus.ErrInvalid, name, FormatSize(v.Size), FormatSize(size))
				}
				old := v.Size
				v.Size = size
				if err := md.UpdateVolume(ctx, v); err != nil {
					return err
				}
				return a.say(v, "resized volume %s from %s to %s", name, FormatSize(old), FormatSize(size))
			})
		},
	}
}

// VolumeSettings is what one `volume set` changes.
type VolumeSettings struct {
	MinReplicas  int               // -1: unchanged
	SetLabels    map[string]string // label.KEY=VALUE
	RemoveLabels []string          // label.KEY-
}

// ParseVolumeSettings parses the KEY=VALUE arguments of `volume set`:
// min-replicas=N, label.KEY=VALUE (add or replace a label; VALUE may be
// empty) and label.KEY- (remove a label, as kubectl label does).
func ParseVolumeSettings(args []string) (VolumeSettings, error) {
	st := VolumeSettings{MinReplicas: -1}
	for _, kv := range args {
		if key, ok := strings.CutPrefix(kv, "label."); ok && !strings.Contains(kv, "=") && strings.HasSuffix(key, "-") {
			key = strings.TrimSuffix(key, "-")
			if err := torus.ValidLabelKey(key); err != nil {
				return st, err
			}
			st.RemoveLabels = append(st.RemoveLabels, key)
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return st, fmt.Errorf("%w: setting %q is not KEY=VALUE (or label.KEY- to remove a label)", torus.ErrInvalid, kv)
		}
		if lk, ok := strings.CutPrefix(k, "label."); ok {
			lk, lv, err := ParseLabel(lk + "=" + v)
			if err != nil {
				return st, err
			}
			if st.SetLabels == nil {
				st.SetLabels = make(map[string]string)
			}
			st.SetLabels[lk] = lv
			continue
		}
		switch k {
		case "min-replicas":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return st, fmt.Errorf("%w: min-replicas %q must be an integer ≥ 0", torus.ErrInvalid, v)
			}
			st.MinReplicas = n
		default:
			return st, fmt.Errorf("%w: unknown setting %q (supported: min-replicas, label.KEY)", torus.ErrInvalid, k)
		}
	}
	return st, nil
}

func (a *app) volumeSetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "set NAME KEY=VALUE...",
		Short: "Change volume settings: min-replicas=N (0: the replication factor), label.KEY=VALUE, label.KEY- (remove)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			st, err := ParseVolumeSettings(args[1:])
			if err != nil {
				return err
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				vol, err := md.Volume(ctx, name)
				if err != nil {
					return err
				}
				var done []string
				if st.MinReplicas >= 0 {
					if ring, err := md.Ring(ctx); err == nil && st.MinReplicas > vol.Replicas(ring.Replication) {
						return fmt.Errorf("%w: min-replicas %d exceeds the volume's replication %d: every FLUSH would fail",
							torus.ErrInvalid, st.MinReplicas, vol.Replicas(ring.Replication))
					}
					vol.MinReplicas = st.MinReplicas
					if err := md.UpdateVolume(ctx, vol); err != nil {
						return err
					}
					done = append(done, fmt.Sprintf("min-replicas=%d", st.MinReplicas))
				}
				if len(st.SetLabels) > 0 || len(st.RemoveLabels) > 0 {
					if vol, err = md.SetVolumeLabels(ctx, name, st.SetLabels, st.RemoveLabels); err != nil {
						return err
					}
					done = append(done, fmt.Sprintf("%d labels", len(vol.Labels)))
				}
				return a.say(vol, "volume %s: %s", name, strings.Join(done, ", "))
			})
		},
	}
}

func (a *app) volumeUnlockCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "unlock NAME --force",
		Short: "Remove a volume's writer lock (dangerous; see help)",
		Long: `unlock --force deletes the volume's writer lock, so another writer can attach
at once instead of waiting for the dead writer's lease to expire (10 s).

This is dangerous only in systems without fencing. Torus fences: the next
writer takes a higher epoch, storage daemons then reject the old writer's
appends and syncs, and its head commits fail, so an old writer that is still
alive cannot corrupt the volume; its I/O fails instead. Use it when the
holder is known dead or unreachable.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if !force {
				return fmt.Errorf("refusing to unlock volume %q without --force (see `torusctl volume unlock --help`)", name)
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				w, ok, err := md.Writer(ctx, name)
				if err != nil {
					return err
				}
				if !ok {
					return a.say(map[string]any{"volume": name, "unlocked": false}, "volume %s has no writer", name)
				}
				if err := md.ForceUnlock(ctx, name); err != nil {
					return err
				}
				return a.say(map[string]any{"volume": name, "unlocked": true, "writer": w},
					"removed the lock of %s (epoch %d) on volume %s; that writer is fenced once a new writer attaches", w.Owner, w.Epoch, name)
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "really remove the lock")
	return cmd
}

func (a *app) volumeDefaultExportCmd() *cobra.Command {
	var clear bool
	cmd := &cobra.Command{
		Use:   "default-export [NAME]",
		Short: "Show or set the volume served for the empty NBD export name",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if clear && len(args) > 0 {
				return errors.New("give either NAME or --clear")
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				switch {
				case clear:
					if err := md.SetDefaultExport(ctx, ""); err != nil {
						return err
					}
					return a.say(map[string]string{"default_export": ""}, "default export cleared")
				case len(args) == 1:
					if err := md.SetDefaultExport(ctx, args[0]); err != nil {
						return err
					}
					return a.say(map[string]string{"default_export": args[0]}, "default export: %s", args[0])
				}
				d, err := md.DefaultExport(ctx)
				if err != nil {
					return err
				}
				return a.say(map[string]string{"default_export": d}, "%s", dash(d))
			})
		},
	}
	cmd.Flags().BoolVar(&clear, "clear", false, "unset the default export")
	return cmd
}
