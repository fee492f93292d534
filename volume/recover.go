package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/torus-storage/torus"
)

// readChunk is the size of one ReadAt when a whole segment is read.
const readChunk = 4 << 20

// readSegment reads seg from one peer: limit bytes, or everything when limit
// is negative. A short segment returns what is there without error.
func readSegment(ctx context.Context, p torus.PeerService, seg torus.SegmentID, limit int64) ([]byte, error) {
	var out []byte
	for limit < 0 || int64(len(out)) < limit {
		n := int64(readChunk)
		if limit >= 0 && limit-int64(len(out)) < n {
			n = limit - int64(len(out))
		}
		buf := make([]byte, n)
		got, err := p.ReadAt(ctx, seg, buf, int64(len(out)))
		out = append(out, buf[:got]...)
		if errors.Is(err, io.EOF) || (err == nil && int64(got) < n) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// candidates returns the peers to try for seg in preference order: the
// replicas the writer used first, then the ring order; members that did not
// answer a read in time lately go after those, and members known to be down
// last. The result is cached until the ring, the live peers or the
// segment's replicas change (computing the ring order of a segment formats
// its ID and walks the ring: a tenth of a 4 KiB read's CPU time). Callers
// must not modify it.
func (v *Volume) candidates(seg torus.SegmentID) []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	if c, ok := v.cands[seg]; ok {
		return c
	}
	var first []string
	if s := v.segs[seg]; s != nil {
		first = s.replicas
	}
	seen := make(map[string]bool)
	now := time.Now()
	var out, slow, down []string
	for _, id := range append(append([]string(nil), first...), v.place.Order(seg.Key())...) {
		if seen[id] {
			continue
		}
		seen[id] = true
		t, late := v.slow[id]
		switch {
		case !v.up[id]:
			down = append(down, id)
		case late && now.Sub(t) < badPeerTimeout:
			slow = append(slow, id)
		default:
			out = append(out, id)
		}
	}
	out = append(append(out, slow...), down...)
	if v.cands == nil || len(v.cands) >= maxCachedCandidates {
		v.cands = make(map[torus.SegmentID][]string)
	}
	v.cands[seg] = out
	return out
}

// maxCachedCandidates bounds the candidates cache (segments, not blocks:
// 32 GiB of volume per 1024 entries at the default segment size).
const maxCachedCandidates = 4096

// forgetCandidates drops the cached candidates; v.mu must be held. Called
// whenever the ring, the live peers or a segment's replicas change.
func (v *Volume) forgetCandidates() { v.cands = nil }

// readWhole reads a sealed segment (or checkpoint) from the first candidate
// whose copy is whole: usable (nil: every byte) says how many of a copy's
// bytes can be used, -1 to reject it (a checkpoint that does not decode),
// and a copy is whole when that reaches ref.Length. When none is, it
// returns the copy with the most usable bytes: a replica with a corrupt
// record or a lost tail never hides a good copy on another.
func (v *Volume) readWhole(ctx context.Context, ref torus.SegmentRef, usable func([]byte) int64) ([]byte, error) {
	if usable == nil {
		usable = func(p []byte) int64 { return int64(len(p)) }
	}
	var best []byte
	bestN := int64(-1)
	var lastErr error
	cands := v.candidates(ref.ID)
	for i, id := range cands {
		p, err := v.peers.Peer(ctx, id)
		if err != nil {
			lastErr = err
			continue
		}
		// A candidate that does not answer is given up on for the next
		// (the last one gets the caller's whole deadline).
		tctx, cancel := ctx, context.CancelFunc(func() {})
		if i < len(cands)-1 {
			tctx, cancel = context.WithTimeout(ctx, peerTimeout)
		}
		data, err := readSegment(tctx, p, ref.ID, ref.Length)
		if err != nil && tctx.Err() != nil && ctx.Err() == nil {
			v.slowPeer(id)
		}
		cancel()
		if err != nil {
			if !errors.Is(err, torus.ErrNotExist) {
				v.log.Warn("segment read failed", "segment", ref.ID, "peer", id, "err", err)
			}
			lastErr = err
			continue
		}
		n := usable(data)
		if n < 0 {
			lastErr = fmt.Errorf("%w: segment %v on %s", torus.ErrCorrupt, ref.ID, id)
			continue
		}
		if n >= ref.Length {
			return data, nil
		}
		v.log.Warn("segment copy short or corrupt; trying another replica", "segment", ref.ID, "peer", id,
			"usable", n, "length", ref.Length)
		if n > bestN {
			best, bestN = data, n
		}
	}
	if best != nil {
		return best, nil
	}
	if lastErr == nil {
		lastErr = torus.ErrUnavailable
	}
	return nil, fmt.Errorf("volume %s: segment %v: no replica: %w", v.name, ref.ID, errors.Join(torus.ErrUnavailable, lastErr))
}

// readCheckpoint reads and decodes checkpoint ck from the first replica
// whose copy is whole and decodes.
func (v *Volume) readCheckpoint(ctx context.Context, ck torus.SegmentRef) (*Checkpoint, error) {
	v.mu.Lock()
	nblocks := uint64(v.info.Size / torus.BlockSize)
	info := v.info
	v.mu.Unlock()
	var decoded *Checkpoint
	_, err := v.readWhole(ctx, ck, func(p []byte) int64 {
		if int64(len(p)) != ck.Length {
			return -1
		}
		c, err := DecodeCheckpoint(p, info.SharesVolume, nblocks)
		if err != nil {
			v.log.Warn("checkpoint does not decode", "segment", ck.ID, "err", err)
			return -1
		}
		decoded = c
		return int64(len(p))
	})
	return decoded, err
}

// validRecords is readWhole's measure of a data segment copy: its valid
// record prefix.
func validRecords(p []byte) int64 {
	_, valid := ScanRecords(p, 0)
	return valid
}

// rebuild builds the index a head describes: checkpoint, sealed segments up
// to their lengths, then the longest valid prefix of the open segment, whose
// length it returns. fenced lists the peers that accepted the writer's fence;
// nil means a read-only open, which takes the longest prefix it finds
// without a quorum.
//
// A version 3 checkpoint is read with the runs of its stack (loadRuns);
// the stack, its checkpoint on top, is returned for the writer's next
// checkpoint. After a version 1 or 2 checkpoint (or none) the stack is nil
// and the index's next checkpoint holds all of it.
func (v *Volume) rebuild(ctx context.Context, head torus.Head, fenced map[string]bool) (*Index, []StackRun, int64, error) {
	v.mu.Lock()
	nblocks := uint64(v.info.Size / torus.BlockSize)
	id := v.id
	v.mu.Unlock()
	idx := NewIndex(nblocks)
	var stack []StackRun
	if ck := head.Checkpoint; ck != nil {
		decoded, err := v.readCheckpoint(ctx, *ck)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("volume %s: checkpoint: %w", v.name, err)
		}
		if decoded.Runs != nil {
			if err := v.loadRuns(ctx, decoded, idx); err != nil {
				return nil, nil, 0, fmt.Errorf("volume %s: checkpoint %v: %w", v.name, ck.ID, err)
			}
			stack = append([]StackRun{{Ref: *ck, RunSize: int64(len(decoded.Runs.Run))}}, decoded.Runs.Stack...)
		} else {
			idx = decoded.Index
		}
	}
	for _, ref := range head.Sealed {
		data, err := v.readWhole(ctx, ref, validRecords)
		if err != nil {
			return nil, nil, 0, err
		}
		recs, valid := ScanRecords(data, 0)
		if valid < ref.Length {
			v.log.Error("sealed segment shorter than its length on every replica; unflushed writes lost",
				"segment", ref.ID, "length", ref.Length, "valid", valid)
		}
		slot := idx.AddSegment(ref.ID)
		idx.SetLength(slot, ref.Length)
		for _, r := range recs {
			if r.Offset+RecordSize(r.RecordHeader) > ref.Length {
				break
			}
			idx.Apply(id, slot, r)
		}
	}
	if head.Open == nil {
		return idx, stack, 0, nil
	}
	seg := *head.Open
	recs, valid, err := v.readOpen(ctx, seg, head.OpenReplicas, fenced)
	if err != nil {
		return nil, nil, 0, err
	}
	if valid > 0 {
		slot := idx.AddSegment(seg)
		idx.SetLength(slot, valid)
		for _, r := range recs {
			idx.Apply(id, slot, r)
		}
	}
	return idx, stack, valid, nil
}

// readOpen finds the longest valid prefix of the open segment seg among its
// replicas. A writer (fenced != nil) counts the ring members it could not
// hear from (fence refused, read failed): if MinReplicas or more of them
// might hold the segment, a flushed byte could be missed, so it fails with
// ErrUnavailable. Flushed bytes are on at least MinReplicas peers, so with at
// most MinReplicas-1 unheard at least one copy was read.
func (v *Volume) readOpen(ctx context.Context, seg torus.SegmentID, replicas []string, fenced map[string]bool) ([]ScannedRecord, int64, error) {
	v.mu.Lock()
	order := v.place.Order(seg.Key())
	rep, minRep := v.repl, v.minRep
	v.mu.Unlock()
	if len(replicas) > 0 {
		// The head names the replicas: consult exactly those, so a
		// member removed from the ring since is counted as unheard.
		order, rep = replicas, len(replicas)
	}
	var best []ScannedRecord
	var bestValid int64
	holders, unheard := 0, 0
	for _, id := range order {
		if holders >= rep {
			break
		}
		if fenced != nil && !fenced[id] {
			unheard++
			continue
		}
		p, err := v.peers.Peer(ctx, id)
		if err != nil {
			unheard++
			continue
		}
		data, err := readSegment(ctx, p, seg, -1)
		if errors.Is(err, torus.ErrNotExist) {
			continue
		}
		if err != nil {
			v.log.Warn("open segment read failed", "segment", seg, "peer", id, "err", err)
			unheard++
			continue
		}
		recs, valid := ScanRecords(data, 0)
		if fenced != nil {
			// What the old writer appended may be unsynced: the new head
			// seals only what this copy holds durably. A copy that cannot
			// be synced is not counted: its bytes may vanish.
			durable, err := p.Sync(ctx, v.epoch, seg)
			if err != nil {
				v.log.Warn("open segment sync failed; copy not counted", "segment", seg, "peer", id, "err", err)
				unheard++
				continue
			}
			for len(recs) > 0 && recs[len(recs)-1].Offset+RecordSize(recs[len(recs)-1].RecordHeader) > durable {
				recs = recs[:len(recs)-1]
			}
			if n := len(recs); n == 0 {
				valid = 0
			} else {
				valid = recs[n-1].Offset + RecordSize(recs[n-1].RecordHeader)
			}
		}
		holders++
		if valid > bestValid {
			best, bestValid = recs, valid
		}
	}
	if fenced != nil && holders < rep && unheard > minRep-1 {
		return nil, 0, fmt.Errorf("volume %s: open segment %v: %d ring members unreachable, at most %d allowed: %w",
			v.name, seg, unheard, minRep-1, torus.ErrUnavailable)
	}
	v.log.Debug("recovered open segment", "segment", seg, "valid", bestValid, "holders", holders)
	return best, bestValid, nil
}
