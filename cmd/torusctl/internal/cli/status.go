package cli

import (
	"context"
	"fmt"
	"io"
	"sort"

	"github.com/spf13/cobra"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/report"
)

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
				st, err := report.ReadStatus(ctx, md)
				if err != nil {
					return err
				}
				term := a.deps.IsTerminal(a.out)
				return a.emit(st, func(w io.Writer) { writeStatus(w, st, term) })
			})
		},
	}
}

func writeStatus(w io.Writer, st report.Status, term bool) {
	row(w, "ring:", fmt.Sprintf("version %d, replication %d, %d members", st.RingVersion, st.Replication, st.RingMembers))
	row(w, "placement:", placementSummary(st.Placement))
	row(w, "peers:", fmt.Sprintf("%d up, %d down, %d draining, %d new, %d removed",
		st.Peers[torus.PeerUp], st.Peers[torus.PeerDown], st.Peers[torus.PeerDraining],
		st.Peers[torus.PeerNew], st.Peers[torus.PeerRemoved]))
	health := fmt.Sprintf("%d healthy, %d degraded, %d unavailable",
		st.VolumeHealth[string(torus.VolumeHealthy)], st.VolumeHealth[string(torus.VolumeDegraded)],
		st.VolumeHealth[string(torus.VolumeUnavailable)])
	if n := st.VolumeHealth[report.HealthUnknown]; n > 0 {
		health += fmt.Sprintf(", %d not reported", n)
	}
	var other []string
	for h := range st.VolumeHealth {
		switch h {
		case string(torus.VolumeHealthy), string(torus.VolumeDegraded), string(torus.VolumeUnavailable), report.HealthUnknown:
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
