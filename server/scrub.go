package server

import (
	"context"
	"hash/fnv"
	"slices"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/rebalance"
	"github.com/torus-storage/torus/scrub"
)

// selfPool reaches this daemon in-process and every other peer through
// the daemon's pool.
type selfPool struct{ s *Server }

func (p selfPool) Peer(ctx context.Context, id string) (torus.PeerService, error) {
	if id == p.s.id {
		return p.s.local, nil
	}
	return p.s.pool.Peer(ctx, id)
}

func (s *Server) peers() torus.PeerPool { return selfPool{s} }

// scrubLoop is the background scrub: every sealed live segment this daemon
// holds is read and verified once per ScrubInterval, at most ScrubRate
// bytes per second, and a bad copy is replaced by a verified copy from a
// good holder (scrub.Segment with Only set to this daemon). The first
// check of a segment is spread over the interval (by a hash of its ID), so
// a restart does not read the whole store at once. Segments the writer may
// still sync are checked and their repair deferred.
func (s *Server) scrubLoop(ctx context.Context) {
	tick := min(s.cfg.ScrubInterval, 10*time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	lim := &scrub.Limiter{Rate: s.cfg.ScrubRate}
	due := make(map[torus.SegmentID]time.Time)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		view := s.lastView.Load()
		if view == nil {
			continue
		}
		local, err := s.store.List(ctx, 0)
		if err != nil {
			continue
		}
		slices.SortFunc(local, func(a, b torus.SegmentInfo) int { return rebalance.CompareSegmentID(a.ID, b.ID) })
		held := make(map[torus.SegmentID]bool, len(local))
		for _, si := range local {
			held[si.ID] = true
			u, ok := view.segs[si.ID]
			n := u.length
			if !ok || n <= 0 {
				continue // not live, being written, or empty
			}
			now := time.Now()
			when, seen := due[si.ID]
			if !seen {
				due[si.ID] = now.Add(spread(si.ID, s.cfg.ScrubInterval))
				continue
			}
			if now.Before(when) {
				continue
			}
			s.scrubOwn(ctx, view, si.ID, n, lim)
			if ctx.Err() != nil {
				return
			}
			due[si.ID] = time.Now().Add(s.cfg.ScrubInterval)
		}
		for id := range due {
			if !held[id] {
				delete(due, id)
			}
		}
	}
}

// scrubOwn checks this daemon's copy of seg and replaces it if it is bad.
func (s *Server) scrubOwn(ctx context.Context, view *clusterView, seg torus.SegmentID, length int64, lim *scrub.Limiter) {
	holders := []string{s.id}
	for _, h := range view.inv[seg] {
		if h.Peer != s.id && h.Length >= length {
			holders = append(holders, h.Peer)
		}
	}
	res := scrub.Segment(ctx, s.peers(), scrub.Target{
		Seg: seg, Length: length, NBlocks: view.nblocks(seg), Holders: holders, Busy: view.recent[seg],
	}, scrub.Options{Repair: true, Only: s.id, Limit: lim, Logger: s.log})
	s.metrics.scrubChecked.Add(float64(res.CheckedBytes))
	s.metrics.repaired.Add(float64(res.RepairedBytes))
	if ctx.Err() == nil { // findings of a scrub cut short by shutdown are not news
		s.noteScrub(ctx, res.Findings)
	}
	s.unrepMu.Lock()
	defer s.unrepMu.Unlock()
	if s.unrepairable == nil {
		s.unrepairable = make(map[torus.SegmentID][]uint64)
	}
	delete(s.unrepairable, seg)
	for _, f := range res.Findings {
		if f.Action == scrub.ActionUnreadable && ctx.Err() != nil {
			continue
		}
		s.metrics.scrubErrors.Inc()
		if f.Action == scrub.ActionUnrepairable {
			s.unrepairable[seg] = f.BadBlocks
		}
	}
}

// unrepairableBlocks returns, per volume ID, the blocks this daemon's
// scrub found with no good copy.
func (s *Server) unrepairableBlocks() map[uint64][]uint64 {
	s.unrepMu.Lock()
	defer s.unrepMu.Unlock()
	out := make(map[uint64][]uint64)
	for seg, b := range s.unrepairable {
		out[seg.Volume] = append(out[seg.Volume], b...)
	}
	for id, b := range out {
		slices.Sort(b)
		out[id] = slices.Compact(b)
	}
	return out
}

// spread is where in [0, interval) a segment's first scrub falls.
func spread(seg torus.SegmentID, interval time.Duration) time.Duration {
	if interval <= 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write(seg.Key())
	return time.Duration(h.Sum64() % uint64(interval))
}
