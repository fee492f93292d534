package scrub

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/volume"
)

// chunk is the size of one read while a copy is checked or copied.
const chunk = 1 << 20

// Limiter spreads reads over time so they stay under Rate bytes per
// second. The zero value, a nil *Limiter and Rate ≤ 0 do not limit. Safe
// for concurrent use: concurrent callers share the rate.
type Limiter struct {
	Rate int64 // bytes per second

	mu   sync.Mutex
	next time.Time // when the bytes granted so far have been paid for
}

// Wait blocks until n more bytes fit under the rate, or ctx ends.
func (l *Limiter) Wait(ctx context.Context, n int64) error {
	if l == nil || l.Rate <= 0 {
		return ctx.Err()
	}
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	at := l.next
	l.next = l.next.Add(time.Duration(float64(n) / float64(l.Rate) * float64(time.Second)))
	l.mu.Unlock()
	d := time.Until(at)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Check reads one copy of seg from svc, up to required bytes (everything
// when required is volume.Unknown), and verifies it (volume.Verifier).
// nblocks is the volume's size in blocks. A copy that does not exist is
// reported as an empty, incomplete copy, not as an error; other read
// failures are returned (the copy was not judged).
func Check(ctx context.Context, svc torus.PeerService, seg torus.SegmentID, required int64, nblocks uint64, lim *Limiter) (volume.CopyCheck, error) {
	v := volume.NewVerifier(seg, required, nblocks)
	buf := make([]byte, chunk)
	for off := int64(0); required < 0 || off < required; {
		n := int64(len(buf))
		if required >= 0 {
			n = min(n, required-off)
		}
		if err := lim.Wait(ctx, n); err != nil {
			return volume.CopyCheck{}, err
		}
		m, err := svc.ReadAt(ctx, seg, buf[:n], off)
		v.Write(buf[:m])
		off += int64(m)
		if errors.Is(err, io.EOF) || (err == nil && int64(m) < n) || (errors.Is(err, torus.ErrNotExist) && off == 0) {
			break
		}
		if err != nil {
			return volume.CopyCheck{}, fmt.Errorf("scrub: reading %s at %d: %w", seg, off, err)
		}
	}
	return v.Result(), nil
}

// CopyError reports a copy that failed verification: the source (nothing
// bad was sent; try another holder) or the destination after the copy
// (its copy was deleted). It matches torus.ErrCorrupt.
type CopyError struct {
	Seg         torus.SegmentID
	Destination bool // the destination's read-back failed, not the source
	Check       volume.CopyCheck
}

func (e *CopyError) Error() string {
	side := "source"
	if e.Destination {
		side = "destination"
	}
	return fmt.Sprintf("scrub: %s copy of %s is bad: %s", side, e.Seg, e.Check.Problem)
}

// Is makes errors.Is(err, torus.ErrCorrupt) hold.
func (e *CopyError) Is(target error) bool { return target == torus.ErrCorrupt }

// CopyOptions tunes Copy.
type CopyOptions struct {
	// Limit paces the reads (of the source and of the read-back).
	Limit *Limiter
	// Copied, if set, is told of every n bytes sent (for metrics and
	// throttling of the writes).
	Copied func(n int64)
	// Send paces the appends to the destination.
	Send *Limiter
	// Replace deletes the destination's copy first and sends everything.
	Replace bool
}

// Copy brings dst's copy of seg to the first length bytes of src's,
// verifying what it copies:
//
//   - the source is read from offset 0 and verified record by record
//     (volume.Verifier); only verified bytes are sent, so a bad source sends
//     nothing bad and Copy fails with a *CopyError (Destination false);
//   - a destination copy that already holds a prefix is resumed at its
//     length, unless its last 64 KiB differ from the source's (then it is
//     replaced);
//   - the destination is synced, and its durable length must reach length;
//   - the destination's copy is read back and verified; if that fails it is
//     deleted and Copy fails with a *CopyError (Destination true).
//
// So a destination counts as a full copy only when Copy returns nil. The
// bytes are appended with torus.RepairEpoch. It returns the bytes sent.
func Copy(ctx context.Context, src, dst torus.PeerService, seg torus.SegmentID, length int64, nblocks uint64, o CopyOptions) (int64, error) {
	if length <= 0 {
		return 0, fmt.Errorf("scrub: copy of %s with length %d: %w", seg, length, torus.ErrInvalid)
	}
	var start int64
	if o.Replace {
		if err := dst.Delete(ctx, seg); err != nil {
			return 0, fmt.Errorf("scrub: deleting the copy of %s to replace: %w", seg, err)
		}
	} else {
		info, err := dst.Stat(ctx, seg)
		switch {
		case errors.Is(err, torus.ErrNotExist):
		case err != nil:
			return 0, fmt.Errorf("scrub: stat %s on the destination: %w", seg, err)
		default:
			start = min(info.Length, length)
		}
		if start > 0 && start < length {
			same, err := sameTail(ctx, src, dst, seg, start)
			if err != nil {
				return 0, err
			}
			if !same {
				if err := dst.Delete(ctx, seg); err != nil {
					return 0, err
				}
				start = 0
			}
		}
	}
	sent, err := send(ctx, src, dst, seg, length, nblocks, start, o)
	if err != nil {
		return sent, err
	}
	synced, err := syncedLength(ctx, dst, seg)
	if err != nil {
		return sent, fmt.Errorf("scrub: syncing %s on the destination: %w", seg, err)
	}
	if synced < length {
		return sent, fmt.Errorf("scrub: %s on the destination is durable to %d of %d bytes: %w", seg, synced, length, torus.ErrUnavailable)
	}
	c, err := Check(ctx, dst, seg, length, nblocks, o.Limit)
	if err != nil {
		return sent, fmt.Errorf("scrub: reading back %s: %w", seg, err)
	}
	if !c.OK() {
		if err := dst.Delete(ctx, seg); err != nil {
			return sent, errors.Join(&CopyError{Seg: seg, Destination: true, Check: c}, err)
		}
		return sent, &CopyError{Seg: seg, Destination: true, Check: c}
	}
	return sent, nil
}

// syncedLength syncs dst's copy of seg and returns its durable length.
func syncedLength(ctx context.Context, dst torus.PeerService, seg torus.SegmentID) (int64, error) {
	return dst.Sync(ctx, torus.RepairEpoch, seg)
}

// send streams src's copy from 0, verifying, and appends the verified
// bytes from start on to dst.
func send(ctx context.Context, src, dst torus.PeerService, seg torus.SegmentID, length int64, nblocks uint64, start int64, o CopyOptions) (int64, error) {
	v := volume.NewVerifier(seg, length, nblocks)
	var (
		pend    []byte // source bytes from pendOff, not yet sent
		pendOff int64
		sent    int64
	)
	ship := func(upTo int64) error {
		for pendOff < upTo {
			n := min(upTo-pendOff, chunk)
			if pendOff+n > start {
				from := max(start-pendOff, 0)
				if err := o.Send.Wait(ctx, n-from); err != nil {
					return err
				}
				if err := dst.Append(ctx, torus.RepairEpoch, seg, pendOff+from, pend[from:n]); err != nil {
					return fmt.Errorf("scrub: copying %s at %d: %w", seg, pendOff+from, err)
				}
				sent += n - from
				if o.Copied != nil {
					o.Copied(n - from)
				}
			}
			pend = pend[n:]
			pendOff += n
		}
		if len(pend) == 0 {
			pend = nil // let a grown buffer go
		}
		return nil
	}
	buf := make([]byte, chunk)
	for off := int64(0); off < length; {
		n := min(int64(len(buf)), length-off)
		if err := o.Limit.Wait(ctx, n); err != nil {
			return sent, err
		}
		m, err := src.ReadAt(ctx, seg, buf[:n], off)
		if m > 0 {
			v.Write(buf[:m])
			pend = append(pend, buf[:m]...)
			off += int64(m)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, torus.ErrNotExist) || (err == nil && m == 0) {
			break // short source: the verdict says so
		}
		if err != nil {
			return sent, fmt.Errorf("scrub: reading %s at %d: %w", seg, off, err)
		}
		if err := ship(v.Verified()); err != nil {
			return sent, err
		}
	}
	c := v.Result()
	if !c.OK() {
		return sent, &CopyError{Seg: seg, Check: c}
	}
	return sent, ship(length)
}

// sameTail reports whether dst's bytes just below start equal src's.
func sameTail(ctx context.Context, src, dst torus.PeerService, seg torus.SegmentID, start int64) (bool, error) {
	n := min(start, 64<<10)
	a, b := make([]byte, n), make([]byte, n)
	if _, err := dst.ReadAt(ctx, seg, a, start-n); err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	if _, err := src.ReadAt(ctx, seg, b, start-n); err != nil && !errors.Is(err, io.EOF) {
		return false, err
	}
	return string(a) == string(b), nil
}
