package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/torus-storage/torus"
)

// clusterState is a snapshot of the cached cluster view: what the daemon
// knows of the ring, the peers and every volume's record, epoch, writer
// and head, as of revision rev (docs/design/cluster-view.md). The maps are
// the snapshot's own: readers may keep it as long as they like.
type clusterState struct {
	// rev: every change up to rev is applied (reads made to apply them
	// may have seen later revisions).
	rev int64
	// gen counts the changes that matter to maintenance: everything but
	// heartbeats of live peers and attachments.
	gen     uint64
	ring    torus.RingSpec
	peers   []torus.PeerInfo
	volumes map[string]viewVolume // by name
	built   time.Time             // the last full read
}

// viewVolume is what the view holds of one volume.
type viewVolume struct {
	info   torus.VolumeInfo
	epoch  uint64
	head   torus.Head
	writer bool
	// changed is the revision of the last change to its record, epoch,
	// writer, head or snapshots: a live set computed at or after it is
	// current.
	changed int64
}

// view owns the cached cluster view. One goroutine (run) builds it with
// one full read and then keeps it by the typed watch (WatchChanges); it
// reads again in full only after a resync (compacted history) or a failed
// change. As a safety net behind the watch it audits the view at a fixed
// cost: every audit interval it reads one volume (record, head, writer),
// in name order, or at the end of each round the ring and the peers, and
// corrects what differs (audit). Other goroutines read snapshots.
type view struct {
	meta  torus.Metadata
	log   *slog.Logger
	audit time.Duration
	// onEpochs and onRing are called by the owner goroutine with the
	// epochs it learns (fencing) and each new ring.
	onEpochs func(map[uint64]uint64)
	onRing   func(torus.RingSpec)

	// coalesce is the shortest time between two reads of the peer list
	// for peer changes (and the peer states a ring change moves): a
	// change after a quiet window is read at once (a peer's liveness
	// expiring is planned for, and reported, without delay), and the
	// changes that follow within the window wait for its end and are
	// read together: one Peers read stands for every peer change in
	// the window, so N daemons joining cost each daemon O(1) reads per
	// window, not O(N) reads of O(N) peers. The daemon sets it to
	// MaintenanceInterval (at least peerCoalesce).
	coalesce time.Duration

	mu      sync.Mutex
	st      clusterState
	ready   bool
	changed chan struct{} // capacity 1: a maintenance-relevant change

	// Owned by the owner goroutine: peer changes not yet read, and when
	// the peer list was last read (by a full read or readPeers).
	peersStale bool
	peersRead  time.Time

	// builds and peerReads count full reads and Peers reads (tests).
	builds, peerReads atomic.Int64
}

// peerCoalesce is view.coalesce's default; perPeerCoalesce makes the
// window grow with the peer list: while peers keep changing (N daemons
// starting) each daemon reads N peers every N × perPeerCoalesce at most,
// a constant rate of peer records whatever N (6 s at 300 peers).
const (
	peerCoalesce    = time.Second
	perPeerCoalesce = 20 * time.Millisecond
)

// peerWait is the shortest time between two reads of the peer list for
// peer changes: coalesce, or longer for a long peer list.
func (v *view) peerWait() time.Duration {
	v.mu.Lock()
	n := len(v.st.peers)
	v.mu.Unlock()
	return max(v.coalesce, time.Duration(n)*perPeerCoalesce)
}

func newView(meta torus.Metadata, log *slog.Logger, audit time.Duration, onEpochs func(map[uint64]uint64), onRing func(torus.RingSpec)) *view {
	return &view{meta: meta, log: log, audit: audit, coalesce: peerCoalesce, onEpochs: onEpochs, onRing: onRing, changed: make(chan struct{}, 1)}
}

// snapshot returns a copy of the current view; ok=false until the first
// full read is done. A peer whose liveness key exists (Alive: the view
// learns when it appears and when it expires, not each beat, which no
// watch carries) shows LastSeen now: it is seen alive as of the view.
func (v *view) snapshot() (clusterState, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := v.st
	st.peers = slices.Clone(st.peers)
	now := time.Now()
	for i := range st.peers {
		if st.peers[i].Alive {
			st.peers[i].LastSeen = now
		}
	}
	st.volumes = maps.Clone(st.volumes)
	return st, v.ready
}

// peek returns the view's generation and the time of its last full read
// without copying it; ok=false until the first full read is done.
func (v *view) peek() (gen uint64, built time.Time, ok bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.st.gen, v.st.built, v.ready
}

// run is the owner goroutine: it returns when ctx ends.
func (v *view) run(ctx context.Context) {
	for ctx.Err() == nil {
		rev, err := v.build(ctx)
		if err != nil {
			if ctx.Err() == nil {
				v.log.Warn("cluster view: full read failed; retrying", "err", err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		v.follow(ctx, rev)
	}
}

// build reads the whole view: the revision first, so that the watch from
// it misses nothing the reads did not see.
func (v *view) build(ctx context.Context) (int64, error) {
	rev, err := v.meta.Revision(ctx)
	if err != nil {
		return 0, fmt.Errorf("reading revision: %w", err)
	}
	ring, err := v.meta.Ring(ctx)
	if err != nil {
		return 0, fmt.Errorf("reading ring: %w", err)
	}
	peers, err := v.meta.Peers(ctx)
	if err != nil {
		return 0, fmt.Errorf("listing peers: %w", err)
	}
	vols, err := v.meta.Volumes(ctx)
	if err != nil {
		return 0, fmt.Errorf("listing volumes: %w", err)
	}
	epochs, err := v.meta.Epochs(ctx)
	if err != nil {
		return 0, fmt.Errorf("reading epochs: %w", err)
	}
	v.mu.Lock()
	prev := v.st.volumes
	v.mu.Unlock()
	byName := make(map[string]viewVolume, len(vols))
	for _, info := range vols {
		vv, err := v.readVolume(ctx, info, rev)
		if errors.Is(err, torus.ErrNotExist) {
			continue // deleted since the listing: the watch tells
		}
		if err != nil {
			return 0, err
		}
		vv.epoch = epochs[info.ID]
		if old, ok := prev[info.Name]; ok && old.info.ID == info.ID && old.writer == vv.writer &&
			old.epoch == vv.epoch && reflect.DeepEqual(old.head, vv.head) && reflect.DeepEqual(old.info, vv.info) {
			vv.changed = old.changed // as the watch left it: its live set stays cached
		}
		byName[info.Name] = vv
	}
	v.onEpochs(epochs)
	v.onRing(ring)
	v.builds.Add(1)
	v.peersStale, v.peersRead = false, time.Now()
	v.mu.Lock()
	v.st = clusterState{rev: rev, gen: v.st.gen + 1, ring: ring, peers: peers, volumes: byName, built: time.Now()}
	v.ready = true
	v.mu.Unlock()
	v.signal()
	v.log.Debug("cluster view read", "revision", rev, "volumes", len(byName), "peers", len(peers))
	return rev, nil
}

// readVolume reads a volume's head and writer.
func (v *view) readVolume(ctx context.Context, info torus.VolumeInfo, rev int64) (viewVolume, error) {
	head, err := v.meta.Head(ctx, info.Name)
	if err != nil {
		return viewVolume{}, fmt.Errorf("reading head of %s: %w", info.Name, err)
	}
	_, writing, err := v.meta.Writer(ctx, info.Name)
	if err != nil {
		return viewVolume{}, fmt.Errorf("reading writer of %s: %w", info.Name, err)
	}
	return viewVolume{info: info, head: head, writer: writing, changed: rev}, nil
}

func (v *view) signal() {
	select {
	case v.changed <- struct{}{}:
	default:
	}
}

// follow applies changes after rev until a resync is needed: the history
// was compacted, the watch closed, or a change or an audit could not be
// applied. Between changes it audits one part of the view every audit
// interval (auditNext): a cost per daemon that depends on neither the
// number of volumes nor the number of daemons.
func (v *view) follow(ctx context.Context, rev int64) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := v.meta.WatchChanges(wctx, rev)
	// The first tick jittered, so that daemons started together do not
	// audit in step.
	t := time.NewTimer(v.audit/2 + rand.N(v.audit+1))
	defer t.Stop()
	var cursor string             // the last volume audited; "" at the start of a round
	var peersDue <-chan time.Time // armed while peer changes wait (coalesce)
	for {
		if v.peersStale && peersDue == nil {
			peersDue = time.After(time.Until(v.peersRead.Add(v.peerWait())))
		}
		select {
		case <-ctx.Done():
			return
		case <-peersDue:
			peersDue = nil
			if err := v.readPeers(ctx); err != nil {
				if ctx.Err() == nil {
					v.log.Warn("cluster view: reading peers failed; reading the view again", "err", err)
				}
				return
			}
		case <-t.C:
			var err error
			if cursor, err = v.auditNext(ctx, cursor); err != nil {
				if ctx.Err() == nil {
					v.log.Warn("cluster view: audit failed; reading the view again", "err", err)
				}
				return
			}
			t.Reset(v.audit)
		case c, ok := <-ch:
			if !ok {
				return
			}
			if c.Kind == torus.ChangeResync {
				v.log.Info("cluster view: change history compacted; reading the view again", "revision", c.Revision)
				return
			}
			if err := v.apply(ctx, c); err != nil {
				if ctx.Err() == nil {
					v.log.Warn("cluster view: applying a change failed; reading the view again", "change", c.Kind, "name", c.Name, "err", err)
				}
				return
			}
		}
	}
}

// readPeers reads the peer list for the peer changes coalesced since the
// last read; maintenance plans again.
func (v *view) readPeers(ctx context.Context) error {
	peers, err := v.meta.Peers(ctx)
	if err != nil {
		return err
	}
	v.peerReads.Add(1)
	v.peersStale, v.peersRead = false, time.Now()
	v.mu.Lock()
	v.st.peers = peers
	v.st.gen++
	v.mu.Unlock()
	v.signal()
	return nil
}

// apply applies one change, reading what the change does not carry. Peer
// changes, and the peer states a ring change moves, are read later, all
// together (readPeers, after coalesce): maintenance plans once they are.
func (v *view) apply(ctx context.Context, c torus.Change) error {
	relevant := true
	switch c.Kind {
	case torus.ChangeRing:
		ring := c.Ring
		if ring == nil {
			r, err := v.meta.Ring(ctx)
			if err != nil {
				return err
			}
			ring = &r
		}
		v.onRing(*ring)
		v.update(c.Revision, func(st *clusterState) { st.ring = *ring })
		v.peersStale, relevant = true, false // planned once the states are read
	case torus.ChangePeer:
		// A Beat (a rewritten liveness key: a new session, or a daemon
		// of an older version, which rewrote it at every beat) changes
		// nothing maintenance plans from: the peer was alive and stays
		// so (snapshot shows it seen now).
		relevant = false
		v.update(c.Revision, nil)
		if !c.Beat {
			v.peersStale = true
		}
	case torus.ChangeVolume:
		if c.Deleted {
			v.update(c.Revision, func(st *clusterState) { delete(st.volumes, c.Name) })
			break
		}
		info, err := v.meta.Volume(ctx, c.Name)
		if errors.Is(err, torus.ErrNotExist) {
			v.update(c.Revision, func(st *clusterState) { delete(st.volumes, c.Name) })
			break
		}
		if err != nil {
			return err
		}
		if vv, ok := v.volume(c.Name); ok && vv.info.ID == info.ID {
			vv.info, vv.changed = info, c.Revision
			v.update(c.Revision, func(st *clusterState) { st.volumes[c.Name] = vv })
			break
		}
		return v.load(ctx, info, c)
	case torus.ChangeEpoch, torus.ChangeWriter, torus.ChangeHead, torus.ChangeSnapshot:
		if c.Deleted && c.Kind != torus.ChangeWriter && c.Kind != torus.ChangeSnapshot {
			v.update(c.Revision, nil) // the volume's deletion removes it
			break
		}
		vv, ok := v.volume(c.Name)
		if !ok {
			info, err := v.meta.Volume(ctx, c.Name)
			if errors.Is(err, torus.ErrNotExist) {
				v.update(c.Revision, nil)
				break
			}
			if err != nil {
				return err
			}
			return v.load(ctx, info, c)
		}
		switch c.Kind {
		case torus.ChangeEpoch:
			vv.epoch = max(vv.epoch, c.Epoch)
			v.onEpochs(map[uint64]uint64{vv.info.ID: c.Epoch})
		case torus.ChangeWriter:
			vv.writer = !c.Deleted
		case torus.ChangeHead:
			if c.Head == nil {
				h, err := v.meta.Head(ctx, c.Name)
				if err != nil && !errors.Is(err, torus.ErrNotExist) {
					return err
				}
				c.Head = &h
			}
			vv.head = *c.Head
		}
		vv.changed = c.Revision
		v.update(c.Revision, func(st *clusterState) { st.volumes[c.Name] = vv })
	default: // cluster config, default export, attachments
		relevant = false
		v.update(c.Revision, nil)
	}
	if relevant {
		v.mu.Lock()
		v.st.gen++
		v.mu.Unlock()
		v.signal()
	}
	return nil
}

// load adds a volume the view did not know (created, or recreated under
// its name) with its head and writer read now; an epoch change carries
// the epoch.
func (v *view) load(ctx context.Context, info torus.VolumeInfo, c torus.Change) error {
	vv, err := v.readVolume(ctx, info, c.Revision)
	if errors.Is(err, torus.ErrNotExist) {
		v.update(c.Revision, nil)
		return nil
	}
	if err != nil {
		return err
	}
	if c.Kind == torus.ChangeEpoch {
		vv.epoch = c.Epoch
		v.onEpochs(map[uint64]uint64{info.ID: c.Epoch})
	}
	v.update(c.Revision, func(st *clusterState) { st.volumes[info.Name] = vv })
	v.mu.Lock()
	v.st.gen++
	v.mu.Unlock()
	v.signal()
	return nil
}

func (v *view) volume(name string) (viewVolume, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	vv, ok := v.st.volumes[name]
	return vv, ok
}

// update applies f to the view and moves its revision to rev.
func (v *view) update(rev int64, f func(st *clusterState)) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if f != nil {
		f(&v.st)
	}
	v.st.rev = max(v.st.rev, rev)
}

// auditNext checks one part of the view against the store and corrects
// it: the volume after cursor in name order (its record, head and
// writer), or, when none is left, the ring and the peers. It returns the
// next cursor. A difference is usually a change the watch is about to
// deliver (the reads are newer than the view); it is applied as the
// change would be, so a lost event stays wrong at most one round (the
// number of volumes + 1 audit intervals). At most three requests.
func (v *view) auditNext(ctx context.Context, cursor string) (string, error) {
	v.mu.Lock()
	next, found := "", false
	for name := range v.st.volumes {
		if name > cursor && (!found || name < next) {
			next, found = name, true
		}
	}
	v.mu.Unlock()
	if !found {
		return "", v.auditCluster(ctx)
	}
	info, err := v.meta.Volume(ctx, next)
	if errors.Is(err, torus.ErrNotExist) {
		v.correct(next, func(st *clusterState) bool {
			_, ok := st.volumes[next]
			delete(st.volumes, next)
			return ok
		})
		return next, nil
	}
	if err != nil {
		return next, fmt.Errorf("auditing volume %s: %w", next, err)
	}
	got, err := v.readVolume(ctx, info, 0)
	if errors.Is(err, torus.ErrNotExist) {
		return next, nil // deleted meanwhile: the watch tells
	}
	if err != nil {
		return next, fmt.Errorf("auditing volume %s: %w", next, err)
	}
	v.correct(next, func(st *clusterState) bool {
		old, ok := st.volumes[next]
		if ok && old.info.ID == got.info.ID && old.writer == got.writer &&
			reflect.DeepEqual(old.head, got.head) && reflect.DeepEqual(old.info, got.info) {
			return false
		}
		if ok && old.info.ID == got.info.ID {
			got.epoch = old.epoch
		}
		got.changed = st.rev // its live set is read again
		st.volumes[next] = got
		return true
	})
	return next, nil
}

// auditCluster checks the ring's version and the peers' membership,
// addresses, locations and states (not their usage or last-seen times,
// which heartbeats move).
func (v *view) auditCluster(ctx context.Context) error {
	ring, err := v.meta.Ring(ctx)
	if err != nil {
		return fmt.Errorf("auditing ring: %w", err)
	}
	peers, err := v.meta.Peers(ctx)
	if err != nil {
		return fmt.Errorf("auditing peers: %w", err)
	}
	newer := false
	v.correct("ring", func(st *clusterState) bool {
		newer = ring.Version > st.ring.Version
		if newer {
			st.ring = ring
		}
		return newer
	})
	if newer {
		v.onRing(ring)
	}
	v.correct("peers", func(st *clusterState) bool {
		if slices.EqualFunc(st.peers, peers, samePeer) {
			return false
		}
		st.peers = peers
		return true
	})
	return nil
}

// samePeer compares what maintenance plans from: identity, address,
// location, capacity and state.
func samePeer(a, b torus.PeerInfo) bool {
	return a.ID == b.ID && a.Address == b.Address && a.HTTP == b.HTTP && a.Zone == b.Zone && a.Rack == b.Rack &&
		a.Host == b.Host && a.Capacity == b.Capacity && a.State == b.State && a.Alive == b.Alive
}

// correct applies an audit's correction f (which reports whether it
// changed anything); a change moves the generation, so maintenance plans
// again.
func (v *view) correct(what string, f func(st *clusterState) bool) {
	v.mu.Lock()
	changed := f(&v.st)
	if changed {
		v.st.gen++
	}
	v.mu.Unlock()
	if changed {
		v.signal()
		v.log.Debug("cluster view: the audit corrected the view", "what", what)
	}
}
