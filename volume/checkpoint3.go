package volume

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/volume/lsm"
)

// CheckpointVersionRuns is the version of a checkpoint that holds one run
// of the index (docs/design/index-runs.md): the changes since the
// checkpoint before it, or their merge with runs below, over a stack of
// older runs it names. Readers that know only versions 1 and 2 refuse it
// ("unknown version 3").
const CheckpointVersionRuns = 3

const checkpointStackEntrySize = 48

// StackRun names one run of a checkpoint's stack: a version 3 checkpoint
// segment and the size of the run in it (what the tiered plan weighs).
type StackRun struct {
	Ref     torus.SegmentRef
	RunSize int64
}

// RunCheckpoint is a decoded version 3 checkpoint.
type RunCheckpoint struct {
	VolumeID uint64
	Size     int64              // volume size when written
	Segments []torus.SegmentRef // every data segment the index points into, with its length
	Stack    []StackRun         // older runs, newest first
	Run      []byte             // this checkpoint's run (lsm format)
}

// EncodeRunCheckpoint serializes a version 3 checkpoint.
//
// Layout, little-endian:
//
//	0  4 magic "TRSC"   4 4 version (3)   8 8 volume ID   16 8 size (bytes)
//	24 4 nsegs          28 4 nstack       32 8 run length
//	40   nsegs × {volume u64, epoch u64, seq u64, kind u8, 7 reserved, length u64}
//	     nstack × {volume u64, epoch u64, seq u64, kind u8, 7 reserved, length u64, run size u64}
//	     the run (volume/lsm, "TRSR" … "TRSR")
//	     crc32c u32 of everything before it
func EncodeRunCheckpoint(c *RunCheckpoint) []byte {
	p := make([]byte, 0, checkpointHeaderSize+len(c.Segments)*checkpointSegEntrySize+len(c.Stack)*checkpointStackEntrySize+len(c.Run)+4)
	p = binary.LittleEndian.AppendUint32(p, CheckpointMagic)
	p = binary.LittleEndian.AppendUint32(p, CheckpointVersionRuns)
	p = binary.LittleEndian.AppendUint64(p, c.VolumeID)
	p = binary.LittleEndian.AppendUint64(p, uint64(c.Size))
	p = binary.LittleEndian.AppendUint32(p, uint32(len(c.Segments)))
	p = binary.LittleEndian.AppendUint32(p, uint32(len(c.Stack)))
	p = binary.LittleEndian.AppendUint64(p, uint64(len(c.Run)))
	for _, s := range c.Segments {
		p = appendSegmentEntry(p, s)
	}
	for _, s := range c.Stack {
		p = appendSegmentEntry(p, s.Ref)
		p = binary.LittleEndian.AppendUint64(p, uint64(s.RunSize))
	}
	p = append(p, c.Run...)
	return binary.LittleEndian.AppendUint32(p, crc32.Checksum(p, castagnoli))
}

// decodeRunCheckpoint parses the version 3 checkpoint p (checksum and
// magic already checked by DecodeCheckpoint) and opens its run, checking
// every page.
func decodeRunCheckpoint(p []byte, shares func(uint64) bool, nblocks uint64) (*RunCheckpoint, error) {
	body := p[:len(p)-4]
	c := &RunCheckpoint{
		VolumeID: binary.LittleEndian.Uint64(body[8:]),
		Size:     int64(binary.LittleEndian.Uint64(body[16:])),
	}
	if !shares(c.VolumeID) {
		return nil, corruptf("checkpoint of volume %d, which the reading volume does not share", c.VolumeID)
	}
	if c.Size < 0 || c.Size%torus.BlockSize != 0 || uint64(c.Size)/torus.BlockSize > nblocks {
		return nil, corruptf("size %d does not fit a volume of %d blocks", c.Size, nblocks)
	}
	nsegs := uint64(binary.LittleEndian.Uint32(body[24:]))
	nstack := uint64(binary.LittleEndian.Uint32(body[28:]))
	runLen := binary.LittleEndian.Uint64(body[32:])
	rest := body[checkpointHeaderSize:]
	// nsegs and nstack are u32: their products cannot overflow; runLen is
	// checked apart so that a huge one cannot wrap the sum.
	if runLen > uint64(len(rest)) || nsegs*checkpointSegEntrySize+nstack*checkpointStackEntrySize != uint64(len(rest))-runLen {
		return nil, corruptf("%d segments, %d runs below and a run of %d bytes do not fill %d bytes", nsegs, nstack, runLen, len(rest))
	}
	ref := func(e []byte) (torus.SegmentRef, error) {
		r, err := decodeSegmentEntry(e)
		if err != nil {
			return r, err
		}
		if !shares(r.ID.Volume) || r.Length < 0 || r.Length >= 1<<40 {
			return r, corruptf("segment %v of length %d is not one the reading volume can name", r.ID, r.Length)
		}
		return r, nil
	}
	seen := make(map[torus.SegmentID]bool)
	for i := uint64(0); i < nsegs; i++ {
		r, err := ref(rest[:checkpointSegEntrySize])
		if err != nil {
			return nil, err
		}
		rest = rest[checkpointSegEntrySize:]
		if r.ID.Kind != torus.KindData || r.Length >= 1<<32 || seen[r.ID] {
			return nil, corruptf("segment %d: %v (length %d) is not a data segment listed once", i, r.ID, r.Length)
		}
		seen[r.ID] = true
		c.Segments = append(c.Segments, r)
	}
	for i := uint64(0); i < nstack; i++ {
		r, err := ref(rest[:checkpointStackEntrySize])
		if err != nil {
			return nil, err
		}
		size := int64(binary.LittleEndian.Uint64(rest[40:]))
		rest = rest[checkpointStackEntrySize:]
		if r.ID.Kind != torus.KindCheckpoint || size <= 0 || size > r.Length || seen[r.ID] {
			return nil, corruptf("run %d below: %v (run of %d bytes in %d) is not a checkpoint listed once", i, r.ID, size, r.Length)
		}
		seen[r.ID] = true
		c.Stack = append(c.Stack, StackRun{Ref: r, RunSize: size})
	}
	c.Run = rest
	if err := c.check(context.Background(), shares); err != nil {
		return nil, err
	}
	return c, nil
}

// open opens the checkpoint's run.
func (c *RunCheckpoint) open(ctx context.Context, shares func(uint64) bool) (*lsm.Run, error) {
	r, err := lsm.Open(ctx, memRun(c.Run), int64(len(c.Run)), 0, nil, shares)
	if err != nil {
		return nil, fmt.Errorf("volume: checkpoint: %w", err)
	}
	if r.Volume != c.VolumeID {
		return nil, corruptf("run of volume %d in a checkpoint of volume %d", r.Volume, c.VolumeID)
	}
	return r, nil
}

// check reads every page of the checkpoint's run.
func (c *RunCheckpoint) check(ctx context.Context, shares func(uint64) bool) error {
	r, err := c.open(ctx, shares)
	if err != nil {
		return err
	}
	if err := r.Each(ctx, func(lsm.Extent) error { return nil }); err != nil {
		return fmt.Errorf("volume: checkpoint: %w", err)
	}
	return nil
}

// memRun reads a run held in memory.
type memRun []byte

func (m memRun) ReadAt(_ context.Context, p []byte, off int64) error {
	if off < 0 || off > int64(len(m)) || int64(len(p)) > int64(len(m))-off {
		return corruptf("run read of %d bytes at %d past its %d bytes", len(p), off, len(m))
	}
	copy(p, m[off:])
	return nil
}

// Tiered plan of the index's runs (docs/design/index-runs.md): runs within
// a factor runFanout of each other in size form a tier; runFanout runs of
// one tier on top of the stack are merged into the next checkpoint's run.
const (
	runBase   = 256 << 10
	runFanout = 8
)

// planRun returns the run the next checkpoint holds and the stack below
// it: delta, merged with the runs on top of stack while the tiered plan
// says so (reading them from their replicas). Holes are dropped from a run
// with nothing below it. Merges stream (lsm.MergeEncode): memory is the
// runs' encoded bytes, not their decoded extents.
func (v *Volume) planRun(ctx context.Context, delta []lsm.Extent, stack []StackRun) ([]byte, []StackRun, error) {
	es := delta
	if len(stack) == 0 {
		es = lsm.DropHoles(es)
	}
	enc, err := lsm.Encode(v.id, es)
	if err != nil {
		return nil, nil, err
	}
	first := true // enc is still delta alone
	for {
		sizes := make([]int64, 0, len(stack)+1)
		sizes = append(sizes, int64(len(enc)))
		for _, s := range stack {
			sizes = append(sizes, s.RunSize)
		}
		from, n := lsm.Plan(sizes, runBase, runFanout)
		if n == 0 || from != 0 {
			return enc, stack, nil
		}
		var top []lsm.Extent
		var runs []*lsm.Run
		if first {
			top = delta
		} else {
			r, err := lsm.Open(ctx, memRun(enc), int64(len(enc)), 0, nil, lsm.AnyVolume)
			if err != nil {
				return nil, nil, err
			}
			runs = append(runs, r)
		}
		for _, sr := range stack[:n-1] {
			r, err := v.openRun(ctx, sr)
			if err != nil {
				return nil, nil, err
			}
			runs = append(runs, r)
		}
		stack = stack[n-1:]
		if enc, err = lsm.MergeEncode(ctx, v.id, top, runs, len(stack) == 0); err != nil {
			return nil, nil, err
		}
		first = false
		v.mu.Lock()
		v.stats.RunMerges++
		v.mu.Unlock()
	}
}

// openRun reads the checkpoint of one run of the stack and opens its run.
func (v *Volume) openRun(ctx context.Context, sr StackRun) (*lsm.Run, error) {
	c, err := v.readCheckpoint(ctx, sr.Ref)
	if err != nil {
		return nil, fmt.Errorf("volume %s: run %v: %w", v.name, sr.Ref.ID, err)
	}
	if c.Runs == nil {
		return nil, corruptf("run %v below a version 3 checkpoint is a version 1 or 2 checkpoint", sr.Ref.ID)
	}
	return c.Runs.open(ctx, v.shares())
}

func (v *Volume) shares() func(uint64) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.info.SharesVolume
}

// loadRuns builds the index a version 3 checkpoint describes into x: the
// runs of its stack applied bottom up, a page at a time, then its own run
// (newer runs win, holes unmap). Every mapped block must then point into
// a segment of the checkpoint's table and within its length.
func (v *Volume) loadRuns(ctx context.Context, c *Checkpoint, x *Index) error {
	shares := v.shares()
	apply := func(r *lsm.Run) error {
		return r.Each(ctx, func(e lsm.Extent) error {
			switch {
			case e.End() > x.Blocks():
				return corruptf("blocks [%d,+%d) past the volume's %d blocks", e.First, e.Count, x.Blocks())
			case e.Hole:
				x.Unmap(e.First, uint64(e.Count))
			default:
				x.Map(e.First, x.AddSegment(e.Seg), e.Off, e.CRCs)
			}
			return nil
		})
	}
	for i := len(c.Runs.Stack) - 1; i >= 0; i-- {
		r, err := v.openRun(ctx, c.Runs.Stack[i])
		if err != nil {
			return err
		}
		if err := apply(r); err != nil {
			return err
		}
	}
	top, err := c.Runs.open(ctx, shares)
	if err != nil {
		return err
	}
	if err := apply(top); err != nil {
		return err
	}
	length := make(map[torus.SegmentID]int64, len(c.Segments))
	for _, s := range c.Segments {
		length[s.ID] = s.Length
		x.SetLength(x.AddSegment(s.ID), s.Length)
	}
	err = x.Runs(func(r Run) error {
		seg := x.Slot(r.Slot).Ref.ID
		n, ok := length[seg]
		switch {
		case !ok:
			return corruptf("blocks [%d,+%d) point into %v, which the segment table does not name", r.First, len(r.CRCs), seg)
		case r.DataOff+int64(len(r.CRCs))*torus.BlockSize > n:
			return corruptf("blocks [%d,+%d) at %d in %v run past its length %d", r.First, len(r.CRCs), r.DataOff, seg, n)
		}
		return nil
	})
	if err != nil {
		return err
	}
	x.Checkpointed()
	return nil
}
