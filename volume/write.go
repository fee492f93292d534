package volume

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/torus-storage/torus"
)

// writeReq is one record handed to the appender.
type writeReq struct {
	typ   RecordType
	block uint64
	count uint32
	data  []byte   // count blocks (write and move records)
	crcs  []uint32 // their CRC32C
	// move records: where the data was copied from
	src     MoveSource
	srcSlot uint32
	done    chan error
}

func (r *writeReq) size() int64 { return RecordSize(RecordHeader{Type: r.typ, Count: r.count}) }

// ctlReq runs fn on the appender goroutine, between batches.
type ctlReq struct {
	fn   func(ctx context.Context) error
	done chan error
}

// control runs fn on the appender goroutine and returns its result.
func (v *Volume) control(ctx context.Context, fn func(ctx context.Context) error) error {
	r := &ctlReq{fn: fn, done: make(chan error, 1)}
	select {
	case v.ctl <- r:
	case <-v.stop:
		return fmt.Errorf("volume %s: %w", v.name, torus.ErrClosed)
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-r.done
}

// encodeBatch encodes batch's records into buf (reset) and returns it with
// each record's offset in it.
func (v *Volume) encodeBatch(batch []*writeReq, buf []byte) ([]byte, []int64) {
	buf = buf[:0]
	offs := make([]int64, len(batch))
	for i, r := range batch {
		offs[i] = int64(len(buf))
		switch r.typ {
		case RecordWrite:
			buf = AppendWriteRecord(buf, r.block, v.epoch, r.data, r.crcs)
		case RecordMove:
			buf = AppendMoveRecord(buf, r.block, v.epoch, r.src, r.data, r.crcs)
		default:
			buf = AppendZeroRecord(buf, r.block, r.count, v.epoch)
		}
	}
	return buf, offs
}

// batchSize is the encoded size of batch.
func batchSize(batch []*writeReq) int64 {
	var n int64
	for _, r := range batch {
		n += r.size()
	}
	return n
}

// commitBatch records a batch that every replica of open acknowledged at
// open's length: the index maps its blocks and the length grows.
func (v *Volume) commitBatch(open *segState, batch []*writeReq, offs []int64, n int) {
	v.mu.Lock()
	defer v.mu.Unlock()
	base := open.length
	for i, r := range batch {
		switch r.typ {
		case RecordWrite:
			v.idx.Map(r.block, open.slot, base+offs[i]+RecordHeaderSize+4*int64(r.count), r.crcs)
			v.stats.BlocksWritten += int64(r.count)
		case RecordZero:
			v.idx.Unmap(r.block, uint64(r.count))
		case RecordMove:
			dataOff := base + offs[i] + RecordHeaderSize + moveSourceSize + 4*int64(r.count)
			v.stats.BlocksMoved += int64(v.idx.Move(r.block, r.srcSlot, r.src.Offset, open.slot, dataOff, r.crcs))
		}
	}
	open.length += int64(n)
	v.idx.SetLength(open.slot, open.length)
	v.stats.Records += int64(len(batch))
	v.stats.Batches++
	v.stats.BytesAppended += int64(n)
	v.stats.ReplicaBytes += int64(n) * int64(len(open.replicas))
}

// dropReplicas removes failed replicas from open and keeps them out of new
// segments for badPeerTimeout.
func (v *Volume) dropReplicas(open *segState, failed []string) {
	v.mu.Lock()
	now := time.Now()
	for _, id := range failed {
		v.bad[id] = now
		open.replicas = slices.DeleteFunc(open.replicas, func(r string) bool { return r == id })
		v.stats.ReplicasDropped++
	}
	v.forgetCandidates()
	v.mu.Unlock()
	v.log.Warn("replicas dropped from open segment; rolling", "segment", open.id, "failed", failed)
}

// appendBatch appends one batch to the open segment, waiting for it, and,
// once every replica acknowledged it, updates the index. A replica that
// fails is dropped: the segment is sealed and the batch retried on a new
// one. With needRoll the open segment is sealed first (a replica failed an
// earlier batch); noSpace says that failure was a full store.
func (v *Volume) appendBatch(batch []*writeReq, needRoll, noSpace bool) error {
	if err := v.fencedErr(); err != nil {
		return err
	}
	// One buffer, reused batch after batch: appends do not retain it.
	if total := batchSize(batch); int64(cap(v.batchBuf)) < total {
		v.batchBuf = make([]byte, 0, max(total, 2*maxBatch))
	}
	buf, offs := v.encodeBatch(batch, v.batchBuf)
	for attempt := 0; attempt < 4; attempt++ {
		open := v.open
		if open == nil || needRoll || (open.length > 0 && open.length+int64(len(buf)) > v.cfg.SegmentSize) {
			if err := v.roll(v.ctx, ckptIfDue, true); err != nil {
				if noSpace && errors.Is(err, torus.ErrUnavailable) {
					return fmt.Errorf("volume %s: %w (%v)", v.name, torus.ErrNoSpace, err)
				}
				return err
			}
			needRoll = false
			open = v.open
		}
		failed, nsp, err := v.appendReplicas(open, buf)
		if err != nil {
			return err
		}
		if len(failed) == 0 {
			v.commitBatch(open, batch, offs, len(buf))
			return nil
		}
		noSpace = noSpace || nsp
		v.dropReplicas(open, failed)
		needRoll = true
	}
	return fmt.Errorf("volume %s: appends keep failing: %w", v.name, torus.ErrUnavailable)
}

// appendReplicas sends buf at the open segment's length to each of its
// replicas in parallel. It returns the replicas that failed, whether one was
// out of space, and ErrFenced (fencing the volume) if a replica refused the
// epoch.
func (v *Volume) appendReplicas(s *segState, buf []byte) (failed []string, noSpace bool, err error) {
	v.mu.Lock()
	replicas := slices.Clone(s.replicas)
	v.mu.Unlock()
	type res struct {
		id  string
		err error
	}
	ch := make(chan res, len(replicas))
	ctx, cancel := context.WithTimeout(v.ctx, peerTimeout)
	defer cancel()
	for _, id := range replicas {
		go func() {
			p, err := v.peers.Peer(ctx, id)
			if err == nil {
				err = p.Append(ctx, v.epoch, s.id, s.length, buf)
			}
			ch <- res{id, err}
		}()
	}
	var fencedErr error
	for range replicas {
		r := <-ch
		if r.err == nil {
			continue
		}
		if errors.Is(r.err, torus.ErrFenced) {
			fencedErr = r.err
		}
		if errors.Is(r.err, torus.ErrNoSpace) {
			noSpace = true
		}
		v.log.Warn("append failed", "segment", s.id, "peer", r.id, "err", r.err)
		failed = append(failed, r.id)
	}
	if fencedErr != nil {
		return nil, false, v.fence(fencedErr)
	}
	return failed, noSpace, nil
}

// errNoOpen is returned by roll when it committed the seal but could not
// place a new open segment. It matches torus.ErrUnavailable.
var errNoOpen = fmt.Errorf("no open segment: %w", torus.ErrUnavailable)

type ckptMode int

const (
	ckptNever ckptMode = iota
	ckptIfDue
	ckptForce
)

// pick chooses the replicas of a new segment: the first Replication ring
// members clockwise from its key that are up and have not failed lately.
func (v *Volume) pick(seg torus.SegmentID) []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := time.Now()
	bad := func(id string) bool {
		if t, ok := v.bad[id]; ok && now.Sub(t) < badPeerTimeout {
			return true
		}
		return !v.up[id]
	}
	ids := v.place.Lookup(seg.Key(), v.cfg.Replication, func(id string) bool { return bad(id) || v.full[id] })
	if len(ids) < v.cfg.Replication {
		// Nearly full peers only as a last resort.
		for _, id := range v.place.Lookup(seg.Key(), v.cfg.Replication, bad) {
			if len(ids) < v.cfg.Replication && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// roll seals the open segment at its acknowledged length, writes a
// checkpoint when due (or forced), names a new open segment when openNew,
// and commits the head with one CommitHead. It runs on the appender
// goroutine (or in Open before the appender starts). When no new segment
// can be placed on MinReplicas live peers, the seal is committed alone and
// ErrUnavailable returned.
func (v *Volume) roll(ctx context.Context, mode ckptMode, openNew bool) error {
	v.mu.Lock()
	nh := cloneHead(v.head)
	old := v.open
	if old != nil {
		nh.Open = nil
		if old.length > 0 {
			nh.Sealed = append(nh.Sealed, torus.SegmentRef{ID: old.id, Length: old.length})
			v.idx.SetLength(old.slot, old.length)
		}
	}
	v.mu.Unlock()

	var ck *torus.SegmentRef
	if mode == ckptForce || mode == ckptIfDue && len(nh.Sealed) >= v.cfg.CheckpointEvery {
		ref, err := v.writeCheckpoint(ctx, nh.NextSeq)
		if err != nil {
			if mode == ckptForce {
				return err
			}
			v.log.Warn("checkpoint skipped", "err", err)
		} else {
			ck = &ref
			nh.Checkpoint = ck
			nh.Sealed = nil
			nh.NextSeq++
		}
	}

	var next *segState
	var placeErr error
	if openNew {
		id := torus.SegmentID{Volume: v.id, Epoch: v.epoch, Seq: nh.NextSeq, Kind: torus.KindData}
		replicas := v.pick(id)
		if minRep := v.minReplicas(); len(replicas) < minRep {
			placeErr = fmt.Errorf("volume %s: %d live peers for a new segment, need %d: %w",
				v.name, len(replicas), minRep, errNoOpen)
		} else {
			nh.NextSeq++
			nh.Open = &id
			next = &segState{id: id, replicas: replicas}
		}
	}
	if err := v.commit(ctx, nh); err != nil {
		return err
	}
	v.mu.Lock()
	v.head = nh
	if old != nil && old.length > 0 {
		v.stats.SegmentsSealed++
	}
	v.open = next
	if next != nil {
		next.slot = v.idx.AddSegment(next.id)
		v.segs[next.id] = next
		v.forgetCandidates()
	}
	v.mu.Unlock()
	if ck != nil {
		select {
		case v.compactKick <- struct{}{}:
		default:
		}
	}
	v.log.Debug("rolled", "sealed", old != nil && old.length > 0, "checkpoint", ck != nil, "open", nh.Open)
	return placeErr
}

// commit stores the head (one etcd transaction), fenced by the epoch.
func (v *Volume) commit(ctx context.Context, h torus.Head) error {
	v.mu.Lock()
	v.stats.EtcdCommits++
	v.mu.Unlock()
	err := v.meta.CommitHead(ctx, v.name, v.epoch, h)
	if errors.Is(err, torus.ErrFenced) {
		return v.fence(err)
	}
	if err != nil {
		return fmt.Errorf("volume %s: commit head: %w", v.name, err)
	}
	return nil
}

// writeCheckpoint flushes, then writes the index as checkpoint segment seq
// on Replication replicas and syncs it. The segment is not yet in the head:
// LiveSegments protects {epoch, NextSeq, checkpoint} from the GC sweep.
func (v *Volume) writeCheckpoint(ctx context.Context, seq uint64) (torus.SegmentRef, error) {
	if err := v.flush(ctx); err != nil {
		return torus.SegmentRef{}, err
	}
	v.mu.Lock()
	p := EncodeCheckpoint(v.id, int64(v.idx.Blocks())*torus.BlockSize, v.idx)
	v.mu.Unlock()
	id := torus.SegmentID{Volume: v.id, Epoch: v.epoch, Seq: seq, Kind: torus.KindCheckpoint}
	replicas := v.pick(id)
	minRep := v.minReplicas()
	if len(replicas) < minRep {
		return torus.SegmentRef{}, fmt.Errorf("volume %s: %d live peers for a checkpoint, need %d: %w",
			v.name, len(replicas), minRep, torus.ErrUnavailable)
	}
	ch := make(chan error, len(replicas))
	for _, rid := range replicas {
		go func() {
			ch <- v.writeWhole(ctx, rid, id, p)
		}()
	}
	ok := 0
	var errs []error
	for range replicas {
		if err := <-ch; err != nil {
			errs = append(errs, err)
		} else {
			ok++
		}
	}
	v.mu.Lock()
	v.stats.Syncs += int64(len(replicas))
	v.stats.ReplicaBytes += int64(len(p)) * int64(ok)
	v.mu.Unlock()
	for _, err := range errs {
		if errors.Is(err, torus.ErrFenced) {
			return torus.SegmentRef{}, v.fence(err)
		}
	}
	if ok < minRep {
		return torus.SegmentRef{}, fmt.Errorf("volume %s: checkpoint on %d replicas, need %d: %w",
			v.name, ok, minRep, errors.Join(append(errs, torus.ErrUnavailable)...))
	}
	v.mu.Lock()
	v.stats.Checkpoints++
	v.stats.CheckpointBytes += int64(len(p))
	v.mu.Unlock()
	v.log.Debug("checkpoint written", "segment", id, "bytes", len(p), "replicas", ok)
	return torus.SegmentRef{ID: id, Length: int64(len(p))}, nil
}

// writeWhole appends p to a new segment on one peer in maxBatch pieces and
// syncs it.
func (v *Volume) writeWhole(ctx context.Context, peerID string, id torus.SegmentID, p []byte) error {
	ps, err := v.peers.Peer(ctx, peerID)
	if err != nil {
		return err
	}
	for off := 0; off < len(p); off += maxBatch {
		end := min(off+maxBatch, len(p))
		if err := ps.Append(ctx, v.epoch, id, int64(off), p[off:end]); err != nil {
			return fmt.Errorf("peer %s: %w", peerID, err)
		}
	}
	if _, err := ps.Sync(ctx, v.epoch, id); err != nil {
		return fmt.Errorf("peer %s: %w", peerID, err)
	}
	return nil
}

// flush syncs every replica of every segment with unsynced appends, in
// parallel. Each segment needs MinReplicas successful syncs.
func (v *Volume) flush(ctx context.Context) error {
	type job struct {
		s        *segState
		length   int64
		replicas []string
	}
	v.mu.Lock()
	if v.fenced != nil {
		defer v.mu.Unlock()
		return v.fenced
	}
	var jobs []job
	for _, s := range v.segs {
		if s.length > s.synced {
			jobs = append(jobs, job{s, s.length, slices.Clone(s.replicas)})
		}
	}
	v.stats.Flushes++
	minRep := v.minRep
	v.mu.Unlock()

	type res struct {
		j   int
		id  string
		err error
	}
	n := 0
	for _, j := range jobs {
		n += len(j.replicas)
	}
	ch := make(chan res, n)
	ctx, cancel := context.WithTimeout(ctx, peerTimeout)
	defer cancel()
	for ji, j := range jobs {
		for _, id := range j.replicas {
			go func() {
				p, err := v.peers.Peer(ctx, id)
				if err == nil {
					_, err = p.Sync(ctx, v.epoch, j.s.id)
				}
				ch <- res{ji, id, err}
			}()
		}
	}
	ok := make([]int, len(jobs))
	var errs []error
	var fencedErr error
	for range n {
		r := <-ch
		if r.err == nil {
			ok[r.j]++
			continue
		}
		if errors.Is(r.err, torus.ErrFenced) {
			fencedErr = r.err
		}
		v.log.Warn("sync failed", "segment", jobs[r.j].s.id, "peer", r.id, "err", r.err)
		errs = append(errs, fmt.Errorf("peer %s: %w", r.id, r.err))
	}
	v.mu.Lock()
	v.stats.Syncs += int64(n)
	v.mu.Unlock()
	if fencedErr != nil {
		return v.fence(fencedErr)
	}
	var short []string
	v.mu.Lock()
	for ji, j := range jobs {
		if ok[ji] >= minRep {
			j.s.synced = max(j.s.synced, j.length)
		} else {
			short = append(short, fmt.Sprintf("%v on %d/%d", j.s.id, ok[ji], minRep))
		}
	}
	v.mu.Unlock()
	if len(short) > 0 {
		return fmt.Errorf("volume %s: flush: segments synced on too few replicas (%v): %w",
			v.name, short, errors.Join(append(errs, torus.ErrUnavailable)...))
	}
	return nil
}

// Flush makes every write completed before it durable on MinReplicas
// replicas (ErrUnavailable otherwise). It sends no etcd request.
func (v *Volume) Flush(ctx context.Context) error {
	if err := v.begin(false); err != nil {
		return err
	}
	defer v.end()
	if v.ro {
		return nil
	}
	return v.flush(ctx)
}

// stripe returns the index of block b's edge lock.
func (v *Volume) stripe(b uint64) int { return int(b % uint64(len(v.locks))) }

// lockEdges locks the partially written edge blocks of a write, in stripe
// order, and returns the unlock function.
func (v *Volume) lockEdges(first, last uint64, headPartial, tailPartial bool) func() {
	var s []int
	if headPartial {
		s = append(s, v.stripe(first))
	}
	if tailPartial {
		s = append(s, v.stripe(last))
	}
	slices.Sort(s)
	s = slices.Compact(s)
	for _, i := range s {
		v.locks[i].Lock()
	}
	return func() {
		for _, i := range s {
			v.locks[i].Unlock()
		}
	}
}

// WriteAt writes p at off; with fua it also flushes. Partial edge blocks
// are read, merged and rewritten whole.
func (v *Volume) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := v.begin(true); err != nil {
		return err
	}
	defer v.end()
	if err := v.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	if err := v.writeAt(ctx, p, off); err != nil {
		return err
	}
	if fua {
		return v.flush(ctx)
	}
	return nil
}

func (v *Volume) writeAt(ctx context.Context, p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	const bs = torus.BlockSize
	end := off + int64(len(p))
	first, last := uint64(off/bs), uint64((end-1)/bs)
	headPartial := off%bs != 0 || end < int64(first+1)*bs
	tailPartial := end%bs != 0
	unlock := v.lockEdges(first, last, headPartial, tailPartial)
	defer unlock()
	data := p
	if headPartial || tailPartial {
		n := int(last-first+1) * bs
		data = make([]byte, n)
		if headPartial {
			if err := v.read(ctx, data[:bs], int64(first)*bs); err != nil {
				return err
			}
		}
		if tailPartial && (last != first || !headPartial) {
			if err := v.read(ctx, data[n-bs:], int64(last)*bs); err != nil {
				return err
			}
		}
		copy(data[off-int64(first)*bs:], p)
	}
	err := v.submitWrite(ctx, first, data)
	if err == nil {
		v.mu.Lock()
		v.stats.BytesWritten += int64(len(p))
		v.mu.Unlock()
	}
	return err
}

// submitWrite hands whole blocks to the appender as records of at most
// MaxRecordBlocks blocks and waits for them.
func (v *Volume) submitWrite(ctx context.Context, first uint64, data []byte) error {
	var reqs []*writeReq
	for len(data) > 0 {
		n := min(len(data)/torus.BlockSize, MaxRecordBlocks)
		chunk := data[:n*torus.BlockSize]
		crcs := make([]uint32, n)
		for i := range crcs {
			crcs[i] = BlockCRC(chunk[i*torus.BlockSize : (i+1)*torus.BlockSize])
		}
		reqs = append(reqs, &writeReq{typ: RecordWrite, block: first, count: uint32(n), data: chunk, crcs: crcs, done: make(chan error, 1)})
		first += uint64(n)
		data = data[n*torus.BlockSize:]
	}
	return v.submit(reqs)
}

func (v *Volume) submit(reqs []*writeReq) error {
	for _, r := range reqs {
		v.reqs <- r // the appender runs while any I/O is in flight
	}
	var err error
	for _, r := range reqs {
		if e := <-r.done; e != nil && err == nil {
			err = e
		}
	}
	return err
}

// WriteZeroes makes [off, off+length) read as zeros: zero records for whole
// blocks, read-modify-write for partial edges.
func (v *Volume) WriteZeroes(ctx context.Context, off, length int64, fua bool) error {
	if err := v.begin(true); err != nil {
		return err
	}
	defer v.end()
	if err := v.checkRange(off, length); err != nil {
		return err
	}
	if err := v.zero(ctx, off, length); err != nil {
		return err
	}
	if fua {
		return v.flush(ctx)
	}
	return nil
}

// Trim discards [off, off+length); it reads back as zeros.
func (v *Volume) Trim(ctx context.Context, off, length int64) error {
	return v.WriteZeroes(ctx, off, length, false)
}

func (v *Volume) zero(ctx context.Context, off, length int64) error {
	const bs = torus.BlockSize
	end := off + length
	a := (off + bs - 1) / bs * bs // first whole block
	b := end / bs * bs            // end of the last whole block
	if a >= b {                   // no whole block: one partial write
		return v.writeAt(ctx, make([]byte, length), off)
	}
	if off < a {
		if err := v.writeAt(ctx, make([]byte, a-off), off); err != nil {
			return err
		}
	}
	if b < end {
		if err := v.writeAt(ctx, make([]byte, end-b), b); err != nil {
			return err
		}
	}
	var reqs []*writeReq
	for blk := uint64(a / bs); blk < uint64(b/bs); {
		n := min(uint64(b/bs)-blk, MaxRecordBlocks)
		reqs = append(reqs, &writeReq{typ: RecordZero, block: blk, count: uint32(n), done: make(chan error, 1)})
		blk += n
	}
	if err := v.submit(reqs); err != nil {
		return err
	}
	v.mu.Lock()
	v.stats.BytesWritten += b - a
	v.mu.Unlock()
	return nil
}
