package volume

import (
	"container/list"
	"context"
	"fmt"
	"log/slog"
	"sync"

	"github.com/torus-storage/torus"
)

// TableCache remembers the segment tables of checkpoints already read.
// Checkpoint segments are immutable, so an entry never goes stale; the
// cache only bounds its size: past MaxRefs segment references in all, the
// least recently used tables are dropped (one at a time, so a working set
// that fits stays cached however many volumes there are). Safe for
// concurrent use. The zero value is ready.
type TableCache struct {
	// MaxRefs bounds the segment references held, over all tables.
	// Default DefaultTableCacheRefs. Set before first use.
	MaxRefs int

	mu   sync.Mutex
	m    map[torus.SegmentID]*list.Element // of *tableEntry
	lru  list.List                         // front: most recently used
	refs int
}

// DefaultTableCacheRefs is TableCache's default bound: about 40 MiB of
// references.
const DefaultTableCacheRefs = 1 << 20

type tableEntry struct {
	id    torus.SegmentID
	table []torus.SegmentRef
}

func (c *TableCache) get(id torus.SegmentID) ([]torus.SegmentRef, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	if !ok {
		return nil, false
	}
	c.lru.MoveToFront(e)
	return e.Value.(*tableEntry).table, true
}

func (c *TableCache) put(id torus.SegmentID, t []torus.SegmentRef) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[torus.SegmentID]*list.Element)
	}
	if e, ok := c.m[id]; ok {
		c.lru.MoveToFront(e)
		return
	}
	c.m[id] = c.lru.PushFront(&tableEntry{id: id, table: t})
	c.refs += len(t)
	limit := c.MaxRefs
	if limit <= 0 {
		limit = DefaultTableCacheRefs
	}
	for c.refs > limit && c.lru.Len() > 1 {
		old := c.lru.Remove(c.lru.Back()).(*tableEntry)
		delete(c.m, old.id)
		c.refs -= len(old.table)
	}
}

// Len reports how many tables the cache holds.
func (c *TableCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// Unknown is the length LiveSegmentLengths reports for a live segment
// whose final length is not fixed yet (the open segment, and the segments
// the writer may be creating).
const Unknown = -1

// LiveSegmentLengths is LiveSegments with each segment's authoritative
// length: from the head or snapshot that seals it, from the checkpoint's
// segment table, or Unknown for segments still being written. Healing
// copies sealed segments up to that length. cache may be nil.
func LiveSegmentLengths(ctx context.Context, meta torus.Metadata, peers torus.PeerPool, volumeName string, cache *TableCache) (map[torus.SegmentID]int64, error) {
	v := &Volume{
		meta:  meta,
		peers: peers,
		log:   slog.New(slog.DiscardHandler),
		name:  volumeName,
		ro:    true,
		segs:  make(map[torus.SegmentID]*segState),
	}
	info, err := meta.Volume(ctx, volumeName)
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", volumeName, err)
	}
	v.id = info.ID
	// The cluster config, ring and peers are needed only to read a
	// checkpoint's table from its replicas: read them at the first table
	// the cache does not hold, so that a volume whose tables are cached
	// costs its record, heads and snapshots only.
	prepared := false
	prepare := func() error {
		if prepared {
			return nil
		}
		cfg, err := meta.ClusterConfig(ctx)
		if err != nil {
			return err
		}
		cfg.EnsureDefaults()
		v.cfg = cfg
		v.setInfo(info)
		if err := v.refreshCluster(ctx); err != nil {
			return err
		}
		prepared = true
		return nil
	}
	head, err := meta.Head(ctx, volumeName)
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", volumeName, err)
	}
	snaps, err := meta.Snapshots(ctx, volumeName)
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", volumeName, err)
	}
	// The head once more, after the snapshots: a restore (RestoreSnapshot)
	// between the first head read and the snapshot read may have moved a
	// snapshot's segments into the head and the snapshot may be gone
	// since; the second read sees them. (A head that moves on past the
	// second read names only segments created after the caller's listing.)
	again, err := meta.Head(ctx, volumeName)
	if err != nil {
		return nil, fmt.Errorf("volume %s: %w", volumeName, err)
	}
	live := make(map[torus.SegmentID]int64)
	set := func(id torus.SegmentID, n int64) {
		if old, ok := live[id]; !ok || old == Unknown {
			live[id] = n
		}
	}
	for _, k := range []torus.SegmentKind{torus.KindData, torus.KindCheckpoint} {
		set(torus.SegmentID{Volume: info.ID, Epoch: head.Epoch, Seq: head.NextSeq, Kind: k}, Unknown)
		set(torus.SegmentID{Volume: info.ID, Epoch: again.Epoch, Seq: again.NextSeq, Kind: k}, Unknown)
	}
	heads := []torus.Head{head, again}
	for _, s := range snaps {
		heads = append(heads, s.Head)
	}
	for _, h := range heads {
		for _, s := range h.Sealed {
			set(s.ID, s.Length)
		}
		if h.Open != nil {
			set(*h.Open, Unknown)
		}
		if h.Checkpointing != nil {
			set(*h.Checkpointing, Unknown) // being written in the background
		}
		ck := h.Checkpoint
		if ck == nil {
			continue
		}
		set(ck.ID, ck.Length)
		table, ok := cache.get(ck.ID)
		if !ok {
			if err := prepare(); err != nil {
				return nil, err
			}
			if table, err = v.checkpointTable(ctx, *ck); err != nil {
				return nil, err
			}
			cache.put(ck.ID, table)
		}
		for _, s := range table {
			set(s.ID, s.Length)
		}
	}
	return live, nil
}
