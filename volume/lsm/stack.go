package lsm

import (
	"context"
	"slices"

	"github.com/torus-storage/torus"
)

// Memtable holds the mappings made since the last checkpoint, by block.
// It is not safe for concurrent use.
type Memtable struct {
	m map[uint64]memEntry
}

type memEntry struct {
	hole bool
	seg  torus.SegmentID
	off  int64
	crc  uint32
}

// NewMemtable returns an empty memtable.
func NewMemtable() *Memtable { return &Memtable{m: make(map[uint64]memEntry)} }

// Map records that blocks first.. are stored in seg from off, one CRC each.
func (t *Memtable) Map(first uint64, seg torus.SegmentID, off int64, crcs []uint32) {
	for i, c := range crcs {
		t.m[first+uint64(i)] = memEntry{seg: seg, off: off + int64(i)*BlockSize, crc: c}
	}
}

// Unmap records that count blocks from first are unmapped.
func (t *Memtable) Unmap(first, count uint64) {
	for b := first; b < first+count; b++ {
		t.m[b] = memEntry{hole: true}
	}
}

// Len is the number of blocks the memtable says something about.
func (t *Memtable) Len() int { return len(t.m) }

// Lookup returns what the memtable says about block b: an extent of one
// block (a hole for an unmap), or ok=false.
func (t *Memtable) Lookup(b uint64) (Extent, bool) {
	e, ok := t.m[b]
	if !ok {
		return Extent{}, false
	}
	if e.hole {
		return Extent{First: b, Count: 1, Hole: true}, true
	}
	return Extent{First: b, Count: 1, Seg: e.seg, Off: e.off, CRCs: []uint32{e.crc}}, true
}

// Extents returns the memtable as sorted extents, consecutive blocks
// stored consecutively joined into one: what a checkpoint encodes.
func (t *Memtable) Extents() []Extent {
	blocks := make([]uint64, 0, len(t.m))
	for b := range t.m {
		blocks = append(blocks, b)
	}
	slices.Sort(blocks)
	var out []Extent
	for _, b := range blocks {
		e, _ := t.Lookup(b)
		if n := len(out); n > 0 && out[n-1].continues(e) {
			last := &out[n-1]
			if !last.Hole {
				last.CRCs = append(last.CRCs, e.CRCs...)
			}
			last.Count++
			continue
		}
		out = append(out, e)
	}
	return out
}

// Stack is a memtable over runs, newest first: the index of a volume.
type Stack struct {
	Mem  *Memtable
	Runs []*Run // newest first
}

// Lookup returns the location of block b, or ok=false when it is unmapped
// (no layer covers it, or the newest layer that does holds a hole).
func (s *Stack) Lookup(ctx context.Context, b uint64) (e Extent, ok bool, err error) {
	if s.Mem != nil {
		if e, ok := s.Mem.Lookup(b); ok {
			return e, !e.Hole, nil
		}
	}
	for _, r := range s.Runs {
		e, ok, err := r.Lookup(ctx, b)
		if err != nil {
			return Extent{}, false, err
		}
		if ok {
			return e, !e.Hole, nil
		}
	}
	return Extent{}, false, nil
}

// Plan chooses the runs to merge next under the tiered policy: sizes are
// the runs' sizes in bytes, newest first; a run's tier is how many times
// fanout its size is over base. Runs adjacent in the stack and of one
// tier, fanout of them or more, are merged: Plan returns the index of the
// newest and the count (from, n), or n = 0 when nothing is due. The oldest
// full tier is chosen first, so a merge's output never jumps over a
// smaller run.
func Plan(sizes []int64, base int64, fanout int) (from, n int) {
	if fanout < 2 || base <= 0 {
		return 0, 0
	}
	tier := func(sz int64) int {
		t := 0
		for lim := base * int64(fanout); sz >= lim && t < 62; lim *= int64(fanout) {
			t++
		}
		return t
	}
	best, bestN := 0, 0
	for i := 0; i < len(sizes); {
		j := i + 1
		for j < len(sizes) && tier(sizes[j]) == tier(sizes[i]) {
			j++
		}
		if j-i >= fanout {
			best, bestN = i, j-i
		}
		i = j
	}
	return best, bestN
}

// Simulated is what SimulateCheckpoints reports.
type Simulated struct {
	Written int64 // bytes of runs written, checkpoints and merges
	MaxRuns int   // most runs in the stack after any step
}

// SimulateCheckpoints plays n checkpoints of one run of size bytes each,
// merging by Plan(base = size) after each, with mappings that never
// overwrite each other (random writes over a volume much larger than what
// was written: the worst case for a merge). It is what the write
// amplification of the index at a given volume size is computed from.
func SimulateCheckpoints(n int, size int64, fanout int) Simulated {
	var sim Simulated
	var sizes []int64 // newest first
	for range n {
		sizes = append([]int64{size}, sizes...)
		sim.Written += size
		for {
			from, k := Plan(sizes, size, fanout)
			if k == 0 {
				break
			}
			var sum int64
			for _, s := range sizes[from : from+k] {
				sum += s
			}
			sim.Written += sum
			sizes = slices.Replace(sizes, from, from+k, sum)
		}
		sim.MaxRuns = max(sim.MaxRuns, len(sizes))
	}
	return sim
}
