package lsm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sort"

	"github.com/torus-storage/torus"
)

// Run format constants (docs/design/index-runs.md, "Run format").
const (
	// RunMagic starts and ends a run: "TRSR" as a little-endian u32.
	RunMagic uint32 = 0x52535254
	// RunVersion is the version of the run format.
	RunVersion = 1
	// PageSize is the size a page of extents is cut at (one extent larger
	// than that gets a page of its own).
	PageSize = 64 << 10

	headerSize   = 48
	segEntrySize = 24
	dirEntrySize = 24
	footerSize   = 24
	holeSeg      = 0xFFFFFFFF
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func corruptf(format string, args ...any) error {
	return fmt.Errorf("lsm: run: %w: %s", torus.ErrCorrupt, fmt.Sprintf(format, args...))
}

// page is one directory entry: the first block of a page and where its
// bytes are.
type page struct {
	first  uint64
	off    int64
	length uint32
	crc    uint32
}

// Encode serializes extents (sorted, non-overlapping: as Overlay returns
// them) as a run of volume id. Extents of segments of other volumes are
// allowed (a clone's shared segments); every segment is a data segment.
func Encode(id uint64, extents []Extent) ([]byte, error) {
	if err := checkSorted(extents); err != nil {
		return nil, err
	}
	var table []torus.SegmentID
	slot := make(map[torus.SegmentID]uint32)
	for _, e := range extents {
		if e.Hole {
			continue
		}
		if e.Seg.Kind != torus.KindData {
			return nil, fmt.Errorf("lsm: extent at block %d names %v, not a data segment", e.First, e.Seg)
		}
		if e.Off < 0 {
			return nil, fmt.Errorf("lsm: extent at block %d has offset %d", e.First, e.Off)
		}
		if _, ok := slot[e.Seg]; !ok {
			slot[e.Seg] = uint32(len(table))
			table = append(table, e.Seg)
		}
	}
	var first, end uint64
	if len(extents) > 0 {
		first, end = extents[0].First, extents[len(extents)-1].End()
	}
	p := make([]byte, 0, headerSize+len(table)*segEntrySize+len(extents)*16)
	p = binary.LittleEndian.AppendUint32(p, RunMagic)
	p = binary.LittleEndian.AppendUint32(p, RunVersion)
	p = binary.LittleEndian.AppendUint64(p, id)
	p = binary.LittleEndian.AppendUint64(p, first)
	p = binary.LittleEndian.AppendUint64(p, end)
	p = binary.LittleEndian.AppendUint64(p, uint64(len(extents)))
	p = binary.LittleEndian.AppendUint32(p, uint32(len(table)))
	npagesAt := len(p)
	p = binary.LittleEndian.AppendUint32(p, 0) // pages, set below
	for _, s := range table {
		p = binary.LittleEndian.AppendUint64(p, s.Volume)
		p = binary.LittleEndian.AppendUint64(p, s.Epoch)
		p = binary.LittleEndian.AppendUint64(p, s.Seq)
	}
	meta := len(p) // header and table end here
	var dir []page
	start := -1
	closePage := func() {
		if start < 0 {
			return
		}
		d := &dir[len(dir)-1]
		d.length = uint32(len(p) - start)
		d.crc = crc32.Checksum(p[start:], castagnoli)
		p = binary.LittleEndian.AppendUint32(p, d.crc)
		start = -1
	}
	var prevEnd uint64
	for _, e := range extents {
		if start >= 0 && len(p)-start+extentMax(e) > PageSize {
			closePage()
		}
		if start < 0 {
			start = len(p)
			dir = append(dir, page{first: e.First, off: int64(len(p))})
			prevEnd = e.First
		}
		p = appendExtent(p, e, prevEnd, slot)
		prevEnd = e.End()
	}
	closePage()
	binary.LittleEndian.PutUint32(p[npagesAt:], uint32(len(dir)))
	dirOff := len(p)
	for _, d := range dir {
		p = binary.LittleEndian.AppendUint64(p, d.first)
		p = binary.LittleEndian.AppendUint64(p, uint64(d.off))
		p = binary.LittleEndian.AppendUint32(p, d.length)
		p = binary.LittleEndian.AppendUint32(p, d.crc)
	}
	c := crc32.Update(crc32.Checksum(p[:meta], castagnoli), castagnoli, p[dirOff:])
	p = binary.LittleEndian.AppendUint64(p, uint64(dirOff))
	p = binary.LittleEndian.AppendUint32(p, uint32(len(dir)))
	p = binary.LittleEndian.AppendUint32(p, c)
	p = binary.LittleEndian.AppendUint32(p, RunMagic)
	return binary.LittleEndian.AppendUint32(p, 0), nil // reserved, keeps the footer 24 bytes
}

// extentMax bounds the encoded size of e.
func extentMax(e Extent) int { return 4*binary.MaxVarintLen64 + 4*len(e.CRCs) }

// appendExtent encodes e: the gap from the end of the extent before it in
// its page, the count, the segment slot + 1 (0: hole), and for mapped
// extents the data offset and the CRCs, all but the CRCs as uvarints.
func appendExtent(p []byte, e Extent, prevEnd uint64, slot map[torus.SegmentID]uint32) []byte {
	p = binary.AppendUvarint(p, e.First-prevEnd)
	p = binary.AppendUvarint(p, uint64(e.Count))
	if e.Hole {
		return binary.AppendUvarint(p, 0)
	}
	p = binary.AppendUvarint(p, uint64(slot[e.Seg])+1)
	p = binary.AppendUvarint(p, uint64(e.Off))
	for _, c := range e.CRCs {
		p = binary.LittleEndian.AppendUint32(p, c)
	}
	return p
}

// ReaderAt reads a stored run: a segment on its replicas. It returns
// len(p) bytes or an error; torus.ErrCorrupt from a checksum tells the
// caller to try another replica.
type ReaderAt interface {
	ReadAt(ctx context.Context, p []byte, off int64) error
}

// Run is an opened run: its header, segment table and page directory,
// with pages read on demand through a Cache.
type Run struct {
	key     uint64 // names the run in the cache
	r       ReaderAt
	cache   *Cache
	size    int64
	Volume  uint64
	First   uint64 // first block an extent covers
	End     uint64 // block after the last extent
	Extents uint64 // number of extents
	table   []torus.SegmentID
	dir     []page
}

// Segments returns the data segments the run names, without reading a
// page (what GC and healing need).
func (r *Run) Segments() []torus.SegmentID { return append([]torus.SegmentID(nil), r.table...) }

// Size is the run's encoded size in bytes.
func (r *Run) Size() int64 { return r.size }

// Open reads the footer, header, segment table and directory of the run of
// size bytes in r. key names the run in cache (unique per run, for
// example its segment's sequence number). shares says which volumes'
// segments the run may name (AnyVolume for the format alone).
func Open(ctx context.Context, r ReaderAt, size int64, key uint64, cache *Cache, shares func(volume uint64) bool) (*Run, error) {
	if size < headerSize+footerSize {
		return nil, corruptf("%d bytes, shorter than header and footer", size)
	}
	foot := make([]byte, footerSize)
	if err := r.ReadAt(ctx, foot, size-footerSize); err != nil {
		return nil, err
	}
	if m := binary.LittleEndian.Uint32(foot[16:]); m != RunMagic {
		return nil, corruptf("footer magic %#x", m)
	}
	if r := binary.LittleEndian.Uint32(foot[20:]); r != 0 {
		return nil, corruptf("footer reserved word %#x, want 0", r)
	}
	dirOff := int64(binary.LittleEndian.Uint64(foot[0:]))
	npages := int64(binary.LittleEndian.Uint32(foot[8:]))
	sum := binary.LittleEndian.Uint32(foot[12:])
	if dirOff < headerSize || dirOff+npages*dirEntrySize != size-footerSize {
		return nil, corruptf("directory at %d with %d pages does not end at the footer (run of %d bytes)", dirOff, npages, size)
	}
	hdr := make([]byte, headerSize)
	if err := r.ReadAt(ctx, hdr, 0); err != nil {
		return nil, err
	}
	if m := binary.LittleEndian.Uint32(hdr); m != RunMagic {
		return nil, corruptf("magic %#x", m)
	}
	if v := binary.LittleEndian.Uint32(hdr[4:]); v != RunVersion {
		return nil, corruptf("unknown version %d", v)
	}
	run := &Run{key: key, r: r, cache: cache, size: size,
		Volume:  binary.LittleEndian.Uint64(hdr[8:]),
		First:   binary.LittleEndian.Uint64(hdr[16:]),
		End:     binary.LittleEndian.Uint64(hdr[24:]),
		Extents: binary.LittleEndian.Uint64(hdr[32:]),
	}
	nsegs := int64(binary.LittleEndian.Uint32(hdr[40:]))
	if int64(binary.LittleEndian.Uint32(hdr[44:])) != npages {
		return nil, corruptf("header says %d pages, footer %d", binary.LittleEndian.Uint32(hdr[44:]), npages)
	}
	if headerSize+nsegs*segEntrySize > dirOff {
		return nil, corruptf("segment table of %d entries runs past the directory", nsegs)
	}
	if !shares(run.Volume) {
		return nil, corruptf("run of volume %d", run.Volume)
	}
	tab := make([]byte, nsegs*segEntrySize)
	if err := r.ReadAt(ctx, tab, headerSize); err != nil {
		return nil, err
	}
	dirb := make([]byte, npages*dirEntrySize)
	if err := r.ReadAt(ctx, dirb, dirOff); err != nil {
		return nil, err
	}
	c := crc32.Update(crc32.Update(crc32.Checksum(hdr, castagnoli), castagnoli, tab), castagnoli, dirb)
	if c != sum {
		return nil, corruptf("header, table and directory checksum %#x, footer says %#x", c, sum)
	}
	for i := range nsegs {
		b := tab[i*segEntrySize:]
		id := torus.SegmentID{Volume: binary.LittleEndian.Uint64(b), Epoch: binary.LittleEndian.Uint64(b[8:]), Seq: binary.LittleEndian.Uint64(b[16:]), Kind: torus.KindData}
		if !shares(id.Volume) {
			return nil, corruptf("segment table names %v of a volume not shared", id)
		}
		run.table = append(run.table, id)
	}
	pagesStart := headerSize + nsegs*segEntrySize
	next := pagesStart
	for i := range npages {
		b := dirb[i*dirEntrySize:]
		d := page{first: binary.LittleEndian.Uint64(b), off: int64(binary.LittleEndian.Uint64(b[8:])),
			length: binary.LittleEndian.Uint32(b[16:]), crc: binary.LittleEndian.Uint32(b[20:])}
		if d.off != next || d.length == 0 || d.off+int64(d.length)+4 > dirOff {
			return nil, corruptf("page %d at %d (%d bytes) is not where the one before ends (%d)", i, d.off, d.length, next)
		}
		if i > 0 && d.first <= run.dir[i-1].first {
			return nil, corruptf("page %d starts at block %d, not after page %d's %d", i, d.first, i-1, run.dir[i-1].first)
		}
		next = d.off + int64(d.length) + 4
		run.dir = append(run.dir, d)
	}
	if next != dirOff {
		return nil, corruptf("pages end at %d, directory starts at %d", next, dirOff)
	}
	if npages > 0 && (run.dir[0].first != run.First) {
		return nil, corruptf("first page starts at block %d, header says %d", run.dir[0].first, run.First)
	}
	return run, nil
}

// AnyVolume accepts every volume (a check of the format alone).
func AnyVolume(uint64) bool { return true }

// page returns the decoded extents of page i, from the cache or read.
func (r *Run) page(ctx context.Context, i int) ([]Extent, error) {
	if es, ok := r.cache.get(r.key, i); ok {
		return es, nil
	}
	d := r.dir[i]
	b := make([]byte, int(d.length)+4)
	if err := r.r.ReadAt(ctx, b, d.off); err != nil {
		return nil, err
	}
	body := b[:d.length]
	if c := crc32.Checksum(body, castagnoli); c != d.crc || binary.LittleEndian.Uint32(b[d.length:]) != c {
		return nil, corruptf("page %d checksum %#x, directory says %#x", i, c, d.crc)
	}
	es, err := r.decodePage(body, d.first)
	if err != nil {
		return nil, fmt.Errorf("page %d: %w", i, err)
	}
	if i+1 < len(r.dir) && len(es) > 0 && es[len(es)-1].End() > r.dir[i+1].first {
		return nil, corruptf("page %d ends at block %d, past page %d's start %d", i, es[len(es)-1].End(), i+1, r.dir[i+1].first)
	}
	r.cache.put(r.key, i, es, int64(len(b)))
	return es, nil
}

var errShort = errors.New("truncated")

func (r *Run) decodePage(b []byte, first uint64) ([]Extent, error) {
	var es []Extent
	prevEnd := first
	uv := func() (uint64, error) {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return 0, errShort
		}
		b = b[n:]
		return v, nil
	}
	for len(b) > 0 {
		var e Extent
		gap, err := uv()
		if err != nil {
			return nil, corruptf("extent %d: %v", len(es), err)
		}
		count, err := uv()
		if err != nil || count == 0 || count > maxCount {
			return nil, corruptf("extent %d: count %d (%v)", len(es), count, err)
		}
		s, err := uv()
		if err != nil || s > uint64(len(r.table)) {
			return nil, corruptf("extent %d: segment slot %d of %d (%v)", len(es), s, len(r.table), err)
		}
		e.First, e.Count = prevEnd+gap, uint32(count)
		if e.First < prevEnd || e.End() < e.First {
			return nil, corruptf("extent %d at block %d wraps", len(es), e.First)
		}
		if s == 0 {
			e.Hole = true
		} else {
			e.Seg = r.table[s-1]
			off, err := uv()
			if err != nil || off > 1<<62 {
				return nil, corruptf("extent %d: data offset %d (%v)", len(es), off, err)
			}
			e.Off = int64(off)
			if uint64(len(b)) < 4*count {
				return nil, corruptf("extent %d: %d CRCs in %d bytes", len(es), count, len(b))
			}
			e.CRCs = make([]uint32, count)
			for j := range e.CRCs {
				e.CRCs[j] = binary.LittleEndian.Uint32(b[4*j:])
			}
			b = b[4*count:]
		}
		es = append(es, e)
		prevEnd = e.End()
	}
	if len(es) == 0 || es[0].First != first {
		return nil, corruptf("page does not start at block %d", first)
	}
	return es, nil
}

// Lookup returns the extent of r covering block b (a hole for an unmap),
// or ok=false when r says nothing about b.
func (r *Run) Lookup(ctx context.Context, b uint64) (e Extent, ok bool, err error) {
	if b < r.First || b >= r.End {
		return Extent{}, false, nil
	}
	i := sort.Search(len(r.dir), func(i int) bool { return r.dir[i].first > b }) - 1
	if i < 0 {
		return Extent{}, false, nil
	}
	es, err := r.page(ctx, i)
	if err != nil {
		return Extent{}, false, err
	}
	j := sort.Search(len(es), func(j int) bool { return es[j].End() > b })
	if j == len(es) || es[j].First > b {
		return Extent{}, false, nil
	}
	return es[j], true, nil
}

// All returns every extent of r, in order (for a merge).
func (r *Run) All(ctx context.Context) ([]Extent, error) {
	var out []Extent
	for i := range r.dir {
		es, err := r.page(ctx, i)
		if err != nil {
			return nil, err
		}
		out = append(out, es...)
	}
	if uint64(len(out)) != r.Extents {
		return nil, corruptf("%d extents in the pages, header says %d", len(out), r.Extents)
	}
	return out, nil
}
