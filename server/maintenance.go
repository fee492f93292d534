package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/rebalance"
	"github.com/torus-storage/torus/ring"
	"github.com/torus-storage/torus/scrub"
	"github.com/torus-storage/torus/volume"
)

// maintenanceLoop collects garbage, heals and rebalances, driven by the
// cached cluster view (view.go): every MaintenanceInterval it looks at the
// view and works only when something relevant changed since its last
// healing pass, when that pass left work (copies, deletes, failures, a
// member down), every GCInterval for GC (a local listing, checked against
// the view), and after each full read of the view (at start, and after a
// resync or a failed change: never on a timer, so an idle cluster costs
// nothing that grows with its size); every liveRereadEvery-th of those
// reads every live set again too. While healing it does not wait for the
// tick (heal's healAgain): after a pass that copied or deleted something
// it heals again at once, and the daemon publishing the status looks again
// every healRecheck while other daemons copy; a member's down grace
// ending wakes it too, and so does a relevant change of the view
// (view.changed: a peer going down is planned for at once, not up to a
// tick later), at most once an interval.
func (s *Server) maintenanceLoop(ctx context.Context) {
	t := time.NewTimer(s.cfg.MaintenanceInterval)
	defer t.Stop()
	var (
		lastGC, lastFull time.Time
		lastHeal         time.Time                                   // when the last healing pass started
		due              = time.Now().Add(s.cfg.MaintenanceInterval) // when t fires
		fulls            int                                         // full reads of the view seen
		healed           uint64                                      // the view generation the last healing pass saw
		again            = againNextTick                             // what the last healing pass left
		cache            = make(liveCache)
	)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.view.changed:
			// A relevant change (a peer down, a ring, a head): look
			// now, or an interval after the last healing pass if that
			// is sooner than the timer — a stream of changes (a busy
			// writer's seals) costs no more passes than the tick did.
			if at := lastHeal.Add(s.cfg.MaintenanceInterval); at.Before(due) {
				due = at
				t.Reset(time.Until(due))
			}
			continue
		case <-t.C:
		}
		next := s.cfg.MaintenanceInterval
		pass := func() {
			// Look before copying: an idle tick copies nothing (a
			// snapshot is a copy of every volume's entry).
			gen, built, ok := s.view.peek()
			if !ok {
				return
			}
			now := time.Now()
			gc := gcDue(now.Sub(lastGC), s.cfg.GCInterval, s.store.Usage())
			if !gc && again == againOnChange && built.Equal(lastFull) && gen == healed {
				return
			}
			st, _ := s.view.snapshot()
			full := !st.built.Equal(lastFull) // the view was read in full: so are the live sets
			heal := again != againOnChange || full || st.gen != healed
			if full {
				// A full read of the view keeps the live sets of volumes
				// it found unchanged; every liveRereadEvery-th one drops
				// them all, so that they too are read again now and then.
				lastFull = st.built
				if fulls%liveRereadEvery == 0 {
					clear(cache)
				}
				fulls++
			}
			if gc {
				lastGC = now
			}
			if heal {
				lastHeal = now
			}
			more, err := s.maintain(ctx, st, cache, gc, heal)
			if err != nil && ctx.Err() == nil {
				s.metrics.maintenanceErr.Inc()
				s.log.Warn("maintenance pass failed", "err", err)
			}
			if heal {
				healed, again = st.gen, more
				if err != nil {
					again = max(again, againNextTick)
				}
				switch again {
				case againNow:
					next = 0
				case againSoon:
					next = min(next, s.cfg.healRecheck(len(st.peers)))
				}
				if d := s.graceLeft(time.Now()); d > 0 {
					next = min(next, d)
				}
			}
		}
		pass()
		due = time.Now().Add(next)
		t.Reset(next)
	}
}

// pressureGCPercent is the store fill from which every maintenance pass
// collects garbage: checkFullness's first warning level.
const pressureGCPercent = 80

// gcDue says whether a maintenance pass collects garbage: every GCInterval,
// and at every pass while the store is at least pressureGCPercent full, so
// that the old copies left by overwrites faster than GCInterval are
// reclaimed before appends run out of room (a writer refused for space
// retries within its RetryFor).
func gcDue(since, interval time.Duration, u torus.Usage) bool {
	return since >= interval || (u.Capacity > 0 && u.Used*100 >= pressureGCPercent*u.Capacity)
}

// clusterView is what one maintenance pass knows about the cluster.
type clusterView struct {
	volumes map[uint64]torus.VolumeInfo
	// lengths holds, for every live segment of every volume, the
	// authoritative length, or -1 when it is not known (an open segment,
	// or a segment named only through a checkpoint).
	live map[uint64]map[torus.SegmentID]int64
	// recent holds the segments sealed since the last checkpoint of
	// volumes that have a writer: the writer may still have to sync them
	// on the replicas it wrote, so their surplus copies are kept until a
	// checkpoint absorbs them (or the writer detaches).
	recent map[torus.SegmentID]bool
	// broken holds the volumes whose live set could not be read (a
	// checkpoint with no good copy, or etcd failing for that volume):
	// they are left out of GC, so nothing they might name is deleted,
	// and out of healing, and reported in their status.
	broken map[uint64]error
	// inv is the inventory of up peers (set by heal).
	inv map[torus.SegmentID][]rebalance.Holder
	// segs is the union of every volume's live set: a segment may be
	// named by several volumes (a clone names its parent's segments,
	// which keep the parent's volume ID). GC deletes only segments
	// outside it; healing plans each once, for the largest replication
	// of the volumes naming it.
	segs map[torus.SegmentID]segUse
	// keep holds the volume IDs all of whose segments GC must keep this
	// pass: volumes deleted while being read, broken volumes and the
	// volumes they share (their live sets are unknown).
	keep map[uint64]bool
	// unsettled: volumes kept appearing while the view was read (clones
	// being made); GC skips the pass.
	unsettled bool
}

// segUse is what the volumes naming a segment say about it.
type segUse struct {
	length      int64    // authoritative length, or volume.Unknown
	nblocks     uint64   // largest size in blocks of the volumes naming it
	replication int      // largest replication of the volumes naming it
	users       []uint64 // IDs of the volumes naming it
}

// liveRereadEvery: every how many full reads of the view (at start, then
// only after a resync) every live set is read again too.
const liveRereadEvery = 6

// liveCache holds each volume's live set, by volume ID, with the view
// revision of the volume's last change it reflects. Owned by the
// maintenance goroutine.
type liveCache map[uint64]liveEntry

type liveEntry struct {
	changed int64
	live    map[torus.SegmentID]int64
}

// maintain runs one pass from view state st: GC of local segments that no
// head or snapshot names, then healing and rebalancing moves planned for
// this daemon. again says when healing should run once more (heal); a
// volume whose live set could not be read makes it the next tick.
func (s *Server) maintain(ctx context.Context, st clusterState, cache liveCache, gc, heal bool) (again healAgain, err error) {
	// List first, then look at the view; the view may be older than the
	// listing, so GC re-checks it before deleting (collectGarbage).
	var local []torus.SegmentInfo
	if gc {
		if local, err = s.store.List(ctx, 0); err != nil {
			return againNextTick, fmt.Errorf("listing local segments: %w", err)
		}
	}
	view := s.cachedView(ctx, st, cache)
	if gc {
		s.collectGarbage(ctx, local, view, st.rev)
	}
	if heal {
		again, err = s.heal(ctx, view, st)
		s.lastView.Store(view)
	}
	if len(view.broken) > 0 {
		again = max(again, againNextTick)
	}
	return again, err
}

func newClusterView() *clusterView {
	return &clusterView{volumes: make(map[uint64]torus.VolumeInfo), live: make(map[uint64]map[torus.SegmentID]int64),
		recent: make(map[torus.SegmentID]bool), broken: make(map[uint64]error),
		segs: make(map[torus.SegmentID]segUse), keep: make(map[uint64]bool)}
}

// cachedView makes a pass's view from the cached state: live sets are
// read only for volumes changed since cache last read them.
func (s *Server) cachedView(ctx context.Context, st clusterState, cache liveCache) *clusterView {
	view := newClusterView()
	seen := make(map[uint64]bool, len(st.volumes))
	for _, vv := range st.volumes {
		id := vv.info.ID
		seen[id] = true
		view.volumes[id] = vv.info
		e, ok := cache[id]
		if !ok || e.changed < vv.changed {
			live, err := volume.LiveSegmentLengths(ctx, s.meta, s.pool, vv.info.Name, &s.tables)
			if err != nil {
				delete(cache, id)
				view.noLiveSet(s.log, vv.info, err)
				continue
			}
			e = liveEntry{changed: vv.changed, live: live}
			cache[id] = e
		}
		view.live[id] = e.live
		if vv.writer {
			for _, r := range vv.head.Sealed {
				view.recent[r.ID] = true
			}
		}
	}
	for id := range cache {
		if !seen[id] {
			delete(cache, id)
		}
	}
	view.merge(st.ring.Replication)
	return view
}

// noLiveSet records that volume v's live set could not be read.
func (view *clusterView) noLiveSet(log *slog.Logger, v torus.VolumeInfo, err error) {
	view.keep[v.ID] = true
	if errors.Is(err, torus.ErrNotExist) {
		return // deleted meanwhile: its segments are kept this pass
	}
	// One unreadable volume must not stop GC and healing of the others:
	// skip it (GC keeps every segment of a volume without a live set, and
	// of the volumes it shares) and report it.
	for _, id := range v.Shares {
		view.keep[id] = true
	}
	view.broken[v.ID] = err
	log.Error("volume skipped by GC and healing: its live segments cannot be read", "volume", v.Name, "err", err)
}

// readView reads a pass's view afresh from the metadata store (GC's
// fallback when the cached view is not current, collectGarbage).
func (s *Server) readView(ctx context.Context) (*clusterView, error) {
	spec, err := s.meta.Ring(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading ring: %w", err)
	}
	view := newClusterView()
	// Read every volume's live set, then list the volumes again: a clone
	// made meanwhile (CloneVolume checks its snapshot in the same
	// transaction) may name segments of a snapshot deleted after this
	// pass read its volume, so its live set is read too. A clone made
	// after the last listing names only segments some live set read here
	// still names (or newer ones, absent from the local listing).
	for round := 0; ; round++ {
		vols, err := s.meta.Volumes(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing volumes: %w", err)
		}
		var added []torus.VolumeInfo
		for _, v := range vols {
			if _, seen := view.volumes[v.ID]; !seen {
				added = append(added, v)
			}
		}
		if len(added) == 0 {
			break
		}
		if round == 3 {
			view.unsettled = true
			s.log.Info("gc: volumes keep being created; collection skipped this pass", "new", len(added))
			break
		}
		for _, v := range added {
			s.readVolume(ctx, view, v)
		}
	}
	view.merge(spec.Replication)
	return view, nil
}

// merge computes segs, the union of the volumes' live sets, from volumes
// and live; replication is the ring's. Pure.
func (view *clusterView) merge(replication int) {
	ids := make([]uint64, 0, len(view.live))
	for id := range view.live {
		ids = append(ids, id)
	}
	slices.Sort(ids) // users in volume order: deterministic
	for _, id := range ids {
		v := view.volumes[id]
		repl := v.Replicas(replication)
		for seg, n := range view.live[id] {
			u, ok := view.segs[seg]
			if !ok || u.length == volume.Unknown {
				u.length = n
			}
			u.nblocks = max(u.nblocks, uint64(v.Size/torus.BlockSize))
			u.replication = max(u.replication, repl)
			u.users = append(u.users, id)
			view.segs[seg] = u
		}
	}
}

// garbage reports whether GC may delete a local segment: no volume's live
// set names it, its volume's segments are not all kept this pass, and the
// view is settled. Pure.
func (view *clusterView) garbage(id torus.SegmentID) bool {
	_, live := view.segs[id]
	return !view.unsettled && !live && !view.keep[id.Volume]
}

// readVolume adds volume v's live set to the view.
func (s *Server) readVolume(ctx context.Context, view *clusterView, v torus.VolumeInfo) {
	view.volumes[v.ID] = v
	live, err := volume.LiveSegmentLengths(ctx, s.meta, s.pool, v.Name, &s.tables)
	if err != nil {
		view.noLiveSet(s.log, v, err)
		return
	}
	view.live[v.ID] = live
	if _, writing, err := s.meta.Writer(ctx, v.Name); err == nil && writing {
		if head, err := s.meta.Head(ctx, v.Name); err == nil {
			for _, r := range head.Sealed {
				view.recent[r.ID] = true
			}
		}
	}
}

// collectGarbage deletes local segments that no volume's head or snapshot
// names, directly or through a checkpoint: segments of deleted volumes
// too, unless a clone still names them. view was made from the cached
// view at revision rev, which may be older than the local listing: before
// deleting anything the plan is re-checked against the store's current
// revision (VolumesChangedSince, one request). If a volume, writer, head
// or snapshot changed since rev, the candidates are checked again against
// a view read afresh, after the listing (readView), as every pass did
// before the cached view.
func (s *Server) collectGarbage(ctx context.Context, local []torus.SegmentInfo, view *clusterView, rev int64) {
	var cands []torus.SegmentInfo
	for _, si := range local {
		if view.garbage(si.ID) {
			cands = append(cands, si)
		}
	}
	if len(cands) == 0 {
		return
	}
	changed, err := s.meta.VolumesChangedSince(ctx, rev)
	if err != nil {
		s.log.Warn("gc: re-checking the view; collection skipped this pass", "err", err)
		return
	}
	if changed {
		fresh, err := s.readView(ctx)
		if err != nil {
			s.log.Warn("gc: reading the view afresh; collection skipped this pass", "err", err)
			return
		}
		s.log.Debug("gc: the cached view is behind; candidates checked against a fresh read", "candidates", len(cands))
		view = fresh
	}
	for _, si := range cands {
		id := si.ID
		if !view.garbage(id) {
			continue
		}
		if err := s.store.Delete(ctx, id); err != nil {
			s.log.Warn("gc: deleting segment", "segment", id, "err", err)
			continue
		}
		s.metrics.gcDeleted.Inc()
		s.log.Debug("gc: deleted segment", "segment", id, "bytes", si.Length)
	}
}

// copySegment copies segment seg, up to length bytes, to peer to, from a
// verified source: this daemon's copy first, then the other holders (a
// source whose copy does not verify is skipped, and logged). The copy
// resumes where the target's copy ends, is written with torus.RepairEpoch,
// and counts only once it is synced to length and reads back verified
// (scrub.Copy). A bad copy of this daemon's is left to the background
// scrub to replace. It returns the bytes sent by the copy that succeeded.
func (s *Server) copySegment(ctx context.Context, seg torus.SegmentID, to string, length int64, nblocks uint64, holders []string) (int64, error) {
	pool := s.peers()
	dst, err := pool.Peer(ctx, to)
	if err != nil {
		return 0, err
	}
	sources := []string{s.id}
	for _, h := range holders {
		if h != s.id && h != to {
			sources = append(sources, h)
		}
	}
	var errs []error
	for _, from := range sources {
		src, err := pool.Peer(ctx, from)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		sent, err := scrub.Copy(ctx, src, dst, seg, length, nblocks, scrub.CopyOptions{
			Send:   s.healLimit,
			Copied: func(n int64) { s.metrics.healCopied.Add(float64(n)) },
		})
		if err == nil {
			return sent, nil
		}
		var ce *scrub.CopyError
		if !errors.As(err, &ce) || ce.Destination {
			return 0, fmt.Errorf("copying %s from %s to %s: %w", seg, from, to, err)
		}
		s.metrics.scrubErrors.Inc()
		s.log.Error("heal: source copy is bad; trying another holder", "segment", seg, "source", from,
			"problem", ce.Check.Problem, "blocks", ce.Check.BadBlocks)
		s.noteScrub(ctx, []scrub.Finding{{Segment: seg, Peer: from, Problem: ce.Check.Problem, BadBlocks: ce.Check.BadBlocks, Action: scrub.ActionFound}})
		errs = append(errs, err)
	}
	return 0, fmt.Errorf("copying %s to %s: no good source: %w", seg, to, errors.Join(errs...))
}

// verifiedSurplus reports whether this daemon's surplus copy of seg may be
// deleted: at least replication other holders have a copy that is synced
// to length and verifies, and none is bad. When another holder's copy is
// bad it is replaced first, from a good copy (this daemon's or another
// holder's), and this copy is kept until a later pass sees every other
// copy good.
func (s *Server) verifiedSurplus(ctx context.Context, seg torus.SegmentID, length int64, nblocks uint64, holders []string, replication int) bool {
	pool := s.peers()
	var good, bad []string
	for _, h := range holders {
		if h == s.id {
			continue
		}
		svc, err := pool.Peer(ctx, h)
		if err != nil {
			continue
		}
		info, err := svc.Stat(ctx, seg)
		if err != nil || info.Synced < length {
			continue // unsynced or unreadable: not counted, not repaired here
		}
		c, err := scrub.Check(ctx, svc, seg, length, nblocks, nil)
		if err != nil {
			continue
		}
		s.metrics.scrubChecked.Add(float64(c.Length))
		if c.OK() {
			good = append(good, h)
		} else {
			s.metrics.scrubErrors.Inc()
			bad = append(bad, h)
		}
	}
	if len(good) >= replication && len(bad) == 0 {
		return true
	}
	if len(bad) == 0 {
		return false
	}
	var src torus.PeerService
	if mine, err := scrub.Check(ctx, s.local, seg, length, nblocks, nil); err == nil && mine.OK() {
		src = s.local
	} else if len(good) > 0 {
		if src, err = pool.Peer(ctx, good[0]); err != nil {
			return false
		}
	} else {
		s.log.Error("heal: no good copy of a segment to replace its bad copies from", "segment", seg, "bad", bad)
		return false
	}
	for _, h := range bad {
		dst, err := pool.Peer(ctx, h)
		if err != nil {
			continue
		}
		s.log.Warn("heal: a copy is bad; replacing it from a verified copy before deleting a surplus one", "segment", seg, "peer", h)
		n, err := scrub.Copy(ctx, src, dst, seg, length, nblocks, scrub.CopyOptions{Send: s.healLimit, Replace: true})
		if err != nil {
			s.log.Warn("heal: replacing a bad copy failed", "segment", seg, "peer", h, "err", err)
			continue
		}
		s.metrics.repaired.Add(float64(n))
	}
	return false
}

// placementCache keeps the placement built from the last ring spec seen:
// a ring is built once per version, not at every pass (building costs
// O(members × virtual nodes): at 200 daemons in one process, passes
// rebuilding an unchanged ring were 40 % of the CPU while daemons joined,
// and a pass runs every MaintenanceInterval as long as work is left or a
// member is down).
type placementCache struct {
	mu   sync.Mutex
	spec torus.RingSpec // as the view holds it: never changed in place
	p    torus.Placement
}

// build returns the placement of spec, built again only when spec differs
// from the last one.
func (c *placementCache) build(spec torus.RingSpec) (torus.Placement, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.p != nil && reflect.DeepEqual(c.spec, spec) {
		return c.p, nil
	}
	p, err := ring.Build(spec)
	if err != nil {
		return nil, err
	}
	c.spec, c.p = spec, p
	return p, nil
}
