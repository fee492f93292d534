package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/rebalance"
	"github.com/torus-storage/torus/volume"
)

// healCopies is how many segment copies one daemon runs at once.
const healCopies = 4

// liveness classifies peers for planning. A member that is down but still
// within DownGrace counts as up: its data is not re-replicated yet (a reboot
// should not trigger a rebuild), and it is never a copy target or source
// while it is actually down.
type liveness struct {
	up       map[string]bool // for planning
	reallyUp map[string]bool
	draining map[string]bool
}

func (s *Server) liveness(peers []torus.PeerInfo) liveness {
	l := liveness{up: map[string]bool{}, reallyUp: map[string]bool{}, draining: map[string]bool{}}
	now := time.Now()
	s.downMu.Lock()
	defer s.downMu.Unlock()
	if s.downSince == nil {
		s.downSince = make(map[string]time.Time)
	}
	for _, p := range peers {
		alive := p.State == torus.PeerUp ||
			(p.State != torus.PeerDown && now.Sub(p.LastSeen) < 2*s.cfg.HeartbeatTTL)
		if p.ID == s.id {
			alive = true
		}
		if p.State == torus.PeerDraining {
			l.draining[p.ID] = true
		}
		if alive {
			l.up[p.ID] = true
			l.reallyUp[p.ID] = true
			delete(s.downSince, p.ID)
			continue
		}
		if p.State == torus.PeerDown {
			since, ok := s.downSince[p.ID]
			if !ok {
				since = now
				s.downSince[p.ID] = now
			}
			if now.Sub(since) < s.cfg.DownGrace {
				l.up[p.ID] = true
			}
		}
	}
	return l
}

// healAgain says when the maintenance loop heals again without a change
// of the view. A larger value is sooner.
type healAgain int

const (
	againOnChange healAgain = iota // nothing left: only on a change
	againNextTick                  // work left: at the next tick (MaintenanceInterval)
	againSoon                      // other daemons are copying and this one publishes the status: after healRecheck
	againNow                       // this pass copied or deleted something: at once
)

// healRecheck is how soon the daemon that publishes the volumes' status
// looks again while other daemons are copying, so that the status turns
// healthy soon after the last copy, not up to a tick later. Only while
// copies are planned: an idle cluster never polls. Each look lists every
// peer, so it is 10 ms per peer at least (about 100 List RPCs a second
// whatever the cluster's size), and never longer than the tick.
func (c Config) healRecheck(peers int) time.Duration {
	d := max(c.MaintenanceInterval/8, 10*time.Millisecond, time.Duration(peers)*10*time.Millisecond)
	return min(d, max(c.MaintenanceInterval, 10*time.Millisecond))
}

// graceLeft is the time until the first member seen down ends its
// DownGrace (its data is re-replicated from then on), or 0 when no member
// is within its grace: the maintenance loop heals right then, not up to a
// tick later.
func (s *Server) graceLeft(now time.Time) time.Duration {
	s.downMu.Lock()
	defer s.downMu.Unlock()
	var left time.Duration
	for _, since := range s.downSince {
		if d := since.Add(s.cfg.DownGrace).Sub(now); d > 0 && (left == 0 || d < left) {
			left = d
		}
	}
	return left
}

// heal gathers the cluster's inventory, plans with package rebalance, and
// carries out this daemon's share: copies it is the source of and deletes
// of its surplus copies.
//
// It plans from the cached view st (ring, peers) and lists the segments
// of every up peer (paged List RPCs) only when called, and only when some
// live segment is sealed. again says when to heal once more even without
// a change: at once when this pass made progress (bytes copied, a copy
// deleted), soon when copies are planned for other daemons and this one
// publishes the status, at the next tick when other work is left (copies
// planned, surplus copies kept, a step failed, or a member is down: its
// grace may end).
func (s *Server) heal(ctx context.Context, view *clusterView, st clusterState) (again healAgain, err error) {
	spec := st.ring
	if len(spec.Members) == 0 {
		return againOnChange, nil
	}
	r, err := s.placements.build(spec)
	if err != nil {
		return againNextTick, err
	}
	peers := st.peers
	live := s.liveness(peers)
	s.notePeers(ctx, spec, live.reallyUp)
	s.reportPlacement(r.Health(func(id string) bool { return live.draining[id] }))
	for _, m := range spec.Members {
		if !live.reallyUp[m.ID] {
			again = againNextTick // down, perhaps within its grace: look again
		}
	}
	// The planner and the statuses look at sealed live segments only:
	// with none (empty volumes: only their open segments) no peer's
	// listing can matter, and none is asked — otherwise every daemon
	// would list (and connect to) every other one at every ring change,
	// O(daemons²) connections at start-up.
	inv := make(map[torus.SegmentID][]rebalance.Holder)
	if view.anySealed() {
		if inv, err = s.inventory(ctx, live.reallyUp); err != nil {
			return againNextTick, err
		}
	}
	view.inv = inv
	var segs []rebalance.Segment
	for id, u := range view.segs {
		holders := inv[id]
		if len(holders) == 0 && u.length == volume.Unknown {
			continue
		}
		segs = append(segs, rebalance.Segment{ID: id, Sealed: u.length != volume.Unknown, Length: max(u.length, 0),
			Holders: holders, Replication: u.replication})
	}
	slices.SortFunc(segs, func(a, b rebalance.Segment) int { return rebalance.CompareSegmentID(a.ID, b.ID) })
	plan, err := rebalance.Compute(rebalance.Input{Ring: r, Up: live.up, Draining: live.draining, Segments: segs})
	if err != nil {
		return againNextTick, err
	}
	// Copies planned for any daemon: once they are done the health
	// published changes, though no metadata does.
	if len(plan.Copies) > 0 {
		again = againNextTick
	}
	s.publishStatus(ctx, view, r.Replication(), segs, live, plan, reportedUnrepairable(peers, live.reallyUp))
	mine := plan.ForPeer(s.id)
	if len(plan.Copies) > len(mine.Copies) && s.publishesStatus(live.reallyUp) {
		again = againSoon
	}
	// Moves involving a peer that is down (within its grace) wait.
	copies := slices.DeleteFunc(mine.Copies, func(c rebalance.Copy) bool { return !live.reallyUp[c.To] })
	var left int64
	for _, c := range copies {
		left += c.Length - c.Have
	}
	s.pending.Store(left)
	s.noteHealing(ctx, left, len(copies))
	if len(plan.Unavailable) > 0 {
		s.log.Error("segments with no copy on an up peer", "count", len(plan.Unavailable), "first", plan.Unavailable[0])
	}
	if len(copies) == 0 && len(mine.Deletes) == 0 {
		return again, nil
	}
	// Moves of this daemon's: look again next pass (a surplus copy kept
	// because another copy was unsynced or bad and is being replaced is
	// deleted by a later pass, with no metadata change to wake it).
	again = max(again, againNextTick)
	s.log.Info("healing", "copies", len(copies), "bytes", left, "deletes", len(mine.Deletes),
		"under_replicated", plan.UnderReplicated)

	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		errs     []error
		progress bool // guarded by mu until wg.Wait
		sem      = make(chan struct{}, healCopies)
	)
	for _, c := range copies {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func(c rebalance.Copy) {
			defer wg.Done()
			defer func() { <-sem }()
			sent, err := s.copySegment(ctx, c.Seg, c.To, c.Length, view.nblocks(c.Seg), fullHolders(inv[c.Seg], c.Length, live.reallyUp))
			s.pending.Add(-(c.Length - c.Have))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			// Progress only when bytes moved: a copy that found its
			// destination complete must not make the loop spin.
			if sent > 0 {
				progress = true
			}
			s.log.Debug("healed segment", "segment", c.Seg, "to", c.To, "bytes", c.Length-c.Have)
		}(c)
	}
	wg.Wait()
	for _, d := range mine.Deletes {
		if view.recent[d.Seg] {
			continue
		}
		// Never delete a copy while another may be bad: every other
		// holder's copy must be synced and verify first.
		u := view.segs[d.Seg]
		if n := u.length; n <= 0 ||
			!s.verifiedSurplus(ctx, d.Seg, n, u.nblocks, fullHolders(inv[d.Seg], n, live.reallyUp), max(u.replication, 1)) {
			continue
		}
		if err := s.store.Delete(ctx, d.Seg); err != nil {
			errs = append(errs, err)
			continue
		}
		s.metrics.healDeleted.Inc()
		s.log.Debug("deleted surplus copy", "segment", d.Seg)
		progress = true
	}
	if len(errs) > 0 {
		return againNextTick, fmt.Errorf("healing: %d failures, first: %w", len(errs), errs[0])
	}
	if progress {
		again = againNow
	}
	return again, nil
}

// anySealed reports whether some live segment is sealed (its length is
// known). Pure.
func (v *clusterView) anySealed() bool {
	for _, u := range v.segs {
		if u.length != volume.Unknown {
			return true
		}
	}
	return false
}

// fullHolders lists the up peers holding at least length bytes of a
// segment, sorted.
func fullHolders(hs []rebalance.Holder, length int64, up map[string]bool) []string {
	var out []string
	for _, h := range hs {
		if up[h.Peer] && h.Length >= length {
			out = append(out, h.Peer)
		}
	}
	slices.Sort(out)
	return out
}

// nblocks is the largest size in blocks of the volumes naming seg (0 if
// none does).
func (v *clusterView) nblocks(seg torus.SegmentID) uint64 {
	return v.segs[seg].nblocks
}

// inventory lists the segments held by every up peer.
func (s *Server) inventory(ctx context.Context, up map[string]bool) (map[torus.SegmentID][]rebalance.Holder, error) {
	inv := make(map[torus.SegmentID][]rebalance.Holder)
	ids := make([]string, 0, len(up))
	for id := range up {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	type result struct {
		id    string
		infos []torus.SegmentInfo
		err   error
	}
	results := make(chan result, len(ids)) // buffered to N: no goroutine leaks on early return
	for _, id := range ids {
		go func(id string) {
			lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			var svc torus.PeerService = s.local
			if id != s.id {
				p, err := s.pool.Peer(lctx, id)
				if err != nil {
					results <- result{id: id, err: err}
					return
				}
				svc = p
			}
			infos, err := svc.List(lctx, 0)
			results <- result{id: id, infos: infos, err: err}
		}(id)
	}
	for range ids {
		r := <-results
		if r.err != nil {
			// A peer we cannot list counts as holding nothing: the
			// planner then never deletes a copy on its account.
			if !errors.Is(r.err, context.Canceled) {
				s.log.Warn("inventory: listing peer failed", "peer_id", r.id, "err", r.err)
			}
			continue
		}
		for _, si := range r.infos {
			inv[si.ID] = append(inv[si.ID], rebalance.Holder{Peer: r.id, Length: si.Length})
		}
	}
	return inv, nil
}

// reportPlacement publishes h in the torus_placement_degraded metric and
// logs a warning when the placement becomes degraded (and an info line when
// it recovers), not at every pass.
func (s *Server) reportPlacement(h torus.PlacementHealth) {
	was := s.placementDegraded.Swap(h.Degraded)
	switch {
	case h.Degraded && !was:
		s.log.Warn("placement degraded: the ring's topology cannot meet its placement rule",
			"reason", h.Reason, "failure_domain", h.FailureDomain, "domains", h.Domains, "replication", h.Replication)
	case !h.Degraded && was:
		s.log.Info("placement rule met again", "failure_domain", h.FailureDomain, "domains", h.Domains)
	}
}
