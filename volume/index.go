package volume

import (
	"fmt"
	"slices"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/volume/lsm"
)

// chunkBlocks is the number of blocks per lazily allocated index chunk.
const chunkBlocks = 256

// entry is one mapped block: 12 bytes. slot is the segment-table slot + 1
// (0: unmapped), off the byte offset of the block's data in the segment.
type entry struct {
	slot uint32
	off  uint32
	crc  uint32
}

type chunk struct {
	e      [chunkBlocks]entry
	mapped int // entries with slot != 0
}

// Location is where a mapped block's data lives.
type Location struct {
	Slot   uint32 // segment-table slot
	Offset int64  // byte offset of the block's data in the segment
	CRC    uint32 // CRC32C of the block
}

// SlotInfo is one segment-table entry.
type SlotInfo struct {
	Ref  torus.SegmentRef // ID and length (bytes that count)
	Live int64            // blocks of the index that point into it
}

// Index maps volume blocks to their data: the writer's (and read-only
// openers') in-memory view of a volume. It is pure and not safe for
// concurrent use; the Volume guards it.
type Index struct {
	nblocks uint64
	chunks  map[uint64]*chunk
	slots   []SlotInfo
	slotOf  map[torus.SegmentID]uint32
	mapped  int64
	// dirty holds the blocks changed since the last checkpoint (what the
	// next run holds); whole says the next checkpoint must write every
	// mapped block instead (no run stack below it yet).
	dirty map[uint64]struct{}
	whole bool
}

// NewIndex returns an empty index of nblocks blocks.
func NewIndex(nblocks uint64) *Index {
	return &Index{nblocks: nblocks, chunks: make(map[uint64]*chunk), slotOf: make(map[torus.SegmentID]uint32),
		dirty: make(map[uint64]struct{}), whole: true}
}

// Changed is the number of blocks changed since the last checkpoint, or
// -1 when the next checkpoint writes the whole index.
func (x *Index) Changed() int {
	if x.whole {
		return -1
	}
	return len(x.dirty)
}

// Delta returns what the next checkpoint's run holds: the blocks changed
// since the last checkpoint (unmapped ones as holes), or every mapped
// block when whole.
func (x *Index) Delta() []lsm.Extent {
	if x.whole {
		var out []lsm.Extent
		_ = x.Runs(func(r Run) error {
			out = append(out, lsm.Extent{First: r.First, Count: uint32(len(r.CRCs)), Seg: x.slots[r.Slot].Ref.ID,
				Off: r.DataOff, CRCs: slices.Clone(r.CRCs)})
			return nil
		})
		return out
	}
	mem := lsm.NewMemtable()
	var crc [1]uint32
	for b := range x.dirty {
		loc, ok := x.Lookup(b)
		if !ok {
			mem.Unmap(b, 1)
			continue
		}
		crc[0] = loc.CRC
		mem.Map(b, x.slots[loc.Slot].Ref.ID, loc.Offset, crc[:])
	}
	return mem.Extents()
}

// LiveTable returns the segments blocks point into, with their lengths:
// a checkpoint's segment table.
func (x *Index) LiveTable() []torus.SegmentRef {
	var out []torus.SegmentRef
	for _, s := range x.slots {
		if s.Live > 0 {
			out = append(out, s.Ref)
		}
	}
	return out
}

// Checkpointed records that a checkpoint holding Delta is in the head:
// the next run starts empty.
func (x *Index) Checkpointed() {
	clear(x.dirty)
	x.whole = false
}

// Pending is what TakeDelta took: restored (Restore) when its checkpoint
// does not reach the head.
type Pending struct {
	blocks map[uint64]struct{}
	whole  bool
}

// TakeDelta returns Delta and starts the next run empty, as if the
// checkpoint holding it were in the head already: a checkpoint written in
// the background while the index changes. Restore puts it back when that
// checkpoint fails.
func (x *Index) TakeDelta() ([]lsm.Extent, Pending) {
	d := x.Delta()
	p := Pending{blocks: x.dirty, whole: x.whole}
	x.dirty, x.whole = make(map[uint64]struct{}), false
	return d, p
}

// Restore adds back what TakeDelta took: the next checkpoint holds those
// blocks again (at their values then), or the whole index.
func (x *Index) Restore(p Pending) {
	if p.whole {
		x.whole = true
		clear(x.dirty)
		return
	}
	if x.whole {
		return
	}
	for b := range p.blocks {
		x.dirty[b] = struct{}{}
	}
}

// Blocks is the number of blocks the index covers.
func (x *Index) Blocks() uint64 { return x.nblocks }

// Grow extends the index to nblocks blocks (never shrinks).
func (x *Index) Grow(nblocks uint64) {
	if nblocks > x.nblocks {
		x.nblocks = nblocks
	}
}

// Mapped is the number of mapped blocks.
func (x *Index) Mapped() int64 { return x.mapped }

// AddSegment returns the slot of seg, adding it to the table if needed.
func (x *Index) AddSegment(seg torus.SegmentID) uint32 {
	if s, ok := x.slotOf[seg]; ok {
		return s
	}
	s := uint32(len(x.slots))
	x.slots = append(x.slots, SlotInfo{Ref: torus.SegmentRef{ID: seg}})
	x.slotOf[seg] = s
	return s
}

// SetLength records the length that counts of the segment in slot.
func (x *Index) SetLength(slot uint32, length int64) { x.slots[slot].Ref.Length = length }

// Slot returns the table entry of slot.
func (x *Index) Slot(slot uint32) SlotInfo { return x.slots[slot] }

// Slots returns a copy of the segment table.
func (x *Index) Slots() []SlotInfo { return append([]SlotInfo(nil), x.slots...) }

// SlotOf returns seg's slot.
func (x *Index) SlotOf(seg torus.SegmentID) (uint32, bool) {
	s, ok := x.slotOf[seg]
	return s, ok
}

// LiveBytes reports, per segment, the bytes of block data the index points
// into (compaction's measure).
func (x *Index) LiveBytes() map[torus.SegmentID]int64 {
	m := make(map[torus.SegmentID]int64, len(x.slots))
	for _, s := range x.slots {
		m[s.Ref.ID] = s.Live * torus.BlockSize
	}
	return m
}

func (x *Index) chunkFor(b uint64, alloc bool) *chunk {
	c := x.chunks[b/chunkBlocks]
	if c == nil && alloc {
		c = new(chunk)
		x.chunks[b/chunkBlocks] = c
	}
	return c
}

func (x *Index) set(b uint64, e entry) {
	c := x.chunkFor(b, e.slot != 0)
	if c == nil {
		return
	}
	old := &c.e[b%chunkBlocks]
	if *old == e {
		return
	}
	if !x.whole {
		x.dirty[b] = struct{}{}
	}
	if old.slot != 0 {
		x.slots[old.slot-1].Live--
		c.mapped--
		x.mapped--
	}
	*old = e
	if e.slot != 0 {
		x.slots[e.slot-1].Live++
		c.mapped++
		x.mapped++
	}
	if c.mapped == 0 {
		delete(x.chunks, b/chunkBlocks)
	}
}

// Map points len(crcs) blocks from first at consecutive blocks of data
// stored from dataOff in slot's segment. Blocks past the end of the index are
// ignored.
func (x *Index) Map(first uint64, slot uint32, dataOff int64, crcs []uint32) {
	for i, c := range crcs {
		b := first + uint64(i)
		if b >= x.nblocks {
			return
		}
		x.set(b, entry{slot: slot + 1, off: uint32(dataOff + int64(i)*torus.BlockSize), crc: c})
	}
}

// Unmap makes count blocks from first read as zeros.
func (x *Index) Unmap(first, count uint64) {
	end := first + count
	if end > x.nblocks || end < first {
		end = x.nblocks
	}
	for b := first; b < end; {
		next := (b/chunkBlocks + 1) * chunkBlocks
		if next > end {
			next = end
		}
		if x.chunks[b/chunkBlocks] != nil {
			for ; b < next; b++ {
				x.set(b, entry{})
			}
		}
		b = next
	}
}

// Move points each of len(crcs) blocks from first at consecutive data
// from dataOff in slot, but only those blocks the index still maps to the
// matching block of the source (srcSlot from srcOff): a compaction copy
// never undoes a later write. It returns the blocks moved.
func (x *Index) Move(first uint64, srcSlot uint32, srcOff int64, slot uint32, dataOff int64, crcs []uint32) int {
	moved := 0
	for i, c := range crcs {
		b := first + uint64(i)
		if b >= x.nblocks {
			break
		}
		loc, ok := x.Lookup(b)
		if !ok || loc.Slot != srcSlot || loc.Offset != srcOff+int64(i)*torus.BlockSize || loc.CRC != c {
			continue
		}
		x.set(b, entry{slot: slot + 1, off: uint32(dataOff + int64(i)*torus.BlockSize), crc: c})
		moved++
	}
	return moved
}

// Apply replays one record stored in slot's segment of volume.
func (x *Index) Apply(volume uint64, slot uint32, r ScannedRecord) {
	switch r.Type {
	case RecordWrite:
		x.Map(r.Block, slot, r.DataOffset, r.CRCs)
	case RecordZero:
		x.Unmap(r.Block, uint64(r.Count))
	case RecordMove:
		src := torus.SegmentID{Volume: volume, Epoch: r.Source.Epoch, Seq: r.Source.Seq, Kind: torus.KindData}
		if s, ok := x.slotOf[src]; ok {
			x.Move(r.Block, s, r.Source.Offset, slot, r.DataOffset, r.CRCs)
		}
	}
}

// Lookup returns block b's location; ok is false when b reads as zeros.
func (x *Index) Lookup(b uint64) (loc Location, ok bool) {
	c := x.chunks[b/chunkBlocks]
	if c == nil {
		return Location{}, false
	}
	e := c.e[b%chunkBlocks]
	if e.slot == 0 {
		return Location{}, false
	}
	return Location{Slot: e.slot - 1, Offset: int64(e.off), CRC: e.crc}, true
}

// BlockExtent is a run of blocks that are all mapped or all unmapped.
type BlockExtent struct {
	First, Count uint64
	Mapped       bool
}

// Extents describes count blocks from first as alternating mapped and
// unmapped runs, covering the range exactly. Blocks past the end of the
// index are reported unmapped.
func (x *Index) Extents(first, count uint64) []BlockExtent {
	var out []BlockExtent
	add := func(b uint64, n uint64, m bool) {
		if k := len(out); k > 0 && out[k-1].Mapped == m && out[k-1].First+out[k-1].Count == b {
			out[k-1].Count += n
			return
		}
		out = append(out, BlockExtent{First: b, Count: n, Mapped: m})
	}
	end := first + count
	for b := first; b < end; {
		next := (b/chunkBlocks + 1) * chunkBlocks
		if next > end {
			next = end
		}
		c := x.chunks[b/chunkBlocks]
		if c == nil {
			add(b, next-b, false)
			b = next
			continue
		}
		for ; b < next; b++ {
			add(b, 1, c.e[b%chunkBlocks].slot != 0)
		}
	}
	return out
}

// Run is a maximal range of blocks stored contiguously in one segment.
type Run struct {
	First   uint64
	Slot    uint32
	DataOff int64
	CRCs    []uint32
}

// Runs calls fn for each run of contiguously stored blocks, in block order.
// The CRCs slice is reused between calls.
func (x *Index) Runs(fn func(Run) error) error {
	keys := make([]uint64, 0, len(x.chunks))
	for k := range x.chunks {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var cur Run
	var have bool
	flush := func() error {
		if !have {
			return nil
		}
		have = false
		return fn(cur)
	}
	for _, k := range keys {
		c := x.chunks[k]
		for i := range c.e {
			e := c.e[i]
			b := k*chunkBlocks + uint64(i)
			if e.slot == 0 {
				if err := flush(); err != nil {
					return err
				}
				continue
			}
			if have && cur.Slot == e.slot-1 && cur.First+uint64(len(cur.CRCs)) == b &&
				cur.DataOff+int64(len(cur.CRCs))*torus.BlockSize == int64(e.off) {
				cur.CRCs = append(cur.CRCs, e.crc)
				continue
			}
			if err := flush(); err != nil {
				return err
			}
			cur = Run{First: b, Slot: e.slot - 1, DataOff: int64(e.off), CRCs: append(cur.CRCs[:0], e.crc)}
			have = true
		}
	}
	return flush()
}

// check verifies the index's accounting (used by tests).
func (x *Index) check() error {
	live := make([]int64, len(x.slots))
	var mapped int64
	for k, c := range x.chunks {
		n := 0
		for _, e := range c.e {
			if e.slot != 0 {
				if int(e.slot-1) >= len(x.slots) {
					return fmt.Errorf("chunk %d: slot %d out of table", k, e.slot-1)
				}
				live[e.slot-1]++
				n++
			}
		}
		if n != c.mapped || n == 0 {
			return fmt.Errorf("chunk %d: mapped %d, counted %d", k, c.mapped, n)
		}
		mapped += int64(n)
	}
	for i, s := range x.slots {
		if s.Live != live[i] {
			return fmt.Errorf("slot %d: live %d, counted %d", i, s.Live, live[i])
		}
	}
	if mapped != x.mapped {
		return fmt.Errorf("mapped %d, counted %d", x.mapped, mapped)
	}
	return nil
}
