package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/torus-storage/torus"
)

// carry is the unflushed tail of a sealed segment that too few replicas
// could make durable: records [base, base+len(data)) of src, read back from
// a replica that holds them, waiting to be appended again as the first
// bytes of the next open segment. It is appender-owned. While a carry is
// pending nothing else is appended, so the log keeps its order: the carried
// records come right after src's sealed length, before any newer record.
type carry struct {
	src  *segState
	base int64  // offset in src of data[0]: src's durable length
	data []byte // whole, verified records
}

// secure makes s's acknowledged bytes safe before s is sealed: it syncs
// them on s's replicas; when fewer than MinReplicas report them durable, it
// reads the unflushed tail back from a replica that holds it and keeps it
// as v.carry. It fails (and s stays open and broken) only when no replica
// returns the tail: acknowledged, unflushed writes are then lost, and FLUSH
// keeps failing. Appender goroutine only.
func (v *Volume) secure(ctx context.Context, s *segState) error {
	if v.carry != nil && v.carry.src == s {
		return nil
	}
	v.mu.Lock()
	length, synced := s.length, s.synced
	replicas := slices.Clone(s.replicas)
	v.mu.Unlock()
	if length <= synced {
		return nil
	}
	if len(replicas) > 0 {
		if _, _, err := v.syncSegments(ctx, []syncJob{{s, length, replicas}}); err != nil {
			return err
		}
		v.mu.Lock()
		synced = s.synced
		v.mu.Unlock()
		if synced >= length {
			return nil
		}
	}
	data, err := v.readTail(ctx, s, synced, length)
	if err != nil {
		return err
	}
	v.carry = &carry{src: s, base: synced, data: data}
	v.log.Warn("carrying unflushed writes to a new segment", "segment", s.id, "from", synced, "bytes", len(data))
	return nil
}

// readTail reads s's records [from, to) from the first replica that returns
// them whole and verified (every record header, CRC array and block CRC):
// s's remaining replicas first, then the ring order.
func (v *Volume) readTail(ctx context.Context, s *segState, from, to int64) ([]byte, error) {
	v.mu.Lock()
	order := slices.Clone(s.replicas)
	v.mu.Unlock()
	for _, id := range v.candidates(s.id) {
		if !slices.Contains(order, id) {
			order = append(order, id)
		}
	}
	var errs []error
	for _, id := range order {
		p, err := v.peers.Peer(ctx, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		buf := make([]byte, to-from)
		n, err := p.ReadAt(ctx, s.id, buf, from)
		if err != nil && !(errors.Is(err, io.EOF) && n == len(buf)) {
			errs = append(errs, fmt.Errorf("peer %s: %w", id, err))
			continue
		}
		// Records are position-independent: the tail verifies as a
		// segment of its own.
		if c := VerifySegment(s.id, buf, int64(len(buf)), 0); !c.OK() {
			errs = append(errs, fmt.Errorf("peer %s: %w: tail at %d: %s", id, torus.ErrCorrupt, from, c.Problem))
			continue
		}
		return buf, nil
	}
	return nil, fmt.Errorf("volume %s: unflushed writes of %v [%d, %d) on no replica; they are lost: %w",
		v.name, s.id, from, to, errors.Join(append(errs, torus.ErrUnavailable)...))
}

// landCarry appends the carry at the open segment's length and, once every
// replica stored it, points the index's entries for the carried blocks
// that still name their old place at the new one. errBroken when a replica
// failed: the caller rolls again and retries. Appender goroutine only.
func (v *Volume) landCarry(ctx context.Context) error {
	c, s := v.carry, v.open
	o, err := v.appendReplicas(s, c.data)
	if err != nil {
		return err
	}
	if len(o.failed) > 0 {
		v.dropReplicas(s, o.failed)
		return errBroken
	}
	recs, _ := ScanRecords(c.data, c.base)
	v.mu.Lock()
	at := s.length
	moved := 0
	for _, r := range recs {
		if r.Type == RecordZero {
			continue
		}
		moved += v.idx.Move(r.Block, c.src.slot, r.DataOffset, s.slot, at+r.DataOffset-c.base, r.CRCs)
	}
	s.length += int64(len(c.data))
	v.idx.SetLength(s.slot, s.length)
	// What src still holds past base is no longer named by anyone.
	c.src.length, c.src.synced = c.base, c.base
	v.stats.ReplicaBytes += int64(len(c.data)) * int64(len(s.replicas))
	v.stats.CarriedBytes += int64(len(c.data))
	v.carry = nil
	v.mu.Unlock()
	v.log.Info("unflushed writes carried to a new segment", "from", c.src.id, "to", s.id, "bytes", len(c.data), "blocks", moved)
	return nil
}
