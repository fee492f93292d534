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
// in one segment is read from the first replica (in ring order) that
// returns it intact; unmapped blocks are zeros without I/O. When several
// runs have the same first replica and it is a torus.VectorReader (a
// remote peer), they are asked of it in one ReadV: one round trip instead
// of one per run. A run that ReadV does not return intact is read on its
// own, from each replica in turn, as any run is.
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
	// readParallel reads at a time (runs cover disjoint parts of p).
	clear(p)
	one := func(r readRun) error {
		buf := r.buf(p, off)
		if err := v.fetch(ctx, r, buf); err != nil {
			return err
		}
		r.place(p, off, buf)
		return nil
	}
	if len(runs) == 1 {
		return one(runs[0])
	}
	work := v.planReads(ctx, runs)
	jobs := make(chan readJob)
	errs := make(chan error, len(work))
	workers := min(readParallel, len(work))
	for range workers {
		go func() {
			for j := range jobs {
				if j.vr == nil {
					errs <- one(j.runs[0])
					continue
				}
				errs <- v.readVector(ctx, j, p, off, one)
			}
		}()
	}
	for _, j := range work {
		jobs <- j
	}
	close(jobs)
	var firstErr error
	for range work {
		if err := <-errs; err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// buf is where run r is read: in place in p (the request at off) when its
// blocks lie wholly inside it (on failure the next candidate overwrites
// them), else a buffer of its own that place copies from.
func (r readRun) buf(p []byte, off int64) []byte {
	rs, n := int64(r.block)*torus.BlockSize, int64(len(r.crcs))*torus.BlockSize
	if rs >= off && rs+n <= off+int64(len(p)) {
		return p[rs-off : rs-off+n]
	}
	return make([]byte, n)
}

// place copies the part of buf (run r's blocks, read) that overlaps the
// request at off into p; nothing when buf is already in p.
func (r readRun) place(p []byte, off int64, buf []byte) {
	rs := int64(r.block) * torus.BlockSize
	end := off + int64(len(p))
	if rs >= off && rs+int64(len(buf)) <= end {
		return
	}
	lo, hi := max(rs, off), min(rs+int64(len(buf)), end)
	copy(p[lo-off:hi-off], buf[lo-rs:hi-rs])
}

// readJob is one unit of a read: a single run (vr nil), or several runs
// whose first candidate is the same vectored peer.
type readJob struct {
	peer string
	vr   torus.VectorReader
	runs []readRun
}

// planReads groups runs by their segment's first candidate (fetch's first
// try): a peer that is first for two runs or more, and reads vectors,
// gets one job with all of them; every other run is a job of its own.
func (v *Volume) planReads(ctx context.Context, runs []readRun) []readJob {
	byPeer := make(map[string][]int) // peer -> indexes of its runs
	first := make([]string, len(runs))
	for i, r := range runs {
		if cands := v.candidates(r.seg); len(cands) > 0 {
			first[i] = cands[0]
			byPeer[cands[0]] = append(byPeer[cands[0]], i)
		}
	}
	jobs := make([]readJob, 0, len(runs))
	vector := make(map[string]int) // peer -> its job's index in jobs
	for i, r := range runs {
		id := first[i]
		if k, ok := vector[id]; ok {
			jobs[k].runs = append(jobs[k].runs, r)
			continue
		}
		if id != "" && len(byPeer[id]) >= 2 {
			// fetch meets a Peer error itself, and tries the next.
			if svc, err := v.peers.Peer(ctx, id); err == nil {
				if vr, ok := svc.(torus.VectorReader); ok {
					vector[id] = len(jobs)
					jobs = append(jobs, readJob{peer: id, vr: vr, runs: []readRun{r}})
					continue
				}
			}
			delete(byPeer, id) // not vectored: ask once
		}
		jobs = append(jobs, readJob{runs: []readRun{r}})
	}
	return jobs
}

// readVector reads job j's runs with one ReadV of its peer, checks each
// against the index's CRCs as fetchFrom does, and reads every run that
// did not come back intact with one (fetch: every replica in turn), so
// that ReadV changes the number of round trips, never the outcome. The
// ReadV is bounded by readTryTimeout; a peer that does not answer in time
// is slow (slowPeer), as in fetch.
func (v *Volume) readVector(ctx context.Context, j readJob, p []byte, off int64, one func(readRun) error) error {
	ranges := make([]torus.ReadRange, len(j.runs))
	for i, r := range j.runs {
		ranges[i] = torus.ReadRange{Seg: r.seg, Off: r.segOff, P: r.buf(p, off)}
	}
	tctx, cancel := context.WithTimeout(ctx, readTryTimeout)
	err := j.vr.ReadV(tctx, ranges)
	timedOut := err != nil && tctx.Err() != nil && ctx.Err() == nil
	cancel()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if timedOut {
		v.slowPeer(j.peer)
	}
	if err != nil {
		v.log.Warn("vectored read failed; reading its runs one by one", "peer", j.peer, "runs", len(j.runs), "err", err)
	}
	var firstErr error
	for i, r := range j.runs {
		g := ranges[i]
		if err == nil {
			rerr := v.checkRun(j.peer, r, g.P, g.N, g.Err)
			if rerr == nil {
				r.place(p, off, g.P)
				continue
			}
			if !errors.Is(rerr, torus.ErrNotExist) {
				v.log.Warn("vectored read of a run failed; reading it on its own", "segment", r.seg, "peer", j.peer, "err", rerr)
			}
		}
		if ferr := one(r); ferr != nil && firstErr == nil {
			firstErr = ferr
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
	return v.checkRun(id, r, buf, n, err)
}

// checkRun judges what peer id returned for run r (n bytes into buf, and
// the read's error): nil when every block is there and matches the
// index's CRC.
func (v *Volume) checkRun(id string, r readRun, buf []byte, n int, err error) error {
	if err != nil && !(errors.Is(err, io.EOF) && n == len(buf)) {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("peer %s: segment %v short (%d of %d bytes): %w", id, r.seg, n, len(buf), torus.ErrNotExist)
		}
		return fmt.Errorf("peer %s: %w", id, err)
	}
	if n < len(buf) {
		return fmt.Errorf("peer %s: segment %v short (%d of %d bytes): %w", id, r.seg, n, len(buf), torus.ErrNotExist)
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
