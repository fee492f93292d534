package server

import (
	"context"
	"slices"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/rebalance"
)

// VolumeStatuses computes each volume's health from the inventory: a
// sealed live segment is counted by its full copies on peers that are up.
// Healthy: every segment has the volume's replication copies (replication,
// the ring's, unless the volume sets its own); degraded: every segment has
// at least one; unavailable: some segment has none. A segment shared by
// several volumes (clones) counts for each of them.
//
// A volume whose live segments could not be read (view.broken) is
// unavailable with the reason in Problem; one with blocks that scrub found
// no good copy of (unrepairable, by volume ID) is unavailable and lists them.
func volumeStatuses(view *clusterView, replication int, segs []rebalance.Segment, up map[string]bool, plan *rebalance.Plan, reporter string, unrepairable map[uint64][]uint64) []torus.VolumeStatus {
	byID := make(map[uint64]*torus.VolumeStatus, len(view.volumes))
	for id, v := range view.volumes {
		st := &torus.VolumeStatus{Volume: v.Name, ID: id, Health: torus.VolumeHealthy, Reporter: reporter, Updated: time.Now()}
		if err := view.broken[id]; err != nil {
			st.Health, st.Problem = torus.VolumeUnavailable, "live segments unreadable: "+err.Error()
		}
		if b := unrepairable[id]; len(b) > 0 {
			st.Health, st.UnrepairableBlocks = torus.VolumeUnavailable, len(b)
		}
		byID[id] = st
	}
	// A segment counts for every volume naming it (a clone's shared
	// segments count for the clone and for the parent), each with its
	// own replication.
	users := func(seg torus.SegmentID) []uint64 {
		if u, ok := view.segs[seg]; ok && len(u.users) > 0 {
			return u.users
		}
		return []uint64{seg.Volume}
	}
	for _, sg := range segs {
		if !sg.Sealed || sg.Length == 0 {
			continue
		}
		full, stored := 0, int64(0)
		for _, h := range sg.Holders {
			stored += h.Length
			if up[h.Peer] && h.Length >= sg.Length {
				full++
			}
		}
		for _, id := range users(sg.ID) {
			st := byID[id]
			if st == nil {
				continue
			}
			st.Used += sg.Length
			st.Stored += stored
			switch {
			case full == 0:
				st.Unavailable++
				st.UnderReplicated++
				st.Health = torus.VolumeUnavailable
			case full < view.volumes[id].Replicas(replication):
				st.UnderReplicated++
				if st.Health == torus.VolumeHealthy {
					st.Health = torus.VolumeDegraded
				}
			}
		}
	}
	if plan != nil {
		for _, c := range plan.Copies {
			for _, id := range users(c.Seg) {
				if st := byID[id]; st != nil {
					st.PendingBytes += c.Length - c.Have
				}
			}
		}
	}
	out := make([]torus.VolumeStatus, 0, len(byID))
	for _, st := range byID {
		out = append(out, *st)
	}
	slices.SortFunc(out, func(a, b torus.VolumeStatus) int {
		if a.Volume < b.Volume {
			return -1
		}
		if a.Volume > b.Volume {
			return 1
		}
		return 0
	})
	return out
}

// publishStatus publishes volume health when this daemon is the lowest up
// peer ID (one reporter, no write amplification on etcd).
//
// reported holds the unrepairable blocks other up daemons' background
// scrubs reported in their heartbeats; with this daemon's own findings they
// make each volume's UnrepairableBlocks.
func (s *Server) publishStatus(ctx context.Context, view *clusterView, replication int, segs []rebalance.Segment, live liveness, plan *rebalance.Plan, reported map[uint64][]uint64) {
	if !s.publishesStatus(live.reallyUp) {
		return
	}
	st := volumeStatuses(view, replication, segs, live.reallyUp, plan, s.id, unionBlocks(reported, s.unrepairableBlocks()))
	seed := s.seedHealth(ctx)
	s.downMu.Lock()
	if s.lastHealth == nil {
		s.lastHealth = seed
	}
	var changed []torus.VolumeStatus
	for _, v := range st {
		prev, known := s.lastHealth[v.Volume]
		if prev == v.Health {
			continue
		}
		s.lastHealth[v.Volume] = v.Health
		if !known && v.Health == torus.VolumeHealthy {
			// First seen, healthy: no news (an event and a log line per
			// volume at a cluster's start: 10,000 event-log transactions
			// at 10,000 volumes). A volume first seen unhealthy is news.
			continue
		}
		changed = append(changed, v)
	}
	s.downMu.Unlock()
	s.noteHealth(ctx, changed)
	for _, v := range changed {
		if v.Health == torus.VolumeHealthy {
			s.log.Info("volume healthy", "volume", v.Volume)
		} else {
			s.log.Warn("volume not healthy", "volume", v.Volume, "health", v.Health,
				"under_replicated", v.UnderReplicated, "unavailable", v.Unavailable, "pending_bytes", v.PendingBytes)
		}
	}
	if err := s.meta.PutVolumeStatuses(ctx, st); err != nil {
		s.log.Warn("publishing volume status", "err", err)
	}
}

// publishesStatus reports whether this daemon publishes the volumes'
// status: the up daemon with the lowest ID does.
func (s *Server) publishesStatus(up map[string]bool) bool {
	for id := range up {
		if id < s.id {
			return false
		}
	}
	return true
}

// reportedUnrepairable gathers the scrub findings up peers reported in
// their heartbeats (torus.Beat.Unrepairable), by volume ID.
func reportedUnrepairable(peers []torus.PeerInfo, up map[string]bool) map[uint64][]uint64 {
	var out map[uint64][]uint64
	for _, p := range peers {
		if up[p.ID] && len(p.Unrepairable) > 0 {
			out = unionBlocks(out, p.Unrepairable)
		}
	}
	return out
}

// unionBlocks merges block lists by volume ID, sorted, without repeats.
func unionBlocks(a, b map[uint64][]uint64) map[uint64][]uint64 {
	out := make(map[uint64][]uint64, len(a)+len(b))
	for _, m := range []map[uint64][]uint64{a, b} {
		for vol, blocks := range m {
			out[vol] = append(out[vol], blocks...)
		}
	}
	for vol, blocks := range out {
		slices.Sort(blocks)
		out[vol] = slices.Compact(blocks)
	}
	return out
}
