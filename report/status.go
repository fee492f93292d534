package report

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/torus-storage/torus"
)

// Status is the -o json form of `torusctl status` and /api/v1/status.
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
	// HealthUnknown counts volumes never reported.
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

// HealthUnknown labels volumes without a published status.
const HealthUnknown = "unknown"

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
			st.VolumeHealth[HealthUnknown]++
			continue
		}
		st.VolumeHealth[string(s.Health)]++
		st.UnderReplicated += s.UnderReplicated
		st.Unavailable += s.Unavailable
		if why := Damage(s); why != "" {
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

// ReadStatus reads the records Summarize needs from md, and the default
// export.
func ReadStatus(ctx context.Context, md torus.Metadata) (Status, error) {
	cfg, err := md.ClusterConfig(ctx)
	if err != nil {
		return Status{}, err
	}
	ring, err := md.Ring(ctx)
	if err != nil {
		return Status{}, err
	}
	peers, err := md.Peers(ctx)
	if err != nil {
		return Status{}, err
	}
	vols, err := md.Volumes(ctx)
	if err != nil {
		return Status{}, err
	}
	statuses, err := md.VolumeStatuses(ctx)
	if err != nil {
		return Status{}, err
	}
	writers := map[string]bool{}
	for _, v := range vols {
		_, ok, err := md.Writer(ctx, v.Name)
		if err != nil && !errors.Is(err, torus.ErrNotExist) {
			return Status{}, err
		}
		writers[v.Name] = ok
	}
	st := Summarize(cfg, ring, peers, vols, statuses, func(n string) bool { return writers[n] })
	if st.DefaultExport, err = md.DefaultExport(ctx); err != nil {
		return Status{}, err
	}
	return st, nil
}

// Damage says what is wrong with a volume beyond redundancy, "" if
// nothing.
func Damage(s torus.VolumeStatus) string {
	var why []string
	if s.UnrepairableBlocks > 0 {
		why = append(why, fmt.Sprintf("%d unrepairable blocks (torusctl volume scrub %s names them)", s.UnrepairableBlocks, s.Volume))
	}
	if s.Problem != "" {
		why = append(why, s.Problem)
	}
	return strings.Join(why, "; ")
}
