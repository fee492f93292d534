package volume

import (
	"context"
	"errors"
	"fmt"
	"io"

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
// replicas the writer used first, then the ring order; members known to be
// down go last. The result is cached until the ring, the live peers or the
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
	var out, down []string
	for _, id := range append(append([]string(nil), first...), v.place.Order(seg.Key())...) {
		if seen[id] {
			continue
		}
		seen[id] = true
		if v.up[id] {
			out = append(out, id)
		} else {
			down = append(down, id)
		}
	}
	out = append(out, down...)
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
// that has at least want bytes, falling back to the longest copy found.
// accept, if non-nil, judges a copy (e.g. a checkpoint that must decode).
func (v *Volume) readWhole(ctx context.Context, ref torus.SegmentRef, accept func([]byte) bool) ([]byte, error) {
	var best []byte
	var lastErr error
	for _, id := range v.candidates(ref.ID) {
		p, err := v.peers.Peer(ctx, id)
		if err != nil {
			lastErr = err
			continue
		}
		data, err := readSegment(ctx, p, ref.ID, ref.Length)
		if err != nil {
			if !errors.Is(err, torus.ErrNotExist) {
				v.log.Warn("segment read failed", "segment", ref.ID, "peer", id, "err", err)
			}
			lastErr = err
			continue
		}
		if accept != nil && !accept(data) {
			lastErr = fmt.Errorf("%w: segment %v on %s", torus.ErrCorrupt, ref.ID, id)
			continue
		}
		if int64(len(data)) >= ref.Length {
			return data, nil
		}
		if best == nil || len(data) > len(best) {
			best = data
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

// rebuild builds the index a head describes: checkpoint, sealed segments up
// to their lengths, then the longest valid prefix of the open segment, whose
// length it returns. fenced lists the peers that accepted the writer's fence;
// nil means a read-only open, which takes the longest prefix it finds
// without a quorum.
func (v *Volume) rebuild(ctx context.Context, head torus.Head, fenced map[string]bool) (*Index, int64, error) {
	v.mu.Lock()
	nblocks := uint64(v.info.Size / torus.BlockSize)
	id := v.id
	v.mu.Unlock()
	idx := NewIndex(nblocks)
	if ck := head.Checkpoint; ck != nil {
		var decoded *Checkpoint
		_, err := v.readWhole(ctx, *ck, func(p []byte) bool {
			if int64(len(p)) != ck.Length {
				return false
			}
			c, err := DecodeCheckpoint(p, id, nblocks)
			if err != nil {
				v.log.Warn("checkpoint does not decode", "segment", ck.ID, "err", err)
				return false
			}
			decoded = c
			return true
		})
		if err != nil {
			return nil, 0, fmt.Errorf("volume %s: checkpoint: %w", v.name, err)
		}
		idx = decoded.Index
	}
	for _, ref := range head.Sealed {
		data, err := v.readWhole(ctx, ref, nil)
		if err != nil {
			return nil, 0, err
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
		return idx, 0, nil
	}
	seg := *head.Open
	recs, valid, err := v.readOpen(ctx, seg, fenced)
	if err != nil {
		return nil, 0, err
	}
	if valid > 0 {
		slot := idx.AddSegment(seg)
		idx.SetLength(slot, valid)
		for _, r := range recs {
			idx.Apply(id, slot, r)
		}
	}
	return idx, valid, nil
}

// readOpen finds the longest valid prefix of the open segment seg among its
// replicas. A writer (fenced != nil) counts the ring members it could not
// hear from (fence refused, read failed): if MinReplicas or more of them
// might hold the segment, a flushed byte could be missed, so it fails with
// ErrUnavailable. Flushed bytes are on at least MinReplicas peers, so with at
// most MinReplicas-1 unheard at least one copy was read.
func (v *Volume) readOpen(ctx context.Context, seg torus.SegmentID, fenced map[string]bool) ([]ScannedRecord, int64, error) {
	v.mu.Lock()
	order := v.place.Order(seg.Key())
	rep, minRep := v.cfg.Replication, v.minRep
	v.mu.Unlock()
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
		holders++
		if fenced != nil {
			// What the old writer appended may be unsynced: make it
			// durable before the new head seals it.
			if _, err := p.Sync(ctx, v.epoch, seg); err != nil {
				v.log.Warn("open segment sync failed", "segment", seg, "peer", id, "err", err)
			}
		}
		recs, valid := ScanRecords(data, 0)
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
