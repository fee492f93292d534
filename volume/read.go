package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/torus-storage/torus"
)

// ReadAt reads len(p) bytes at off. Each run of blocks stored contiguously
// in one segment is one ReadAt on the first replica (in ring order) that
// returns it intact; unmapped blocks are zeros without I/O.
func (v *Volume) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := v.begin(false); err != nil {
		return err
	}
	defer v.end()
	if err := v.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	return v.read(ctx, p, off)
}

// readRun is a run of blocks to fetch with one ReadAt.
type readRun struct {
	seg    torus.SegmentID
	block  uint64 // first block
	segOff int64  // data offset of the first block in the segment
	crcs   []uint32
}

// read fills p from the index. If a run cannot be read anywhere it looks
// the blocks up once more: compaction may have moved them and the GC removed
// the old segment while the read was in flight.
//
// A read-only open of a live volume (not a snapshot) is not protected from
// the GC: once compaction and the sweep removed what its view names, it
// moves its view to the volume's current head and reads again (logged).
// Snapshots are the way to a view that stays.
func (v *Volume) read(ctx context.Context, p []byte, off int64) error {
	err := v.readOnce(ctx, p, off)
	if err != nil && ctx.Err() == nil && errors.Is(err, torus.ErrUnavailable) {
		err = v.readOnce(ctx, p, off)
	}
	if err != nil && ctx.Err() == nil && errors.Is(err, torus.ErrUnavailable) && v.ro && v.snap == "" {
		if rerr := v.reloadView(ctx); rerr != nil {
			return errors.Join(err, rerr)
		}
		err = v.readOnce(ctx, p, off)
	}
	return err
}

// reloadView rebuilds a read-only open's index from the current head.
func (v *Volume) reloadView(ctx context.Context) error {
	head, err := v.meta.Head(ctx, v.name)
	if err != nil {
		return fmt.Errorf("volume %s: reloading the view: %w", v.name, err)
	}
	idx, _, _, err := v.rebuild(ctx, head, nil)
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.idx, v.head = idx, head
	v.forgetCandidates()
	v.mu.Unlock()
	v.log.Warn("read-only view's segments are gone (compacted and collected); the view moved to the current head",
		"sealed", len(head.Sealed), "checkpoint", head.Checkpoint)
	return nil
}

func (v *Volume) readOnce(ctx context.Context, p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	const bs = torus.BlockSize
	end := off + int64(len(p))
	first, last := uint64(off/bs), uint64((end-1)/bs)
	var runs []readRun
	v.mu.Lock()
	for b := first; b <= last; b++ {
		loc, ok := v.idx.Lookup(b)
		if !ok {
			continue
		}
		seg := v.idx.Slot(loc.Slot).Ref.ID
		if k := len(runs) - 1; k >= 0 {
			r := &runs[k]
			n := int64(len(r.crcs))
			if r.seg == seg && r.block+uint64(n) == b && r.segOff+n*bs == loc.Offset {
				r.crcs = append(r.crcs, loc.CRC)
				continue
			}
		}
		runs = append(runs, readRun{seg: seg, block: b, segOff: loc.Offset, crcs: []uint32{loc.CRC}})
	}
	v.mu.Unlock()
	// Zero the whole request, then fill in the mapped runs, up to
	// readParallel at a time (runs cover disjoint parts of p).
	clear(p)
	one := func(r readRun) error {
		rs, n := int64(r.block)*bs, int64(len(r.crcs))*bs
		if rs >= off && rs+n <= end {
			// Whole blocks inside the request: read in place (on
			// failure the next candidate overwrites them).
			return v.fetch(ctx, r, p[rs-off:rs-off+n])
		}
		buf := make([]byte, n)
		if err := v.fetch(ctx, r, buf); err != nil {
			return err
		}
		// Copy the overlap of [r.block*bs, +len(buf)) and [off, end).
		lo, hi := max(rs, off), min(rs+int64(len(buf)), end)
		copy(p[lo-off:hi-off], buf[lo-rs:hi-rs])
		return nil
	}
	if len(runs) == 1 {
		return one(runs[0])
	}
	work := make(chan readRun)
	errs := make(chan error, len(runs))
	workers := min(readParallel, len(runs))
	for range workers {
		go func() {
			for r := range work {
				errs <- one(r)
			}
		}()
	}
	for _, r := range runs {
		work <- r
	}
	close(work)
	var firstErr error
	for range runs {
		if err := <-errs; err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// readParallel bounds the runs one read fetches at once.
const readParallel = 8

// fetch reads one run into buf from the first candidate whose data matches
// the index's CRCs.
func (v *Volume) fetch(ctx context.Context, r readRun, buf []byte) error {
	var errs []error
	cands := v.candidates(r.seg)
	for i, id := range cands {
		tctx, cancel := ctx, context.CancelFunc(func() {})
		if i < len(cands)-1 {
			tctx, cancel = context.WithTimeout(ctx, readTryTimeout)
		}
		err := v.fetchFrom(tctx, id, r, buf)
		timedOut := err != nil && tctx.Err() != nil && ctx.Err() == nil
		cancel()
		if timedOut {
			v.slowPeer(id)
			err = fmt.Errorf("peer %s: no answer within %v: %w", id, readTryTimeout, torus.ErrUnavailable)
		}
		if err == nil {
			if i > 0 {
				v.mu.Lock()
				v.stats.ReadRetries++
				v.mu.Unlock()
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !errors.Is(err, torus.ErrNotExist) {
			v.log.Warn("read failed; trying next replica", "segment", r.seg, "peer", id, "err", err)
		}
		errs = append(errs, err)
	}
	class := torus.ErrUnavailable
	for _, e := range errs {
		if errors.Is(e, torus.ErrCorrupt) {
			class = torus.ErrCorrupt
		}
	}
	return fmt.Errorf("volume %s: block %d: no replica of %v returned it: %w", v.name, r.block, r.seg,
		errors.Join(append([]error{class}, errs...)...))
}

func (v *Volume) fetchFrom(ctx context.Context, id string, r readRun, buf []byte) error {
	p, err := v.peers.Peer(ctx, id)
	if err != nil {
		return err
	}
	n, err := p.ReadAt(ctx, r.seg, buf, r.segOff)
	if err != nil && !(errors.Is(err, io.EOF) && n == len(buf)) {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("peer %s: segment %v short (%d of %d bytes): %w", id, r.seg, n, len(buf), torus.ErrNotExist)
		}
		return fmt.Errorf("peer %s: %w", id, err)
	}
	for i, c := range r.crcs {
		if BlockCRC(buf[i*torus.BlockSize:(i+1)*torus.BlockSize]) != c {
			return fmt.Errorf("peer %s: segment %v block %d: checksum mismatch: %w", id, r.seg, r.block+uint64(i), torus.ErrCorrupt)
		}
	}
	return nil
}

// Extents describes [off, off+length) as data and zero ranges. Unmapped
// blocks are Zero; a partly covered block is described by its state.
func (v *Volume) Extents(ctx context.Context, off, length int64) ([]torus.Extent, error) {
	if err := v.begin(false); err != nil {
		return nil, err
	}
	defer v.end()
	if err := v.checkRange(off, length); err != nil {
		return nil, err
	}
	if length == 0 {
		return nil, nil
	}
	const bs = torus.BlockSize
	end := off + length
	first, last := uint64(off/bs), uint64((end-1)/bs)
	v.mu.Lock()
	bx := v.idx.Extents(first, last-first+1)
	v.mu.Unlock()
	out := make([]torus.Extent, 0, len(bx))
	for _, e := range bx {
		lo := max(int64(e.First)*bs, off)
		hi := min(int64(e.First+e.Count)*bs, end)
		out = append(out, torus.Extent{Offset: lo, Length: hi - lo, Zero: !e.Mapped})
	}
	return out, nil
}

// slowPeer notes that id did not answer a read in time: candidates puts it
// after the peers that do, until badPeerTimeout has passed.
func (v *Volume) slowPeer(id string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.slow == nil {
		v.slow = make(map[string]time.Time)
	}
	v.slow[id] = time.Now()
	v.forgetCandidates()
}
