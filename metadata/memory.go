package metadata

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/metadata/internal/rules"
)

// Memory is an in-memory torus.Metadata for tests. It is safe for
// concurrent use. The zero value is not usable; call NewMemory.
type Memory struct {
	mu          sync.Mutex
	failure     error
	closed      bool
	initialized bool
	cfg         torus.ClusterConfig
	ring        torus.RingSpec
	peers       map[string]*memPeer
	volumes     map[string]*memVolume
	nextID      uint64 // last volume ID handed out
	nextLease   int64
	sessions    map[int64]*memSession
	defExport   string
	statuses    map[string]torus.VolumeStatus
	csiNodes    map[string]time.Time // RegisterNode
	events      []torus.Event        // RecordEvent, oldest first
	eventSeq    uint64
	watchers    map[chan struct{}]struct{}
	rev         int64          // revision of the last change
	log         []torus.Change // changes after compacted, in order
	compacted   int64          // changes up to it are forgotten
	volRev      int64          // revision of the last volume, epoch, writer, head or snapshot put
	done        chan struct{}  // closed by Close; ends watch goroutines
}

type memPeer struct {
	info     torus.PeerInfo // static fields only
	alive    int64          // session holding the liveness key; 0: none
	used     int64
	pending  int64
	bad      map[uint64][]uint64
	lastSeen time.Time
	draining bool
	removed  bool
}

type memVolume struct {
	info      torus.VolumeInfo
	epoch     uint64
	head      torus.Head
	writer    *torus.WriterInfo
	writerSes int64
	snapshots map[string]torus.Snapshot
	requests  map[string]bool
	results   map[string]string
	attached  *torus.VolumeAttachment // PutAttachment; nil when not published
}

var _ torus.Metadata = (*Memory)(nil)

// NewMemory returns an empty, uninitialized store.
func NewMemory() *Memory {
	return &Memory{
		peers:    make(map[string]*memPeer),
		volumes:  make(map[string]*memVolume),
		sessions: make(map[int64]*memSession),
		watchers: make(map[chan struct{}]struct{}),
		statuses: make(map[string]torus.VolumeStatus),
		csiNodes: make(map[string]time.Time),
		done:     make(chan struct{}),
	}
}

// SetFailure makes every later call fail with err, as if the store were
// unreachable (pass an error wrapping torus.ErrUnavailable to be realistic).
// While a failure is set, every live session expires once its TTL passes, as
// an etcd lease does when keepalives cannot reach etcd. SetFailure(nil)
// restores normal operation; sessions that have not expired yet survive.
func (m *Memory) SetFailure(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failure = err
	for _, s := range m.sessions {
		if err != nil && s.failTimer == nil {
			id := s.id
			s.failTimer = time.AfterFunc(s.ttl, func() { m.expireIfFailing(id) })
		}
		if err == nil && s.failTimer != nil {
			s.failTimer.Stop()
			s.failTimer = nil
		}
	}
	if err == nil {
		// Sessions closed during the failure stopped their keepalives;
		// their leases have run out by now as far as callers can tell.
		for id, s := range m.sessions {
			select {
			case <-s.done:
				m.expireLocked(id)
			default:
			}
		}
	}
}

func (m *Memory) expireIfFailing(id int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failure != nil {
		m.expireLocked(id)
	}
}

// ExpireSession ends session id as if its lease had expired: keys written
// under it (volume locks, liveness keys) vanish and its Done channel closes.
// Unknown or already ended sessions are ignored.
func (m *Memory) ExpireSession(id int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expireLocked(id)
}

func (m *Memory) expireLocked(id int64) {
	s, ok := m.sessions[id]
	if !ok {
		return
	}
	delete(m.sessions, id)
	if s.failTimer != nil {
		s.failTimer.Stop()
	}
	s.once.Do(func() { close(s.done) })
	var chs []torus.Change
	for name, v := range m.volumes {
		if v.writer != nil && v.writerSes == id {
			v.writer, v.writerSes = nil, 0
			chs = append(chs, torus.Change{Kind: torus.ChangeWriter, Name: name, Deleted: true})
		}
	}
	for pid, p := range m.peers {
		if p.alive == id {
			p.alive = 0
			chs = append(chs, torus.Change{Kind: torus.ChangePeer, Name: pid})
		}
	}
	m.notifyLocked(chs...)
}

// enter locks m after checking ctx, Close and the failure hook. On success
// the caller must unlock m.mu.
func (m *Memory) enter(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("metadata: %w", err)
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return fmt.Errorf("metadata: memory store: %w", torus.ErrClosed)
	}
	if m.failure != nil {
		err := m.failure
		m.mu.Unlock()
		return err
	}
	return nil
}

// notifyLocked records one atomic step's changes under a new revision
// and wakes every watcher.
func (m *Memory) notifyLocked(chs ...torus.Change) {
	m.rev++
	for _, c := range chs {
		c.Revision = m.rev
		m.log = append(m.log, c)
		switch c.Kind {
		case torus.ChangeVolume, torus.ChangeEpoch, torus.ChangeWriter, torus.ChangeHead, torus.ChangeSnapshot:
			if !c.Deleted {
				m.volRev = m.rev
			}
		}
	}
	if len(m.log) > memLogMax {
		m.compactLocked(m.log[len(m.log)/2].Revision)
	}
	for ch := range m.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// memLogMax bounds the change history Memory keeps for WatchChanges.
const memLogMax = 1 << 16

func (m *Memory) compactLocked(rev int64) {
	i, _ := slices.BinarySearchFunc(m.log, rev+1, func(c torus.Change, r int64) int { return cmpInt(c.Revision, r) })
	m.log = slices.Clone(m.log[i:])
	m.compacted = max(m.compacted, rev)
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Compact forgets the change history up to and including rev, as etcd's
// compaction does: a WatchChanges from an older revision gets a
// ChangeResync.
func (m *Memory) Compact(rev int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.compactLocked(min(rev, m.rev))
}

// Revision implements torus.Metadata.
func (m *Memory) Revision(ctx context.Context) (int64, error) {
	if err := m.enter(ctx); err != nil {
		return 0, err
	}
	defer m.mu.Unlock()
	return m.rev, nil
}

// VolumesChangedSince implements torus.Metadata.
func (m *Memory) VolumesChangedSince(ctx context.Context, rev int64) (bool, error) {
	if err := m.enter(ctx); err != nil {
		return false, err
	}
	defer m.mu.Unlock()
	return m.volRev > rev, nil
}

// WatchChanges implements torus.Metadata.
func (m *Memory) WatchChanges(ctx context.Context, from int64) <-chan torus.Change {
	out := make(chan torus.Change)
	wake := make(chan struct{}, 1)
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		close(out)
		return out
	}
	m.watchers[wake] = struct{}{}
	wake <- struct{}{}
	m.mu.Unlock()
	go func() {
		defer close(out)
		defer func() {
			m.mu.Lock()
			delete(m.watchers, wake)
			m.mu.Unlock()
		}()
		last := from
		for {
			select {
			case <-ctx.Done():
				return
			case <-m.done:
				return
			case <-wake:
			}
			m.mu.Lock()
			var batch []torus.Change
			if last < m.compacted || last > m.rev {
				batch = append(batch, torus.Change{Kind: torus.ChangeResync, Revision: m.rev})
				last = m.rev
			} else {
				i, _ := slices.BinarySearchFunc(m.log, last+1, func(c torus.Change, r int64) int { return cmpInt(c.Revision, r) })
				batch = append(batch, m.log[i:]...)
				if len(batch) > 0 {
					last = batch[len(batch)-1].Revision
				}
			}
			m.mu.Unlock()
			for _, c := range batch {
				c.Head, c.Ring = cloneHeadPtr(c.Head), cloneRingPtr(c.Ring)
				select {
				case out <- c:
				case <-ctx.Done():
					return
				case <-m.done:
					return
				}
			}
		}
	}()
	return out
}

func cloneHeadPtr(h *torus.Head) *torus.Head {
	if h == nil {
		return nil
	}
	c := cloneHead(*h)
	return &c
}

func cloneRingPtr(r *torus.RingSpec) *torus.RingSpec {
	if r == nil {
		return nil
	}
	c := cloneRing(*r)
	return &c
}

type memSession struct {
	m         *Memory
	id        int64
	ttl       time.Duration
	done      chan struct{}
	once      sync.Once
	failTimer *time.Timer // set while the store fails
}

func (s *memSession) ID() int64             { return s.id }
func (s *memSession) Done() <-chan struct{} { return s.done }

// Close revokes the session. Under SetFailure it returns the failure; the
// session still ends locally (Done closes) and its keys vanish after its
// TTL, as with etcd.
func (s *memSession) Close(ctx context.Context) error {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failure != nil && !m.closed {
		s.once.Do(func() { close(s.done) })
		return m.failure
	}
	m.expireLocked(s.id)
	s.once.Do(func() { close(s.done) })
	return nil
}

// NewSession grants a session of ttl. It ends on Close, when ctx ends, on
// ExpireSession, or after ttl while a failure is set.
func (m *Memory) NewSession(ctx context.Context, ttl time.Duration) (torus.Session, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("metadata: session: %w: ttl %v must be positive", torus.ErrInvalid, ttl)
	}
	if err := m.enter(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	m.nextLease++
	s := &memSession{m: m, id: m.nextLease, ttl: ttl, done: make(chan struct{})}
	m.sessions[s.id] = s
	go func() {
		select {
		case <-ctx.Done():
			m.ExpireSession(s.id)
		case <-s.done:
		}
	}()
	return s, nil
}

// session resolves s to a live session of m.
func (m *Memory) sessionLocked(s torus.Session) (*memSession, error) {
	ms, ok := s.(*memSession)
	if !ok || ms.m != m {
		return nil, fmt.Errorf("metadata: %w: session %T does not belong to this store", torus.ErrInvalid, s)
	}
	if _, live := m.sessions[ms.id]; !live {
		return nil, fmt.Errorf("metadata: session %d: %w: lease expired", ms.id, torus.ErrClosed)
	}
	select {
	case <-ms.done:
		return nil, fmt.Errorf("metadata: session %d: %w: lease expired", ms.id, torus.ErrClosed)
	default:
	}
	return ms, nil
}

// InitCluster implements torus.Metadata.
func (m *Memory) InitCluster(ctx context.Context, cfg torus.ClusterConfig) error {
	cfg, err := rules.Cluster(cfg)
	if err != nil {
		return err
	}
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	if m.initialized {
		return fmt.Errorf("metadata: init: cluster: %w", torus.ErrExist)
	}
	m.initialized = true
	m.cfg = cfg
	m.ring = rules.InitialRing(cfg)
	ring := cloneRing(m.ring)
	m.notifyLocked(torus.Change{Kind: torus.ChangeCluster}, torus.Change{Kind: torus.ChangeRing, Ring: &ring})
	return nil
}

// ClusterConfig implements torus.Metadata.
func (m *Memory) ClusterConfig(ctx context.Context) (torus.ClusterConfig, error) {
	if err := m.enter(ctx); err != nil {
		return torus.ClusterConfig{}, err
	}
	defer m.mu.Unlock()
	if !m.initialized {
		return torus.ClusterConfig{}, fmt.Errorf("metadata: %w", torus.ErrNotInitialized)
	}
	return m.cfg, nil
}

// PutPeer implements torus.Metadata.
func (m *Memory) PutPeer(ctx context.Context, p torus.PeerInfo) error {
	if err := rules.PeerID(p.ID); err != nil {
		return fmt.Errorf("metadata: put peer: %w", err)
	}
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	p.State, p.Used, p.Pending, p.LastSeen = "", 0, 0, time.Time{}
	if mp, ok := m.peers[p.ID]; ok {
		mp.info = p
	} else {
		m.peers[p.ID] = &memPeer{info: p}
	}
	m.notifyLocked(torus.Change{Kind: torus.ChangePeer, Name: p.ID})
	return nil
}

// Heartbeat implements torus.Metadata.
func (m *Memory) Heartbeat(ctx context.Context, s torus.Session, id string, b torus.Beat) error {
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	ms, err := m.sessionLocked(s)
	if err != nil {
		return err
	}
	p, ok := m.peers[id]
	if !ok {
		return fmt.Errorf("metadata: heartbeat: peer %q: %w", id, torus.ErrNotExist)
	}
	bad := rules.BeatBlocks(b.Unrepairable)
	beat := p.alive == ms.id && maps.EqualFunc(p.bad, bad, slices.Equal)
	p.alive, p.used, p.pending, p.lastSeen = ms.id, b.Used, b.Pending, time.Now().UTC()
	p.bad = bad
	if !beat {
		// A repeat beat is not reported (torus.Metadata.Heartbeat):
		// only liveness and findings changes are.
		m.notifyLocked(torus.Change{Kind: torus.ChangePeer, Name: id})
	}
	return nil
}

// Peers implements torus.Metadata.
func (m *Memory) Peers(ctx context.Context) ([]torus.PeerInfo, error) {
	if err := m.enter(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	members := rules.Members(m.ring)
	out := make([]torus.PeerInfo, 0, len(m.peers))
	for id, p := range m.peers {
		info := p.info
		info.Used, info.Pending, info.LastSeen = p.used, p.pending, p.lastSeen
		info.Unrepairable = maps.Clone(p.bad)
		info.Alive = p.alive != 0
		info.State = rules.PeerState(members[id], p.draining, p.removed, info.Alive)
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// DeletePeer implements torus.Metadata. A ring member cannot be deleted
// (ErrInvalid).
func (m *Memory) DeletePeer(ctx context.Context, id string) error {
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	if _, ok := m.peers[id]; !ok {
		return fmt.Errorf("metadata: delete peer %q: %w", id, torus.ErrNotExist)
	}
	if rules.Members(m.ring)[id] {
		return fmt.Errorf("metadata: delete peer %q: %w: still a ring member", id, torus.ErrInvalid)
	}
	delete(m.peers, id)
	m.notifyLocked(torus.Change{Kind: torus.ChangePeer, Name: id, Deleted: true})
	return nil
}

// SetDraining implements torus.Metadata.
func (m *Memory) SetDraining(ctx context.Context, id string, draining bool) error {
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	p, ok := m.peers[id]
	if !ok {
		return fmt.Errorf("metadata: drain peer %q: %w", id, torus.ErrNotExist)
	}
	p.draining = draining
	m.notifyLocked(torus.Change{Kind: torus.ChangePeer, Name: id})
	return nil
}

// Ring implements torus.Metadata.
func (m *Memory) Ring(ctx context.Context) (torus.RingSpec, error) {
	if err := m.enter(ctx); err != nil {
		return torus.RingSpec{}, err
	}
	defer m.mu.Unlock()
	if !m.initialized {
		return torus.RingSpec{}, fmt.Errorf("metadata: ring: %w", torus.ErrNotInitialized)
	}
	return cloneRing(m.ring), nil
}

// SetRing implements torus.Metadata. Peers dropped from the ring are marked
// removed; peers (re)added lose that mark.
func (m *Memory) SetRing(ctx context.Context, spec torus.RingSpec) error {
	if err := rules.Ring(spec); err != nil {
		return err
	}
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	return m.setRingLocked(spec, nil)
}

// JoinRing implements torus.Metadata: SetRing, if every joining peer still
// has its record.
func (m *Memory) JoinRing(ctx context.Context, spec torus.RingSpec, joined []string) error {
	if err := rules.JoinRing(spec, joined); err != nil {
		return err
	}
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	return m.setRingLocked(spec, joined)
}

// setRingLocked stores spec if its version follows the stored one and
// every peer of need has a record.
func (m *Memory) setRingLocked(spec torus.RingSpec, need []string) error {
	if !m.initialized {
		return fmt.Errorf("metadata: set ring: %w", torus.ErrNotInitialized)
	}
	if spec.Version != m.ring.Version+1 {
		return fmt.Errorf("metadata: set ring version %d: %w: stored version is %d", spec.Version, torus.ErrConflict, m.ring.Version)
	}
	for _, id := range need {
		if _, ok := m.peers[id]; !ok {
			return fmt.Errorf("metadata: set ring version %d: %w: joining peer %q has no record", spec.Version, torus.ErrConflict, id)
		}
	}
	oldMembers, newMembers := rules.Members(m.ring), rules.Members(spec)
	ring := cloneRing(spec)
	chs := []torus.Change{{Kind: torus.ChangeRing, Ring: &ring}}
	for id, p := range m.peers {
		if newMembers[id] {
			p.removed = false
		} else if oldMembers[id] {
			p.removed = true
			chs = append(chs, torus.Change{Kind: torus.ChangePeer, Name: id})
		}
	}
	m.ring = cloneRing(spec)
	m.notifyLocked(chs...)
	return nil
}

// Watch implements torus.Metadata.
func (m *Memory) Watch(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		close(ch)
		return ch
	}
	m.watchers[ch] = struct{}{}
	go func() {
		select {
		case <-ctx.Done():
		case <-m.done:
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		if _, ok := m.watchers[ch]; ok {
			delete(m.watchers, ch)
			close(ch)
		}
	}()
	return ch
}

func (m *Memory) volumeLocked(op, name string) (*memVolume, error) {
	v, ok := m.volumes[name]
	if !ok {
		return nil, fmt.Errorf("metadata: %s: volume %q: %w", op, name, torus.ErrNotExist)
	}
	return v, nil
}

// snapshotLocked returns volume's snapshot name, or ErrNotExist for op.
func (v *memVolume) snapshotLocked(op, volume, name string) (torus.Snapshot, error) {
	s, ok := v.snapshots[name]
	if !ok {
		return torus.Snapshot{}, fmt.Errorf("metadata: %s: snapshot %s@%s: %w", op, volume, name, torus.ErrNotExist)
	}
	return s, nil
}

// CreateVolume implements torus.Metadata. It needs an initialized cluster
// (ErrNotInitialized).
func (m *Memory) CreateVolume(ctx context.Context, v torus.VolumeInfo) (torus.VolumeInfo, error) {
	v.Parent, v.Shares = nil, nil
	if err := rules.Volume(v); err != nil {
		return torus.VolumeInfo{}, err
	}
	if err := m.enter(ctx); err != nil {
		return torus.VolumeInfo{}, err
	}
	defer m.mu.Unlock()
	return m.createLocked(v, torus.Head{})
}

// CloneVolume implements torus.Metadata.
func (m *Memory) CloneVolume(ctx context.Context, v torus.VolumeInfo, volume, snapshot string) (torus.VolumeInfo, error) {
	v.Parent, v.Shares = nil, nil
	if err := rules.Volume(v); err != nil {
		return torus.VolumeInfo{}, err
	}
	if err := m.enter(ctx); err != nil {
		return torus.VolumeInfo{}, err
	}
	defer m.mu.Unlock()
	src, err := m.volumeLocked("clone volume", volume)
	if err != nil {
		return torus.VolumeInfo{}, err
	}
	snap, err := src.snapshotLocked(fmt.Sprintf("clone volume %q", v.Name), volume, snapshot)
	if err != nil {
		return torus.VolumeInfo{}, err
	}
	v, head, err := rules.Clone(v, src.info, snap)
	if err != nil {
		return torus.VolumeInfo{}, err
	}
	return m.createLocked(v, head)
}

func (m *Memory) createLocked(v torus.VolumeInfo, head torus.Head) (torus.VolumeInfo, error) {
	if !m.initialized {
		return torus.VolumeInfo{}, fmt.Errorf("metadata: create volume %q: %w", v.Name, torus.ErrNotInitialized)
	}
	if _, ok := m.volumes[v.Name]; ok {
		return torus.VolumeInfo{}, fmt.Errorf("metadata: create volume %q: %w", v.Name, torus.ErrExist)
	}
	m.nextID++
	v.ID = m.nextID
	if v.Created.IsZero() {
		v.Created = time.Now().UTC()
	}
	v.Labels = rules.CloneLabels(v.Labels)
	v.Shares = slices.Clone(v.Shares)
	m.volumes[v.Name] = &memVolume{
		info:      v,
		head:      cloneHead(head),
		snapshots: make(map[string]torus.Snapshot),
		requests:  make(map[string]bool),
		results:   make(map[string]string),
	}
	hd := cloneHead(head)
	m.notifyLocked(torus.Change{Kind: torus.ChangeVolume, Name: v.Name}, torus.Change{Kind: torus.ChangeEpoch, Name: v.Name},
		torus.Change{Kind: torus.ChangeHead, Name: v.Name, Head: &hd})
	v.Labels = rules.CloneLabels(v.Labels)
	return v, nil
}

// infoCopy returns a copy of the volume record that shares no map with m.
func (v *memVolume) infoCopy() torus.VolumeInfo {
	info := v.info
	info.Labels = rules.CloneLabels(info.Labels)
	info.Shares = slices.Clone(info.Shares)
	if info.Parent != nil {
		p := *info.Parent
		info.Parent = &p
	}
	return info
}

// Volume implements torus.Metadata.
func (m *Memory) Volume(ctx context.Context, name string) (torus.VolumeInfo, error) {
	if err := m.enter(ctx); err != nil {
		return torus.VolumeInfo{}, err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("volume", name)
	if err != nil {
		return torus.VolumeInfo{}, err
	}
	return v.infoCopy(), nil
}

// Volumes implements torus.Metadata.
func (m *Memory) Volumes(ctx context.Context) ([]torus.VolumeInfo, error) {
	if err := m.enter(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	out := make([]torus.VolumeInfo, 0, len(m.volumes))
	for _, v := range m.volumes {
		out = append(out, v.infoCopy())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// UpdateVolume implements torus.Metadata.
func (m *Memory) UpdateVolume(ctx context.Context, upd torus.VolumeInfo) error {
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("update", upd.Name)
	if err != nil {
		return err
	}
	info, err := rules.Update(v.info, upd)
	if err != nil {
		return err
	}
	v.info = info
	m.notifyLocked(torus.Change{Kind: torus.ChangeVolume, Name: upd.Name})
	return nil
}

// SetVolumeLabels implements torus.Metadata.
func (m *Memory) SetVolumeLabels(ctx context.Context, volume string, set map[string]string, remove []string) (torus.VolumeInfo, error) {
	if err := m.enter(ctx); err != nil {
		return torus.VolumeInfo{}, err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("set labels", volume)
	if err != nil {
		return torus.VolumeInfo{}, err
	}
	labels, err := rules.Labels(volume, v.info.Labels, set, remove)
	if err != nil {
		return torus.VolumeInfo{}, err
	}
	v.info.Labels = labels
	m.notifyLocked(torus.Change{Kind: torus.ChangeVolume, Name: volume})
	return v.infoCopy(), nil
}

// DeleteVolume implements torus.Metadata. It also clears the default export
// if it named the volume.
func (m *Memory) DeleteVolume(ctx context.Context, name string) error {
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("delete", name)
	if err != nil {
		return err
	}
	if v.writer != nil {
		return fmt.Errorf("metadata: delete: %w",
			&torus.LockedError{Volume: name, Holder: v.writer.Owner, Epoch: v.writer.Epoch, InUse: true})
	}
	delete(m.volumes, name)
	delete(m.statuses, name)
	chs := []torus.Change{{Kind: torus.ChangeVolume, Name: name, Deleted: true}, {Kind: torus.ChangeEpoch, Name: name, Deleted: true},
		{Kind: torus.ChangeHead, Name: name, Deleted: true}}
	for sn := range v.snapshots {
		chs = append(chs, torus.Change{Kind: torus.ChangeSnapshot, Name: name, Snapshot: sn, Deleted: true})
	}
	if m.defExport == name {
		m.defExport = ""
		chs = append(chs, torus.Change{Kind: torus.ChangeCluster})
	}
	m.notifyLocked(chs...)
	return nil
}

// Lock implements torus.Metadata.
func (m *Memory) Lock(ctx context.Context, s torus.Session, volume string, w torus.WriterInfo) (uint64, error) {
	if w.Owner == "" {
		return 0, fmt.Errorf("metadata: lock %q: %w: empty owner", volume, torus.ErrInvalid)
	}
	if err := m.enter(ctx); err != nil {
		return 0, err
	}
	defer m.mu.Unlock()
	ms, err := m.sessionLocked(s)
	if err != nil {
		return 0, err
	}
	v, err := m.volumeLocked("lock", volume)
	if err != nil {
		return 0, err
	}
	if v.writer != nil {
		return 0, fmt.Errorf("metadata: lock: %w",
			&torus.LockedError{Volume: volume, Holder: v.writer.Owner, Epoch: v.writer.Epoch})
	}
	v.epoch++
	v.writer = &torus.WriterInfo{Owner: w.Owner, Identity: w.Identity, Epoch: v.epoch, Since: time.Now().UTC()}
	v.writerSes = ms.id
	m.notifyLocked(torus.Change{Kind: torus.ChangeEpoch, Name: volume, Epoch: v.epoch}, torus.Change{Kind: torus.ChangeWriter, Name: volume})
	return v.epoch, nil
}

// Unlock implements torus.Metadata.
func (m *Memory) Unlock(ctx context.Context, volume string, epoch uint64) error {
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	v, ok := m.volumes[volume]
	if !ok || v.writer == nil || v.writer.Epoch != epoch {
		return nil
	}
	v.writer, v.writerSes = nil, 0
	m.notifyLocked(torus.Change{Kind: torus.ChangeWriter, Name: volume, Deleted: true})
	return nil
}

// ForceUnlock implements torus.Metadata.
func (m *Memory) ForceUnlock(ctx context.Context, volume string) error {
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("force unlock", volume)
	if err != nil {
		return err
	}
	if v.writer != nil {
		v.writer, v.writerSes = nil, 0
		m.notifyLocked(torus.Change{Kind: torus.ChangeWriter, Name: volume, Deleted: true})
	}
	return nil
}

// Writer implements torus.Metadata.
func (m *Memory) Writer(ctx context.Context, volume string) (torus.WriterInfo, bool, error) {
	if err := m.enter(ctx); err != nil {
		return torus.WriterInfo{}, false, err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("writer", volume)
	if err != nil {
		return torus.WriterInfo{}, false, err
	}
	if v.writer == nil {
		return torus.WriterInfo{}, false, nil
	}
	return *v.writer, true, nil
}

// Epochs implements torus.Metadata.
func (m *Memory) Epochs(ctx context.Context) (map[uint64]uint64, error) {
	if err := m.enter(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	out := make(map[uint64]uint64, len(m.volumes))
	for _, v := range m.volumes {
		out[v.info.ID] = v.epoch
	}
	return out, nil
}

// Head implements torus.Metadata.
func (m *Memory) Head(ctx context.Context, volume string) (torus.Head, error) {
	if err := m.enter(ctx); err != nil {
		return torus.Head{}, err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("head", volume)
	if err != nil {
		return torus.Head{}, err
	}
	return cloneHead(v.head), nil
}

func (v *memVolume) fenced(op string, epoch uint64) error {
	if epoch != v.epoch || v.writer == nil {
		return fmt.Errorf("metadata: %s %q at epoch %d: %w", op, v.info.Name, epoch, torus.ErrFenced)
	}
	return nil
}

// CommitHead implements torus.Metadata.
func (m *Memory) CommitHead(ctx context.Context, volume string, epoch uint64, h torus.Head) error {
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("commit head", volume)
	if err != nil {
		return err
	}
	if err := v.fenced("commit head", epoch); err != nil {
		return err
	}
	v.head = cloneHead(h)
	hd := cloneHead(h)
	m.notifyLocked(torus.Change{Kind: torus.ChangeHead, Name: volume, Head: &hd})
	return nil
}

// RestoreSnapshot implements torus.Metadata.
func (m *Memory) RestoreSnapshot(ctx context.Context, epoch uint64, volume, name string) (torus.Head, error) {
	if err := m.enter(ctx); err != nil {
		return torus.Head{}, err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("restore snapshot", volume)
	if err != nil {
		return torus.Head{}, err
	}
	if err := v.fenced("restore snapshot", epoch); err != nil {
		return torus.Head{}, err
	}
	snap, err := v.snapshotLocked("restore snapshot", volume, name)
	if err != nil {
		return torus.Head{}, err
	}
	v.head = rules.Restore(v.head, snap, epoch)
	hd := cloneHead(v.head)
	m.notifyLocked(torus.Change{Kind: torus.ChangeHead, Name: volume, Head: &hd})
	return cloneHead(v.head), nil
}

// CreateSnapshot implements torus.Metadata.
func (m *Memory) CreateSnapshot(ctx context.Context, epoch uint64, s torus.Snapshot) error {
	if err := rules.Snapshot(s); err != nil {
		return err
	}
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("create snapshot", s.Volume)
	if err != nil {
		return err
	}
	if epoch != 0 {
		if err := v.fenced("create snapshot", epoch); err != nil {
			return err
		}
	}
	if _, ok := v.snapshots[s.Name]; ok {
		return fmt.Errorf("metadata: create snapshot %s@%s: %w", s.Volume, s.Name, torus.ErrExist)
	}
	if s.Created.IsZero() {
		s.Created = time.Now().UTC()
	}
	s.Head = cloneHead(s.Head)
	v.snapshots[s.Name] = s
	m.notifyLocked(torus.Change{Kind: torus.ChangeSnapshot, Name: s.Volume, Snapshot: s.Name})
	return nil
}

// Snapshots implements torus.Metadata.
func (m *Memory) Snapshots(ctx context.Context, volume string) ([]torus.Snapshot, error) {
	if err := m.enter(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("snapshots", volume)
	if err != nil {
		return nil, err
	}
	out := make([]torus.Snapshot, 0, len(v.snapshots))
	for _, s := range v.snapshots {
		s.Head = cloneHead(s.Head)
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Snapshot implements torus.Metadata.
func (m *Memory) Snapshot(ctx context.Context, volume, name string) (torus.Snapshot, error) {
	if err := m.enter(ctx); err != nil {
		return torus.Snapshot{}, err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("snapshot", volume)
	if err != nil {
		return torus.Snapshot{}, err
	}
	s, err := v.snapshotLocked("snapshot", volume, name)
	if err != nil {
		return torus.Snapshot{}, err
	}
	s.Head = cloneHead(s.Head)
	return s, nil
}

// DeleteSnapshot implements torus.Metadata.
func (m *Memory) DeleteSnapshot(ctx context.Context, volume, name string) error {
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("delete snapshot", volume)
	if err != nil {
		return err
	}
	if _, err := v.snapshotLocked("delete snapshot", volume, name); err != nil {
		return err
	}
	delete(v.snapshots, name)
	m.notifyLocked(torus.Change{Kind: torus.ChangeSnapshot, Name: volume, Snapshot: name, Deleted: true})
	return nil
}

// RequestSnapshot implements torus.Metadata. ErrExist if a snapshot or a
// pending request has that name; an earlier result of that name is cleared.
func (m *Memory) RequestSnapshot(ctx context.Context, volume, name string) error {
	if err := rules.SnapshotName(volume, name); err != nil {
		return err
	}
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("request snapshot", volume)
	if err != nil {
		return err
	}
	if _, ok := v.snapshots[name]; ok || v.requests[name] {
		return fmt.Errorf("metadata: request snapshot %s@%s: %w", volume, name, torus.ErrExist)
	}
	delete(v.results, name)
	v.requests[name] = true
	m.notifyLocked(torus.Change{Kind: torus.ChangeSnapshot, Name: volume, Snapshot: name})
	return nil
}

// SnapshotRequests implements torus.Metadata.
func (m *Memory) SnapshotRequests(ctx context.Context, volume string) ([]string, error) {
	if err := m.enter(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("snapshot requests", volume)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(v.requests))
	for n := range v.requests {
		out = append(out, n)
	}
	slices.Sort(out)
	return out, nil
}

// DoneSnapshotRequest implements torus.Metadata. ErrNotExist if no such
// request is pending.
func (m *Memory) DoneSnapshotRequest(ctx context.Context, volume, name, failure string) error {
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("done snapshot request", volume)
	if err != nil {
		return err
	}
	if !v.requests[name] {
		return fmt.Errorf("metadata: done snapshot request %s@%s: %w", volume, name, torus.ErrNotExist)
	}
	delete(v.requests, name)
	v.results[name] = failure
	m.notifyLocked(torus.Change{Kind: torus.ChangeSnapshot, Name: volume, Snapshot: name})
	return nil
}

// SnapshotRequestResult implements torus.Metadata. ErrNotExist if the
// request was never made.
func (m *Memory) SnapshotRequestResult(ctx context.Context, volume, name string) (bool, string, error) {
	if err := m.enter(ctx); err != nil {
		return false, "", err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("snapshot request result", volume)
	if err != nil {
		return false, "", err
	}
	if f, ok := v.results[name]; ok {
		return true, f, nil
	}
	if v.requests[name] {
		return false, "", nil
	}
	return false, "", fmt.Errorf("metadata: snapshot request %s@%s: %w", volume, name, torus.ErrNotExist)
}

// DefaultExport implements torus.Metadata.
func (m *Memory) DefaultExport(ctx context.Context) (string, error) {
	if err := m.enter(ctx); err != nil {
		return "", err
	}
	defer m.mu.Unlock()
	return m.defExport, nil
}

// SetDefaultExport implements torus.Metadata. The volume must exist
// (ErrNotExist); "" clears the setting.
func (m *Memory) SetDefaultExport(ctx context.Context, volume string) error {
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	if volume != "" {
		if _, err := m.volumeLocked("set default export", volume); err != nil {
			return err
		}
	}
	m.defExport = volume
	m.notifyLocked(torus.Change{Kind: torus.ChangeCluster})
	return nil
}

// PutVolumeStatuses implements torus.Metadata. Statuses of volumes that do
// not exist (or whose ID differs) are dropped, and so are stored statuses of
// volumes that no longer exist; stored statuses of existing volumes missing
// from st are kept. It does not signal watchers: statuses are refreshed
// every few seconds and nobody reacts to them.
func (m *Memory) PutVolumeStatuses(ctx context.Context, st []torus.VolumeStatus) error {
	if err := rules.VolumeStatuses(st); err != nil {
		return err
	}
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	for _, s := range st {
		if v, ok := m.volumes[s.Volume]; ok && rules.StatusMatches(s, v.info) {
			m.statuses[s.Volume] = s
		}
	}
	for name := range m.statuses {
		if _, ok := m.volumes[name]; !ok {
			delete(m.statuses, name)
		}
	}
	return nil
}

// VolumeStatuses implements torus.Metadata.
func (m *Memory) VolumeStatuses(ctx context.Context) (map[string]torus.VolumeStatus, error) {
	if err := m.enter(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	out := make(map[string]torus.VolumeStatus, len(m.statuses))
	for name, s := range m.statuses {
		out[name] = s
	}
	return out, nil
}

// Close ends every session, closes every watch channel and makes further
// calls fail with ErrClosed. Idempotent.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	for id := range m.sessions {
		m.expireLocked(id)
	}
	m.closed = true
	close(m.done)
	for ch := range m.watchers {
		delete(m.watchers, ch)
		close(ch)
	}
	return nil
}

func cloneHead(h torus.Head) torus.Head { return h.Clone() }

func cloneRing(r torus.RingSpec) torus.RingSpec {
	r.Members = slices.Clone(r.Members)
	return r
}
