package lsm

import (
	"container/list"
	"sync"
)

// Cache holds decoded pages of runs up to a fixed number of bytes (their
// encoded size), least recently used out first. One Cache serves every
// run of a process; it is safe for concurrent use. The extents it returns
// are shared: callers must not modify them.
type Cache struct {
	mu    sync.Mutex
	limit int64
	used  int64
	lru   *list.List // of *cached, front most recent
	items map[cacheKey]*list.Element

	hits, misses int64
}

type cacheKey struct {
	run  uint64
	page int
}

type cached struct {
	key  cacheKey
	es   []Extent
	cost int64
}

// NewCache returns a cache of at most limit bytes. A nil *Cache caches
// nothing: every lookup reads its page.
func NewCache(limit int64) *Cache {
	return &Cache{limit: limit, lru: list.New(), items: make(map[cacheKey]*list.Element)}
}

func (c *Cache) get(run uint64, page int) ([]Extent, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[cacheKey{run, page}]
	if !ok {
		c.misses++
		return nil, false
	}
	c.hits++
	c.lru.MoveToFront(el)
	return el.Value.(*cached).es, true
}

func (c *Cache) put(run uint64, page int, es []Extent, cost int64) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	k := cacheKey{run, page}
	if _, ok := c.items[k]; ok || cost > c.limit {
		return
	}
	c.items[k] = c.lru.PushFront(&cached{key: k, es: es, cost: cost})
	c.used += cost
	for c.used > c.limit {
		el := c.lru.Back()
		v := el.Value.(*cached)
		c.lru.Remove(el)
		delete(c.items, v.key)
		c.used -= v.cost
	}
}

// Stats reports the bytes held and the hits and misses so far.
func (c *Cache) Stats() (used, hits, misses int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.used, c.hits, c.misses
}
