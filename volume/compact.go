package volume

import (
	"context"
	"fmt"

	"github.com/torus-storage/torus"
)

// compactLive is the compaction threshold: a sealed segment whose live
// block bytes are under this fraction of its length is rewritten.
const compactLive = 0.25

// compactor rewrites the live blocks of mostly dead segments after each
// checkpoint (docs/design/data-path.md, "Garbage collection"), so the next
// checkpoint no longer names them and the GC sweep reclaims them.
func (v *Volume) compactor() {
	defer v.wg.Done()
	for {
		select {
		case <-v.stop:
			return
		case <-v.compactKick:
		}
		if err := v.compact(v.ctx); err != nil {
			v.log.Warn("compaction stopped", "err", err)
		}
	}
}

// snapshotSegments returns the segments named by the volume's snapshots:
// compacting them would free nothing.
func (v *Volume) snapshotSegments(ctx context.Context) (map[torus.SegmentID]bool, error) {
	snaps, err := v.meta.Snapshots(ctx, v.name)
	if err != nil {
		return nil, err
	}
	out := make(map[torus.SegmentID]bool)
	for _, s := range snaps {
		for _, r := range s.Head.Sealed {
			out[r.ID] = true
		}
		ck := s.Head.Checkpoint
		if ck == nil {
			continue
		}
		table, ok := v.ckTables[ck.ID]
		if !ok {
			if table, err = v.checkpointTable(ctx, *ck); err != nil {
				return nil, err
			}
			v.ckTables[ck.ID] = table
		}
		for _, r := range table {
			out[r.ID] = true
		}
	}
	return out, nil
}

// compact finds the sealed segments under the threshold and rewrites their
// live blocks as move records through the appender. A move applies only to
// blocks still mapped to their source, so it never undoes a client write
// that raced with it, live or on replay.
func (v *Volume) compact(ctx context.Context) error {
	protected, err := v.snapshotSegments(ctx)
	if err != nil {
		return err
	}
	if err := v.begin(true); err != nil {
		return err
	}
	defer v.end()
	v.mu.Lock()
	cands := make(map[uint32]bool)
	for slot, s := range v.idx.slots {
		// A segment of another volume (a clone's shared segment) is
		// never compacted: its space is the parent's, and move records
		// name sources of the writer's own volume only.
		if s.Live == 0 || s.Ref.Length == 0 || protected[s.Ref.ID] || s.Ref.ID.Volume != v.id {
			continue
		}
		if v.open != nil && s.Ref.ID == v.open.id {
			continue
		}
		if float64(s.Live*torus.BlockSize) < compactLive*float64(s.Ref.Length) {
			cands[uint32(slot)] = true
		}
	}
	var runs []readRun
	slots := make(map[torus.SegmentID]uint32)
	if len(cands) > 0 {
		_ = v.idx.Runs(func(r Run) error {
			if !cands[r.Slot] {
				return nil
			}
			id := v.idx.slots[r.Slot].Ref.ID
			slots[id] = r.Slot
			for i := 0; i < len(r.CRCs); i += MaxRecordBlocks {
				n := min(len(r.CRCs)-i, MaxRecordBlocks)
				runs = append(runs, readRun{
					seg:    id,
					block:  r.First + uint64(i),
					segOff: r.DataOff + int64(i)*torus.BlockSize,
					crcs:   append([]uint32(nil), r.CRCs[i:i+n]...),
				})
			}
			return nil
		})
	}
	v.mu.Unlock()
	if len(runs) == 0 {
		return nil
	}
	var reqs []*writeReq
	var size int64
	send := func() error {
		err := v.submit(reqs)
		reqs, size = nil, 0
		return err
	}
	for _, r := range runs {
		buf := make([]byte, len(r.crcs)*torus.BlockSize)
		if err := v.fetch(ctx, r, buf); err != nil {
			return fmt.Errorf("compaction read: %w", err)
		}
		reqs = append(reqs, &writeReq{
			typ: RecordMove, block: r.block, count: uint32(len(r.crcs)), data: buf, crcs: r.crcs,
			src:     MoveSource{Epoch: r.seg.Epoch, Seq: r.seg.Seq, Offset: r.segOff},
			srcSlot: slots[r.seg], done: make(chan error, 1),
		})
		if size += int64(len(buf)); size >= 4*maxBatch {
			if err := send(); err != nil {
				return err
			}
		}
	}
	if err := send(); err != nil {
		return err
	}
	v.mu.Lock()
	v.stats.SegmentsCompacted += int64(len(slots))
	v.mu.Unlock()
	v.log.Debug("compacted", "segments", len(slots), "runs", len(runs))
	return nil
}
