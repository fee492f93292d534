package storage

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"sync"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/vfs"
)

// Operation names passed to a Memory fault hook (see SetFault).
const (
	OpAppend = "append"
	OpSync   = "sync"
	OpRead   = "read"
	OpStat   = "stat"
	OpList   = "list"
	OpDelete = "delete"
)

// Memory is an in-memory torus.Store for tests of other packages. It keeps
// every segment as a byte slice and remembers how much of each was synced, so
// Crash can simulate a power loss. It is safe for concurrent use.
type Memory struct {
	mu       sync.RWMutex
	capacity int64
	used     int64
	closed   bool
	segs     map[torus.SegmentID]*memSegment
	fault    func(op string, seg torus.SegmentID) error
}

type memSegment struct {
	data   []byte
	synced int64
}

var _ torus.Store = (*Memory)(nil)

// NewMemory returns an empty in-memory store that holds at most capacity
// bytes. A capacity <= 0 means no limit; Usage then reports math.MaxInt64.
func NewMemory(capacity int64) *Memory {
	if capacity <= 0 {
		capacity = math.MaxInt64
	}
	return &Memory{capacity: capacity, segs: make(map[torus.SegmentID]*memSegment)}
}

// SetFault installs a fault hook, or removes it when f is nil. Before every
// Append, Sync, ReadAt, Stat, List and Delete the store calls f with the
// operation's name (OpAppend, OpSync, OpRead, OpStat, OpList, OpDelete) and
// its segment (for List: a SegmentID with only Volume set). A non-nil result
// fails the call: it is returned wrapped (errors.Is holds) and the call
// changes nothing. f is called without the store's lock held, so it may
// block (to hold a call in flight) or call into the store.
func (m *Memory) SetFault(f func(op string, seg torus.SegmentID) error) {
	m.mu.Lock()
	m.fault = f
	m.mu.Unlock()
}

// Crash simulates a power loss: every segment is cut back to the length it
// had at its last successful Sync; segments never synced disappear. The
// store stays open and usable afterwards, like a restarted daemon.
func (m *Memory) Crash() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, s := range m.segs {
		if s.synced == 0 {
			delete(m.segs, id)
			m.used -= int64(len(s.data))
			continue
		}
		m.used -= int64(len(s.data)) - s.synced
		// Copy so a later append cannot resurrect the cut bytes through
		// the old backing array.
		s.data = append([]byte(nil), s.data[:s.synced]...)
	}
}

// CrashTorn simulates a power loss that tears what was not synced, decided
// by seed alone: every segment keeps the bytes of its last successful Sync,
// and its unsynced tail is dropped, kept in part, or cut at a random length
// and filled past a random real prefix with zeros or random garbage
// (vfs.TornTail). So it is never longer than before, and whatever differs
// from what was appended lies past the synced length. A segment left
// with no bytes disappears. Afterwards Synced = Length for every segment, as
// for a Disk reopened after a power loss (the reopened store makes what it
// found durable). Unlike Crash, the bytes past the synced length may be
// garbage: the volume layer's record CRCs must reject them. The store stays
// open.
func (m *Memory) CrashTorn(seed uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rng := rand.New(rand.NewPCG(seed, 0x746f726e))
	ids := slices.SortedFunc(maps.Keys(m.segs), func(a, b torus.SegmentID) int {
		return cmp.Or(cmp.Compare(a.Volume, b.Volume), cmp.Compare(a.Epoch, b.Epoch),
			cmp.Compare(a.Seq, b.Seq), cmp.Compare(a.Kind, b.Kind))
	})
	for _, id := range ids {
		s := m.segs[id]
		tail, _ := vfs.TornTail(rng, s.data[s.synced:])
		data := append(append([]byte(nil), s.data[:s.synced]...), tail...)
		m.used += int64(len(data)) - int64(len(s.data))
		if len(data) == 0 {
			delete(m.segs, id)
			continue
		}
		s.data = data
		s.synced = int64(len(data))
	}
}

// check runs the shared preamble of every operation: closed store, done
// context, fault hook.
func (m *Memory) check(ctx context.Context, op string, seg torus.SegmentID) error {
	m.mu.RLock()
	closed, fault := m.closed, m.fault
	m.mu.RUnlock()
	if closed {
		return fmt.Errorf("storage: memory %s %s: %w", op, seg, torus.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("storage: memory %s %s: %w", op, seg, err)
	}
	if fault != nil {
		if err := fault(op, seg); err != nil {
			return fmt.Errorf("storage: memory %s %s: injected fault: %w", op, seg, err)
		}
	}
	return nil
}

// Append implements torus.Store.
func (m *Memory) Append(ctx context.Context, seg torus.SegmentID, off int64, p []byte) error {
	if err := m.check(ctx, OpAppend, seg); err != nil {
		return err
	}
	if off < 0 {
		return fmt.Errorf("storage: append %s at offset %d: %w", seg, off, torus.ErrInvalid)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("storage: memory append %s: %w", seg, torus.ErrClosed)
	}
	s := m.segs[seg]
	var length int64
	if s != nil {
		length = int64(len(s.data))
	}
	if off != length {
		return appendMismatch(seg, off, length, p, func(q []byte) error {
			copy(q, s.data[off:])
			return nil
		})
	}
	if len(p) == 0 {
		return nil
	}
	if int64(len(p)) > m.capacity-m.used {
		return noSpace(seg, len(p), m.used, m.capacity)
	}
	if s == nil {
		s = &memSegment{}
		m.segs[seg] = s
	}
	s.data = append(s.data, p...)
	m.used += int64(len(p))
	return nil
}

// appendMismatch decides an append whose offset is not the segment's length:
// a retry of bytes already stored succeeds (nil), anything else is
// ErrConflict. read fills its argument with the stored bytes at off; it is
// only called when [off, off+len(p)) lies within length.
func appendMismatch(seg torus.SegmentID, off, length int64, p []byte, read func([]byte) error) error {
	if off < length && off+int64(len(p)) <= length {
		if len(p) == 0 {
			return nil
		}
		have := make([]byte, len(p))
		if err := read(have); err != nil {
			return fmt.Errorf("storage: append %s at %d: reading the stored bytes to compare: %w", seg, off, err)
		}
		if bytes.Equal(have, p) {
			return nil
		}
		return fmt.Errorf("storage: append %s at %d (%d bytes): differs from the bytes stored there: %w",
			seg, off, len(p), torus.ErrConflict)
	}
	return fmt.Errorf("storage: append %s at %d (%d bytes): segment length is %d: %w",
		seg, off, len(p), length, torus.ErrConflict)
}

func noSpace(seg torus.SegmentID, n int, used, capacity int64) error {
	return fmt.Errorf("storage: append %s (%d bytes): %d of %d bytes used: %w",
		seg, n, used, capacity, torus.ErrNoSpace)
}

// Sync implements torus.Store.
func (m *Memory) Sync(ctx context.Context, seg torus.SegmentID) (int64, error) {
	if err := m.check(ctx, OpSync, seg); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.segs[seg]
	if s == nil {
		return 0, fmt.Errorf("storage: sync %s: %w", seg, torus.ErrNotExist)
	}
	s.synced = int64(len(s.data))
	return s.synced, nil
}

// ReadAt implements torus.Store.
func (m *Memory) ReadAt(ctx context.Context, seg torus.SegmentID, p []byte, off int64) (int, error) {
	if err := m.check(ctx, OpRead, seg); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("storage: read %s at offset %d: %w", seg, off, torus.ErrInvalid)
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	s := m.segs[seg]
	if s == nil {
		return 0, fmt.Errorf("storage: read %s: %w", seg, torus.ErrNotExist)
	}
	if off >= int64(len(s.data)) {
		return 0, io.EOF
	}
	n := copy(p, s.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Stat implements torus.Store.
func (m *Memory) Stat(ctx context.Context, seg torus.SegmentID) (torus.SegmentInfo, error) {
	if err := m.check(ctx, OpStat, seg); err != nil {
		return torus.SegmentInfo{}, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	s := m.segs[seg]
	if s == nil {
		return torus.SegmentInfo{}, fmt.Errorf("storage: stat %s: %w", seg, torus.ErrNotExist)
	}
	return torus.SegmentInfo{ID: seg, Length: int64(len(s.data)), Synced: s.synced}, nil
}

// List implements torus.Store.
func (m *Memory) List(ctx context.Context, volume uint64) ([]torus.SegmentInfo, error) {
	if err := m.check(ctx, OpList, torus.SegmentID{Volume: volume}); err != nil {
		return nil, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []torus.SegmentInfo
	for id, s := range m.segs {
		if volume == 0 || id.Volume == volume {
			out = append(out, torus.SegmentInfo{ID: id, Length: int64(len(s.data)), Synced: s.synced})
		}
	}
	return out, nil
}

// Delete implements torus.Store.
func (m *Memory) Delete(ctx context.Context, seg torus.SegmentID) error {
	if err := m.check(ctx, OpDelete, seg); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.segs[seg]; s != nil {
		m.used -= int64(len(s.data))
		delete(m.segs, seg)
	}
	return nil
}

// Usage implements torus.Store. It keeps working after Close.
func (m *Memory) Usage() torus.Usage {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return torus.Usage{Used: m.used, Capacity: m.capacity}
}

// Close implements torus.Store. A second Close returns ErrClosed.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("storage: memory close: %w", torus.ErrClosed)
	}
	m.closed = true
	return nil
}
