package volume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/torus-storage/torus"
)

// Deps are a volume's collaborators.
type Deps struct {
	Meta  torus.Metadata
	Peers torus.PeerPool
	// Identity is the common name of the peer client certificate Peers
	// talks to the daemons with ("" on a plain cluster). A writer stores
	// it in its lock: daemons that require TLS take a writer's appends,
	// syncs and fences only from the identity that locked the epoch
	// (torus.WriterInfo.Identity).
	Identity string
	Logger   *slog.Logger // nil: discard
}

// Options control Open.
type Options struct {
	// ReadOnly opens without the lock: a point-in-time view of the head
	// at open.
	ReadOnly bool
	// Snapshot opens the named snapshot read-only.
	Snapshot string
	// Owner describes the writer in the lock ("torusblk@host pid N").
	Owner string
	// LockTTL is the writer lease TTL; default DefaultLockTTL.
	LockTTL time.Duration
	// RefreshInterval is the least time between two reloads of the ring,
	// live peers and volume record prompted by metadata changes (which
	// happen at every daemon heartbeat); default DefaultRefreshInterval.
	// Changes within it are picked up at its end.
	RefreshInterval time.Duration
	// RetryFor is how long a write or FLUSH keeps trying to reach
	// MinReplicas live replicas (new segments, refreshed views of the
	// peers) before it fails with ErrUnavailable; default DefaultRetryFor.
	RetryFor time.Duration
}

// DefaultRetryFor is Options.RetryFor when zero. A daemon that stops is
// seen as down within a second or two (its lease is revoked at SIGTERM and
// expires a few seconds after a kill); until then new segments may be
// placed on it and fail at once.
const DefaultRetryFor = 15 * time.Second

// maxSealedSegments bounds the head's sealed list: past it (checkpoints
// failing seal after seal: 12 GiB written at 32 MiB segments) rolls, and
// so writes, fail with ErrUnavailable rather than grow the head. A sealed
// entry is at most 133 bytes of JSON, so the head stays under 64 KiB
// (TestHeadBounded), far below etcd's request limit (1.5 MiB).
const maxSealedSegments = 384

// DefaultRefreshInterval is Options.RefreshInterval when zero.
const DefaultRefreshInterval = time.Second

// DefaultLockTTL is the writer lease TTL when Options.LockTTL is zero.
const DefaultLockTTL = 10 * time.Second

// maxBatch is the group-commit limit: the appender stops gathering records
// once a batch holds this many bytes.
const maxBatch = 4 << 20

// peerTimeout bounds one round of Appends or Syncs: a replica that hangs
// longer is treated as failed (dropped; its unflushed bytes are carried).
// A blackholed replica thus costs a writer at most this long.
const peerTimeout = 10 * time.Second

// readTryTimeout bounds one read attempt on one candidate when another is
// left to try: a replica that does not answer (a blackholed link) is given
// up on for the next instead of holding the read for peerTimeout. The last
// candidate gets the caller's whole deadline.
const readTryTimeout = 2 * time.Second

// fenceTimeout bounds the Fence sent to each ring member at open: a member
// that does not answer counts as unheard.
const fenceTimeout = 5 * time.Second

// badPeerTimeout is how long a peer that failed an append or sync is left
// out of new segments.
const badPeerTimeout = 30 * time.Second

// Stats are a volume's counters since Open.
type Stats struct {
	BytesWritten      int64 // payload bytes of WriteAt and WriteZeroes/Trim requests
	BlocksWritten     int64 // blocks of write records
	Records           int64 // records appended
	Batches           int64 // group commits (Append rounds)
	BytesAppended     int64 // record bytes appended to data segments, counted once
	ReplicaBytes      int64 // bytes sent in Appends, summed over replicas (data and checkpoints)
	SegmentsSealed    int64
	Checkpoints       int64
	CheckpointBytes   int64
	RunMerges         int64 // runs of the index merged into a checkpoint's run
	EtcdCommits       int64 // CommitHead and CreateSnapshot requests
	Flushes           int64 // Flush calls (including FUA)
	Syncs             int64 // Sync requests sent
	ReplicasDropped   int64
	BlocksMoved       int64 // blocks rewritten by compaction
	SegmentsCompacted int64
	ReadRetries       int64 // reads that moved on to another replica
	CarriedBytes      int64 // unflushed record bytes appended again after a replica dropped out
}

// Info describes an open volume.
type Info struct {
	Volume      torus.VolumeInfo
	Snapshot    string // the snapshot opened, if any
	ReadOnly    bool
	Epoch       uint64 // the writer's epoch (0 when read-only)
	Replication int
	MinReplicas int
	Head        torus.Head
	Mapped      int64 // mapped blocks
}

// segState is what the writer knows about a segment it wrote.
type segState struct {
	id       torus.SegmentID
	slot     uint32
	replicas []string // replicas holding every byte up to length
	length   int64    // bytes appended and acknowledged by every replica
	synced   int64    // bytes known durable on MinReplicas replicas
	// broken: a replica was dropped (or there are too few): nothing more
	// is appended; the segment is sealed at the next batch or FLUSH.
	broken bool
}

// Volume is an open volume: a torus.Device. Open a writer, a read-only view
// of the head, or a snapshot with Open. All methods are safe for concurrent
// use.
type Volume struct {
	meta  torus.Metadata
	peers torus.PeerPool
	log   *slog.Logger
	name  string
	id    uint64 // volume ID, fixed at open
	snap  string
	ro    bool
	owner string
	// identity is Deps.Identity, stored in the lock.
	identity string

	ctx     context.Context // lives until Close
	cancel  context.CancelFunc
	session torus.Session
	epoch   uint64
	wg      sync.WaitGroup

	reqs        chan *writeReq
	ctl         chan *ctlReq
	stop        chan struct{}
	compactKick chan struct{}                          // a checkpoint was written
	ckpt        *ckptJob                               // the checkpoint being written in the background (appender-owned)
	ckptDone    chan ckptResult                        // its outcome, for the appender
	ckTables    map[torus.SegmentID][]torus.SegmentRef // compactor-owned cache
	batchBuf    []byte                                 // appender-owned record buffer
	carry       *carry                                 // appender-owned; see carry.go
	pipe        *pipeline                              // appender-owned; see pipeline.go
	maxSealed   int                                    // head's sealed list limit; see maxSealedSegments
	retryFor    time.Duration                          // Options.RetryFor

	locks [64]sync.RWMutex // striped block locks; see lockBlocks

	refreshEvery time.Duration // least time between watch-driven refreshes
	refreshes    atomic.Int64  // watch-driven refreshes done (for tests)

	mu      sync.Mutex
	ops     sync.WaitGroup // in-flight I/O, waited for by Close
	closed  bool
	fenced  error // non-nil once fenced: every I/O fails with it
	info    torus.VolumeInfo
	cfg     torus.ClusterConfig
	minRep  int
	repl    int // copies of each new segment: info.Replicas(cfg.Replication)
	ringVer uint64
	place   placement
	up      map[string]bool      // ring members whose liveness key exists
	full    map[string]bool      // peers at or above fullThreshold of their capacity
	bad     map[string]time.Time // peers that failed this writer
	slow    map[string]time.Time // peers that did not answer a read in time
	idx     *Index
	stack   []StackRun // runs below the head's checkpoint's run (appender-owned); see checkpoint3.go
	head    torus.Head
	open    *segState // appender-owned, read under mu
	segs    map[torus.SegmentID]*segState
	cands   map[torus.SegmentID][]string // read candidates; see candidates
	stats   Stats

	closeOnce sync.Once
	closeErr  error
}

var (
	_ torus.Device = (*Volume)(nil)
)

// Open opens volume name. Without ReadOnly or Snapshot it becomes the
// volume's single writer: it locks the volume under a new session
// (*torus.LockedError if another writer holds it), fences every ring member
// with its new epoch, rebuilds the index and names a new open segment in the
// head. It fails with ErrUnavailable when too few replicas of the open
// segment answer to be sure every flushed byte is found.
//
// With ReadOnly it reads the head once and serves that point-in-time view;
// with Snapshot it serves the snapshot. Both refuse writes with ErrReadOnly.
func Open(ctx context.Context, deps Deps, name string, opt Options) (*Volume, error) {
	if deps.Meta == nil || deps.Peers == nil {
		return nil, fmt.Errorf("volume: %w: Deps needs Meta and Peers", torus.ErrInvalid)
	}
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opt.LockTTL == 0 {
		opt.LockTTL = DefaultLockTTL
	}
	if opt.LockTTL < time.Second {
		return nil, fmt.Errorf("volume: %w: lock TTL %v under 1s", torus.ErrInvalid, opt.LockTTL)
	}
	if opt.RefreshInterval <= 0 {
		opt.RefreshInterval = DefaultRefreshInterval
	}
	if opt.RetryFor <= 0 {
		opt.RetryFor = DefaultRetryFor
	}
	if opt.Owner == "" {
		opt.Owner = "volume.Open"
	}
	v := &Volume{
		meta:        deps.Meta,
		peers:       deps.Peers,
		log:         log.With("volume", name),
		name:        name,
		snap:        opt.Snapshot,
		ro:          opt.ReadOnly || opt.Snapshot != "",
		owner:       opt.Owner,
		identity:    deps.Identity,
		reqs:        make(chan *writeReq, 256),
		ctl:         make(chan *ctlReq),
		compactKick: make(chan struct{}, 1),
		ckptDone:    make(chan ckptResult, 1),
		ckTables:    make(map[torus.SegmentID][]torus.SegmentRef),
		stop:        make(chan struct{}),
		bad:         make(map[string]time.Time),
		segs:        make(map[torus.SegmentID]*segState),
		maxSealed:   maxSealedSegments,
		retryFor:    opt.RetryFor,

		refreshEvery: opt.RefreshInterval,
	}
	v.pipe = &pipeline{v: v, workers: make(map[string]*replicaWorker)}
	v.ctx, v.cancel = context.WithCancel(context.WithoutCancel(ctx))
	if err := v.openVolume(ctx, opt); err != nil {
		v.cancel()
		return nil, err
	}
	return v, nil
}

func (v *Volume) openVolume(ctx context.Context, opt Options) error {
	// Watch before reading anything, so no change after the reads is missed.
	watch := v.meta.Watch(v.ctx)
	info, err := v.meta.Volume(ctx, v.name)
	if err != nil {
		return fmt.Errorf("volume %s: %w", v.name, err)
	}
	v.id = info.ID
	cfg, err := v.meta.ClusterConfig(ctx)
	if err != nil {
		return fmt.Errorf("volume %s: %w", v.name, err)
	}
	cfg.EnsureDefaults()
	v.cfg = cfg
	v.setInfo(info)
	if err := v.refreshCluster(ctx); err != nil {
		return err
	}
	if v.ro {
		var head torus.Head
		if v.snap != "" {
			s, err := v.meta.Snapshot(ctx, v.name, v.snap)
			if err != nil {
				return fmt.Errorf("volume %s: snapshot %s: %w", v.name, v.snap, err)
			}
			head = s.Head
		} else if head, err = v.meta.Head(ctx, v.name); err != nil {
			return fmt.Errorf("volume %s: %w", v.name, err)
		}
		idx, _, _, err := v.rebuild(ctx, head, nil)
		if err != nil {
			return err
		}
		v.idx, v.head = idx, head
		v.wg.Add(1)
		go v.watchLoop(watch)
		return nil
	}

	s, err := v.meta.NewSession(v.ctx, opt.LockTTL)
	if err != nil {
		return fmt.Errorf("volume %s: session: %w", v.name, err)
	}
	epoch, err := v.meta.Lock(ctx, s, v.name, torus.WriterInfo{Owner: opt.Owner, Identity: v.identity})
	if err != nil {
		_ = s.Close(context.WithoutCancel(ctx))
		return fmt.Errorf("volume %s: %w", v.name, err)
	}
	v.session, v.epoch = s, epoch
	fail := func(err error) error {
		c := context.WithoutCancel(ctx)
		_ = v.meta.Unlock(c, v.name, epoch)
		_ = s.Close(c)
		return err
	}
	// The head is final once the lock is ours: the old writer's commits
	// compare the epoch, which Lock raised.
	head, err := v.meta.Head(ctx, v.name)
	if err != nil {
		return fail(fmt.Errorf("volume %s: %w", v.name, err))
	}
	fenced := v.fenceAll(ctx, head.OpenReplicas)
	idx, stack, openLen, err := v.rebuild(ctx, head, fenced)
	if err != nil {
		return fail(err)
	}
	v.idx, v.stack = idx, stack
	nh := cloneHead(head)
	nh.Epoch = epoch
	if head.Open != nil {
		nh.Open, nh.OpenReplicas = nil, nil
		if openLen > 0 {
			nh.Sealed = append(nh.Sealed, torus.SegmentRef{ID: *head.Open, Length: openLen})
		}
	}
	v.head = nh
	v.log = v.log.With("epoch", epoch)
	// Name a new open segment (one CommitHead), sealing the old one.
	if err := v.roll(ctx, ckptNever, true); errors.Is(err, errNoOpen) {
		v.log.Warn("no open segment yet: too few live peers", "err", err)
	} else if err != nil {
		return fail(err)
	}
	v.log.Info("opened for writing", "owner", opt.Owner, "sealed", len(v.head.Sealed), "mapped", idx.Mapped())
	v.noteOpened(ctx, head, openLen)
	v.wg.Add(4)
	go v.compactor()
	go v.appender()
	go v.watchLoop(watch)
	go v.sessionLoop()
	return nil
}

func (v *Volume) setInfo(info torus.VolumeInfo) {
	v.info = info
	v.repl = info.Replicas(v.cfg.Replication)
	v.minRep = info.MinReplicas
	if v.minRep <= 0 || v.minRep > v.repl {
		if v.minRep > v.repl {
			v.log.Warn("min replicas above replication; using replication", "min", v.minRep, "replication", v.repl)
		}
		v.minRep = v.repl
	}
	if v.idx != nil {
		v.idx.Grow(uint64(info.Size / torus.BlockSize))
	}
}

// refreshCluster reloads the ring and the live peers.
func (v *Volume) refreshCluster(ctx context.Context) error {
	spec, err := v.meta.Ring(ctx)
	if err != nil {
		return fmt.Errorf("volume %s: ring: %w", v.name, err)
	}
	peers, err := v.meta.Peers(ctx)
	if err != nil {
		return fmt.Errorf("volume %s: peers: %w", v.name, err)
	}
	up := make(map[string]bool, len(peers))
	full := make(map[string]bool)
	for _, p := range peers {
		if p.State == torus.PeerUp {
			up[p.ID] = true
		}
		if p.Capacity > 0 && float64(p.Used) >= fullThreshold*float64(p.Capacity) {
			full[p.ID] = true
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.place == nil || spec.Version != v.ringVer {
		pl, err := newPlacement(spec)
		if err != nil {
			return fmt.Errorf("volume %s: ring: %w", v.name, err)
		}
		v.place, v.ringVer = pl, spec.Version
		v.forgetCandidates()
	}
	if !maps.Equal(up, v.up) {
		v.forgetCandidates()
	}
	v.up = up
	v.full = full
	return nil
}

// fullThreshold is the share of its capacity at which a peer (as its
// heartbeat reports) gets new segments only when no other peer can.
const fullThreshold = 0.95

// fenceAll sends Fence(epoch) to every ring member and every peer in extra
// (the old open segment's replicas, which may have left the ring) in
// parallel and returns the peers that accepted it.
func (v *Volume) fenceAll(ctx context.Context, extra []string) map[string]bool {
	v.mu.Lock()
	members := v.place.Order(nil)
	v.mu.Unlock()
	for _, id := range extra {
		if !slices.Contains(members, id) {
			members = append(members, id)
		}
	}
	fctx, cancel := context.WithTimeout(ctx, fenceTimeout)
	defer cancel()
	o := tally(members, v.fanout(fctx, members, func(ctx context.Context, _ int, p torus.PeerService) error {
		return p.Fence(ctx, v.id, v.epoch)
	}))
	for _, err := range o.errs {
		v.log.Warn("fence failed", "err", err)
	}
	ok := make(map[string]bool, len(o.ok))
	for _, id := range o.ok {
		ok[id] = true
	}
	return ok
}

// begin registers an I/O; end must follow.
func (v *Volume) begin(write bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	switch {
	case v.closed:
		return fmt.Errorf("volume %s: %w", v.name, torus.ErrClosed)
	case v.fenced != nil:
		return v.fenced
	case write && v.ro:
		return fmt.Errorf("volume %s: %w", v.name, torus.ErrReadOnly)
	}
	v.ops.Add(1)
	return nil
}

func (v *Volume) end() { v.ops.Done() }

// fence marks the writer fenced; every further I/O fails with it.
func (v *Volume) fence(cause error) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.fenced == nil {
		v.fenced = fmt.Errorf("volume %s epoch %d: %w (%v)", v.name, v.epoch, torus.ErrFenced, cause)
		v.log.Warn("writer fenced", "cause", cause)
		if !v.closed { // (Close waits for the goroutine only if it starts before)
			v.noteFenced(cause)
		}
	}
	return v.fenced
}

// minReplicas is the current write policy.
func (v *Volume) minReplicas() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.minRep
}

func (v *Volume) fencedErr() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.fenced
}

// Size is the volume size in bytes.
func (v *Volume) Size() int64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.ro {
		return int64(v.idx.Blocks()) * torus.BlockSize
	}
	return v.info.Size
}

// ReadOnly reports whether writes are refused.
func (v *Volume) ReadOnly() bool { return v.ro }

// Info describes the volume.
func (v *Volume) Info() Info {
	v.mu.Lock()
	defer v.mu.Unlock()
	return Info{
		Volume:      v.info,
		Snapshot:    v.snap,
		ReadOnly:    v.ro,
		Epoch:       v.epoch,
		Replication: v.repl,
		MinReplicas: v.minRep,
		Head:        cloneHead(v.head),
		Mapped:      v.idx.Mapped(),
	}
}

// Stats returns the volume's counters.
func (v *Volume) Stats() Stats {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.stats
}

func (v *Volume) checkRange(off, length int64) error {
	size := v.Size()
	if off < 0 || length < 0 || off > size || length > size-off {
		return fmt.Errorf("volume %s: [%d,+%d) of %d bytes: %w", v.name, off, length, size, torus.ErrOutOfRange)
	}
	return nil
}

// sessionLoop fences the writer as soon as its session is lost.
func (v *Volume) sessionLoop() {
	defer v.wg.Done()
	select {
	case <-v.session.Done():
		v.fence(errors.New("session lost"))
	case <-v.stop:
	}
}

// watchLoop refreshes the ring, live peers and volume record on every
// metadata change, and (writer) answers snapshot requests.
func (v *Volume) watchLoop(ch <-chan struct{}) {
	defer v.wg.Done()
	if !v.ro {
		// Requests filed before this writer opened.
		ctx, cancel := context.WithTimeout(v.ctx, 10*time.Second)
		v.answerSnapshotRequests(ctx)
		cancel()
	}
	var last time.Time
	for {
		select {
		case <-v.stop:
			return
		case _, ok := <-ch:
			if !ok {
				return
			}
		}
		// At most one refresh per refreshEvery: every daemon's heartbeat
		// changes a key, so without a limit a writer in a cluster of N
		// daemons would read etcd ~N/2 times a second for nothing. Signals
		// arriving meanwhile coalesce into one refresh after the wait.
		if wait := v.refreshEvery - time.Since(last); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-v.stop:
				t.Stop()
				return
			case <-t.C:
			}
			select { // the wait's signals are covered by this refresh
			case <-ch:
			default:
			}
		}
		last = time.Now()
		v.refreshes.Add(1)
		ctx, cancel := context.WithTimeout(v.ctx, 10*time.Second)
		if err := v.refreshCluster(ctx); err != nil {
			v.log.Warn("refresh", "err", err)
		}
		if !v.ro {
			if info, err := v.meta.Volume(ctx, v.name); err == nil {
				v.mu.Lock()
				v.setInfo(info)
				v.mu.Unlock()
			}
			v.answerSnapshotRequests(ctx)
		}
		cancel()
	}
}

// Close flushes, seals the open segment, releases the lock and the session
// at once, and stops every goroutine. Idempotent; later calls return the
// first result.
func (v *Volume) Close(ctx context.Context) error {
	v.closeOnce.Do(func() { v.closeErr = v.doClose(ctx) })
	return v.closeErr
}

func (v *Volume) doClose(ctx context.Context) error {
	v.mu.Lock()
	v.closed = true
	v.mu.Unlock()
	v.ops.Wait()
	var err error
	if !v.ro {
		if v.fencedErr() == nil {
			err = v.flush(ctx)
			if err == nil {
				err = v.control(ctx, func(ctx context.Context) error {
					// Checkpoint when due, so short sessions (attach, a few
					// writes, detach) do not grow the head's sealed list.
					return v.roll(ctx, ckptIfDue, false)
				})
			}
		} else {
			err = v.fencedErr()
		}
	}
	close(v.stop)
	v.wg.Wait()
	if !v.ro {
		c := context.WithoutCancel(ctx)
		if uerr := v.meta.Unlock(c, v.name, v.epoch); uerr != nil && err == nil {
			err = uerr
		}
		if serr := v.session.Close(c); serr != nil && err == nil {
			err = serr
		}
	}
	v.cancel()
	if err != nil {
		v.log.Warn("close", "err", err)
	}
	return err
}

func cloneHead(h torus.Head) torus.Head { return h.Clone() }
