package storage

import (
	"container/list"
	"sync"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/vfs"
)

// fdCache is a bounded LRU of open segment files. A file handed out by get
// stays open until it is released, even if it is evicted meanwhile; so the
// cache holds at most max idle files, plus those in use.
type fdCache struct {
	mu      sync.Mutex
	max     int
	lru     *list.List // of *fdEntry, most recently used at the front
	entries map[torus.SegmentID]*fdEntry
}

type fdEntry struct {
	id      torus.SegmentID
	f       vfs.File
	refs    int
	elem    *list.Element // nil once out of the cache
	dropped bool          // out of the cache: close at the last release
}

func newFDCache(max int) *fdCache {
	return &fdCache{max: max, lru: list.New(), entries: make(map[torus.SegmentID]*fdEntry)}
}

// get returns the cached file of id, or opens one with open and caches it.
// The caller must release the entry.
func (c *fdCache) get(id torus.SegmentID, open func() (vfs.File, error)) (*fdEntry, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[id]; e != nil {
		e.refs++
		c.lru.MoveToFront(e.elem)
		return e, nil
	}
	f, err := open()
	if err != nil {
		return nil, err
	}
	e := &fdEntry{id: id, f: f, refs: 1}
	e.elem = c.lru.PushFront(e)
	c.entries[id] = e
	c.evictLocked()
	return e, nil
}

// add caches a file the caller has just opened (a new segment) and returns
// it referenced once. An entry already cached for id is dropped.
func (c *fdCache) add(id torus.SegmentID, f vfs.File) *fdEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.entries[id]; old != nil {
		c.dropLocked(old)
	}
	e := &fdEntry{id: id, f: f, refs: 1}
	e.elem = c.lru.PushFront(e)
	c.entries[id] = e
	c.evictLocked()
	return e
}

func (c *fdCache) release(e *fdEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e.refs--
	if e.refs == 0 && e.dropped {
		_ = e.f.Close()
	}
}

// forget drops id's file from the cache (closing it once unused).
func (c *fdCache) forget(id torus.SegmentID) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.entries[id]; e != nil {
		c.dropLocked(e)
	}
}

func (c *fdCache) dropLocked(e *fdEntry) {
	delete(c.entries, e.id)
	c.lru.Remove(e.elem)
	e.elem = nil
	e.dropped = true
	if e.refs == 0 {
		_ = e.f.Close()
	}
}

// evictLocked drops the least recently used files until at most max are
// cached. Files in use are dropped from the cache too and closed when
// released.
func (c *fdCache) evictLocked() {
	for c.lru.Len() > c.max {
		c.dropLocked(c.lru.Back().Value.(*fdEntry))
	}
}

// closeAll drops every file; called by Close once no operation is running.
func (c *fdCache) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.entries {
		c.dropLocked(e)
	}
}

// open reports how many files are cached (for tests).
func (c *fdCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
