package peer

import (
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/torus-storage/torus"
)

// Local is the daemon's own torus.PeerService: its store behind the
// per-volume fencing of docs/design/data-path.md (invariant 4). Serve it
// with a Server to make it reachable; in-process callers use it directly.
//
// For each volume Local keeps a minimum epoch, raised by Fence, by SetEpochs
// (the epochs the daemon reads from etcd) and by every Append with a higher
// epoch. Append and Sync with a lower epoch fail with an error wrapping
// torus.ErrFenced, except with torus.RepairEpoch. Local does not own the
// store: closing it is the caller's job.
type Local struct {
	store torus.Store
	log   *slog.Logger

	mu   sync.Mutex
	vols map[uint64]*volFence
}

// volFence is one volume's fencing state.
type volFence struct {
	min     uint64
	active  map[uint64]int // epoch -> fenced-kind operations running
	changed chan struct{}  // closed and replaced whenever active shrinks
}

var _ torus.PeerService = (*Local)(nil)

// NewLocal returns the fencing service over store.
func NewLocal(store torus.Store, logger *slog.Logger) *Local {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Local{store: store, log: logger, vols: make(map[uint64]*volFence)}
}

// vol returns the volume's state; l.mu must be held.
func (l *Local) vol(id uint64) *volFence {
	v := l.vols[id]
	if v == nil {
		v = &volFence{active: make(map[uint64]int), changed: make(chan struct{})}
		l.vols[id] = v
	}
	return v
}

// MinEpoch reports the volume's minimum epoch (0 when none is known).
func (l *Local) MinEpoch(volume uint64) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if v := l.vols[volume]; v != nil {
		return v.min
	}
	return 0
}

// SetEpochs raises the minimum epoch of each volume in epochs (volume ID ->
// epoch), as read from etcd. Lower values are ignored. Unlike Fence it does
// not wait for running appends.
func (l *Local) SetEpochs(epochs map[uint64]uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for id, e := range epochs {
		v := l.vol(id)
		if e > v.min {
			l.log.Debug("volume epoch raised from metadata", "volume", id, "from", v.min, "to", e)
			v.min = e
		}
	}
}

// admit checks epoch against seg's volume and counts the operation as
// running until done is called. An append raises the minimum.
func (l *Local) admit(op string, epoch uint64, seg torus.SegmentID, raise bool) (done func(), err error) {
	if epoch == torus.RepairEpoch {
		return func() {}, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	v := l.vol(seg.Volume)
	if epoch < v.min {
		return nil, fmt.Errorf("peer: %s %s at epoch %d: %w: volume %d is at epoch %d",
			op, seg, epoch, torus.ErrFenced, seg.Volume, v.min)
	}
	if raise && epoch > v.min {
		v.min = epoch
	}
	v.active[epoch]++
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if v.active[epoch]--; v.active[epoch] == 0 {
			delete(v.active, epoch)
		}
		close(v.changed)
		v.changed = make(chan struct{})
	}, nil
}

// Append implements torus.PeerService: fenced, then the store's Append.
func (l *Local) Append(ctx context.Context, epoch uint64, seg torus.SegmentID, off int64, p []byte) error {
	done, err := l.admit("append to", epoch, seg, true)
	if err != nil {
		return err
	}
	defer done()
	return l.store.Append(ctx, seg, off, p)
}

// AppendAsync implements torus.PeerService: in process, the append is done
// before it returns, so order is kept trivially.
func (l *Local) AppendAsync(ctx context.Context, epoch uint64, seg torus.SegmentID, off int64, p []byte) (wait func() error) {
	err := l.Append(ctx, epoch, seg, off, p)
	return func() error { return err }
}

// Sync implements torus.PeerService: fenced, then the store's Sync.
func (l *Local) Sync(ctx context.Context, epoch uint64, seg torus.SegmentID) (int64, error) {
	done, err := l.admit("sync of", epoch, seg, false)
	if err != nil {
		return 0, err
	}
	defer done()
	return l.store.Sync(ctx, seg)
}

// Fence implements torus.PeerService. It raises the volume's minimum epoch
// and then waits (within ctx) until no Append or Sync with a lower epoch is
// still running on the volume, so that once it returns nil the fenced
// writers can change nothing here. Lowering is a no-op.
func (l *Local) Fence(ctx context.Context, volume, epoch uint64) error {
	l.mu.Lock()
	v := l.vol(volume)
	if epoch > v.min {
		l.log.Info("volume fenced", "volume", volume, "from", v.min, "to", epoch)
		v.min = epoch
	}
	for {
		busy := false
		for e := range v.active {
			if e < epoch {
				busy = true
				break
			}
		}
		if !busy {
			l.mu.Unlock()
			return nil
		}
		ch := v.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("peer: fence volume %d at epoch %d: waiting for running appends: %w", volume, epoch, ctx.Err())
		}
		l.mu.Lock()
	}
}

// ReadAt implements torus.PeerService (the store's ReadAt).
func (l *Local) ReadAt(ctx context.Context, seg torus.SegmentID, p []byte, off int64) (int, error) {
	return l.store.ReadAt(ctx, seg, p, off)
}

// Stat implements torus.PeerService (the store's Stat).
func (l *Local) Stat(ctx context.Context, seg torus.SegmentID) (torus.SegmentInfo, error) {
	return l.store.Stat(ctx, seg)
}

// List implements torus.PeerService (the store's List).
func (l *Local) List(ctx context.Context, volume uint64) ([]torus.SegmentInfo, error) {
	return l.store.List(ctx, volume)
}

// Delete implements torus.PeerService (the store's Delete; not fenced: only
// garbage collection deletes, and it deletes unreachable segments).
func (l *Local) Delete(ctx context.Context, seg torus.SegmentID) error {
	return l.store.Delete(ctx, seg)
}

// Usage implements torus.PeerService (the store's Usage).
func (l *Local) Usage(ctx context.Context) (torus.Usage, error) {
	if err := ctx.Err(); err != nil {
		return torus.Usage{}, err
	}
	return l.store.Usage(), nil
}
