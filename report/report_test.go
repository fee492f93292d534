package report

import (
	"testing"
	"time"

	"github.com/torus-storage/torus"
)

func TestVolumeRows(t *testing.T) {
	now := time.Unix(100, 0)
	vols := []torus.VolumeInfo{
		{Name: "a", ID: 1, Size: 1 << 20},
		{Name: "b", ID: 2, Size: 2 << 20, Labels: map[string]string{"k": "v"}, Parent: &torus.VolumeParent{Volume: "a", Snapshot: "s"}},
	}
	rows := VolumeRows(vols,
		map[string]torus.WriterInfo{"b": {Owner: "w", Epoch: 3}},
		map[string]torus.VolumeStatus{"b": {Volume: "b", Health: torus.VolumeDegraded, Used: 5, UnderReplicated: 2, PendingBytes: 7, Updated: now, Problem: "p"}})
	if len(rows) != 2 {
		t.Fatalf("rows %+v", rows)
	}
	a, b := rows[0], rows[1]
	if a.Labels == nil || a.Health != nil || a.Used != nil || a.Writer != "" {
		t.Errorf("unreported volume: %+v", a)
	}
	if b.Parent != "a@s" || b.Writer != "w" || b.Epoch != 3 || *b.Health != "degraded" || *b.Used != 5 ||
		*b.UnderReplicated != 2 || *b.PendingBytes != 7 || !b.StatusUpdated.Equal(now) || b.Damage != "p" {
		t.Errorf("reported volume: %+v", b)
	}
}

func TestSummarizeProgress(t *testing.T) {
	ring := torus.RingSpec{Version: 2, Replication: 2}
	peers := []torus.PeerInfo{{ID: "p1", State: torus.PeerUp, Pending: 1}, {ID: "p2", State: torus.PeerDown}}
	vols := []torus.VolumeInfo{{Name: "a"}, {Name: "b"}}
	st := Summarize(torus.ClusterConfig{}, ring, peers, vols,
		map[string]torus.VolumeStatus{"a": {Health: torus.VolumeDegraded, Stored: 3, PendingBytes: 4}},
		func(n string) bool { return n == "a" })
	if st.Peers[torus.PeerUp] != 1 || st.Peers[torus.PeerDown] != 1 || st.OpenVolumes != 1 ||
		st.VolumeHealth[HealthUnknown] != 1 || st.VolumeHealth["degraded"] != 1 || st.Progress != 3.0/8 {
		t.Fatalf("status %+v", st)
	}
}
