package volume

import (
	"context"
	"fmt"

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

// stripe returns the index of block b's edge lock.
func (v *Volume) stripe(b uint64) int { return int(b % uint64(len(v.locks))) }

// lockBlocks locks the stripes of blocks [first, last] for a write, in
// stripe order, and returns the unlock function. The partially written
// edge blocks (read-modify-write) are locked exclusively; every other block
// is locked shared. So a read-modify-write of a block excludes any other
// write of it, whole or partial, from its read until its record is
// acknowledged, and whole-block writes still run side by side.
func (v *Volume) lockBlocks(first, last uint64, headPartial, tailPartial bool) func() {
	const n = uint64(len(v.locks))
	var mode [n]uint8 // 0 none, 1 shared, 2 exclusive
	if last-first+1 >= n {
		for i := range mode {
			mode[i] = 1
		}
	} else {
		for b := first; b <= last; b++ {
			mode[v.stripe(b)] = 1
		}
	}
	if headPartial {
		mode[v.stripe(first)] = 2
	}
	if tailPartial {
		mode[v.stripe(last)] = 2
	}
	for i, m := range mode {
		switch m {
		case 1:
			v.locks[i].RLock()
		case 2:
			v.locks[i].Lock()
		}
	}
	return func() {
		for i, m := range mode {
			switch m {
			case 1:
				v.locks[i].RUnlock()
			case 2:
				v.locks[i].Unlock()
			}
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
	unlock := v.lockBlocks(first, last, headPartial, tailPartial)
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
	unlock := v.lockBlocks(uint64(a/bs), uint64(b/bs)-1, false, false)
	err := v.submit(reqs)
	unlock()
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.stats.BytesWritten += b - a
	v.mu.Unlock()
	return nil
}
