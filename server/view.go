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
// reads again in full after a resync (compacted history) and every
// resync interval, as a safety net. Other goroutines read snapshots.
type view struct {
	meta   torus.Metadata
	log    *slog.Logger
	resync time.Duration
	// onEpochs and onRing are called by the owner goroutine with the
	// epochs it learns (fencing) and each new ring.
	onEpochs func(map[uint64]uint64)
	onRing   func(torus.RingSpec)

	mu      sync.Mutex
	st      clusterState
	ready   bool
	changed chan struct{} // capacity 1: a maintenance-relevant change
}

func newView(meta torus.Metadata, log *slog.Logger, resync time.Duration, onEpochs func(map[uint64]uint64), onRing func(torus.RingSpec)) *view {
	return &view{meta: meta, log: log, resync: resync, onEpochs: onEpochs, onRing: onRing, changed: make(chan struct{}, 1)}
}

// snapshot returns a copy of the current view; ok=false until the first
// full read is done.
func (v *view) snapshot() (clusterState, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := v.st
	st.peers = slices.Clone(st.peers)
	st.volumes = maps.Clone(st.volumes)
	return st, v.ready
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
// was compacted, the watch closed, a change could not be applied, or the
// safety interval passed.
func (v *view) follow(ctx context.Context, rev int64) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := v.meta.WatchChanges(wctx, rev)
	// Jittered (±25 %) so that daemons do not re-read all at once.
	t := time.NewTimer(v.resync*3/4 + rand.N(v.resync/2+1))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			return
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

// apply applies one change, reading what the change does not carry.
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
		peers, err := v.meta.Peers(ctx) // states follow membership
		if err != nil {
			return err
		}
		v.onRing(*ring)
		v.update(c.Revision, func(st *clusterState) { st.ring, st.peers = *ring, peers })
	case torus.ChangePeer:
		if c.Beat {
			// Nothing maintenance plans from changed; the last-seen
			// time is kept fresh (liveness of draining peers uses it).
			relevant = false
			now := time.Now()
			v.update(c.Revision, func(st *clusterState) {
				if i := slices.IndexFunc(st.peers, func(p torus.PeerInfo) bool { return p.ID == c.Name }); i >= 0 {
					st.peers[i].LastSeen = now
				}
			})
			break
		}
		peers, err := v.meta.Peers(ctx)
		if err != nil {
			return err
		}
		v.update(c.Revision, func(st *clusterState) { st.peers = peers })
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
