package report

import (
	"context"
	"errors"
	"time"

	"github.com/torus-storage/torus"
)

// VolumeRow is one line of `torusctl volume list`; -o json and
// /api/v1/volumes print these. The status fields are null for a volume the
// daemons have not reported yet.
type VolumeRow struct {
	Name        string    `json:"name"`
	ID          uint64    `json:"id"`
	Size        int64     `json:"size"`
	Created     time.Time `json:"created"`
	MinReplicas int       `json:"min_replicas"`
	// Replication is the volume's own replication (0: the cluster's).
	Replication int `json:"replication"`
	// Parent is SRC@SNAPSHOT for a clone, "" otherwise.
	Parent string `json:"parent,omitempty"`
	// Labels are the volume's labels ({} when none).
	Labels map[string]string `json:"labels"`
	Writer string            `json:"writer"` // "" when closed
	Epoch  uint64            `json:"epoch,omitempty"`
	// From the published torus.VolumeStatus:
	Used            *int64     `json:"used"`             // bytes of live segments, one copy
	Health          *string    `json:"health"`           // healthy, degraded, unavailable
	UnderReplicated *int       `json:"under_replicated"` // live segments with too few copies
	Unavailable     *int       `json:"unavailable"`      // live segments with no up copy
	PendingBytes    *int64     `json:"pending_bytes"`    // bytes healing still has to copy
	StatusUpdated   *time.Time `json:"status_updated"`
	// Damage says what scrub or maintenance found beyond redundancy:
	// unrepairable blocks, or live segments that cannot be read.
	Damage string `json:"damage,omitempty"`
}

// VolumeRows builds one row per volume in vols, in order. writers holds
// the attached volumes' writer leases by name (absent: closed);
// statuses the published statuses by name.
func VolumeRows(vols []torus.VolumeInfo, writers map[string]torus.WriterInfo, statuses map[string]torus.VolumeStatus) []VolumeRow {
	rows := make([]VolumeRow, 0, len(vols))
	for _, v := range vols {
		r := VolumeRow{Name: v.Name, ID: v.ID, Size: v.Size, Created: v.Created, MinReplicas: v.MinReplicas,
			Replication: v.Replication, Labels: v.Labels}
		if p := v.Parent; p != nil {
			r.Parent = p.Volume + "@" + p.Snapshot
		}
		if r.Labels == nil {
			r.Labels = map[string]string{}
		}
		if w, ok := writers[v.Name]; ok {
			r.Writer, r.Epoch = w.Owner, w.Epoch
		}
		if s, ok := statuses[v.Name]; ok {
			h := string(s.Health)
			r.Used, r.Health, r.UnderReplicated, r.Unavailable, r.PendingBytes, r.StatusUpdated =
				&s.Used, &h, &s.UnderReplicated, &s.Unavailable, &s.PendingBytes, &s.Updated
			r.Damage = Damage(s)
		}
		rows = append(rows, r)
	}
	return rows
}

// ReadVolumes reads the volumes, their writers and statuses from md and
// returns their rows; a volume deleted meanwhile is left out.
func ReadVolumes(ctx context.Context, md torus.Metadata) ([]VolumeRow, error) {
	vols, err := md.Volumes(ctx)
	if err != nil {
		return nil, err
	}
	statuses, err := md.VolumeStatuses(ctx)
	if err != nil {
		return nil, err
	}
	writers := map[string]torus.WriterInfo{}
	kept := vols[:0:0]
	for _, v := range vols {
		w, ok, err := md.Writer(ctx, v.Name)
		if errors.Is(err, torus.ErrNotExist) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		if ok {
			writers[v.Name] = w
		}
		kept = append(kept, v)
	}
	return VolumeRows(kept, writers, statuses), nil
}
