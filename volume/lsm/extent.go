package lsm

import (
	"fmt"
	"slices"

	"github.com/torus-storage/torus"
)

// BlockSize is the size of one volume block.
const BlockSize = 4096

// Extent maps Count consecutive blocks from First to data stored
// contiguously in segment Seg from byte Off, one CRC32C per block; or, with
// Hole set, says they are unmapped (no Seg, Off or CRCs).
type Extent struct {
	First uint64
	Count uint32
	Hole  bool
	Seg   torus.SegmentID
	Off   int64
	CRCs  []uint32
}

// End is the block after the extent's last.
func (e Extent) End() uint64 { return e.First + uint64(e.Count) }

// At returns where block b, which e maps, is stored: its byte offset in
// e.Seg and its CRC32C.
func (e Extent) At(b uint64) (off int64, crc uint32) {
	d := b - e.First
	return e.Off + int64(d)*BlockSize, e.CRCs[d]
}

// slice returns the part of e over blocks [from, to), which must lie
// within it.
func (e Extent) slice(from, to uint64) Extent {
	out := e
	out.First, out.Count = from, uint32(to-from)
	if !e.Hole {
		d := from - e.First
		out.Off = e.Off + int64(d)*BlockSize
		out.CRCs = e.CRCs[d : d+uint64(out.Count)]
	}
	return out
}

// continues reports whether f starts where e ends and can be joined to it
// (both holes, or the same segment with f's data right after e's).
func (e Extent) continues(f Extent) bool {
	if e.End() != f.First || e.Hole != f.Hole || uint64(e.Count)+uint64(f.Count) > maxCount {
		return false
	}
	return e.Hole || (e.Seg == f.Seg && e.Off+int64(e.Count)*BlockSize == f.Off)
}

// maxCount bounds an extent's block count (a u32 in the format).
const maxCount = 1<<32 - 1

// checkSorted reports an error unless es is sorted by First, with no
// overlaps, no empty extents, and CRCs exactly for mapped blocks.
func checkSorted(es []Extent) error {
	for i, e := range es {
		switch {
		case e.Count == 0:
			return fmt.Errorf("lsm: extent %d at block %d is empty", i, e.First)
		case !e.Hole && len(e.CRCs) != int(e.Count):
			return fmt.Errorf("lsm: extent %d at block %d: %d CRCs for %d blocks", i, e.First, len(e.CRCs), e.Count)
		case e.Hole && len(e.CRCs) != 0:
			return fmt.Errorf("lsm: hole %d at block %d has CRCs", i, e.First)
		case e.End() < e.First:
			return fmt.Errorf("lsm: extent %d at block %d wraps", i, e.First)
		case i > 0 && e.First < es[i-1].End():
			return fmt.Errorf("lsm: extent %d at block %d overlaps or precedes the one before (ending at %d)", i, e.First, es[i-1].End())
		}
	}
	return nil
}

// Overlay returns the extents of top laid over base: every block top
// covers takes top's extent, the rest keeps base's. Both must be sorted
// and non-overlapping (as a run's extents are); so is the result, with
// touching pieces that continue each other joined.
func Overlay(base, top []Extent) []Extent {
	base = slices.Clone(base) // the loop trims its head in place
	out := make([]Extent, 0, len(base)+len(top))
	push := func(e Extent) {
		if n := len(out); n > 0 && out[n-1].continues(e) {
			last := &out[n-1]
			if !last.Hole {
				last.CRCs = append(last.CRCs[:last.Count:last.Count], e.CRCs...)
			}
			last.Count += e.Count
			return
		}
		out = append(out, e)
	}
	i := 0
	for _, t := range top {
		// Base extents wholly before t.
		for i < len(base) && base[i].End() <= t.First {
			push(base[i])
			i++
		}
		// A base extent overlapping t's start: keep its part before t.
		for i < len(base) && base[i].First < t.End() {
			b := base[i]
			if b.First < t.First {
				push(b.slice(b.First, t.First))
			}
			if b.End() > t.End() {
				// It reaches past t: keep the rest for later.
				base[i] = b.slice(t.End(), b.End())
				break
			}
			i++
		}
		push(t)
	}
	for ; i < len(base); i++ {
		push(base[i])
	}
	return out
}

// DropHoles returns es without its holes (for the bottom of a stack, where
// a hole covers nothing).
func DropHoles(es []Extent) []Extent {
	out := es[:0:0]
	for _, e := range es {
		if !e.Hole {
			out = append(out, e)
		}
	}
	return out
}
