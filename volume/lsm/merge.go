package lsm

import (
	"context"
	"encoding/binary"
	"hash/crc32"

	"github.com/torus-storage/torus"
)

// Each calls fn with every extent of r in order, a page at a time: memory
// is one decoded page, not the run. fn must not keep the extent's CRCs.
func (r *Run) Each(ctx context.Context, fn func(Extent) error) error {
	var n uint64
	for i := range r.dir {
		es, err := r.page(ctx, i)
		if err != nil {
			return err
		}
		for _, e := range es {
			if err := fn(e); err != nil {
				return err
			}
		}
		n += uint64(len(es))
	}
	if n != r.Extents {
		return corruptf("%d extents in the pages, header says %d", n, r.Extents)
	}
	return nil
}

// stream is one input of a streaming merge: extents in order, the current
// one first.
type stream struct {
	cur  Extent
	ok   bool
	next func() (Extent, bool, error)
}

func (s *stream) advance() error {
	e, ok, err := s.next()
	s.cur, s.ok = e, ok
	return err
}

// runStream reads r a page at a time.
func runStream(ctx context.Context, r *Run) *stream {
	page, at := []Extent(nil), 0
	i := 0
	return &stream{next: func() (Extent, bool, error) {
		for at == len(page) {
			if i == len(r.dir) {
				return Extent{}, false, nil
			}
			es, err := r.page(ctx, i)
			if err != nil {
				return Extent{}, false, err
			}
			page, at = es, 0
			i++
		}
		at++
		return page[at-1], true, nil
	}}
}

// sliceStream reads es.
func sliceStream(es []Extent) *stream {
	i := 0
	return &stream{next: func() (Extent, bool, error) {
		if i == len(es) {
			return Extent{}, false, nil
		}
		i++
		return es[i-1], true, nil
	}}
}

// MergeEncode merges top (the newest layer, sorted extents as a memtable
// gives them) over runs (newest first, adjacent in a stack) and encodes
// the result as a run of volume id, newer winning per block; holes are
// dropped when bottom (nothing lies below the output). It streams: memory
// is the output's encoded bytes and one decoded page per input, not the
// decoded runs, so a merge of the whole index of a large volume costs
// about its encoded size. The output is byte for byte Encode of the runs
// overlaid oldest first with top last (TestMergeEncodeMatchesMerge).
func MergeEncode(ctx context.Context, id uint64, top []Extent, runs []*Run, bottom bool) ([]byte, error) {
	if err := checkSorted(top); err != nil {
		return nil, err
	}
	ins := []*stream{sliceStream(top)}
	for _, r := range runs {
		ins = append(ins, runStream(ctx, r))
	}
	for _, s := range ins {
		if err := s.advance(); err != nil {
			return nil, err
		}
	}
	enc := newEncoder(id)
	var at uint64 // every block before at is done
	for {
		// The first block some input still covers at or after at.
		p, any := uint64(0), false
		for _, s := range ins {
			for s.ok && s.cur.End() <= at {
				if err := s.advance(); err != nil {
					return nil, err
				}
			}
			if s.ok {
				start := max(s.cur.First, at)
				if !any || start < p {
					p, any = start, true
				}
			}
		}
		if !any {
			break
		}
		// The newest input covering p wins until its extent ends or a
		// newer input starts covering.
		w := -1
		for i, s := range ins {
			if s.ok && s.cur.First <= p {
				w = i
				break
			}
		}
		end := ins[w].cur.End()
		for _, s := range ins[:w] {
			if s.ok && s.cur.First > p {
				end = min(end, s.cur.First)
			}
		}
		piece := ins[w].cur.slice(p, end)
		if !(piece.Hole && bottom) {
			if err := enc.add(piece); err != nil {
				return nil, err
			}
		}
		at = end
	}
	return enc.finish(), nil
}

// encoder builds a run extent by extent (the streaming side of Encode):
// pages are encoded as extents come, the segment table grows as they name
// new segments, and finish puts header, table, pages, directory and footer
// together.
type encoder struct {
	id      uint64
	pages   []byte // encoded pages with their trailers, offsets from 0
	dir     []page
	start   int // of the open page in pages, -1: none
	prevEnd uint64
	last    Extent // the pending extent, joined with continuing ones
	have    bool
	n       uint64
	first   uint64
	end     uint64
	table   []torus.SegmentID
	slot    map[torus.SegmentID]uint32
}

func newEncoder(id uint64) *encoder {
	return &encoder{id: id, start: -1, slot: make(map[torus.SegmentID]uint32)}
}

// add appends e, which must start at or after the end of the one before;
// an extent continuing the pending one is joined to it.
func (c *encoder) add(e Extent) error {
	if !e.Hole && (e.Seg.Kind != torus.KindData || e.Off < 0) {
		return corruptf("extent at block %d names %v at %d", e.First, e.Seg, e.Off)
	}
	if c.have && c.last.continues(e) {
		if !c.last.Hole {
			c.last.CRCs = append(c.last.CRCs, e.CRCs...)
		}
		c.last.Count += e.Count
		return nil
	}
	if c.have {
		c.flush()
	}
	c.last, c.have = e, true
	if !e.Hole {
		c.last.CRCs = append([]uint32(nil), e.CRCs...) // the caller's page may be reused
	}
	return nil
}

// flush encodes the pending extent.
func (c *encoder) flush() {
	e := c.last
	c.have = false
	if !e.Hole {
		if _, ok := c.slot[e.Seg]; !ok {
			c.slot[e.Seg] = uint32(len(c.table))
			c.table = append(c.table, e.Seg)
		}
	}
	if c.start >= 0 && len(c.pages)-c.start+extentMax(e) > PageSize {
		c.closePage()
	}
	if c.start < 0 {
		c.start = len(c.pages)
		c.dir = append(c.dir, page{first: e.First, off: int64(len(c.pages))})
		c.prevEnd = e.First
	}
	if c.n == 0 {
		c.first = e.First
	}
	c.pages = appendExtent(c.pages, e, c.prevEnd, c.slot)
	c.prevEnd, c.end = e.End(), e.End()
	c.n++
}

func (c *encoder) closePage() {
	if c.start < 0 {
		return
	}
	d := &c.dir[len(c.dir)-1]
	d.length = uint32(len(c.pages) - c.start)
	d.crc = crc32.Checksum(c.pages[c.start:], castagnoli)
	c.pages = binary.LittleEndian.AppendUint32(c.pages, d.crc)
	c.start = -1
}

// finish returns the encoded run.
func (c *encoder) finish() []byte {
	if c.have {
		c.flush()
	}
	c.closePage()
	p := make([]byte, 0, headerSize+len(c.table)*segEntrySize+len(c.pages)+len(c.dir)*dirEntrySize+footerSize)
	p = binary.LittleEndian.AppendUint32(p, RunMagic)
	p = binary.LittleEndian.AppendUint32(p, RunVersion)
	p = binary.LittleEndian.AppendUint64(p, c.id)
	p = binary.LittleEndian.AppendUint64(p, c.first)
	p = binary.LittleEndian.AppendUint64(p, c.end)
	p = binary.LittleEndian.AppendUint64(p, c.n)
	p = binary.LittleEndian.AppendUint32(p, uint32(len(c.table)))
	p = binary.LittleEndian.AppendUint32(p, uint32(len(c.dir)))
	for _, s := range c.table {
		p = binary.LittleEndian.AppendUint64(p, s.Volume)
		p = binary.LittleEndian.AppendUint64(p, s.Epoch)
		p = binary.LittleEndian.AppendUint64(p, s.Seq)
	}
	meta := len(p)
	p = append(p, c.pages...)
	dirOff := len(p)
	for _, d := range c.dir {
		p = binary.LittleEndian.AppendUint64(p, d.first)
		p = binary.LittleEndian.AppendUint64(p, uint64(d.off)+uint64(meta))
		p = binary.LittleEndian.AppendUint32(p, d.length)
		p = binary.LittleEndian.AppendUint32(p, d.crc)
	}
	sum := crc32.Update(crc32.Checksum(p[:meta], castagnoli), castagnoli, p[dirOff:])
	p = binary.LittleEndian.AppendUint64(p, uint64(dirOff))
	p = binary.LittleEndian.AppendUint32(p, uint32(len(c.dir)))
	p = binary.LittleEndian.AppendUint32(p, sum)
	p = binary.LittleEndian.AppendUint32(p, RunMagic)
	return binary.LittleEndian.AppendUint32(p, 0)
}
