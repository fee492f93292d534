package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/torus-storage/torus"
)

// Status is the -o json form of `torusctl status`.
type Status struct {
	Cluster     torus.ClusterConfig `json:"cluster"`
	RingVersion uint64              `json:"ring_version"`
	Replication int                 `json:"replication"`
	// Placement says whether the ring's members (draining ones left out)
	// span enough failure domains for its rule.
	Placement     torus.PlacementHealth   `json:"placement"`
	RingMembers   int                     `json:"ring_members"`
	Peers         map[torus.PeerState]int `json:"peers"`
	Volumes       int                     `json:"volumes"`
	OpenVolumes   int                     `json:"open_volumes"`
	DefaultExport string                  `json:"default_export"`
	// VolumeHealth counts volumes by their last published health;
	// "unknown" counts volumes never reported.
	VolumeHealth map[string]int `json:"volume_health"`
	// UnderReplicated and Unavailable sum the volumes' segment counts.
	UnderReplicated int `json:"under_replicated"`
	Unavailable     int `json:"unavailable"`
	// Damaged lists the volumes with blocks scrub found no good copy of,
	// or whose live segments could not be read, with the reason.
	Damaged map[string]string `json:"damaged,omitempty"`
	// RebalancePending sums the peers' pending bytes (rebalance backlog
	// from their heartbeats); HealPending sums the volumes' PendingBytes.
	RebalancePending int64 `json:"rebalance_pending"`
	HealPending      int64 `json:"heal_pending"`
	// Stored sums the volumes' bytes in place (all copies).
	Stored int64 `json:"stored"`
	// Progress is Stored / (Stored + HealPending + RebalancePending):
	// 1 when nothing is pending.
	Progress float64 `json:"progress"`
}

// healthUnknown labels volumes without a published status.
const healthUnknown = "unknown"

// Summarize computes the status from the cluster's records. open reports
// whether a volume has a writer.
func Summarize(cfg torus.ClusterConfig, ring torus.RingSpec, peers []torus.PeerInfo, vols []torus.VolumeInfo,
	statuses map[string]torus.VolumeStatus, open func(name string) bool) Status {
	st := Status{
		Cluster: cfg, RingVersion: ring.Version, Replication: ring.Replication, RingMembers: len(ring.Members),
		Peers: map[torus.PeerState]int{}, Volumes: len(vols), VolumeHealth: map[string]int{},
	}
	draining := map[string]bool{}
	for _, p := range peers {
		draining[p.ID] = p.State == torus.PeerDraining
	}
	st.Placement = PlacementHealth(ring, func(id string) bool { return draining[id] })
	for _, p := range peers {
		st.Peers[p.State]++
		st.RebalancePending += p.Pending
	}
	for _, v := range vols {
		if open(v.Name) {
			st.OpenVolumes++
		}
		s, ok := statuses[v.Name]
		if !ok {
			st.VolumeHealth[healthUnknown]++
			continue
		}
		st.VolumeHealth[string(s.Health)]++
		st.UnderReplicated += s.UnderReplicated
		st.Unavailable += s.Unavailable
		if why := damage(s); why != "" {
			if st.Damaged == nil {
				st.Damaged = map[string]string{}
			}
			st.Damaged[v.Name] = why
		}
		st.HealPending += s.PendingBytes
		st.Stored += s.Stored
	}
	st.Progress = 1
	if total := st.Stored + st.HealPending + st.RebalancePending; total > 0 && st.Stored < total {
		st.Progress = float64(st.Stored) / float64(total)
	}
	return st
}

func (a *app) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Summarize the cluster: peers, volumes by health, ring, healing progress",
		Long: `status summarizes the cluster: ring version, peers by state, volumes by the
health the daemons last published, and the healing and rebalance backlog
(the peers' pending bytes and the volumes' bytes still to copy), with a
progress bar on a terminal. -o json prints the same for scripts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				cfg, err := md.ClusterConfig(ctx)
				if err != nil {
					return err
				}
				ring, err := md.Ring(ctx)
				if err != nil {
					return err
				}
				peers, err := md.Peers(ctx)
				if err != nil {
					return err
				}
				vols, err := md.Volumes(ctx)
				if err != nil {
					return err
				}
				statuses, err := md.VolumeStatuses(ctx)
				if err != nil {
					return err
				}
				writers := map[string]bool{}
				for _, v := range vols {
					_, ok, err := md.Writer(ctx, v.Name)
					if err != nil && !errors.Is(err, torus.ErrNotExist) {
						return err
					}
					writers[v.Name] = ok
				}
				st := Summarize(cfg, ring, peers, vols, statuses, func(n string) bool { return writers[n] })
				if st.DefaultExport, err = md.DefaultExport(ctx); err != nil {
					return err
				}
				term := a.deps.IsTerminal(a.out)
				return a.emit(st, func(w io.Writer) { writeStatus(w, st, term) })
			})
		},
	}
}

// damage says what is wrong with a volume beyond redundancy, "" if nothing.
func damage(s torus.VolumeStatus) string {
	var why []string
	if s.UnrepairableBlocks > 0 {
		why = append(why, fmt.Sprintf("%d unrepairable blocks (torusctl volume scrub %s names them)", s.UnrepairableBlocks, s.Volume))
	}
	if s.Problem != "" {
		why = append(why, s.Problem)
	}
	return strings.Join(why, "; ")
}

func writeStatus(w io.Writer, st Status, term bool) {
	row(w, "ring:", fmt.Sprintf("version %d, replication %d, %d members", st.RingVersion, st.Replication, st.RingMembers))
	row(w, "placement:", placementSummary(st.Placement))
	row(w, "peers:", fmt.Sprintf("%d up, %d down, %d draining, %d new, %d removed",
		st.Peers[torus.PeerUp], st.Peers[torus.PeerDown], st.Peers[torus.PeerDraining],
		st.Peers[torus.PeerNew], st.Peers[torus.PeerRemoved]))
	health := fmt.Sprintf("%d healthy, %d degraded, %d unavailable",
		st.VolumeHealth[string(torus.VolumeHealthy)], st.VolumeHealth[string(torus.VolumeDegraded)],
		st.VolumeHealth[string(torus.VolumeUnavailable)])
	if n := st.VolumeHealth[healthUnknown]; n > 0 {
		health += fmt.Sprintf(", %d not reported", n)
	}
	var other []string
	for h := range st.VolumeHealth {
		switch h {
		case string(torus.VolumeHealthy), string(torus.VolumeDegraded), string(torus.VolumeUnavailable), healthUnknown:
		default:
			other = append(other, h)
		}
	}
	sort.Strings(other)
	for _, h := range other {
		health += fmt.Sprintf(", %d %s", st.VolumeHealth[h], h)
	}
	row(w, "volumes:", fmt.Sprintf("%d (%d open): %s", st.Volumes, st.OpenVolumes, health))
	if st.UnderReplicated > 0 || st.Unavailable > 0 {
		row(w, "segments:", fmt.Sprintf("%d under-replicated, %d unavailable", st.UnderReplicated, st.Unavailable))
	}
	names := make([]string, 0, len(st.Damaged))
	for n := range st.Damaged {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		row(w, "damaged:", n+": "+st.Damaged[n])
	}
	if st.HealPending == 0 && st.RebalancePending == 0 {
		row(w, "healing:", "nothing pending")
	} else {
		line := fmt.Sprintf("%s to heal, %s to rebalance", HumanSize(st.HealPending), HumanSize(st.RebalancePending))
		if term {
			line = Bar(st.Progress, 30) + " " + line
		}
		row(w, "healing:", line)
	}
	row(w, "default export:", dash(st.DefaultExport))
	row(w, "settings:", fmt.Sprintf("segment size %s, %d virtual nodes, checkpoint every %d",
		FormatSize(st.Cluster.SegmentSize), st.Cluster.VirtualNodes, st.Cluster.CheckpointEvery))
}
