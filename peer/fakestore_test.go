package peer

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/torus-storage/torus"
)

// fakeStore is a tiny in-memory torus.Store with an error hook, enough for
// the tests of this package.
type fakeStore struct {
	mu       sync.Mutex
	segs     map[torus.SegmentID]*fakeSeg
	capacity int64
	used     int64
	closed   bool
	// hook, when set, runs first in every method; a non-nil error is
	// returned as is.
	hook func(ctx context.Context, op string, seg torus.SegmentID) error
}

type fakeSeg struct {
	data   []byte
	synced int64
}

func newFakeStore(capacity int64) *fakeStore {
	return &fakeStore{segs: make(map[torus.SegmentID]*fakeSeg), capacity: capacity}
}

func (s *fakeStore) check(ctx context.Context, op string, seg torus.SegmentID) error {
	s.mu.Lock()
	hook, closed := s.hook, s.closed
	s.mu.Unlock()
	if closed {
		return fmt.Errorf("fake store: %s: %w", op, torus.ErrClosed)
	}
	if hook != nil {
		if err := hook(ctx, op, seg); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func (s *fakeStore) setHook(h func(ctx context.Context, op string, seg torus.SegmentID) error) {
	s.mu.Lock()
	s.hook = h
	s.mu.Unlock()
}

func (s *fakeStore) Append(ctx context.Context, seg torus.SegmentID, off int64, p []byte) error {
	if err := s.check(ctx, "append", seg); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sg := s.segs[seg]
	var cur int64
	if sg != nil {
		cur = int64(len(sg.data))
	}
	if off != cur {
		if sg != nil && off >= 0 && off+int64(len(p)) <= cur && bytes.Equal(sg.data[off:off+int64(len(p))], p) {
			return nil
		}
		return fmt.Errorf("fake store: append %s at %d, length is %d: %w", seg, off, cur, torus.ErrConflict)
	}
	if s.capacity > 0 && s.used+int64(len(p)) > s.capacity {
		return fmt.Errorf("fake store: append %s: %w", seg, torus.ErrNoSpace)
	}
	if sg == nil {
		sg = &fakeSeg{}
		s.segs[seg] = sg
	}
	sg.data = append(sg.data, p...)
	s.used += int64(len(p))
	return nil
}

func (s *fakeStore) Sync(ctx context.Context, seg torus.SegmentID) (int64, error) {
	if err := s.check(ctx, "sync", seg); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sg := s.segs[seg]
	if sg == nil {
		return 0, fmt.Errorf("fake store: sync %s: %w", seg, torus.ErrNotExist)
	}
	sg.synced = int64(len(sg.data))
	return sg.synced, nil
}

func (s *fakeStore) ReadAt(ctx context.Context, seg torus.SegmentID, p []byte, off int64) (int, error) {
	if err := s.check(ctx, "readat", seg); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sg := s.segs[seg]
	if sg == nil {
		return 0, fmt.Errorf("fake store: read %s: %w", seg, torus.ErrNotExist)
	}
	if off >= int64(len(sg.data)) {
		if len(p) == 0 && off == int64(len(sg.data)) {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := copy(p, sg.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (s *fakeStore) Stat(ctx context.Context, seg torus.SegmentID) (torus.SegmentInfo, error) {
	if err := s.check(ctx, "stat", seg); err != nil {
		return torus.SegmentInfo{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sg := s.segs[seg]
	if sg == nil {
		return torus.SegmentInfo{}, fmt.Errorf("fake store: stat %s: %w", seg, torus.ErrNotExist)
	}
	return torus.SegmentInfo{ID: seg, Length: int64(len(sg.data)), Synced: sg.synced}, nil
}

func (s *fakeStore) List(ctx context.Context, volume uint64) ([]torus.SegmentInfo, error) {
	if err := s.check(ctx, "list", torus.SegmentID{Volume: volume}); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []torus.SegmentInfo
	for id, sg := range s.segs {
		if volume == 0 || id.Volume == volume {
			out = append(out, torus.SegmentInfo{ID: id, Length: int64(len(sg.data)), Synced: sg.synced})
		}
	}
	return out, nil
}

func (s *fakeStore) Delete(ctx context.Context, seg torus.SegmentID) error {
	if err := s.check(ctx, "delete", seg); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sg := s.segs[seg]; sg != nil {
		s.used -= int64(len(sg.data))
		delete(s.segs, seg)
	}
	return nil
}

func (s *fakeStore) Usage() torus.Usage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return torus.Usage{Used: s.used, Capacity: s.capacity}
}

func (s *fakeStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}
