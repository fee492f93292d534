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
// failures are returned (the copy was not judged). It keeps up to
// readDepth reads in flight (scan).
func Check(ctx context.Context, svc torus.PeerService, seg torus.SegmentID, required int64, nblocks uint64, lim *Limiter) (volume.CopyCheck, error) {
	v := volume.NewVerifier(seg, required, nblocks)
	off, rerr, _ := scan(ctx, svc, seg, required, lim, func(p []byte) error {
		v.Write(p)
		return nil
	})
	if rerr != nil && !errors.Is(rerr, io.EOF) && !(errors.Is(rerr, torus.ErrNotExist) && off == 0) {
		return volume.CopyCheck{}, fmt.Errorf("scrub: reading %s at %d: %w", seg, off, rerr)
	}
	return v.Result(), nil
}

// Reads and appends of one copy or check: pieces of readChunk bytes, up
// to readDepth reads in flight; appends of up to appendChunk bytes, up to
// appendDepth in flight (on one connection the destination runs them in
// order). About readDepth·readChunk + 2·appendChunk bytes of buffers per
// copy here, and as much again on the destination (requests in flight):
// a daemon healing 4 copies at once, and receiving as many, holds about
// 50 MiB for them (with 2 and 4 MiB pieces it held three times its idle
// RSS, 300 MiB, for no measured gain).
const (
	readChunk   = 1 << 20
	readDepth   = 4
	appendChunk = 1 << 20
	appendDepth = 4
)

// scan reads svc's copy of seg in order from offset 0, up to limit bytes
// (to its end when limit < 0), in pieces of readChunk bytes with up to
// readDepth reads in flight, each paced by lim, and passes each piece
// read to fn, in order; fn must not retain p. It stops at limit, after a
// piece that came back short, at a read's error, or at fn's error. It
// returns the offset reached (the bytes passed to fn), the error of the
// read that stopped it (nil when it stopped at limit or after a short
// read; io.EOF at the copy's end) and fn's error. Every read it started
// has returned when it returns.
func scan(ctx context.Context, svc torus.PeerService, seg torus.SegmentID, limit int64, lim *Limiter, fn func(p []byte) error) (off int64, readErr, err error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	type piece struct {
		buf  []byte
		want int
		n    int
		err  error
		done chan struct{} // nil: not started
	}
	ring := make([]piece, readDepth)
	var next int64 // offset of the next read to start
	start := func(p *piece) error {
		n := int64(readChunk)
		if limit >= 0 {
			n = min(n, limit-next)
		}
		if err := lim.Wait(ctx, n); err != nil {
			return err
		}
		if p.buf == nil {
			p.buf = make([]byte, readChunk)
		}
		at, buf, done := next, p.buf[:n], make(chan struct{})
		p.want, p.done = int(n), done
		next += n
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done)
			p.n, p.err = svc.ReadAt(ctx, seg, buf, at)
		}()
		return nil
	}
	more := func() bool { return limit < 0 || next < limit }
	for i := range ring {
		if !more() {
			break
		}
		if err := start(&ring[i]); err != nil {
			return off, err, nil
		}
	}
	for i := 0; ; i = (i + 1) % readDepth {
		p := &ring[i]
		if p.done == nil {
			return off, nil, nil // limit reached
		}
		<-p.done
		p.done = nil
		m, rerr := p.n, p.err
		if m > 0 {
			off += int64(m)
			if err := fn(p.buf[:m]); err != nil {
				return off, nil, err
			}
		}
		switch {
		case rerr != nil:
			return off, rerr, nil
		case m < p.want || m == 0:
			return off, nil, nil // short: the copy ends here
		}
		if more() {
			if err := start(p); err != nil {
				return off, err, nil
			}
		}
	}
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
//   - the source is read with several reads in flight, and the verified
//     bytes are sent with several appends in flight (in order: scan, send);
//   - the destination is synced, and its durable length must reach length;
//   - the destination's copy is read back and verified (while it syncs);
//     if that fails it is deleted and Copy fails with a *CopyError
//     (Destination true).
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
	// Sync and read back at once: the read-back does not wait for the
	// disk, and both must hold before the copy counts.
	var (
		synced int64
		serr   error
		done   = make(chan struct{})
	)
	go func() {
		defer close(done)
		synced, serr = syncedLength(ctx, dst, seg)
	}()
	c, cerr := Check(ctx, dst, seg, length, nblocks, o.Limit)
	<-done
	if serr != nil {
		return sent, fmt.Errorf("scrub: syncing %s on the destination: %w", seg, serr)
	}
	if synced < length {
		return sent, fmt.Errorf("scrub: %s on the destination is durable to %d of %d bytes: %w", seg, synced, length, torus.ErrUnavailable)
	}
	if cerr != nil {
		return sent, fmt.Errorf("scrub: reading back %s: %w", seg, cerr)
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

// send streams src's copy from 0, verifying (reads in flight: scan), and
// appends the verified bytes from start on to dst, with up to appendDepth
// appends in flight (torus.PeerService.AppendAsync, in order). It returns
// the bytes dst acknowledged; every append it started has been answered
// when it returns.
func send(ctx context.Context, src, dst torus.PeerService, seg torus.SegmentID, length int64, nblocks uint64, start int64, o CopyOptions) (sent int64, err error) {
	v := volume.NewVerifier(seg, length, nblocks)
	type appending struct {
		wait func() error
		off  int64
		n    int64
	}
	var (
		buf     = make([]byte, 0, 2*appendChunk)
		pend    = buf // source bytes from pendOff, not yet sent
		pendOff int64
		flight  []appending // oldest first
		failed  error       // the first append that failed
	)
	// settle waits for the oldest appends until at most keep are in flight.
	settle := func(keep int) error {
		for len(flight) > keep {
			a := flight[0]
			flight = flight[1:]
			if err := a.wait(); err != nil {
				if failed == nil {
					failed = fmt.Errorf("scrub: copying %s at %d: %w", seg, a.off, err)
				}
				continue
			}
			if failed == nil {
				sent += a.n
				if o.Copied != nil {
					o.Copied(a.n)
				}
			}
		}
		return failed
	}
	defer func() {
		if serr := settle(0); err == nil {
			err = serr
		}
	}()
	ship := func(upTo int64) error {
		for pendOff < upTo {
			n := min(upTo-pendOff, appendChunk)
			if pendOff+n > start {
				from := max(start-pendOff, 0)
				if err := o.Send.Wait(ctx, n-from); err != nil {
					return err
				}
				// p is not retained once AppendAsync returns: pend's
				// bytes may be reused at once.
				w := dst.AppendAsync(ctx, torus.RepairEpoch, seg, pendOff+from, pend[from:n])
				flight = append(flight, appending{wait: w, off: pendOff + from, n: n - from})
				if err := settle(appendDepth - 1); err != nil {
					return err
				}
			}
			pend = pend[n:]
			pendOff += n
		}
		// Move the unsent tail (part of a record) to the front of buf
		// when the next piece would not fit after it.
		if cap(pend) < cap(buf) && cap(pend)-len(pend) < readChunk {
			pend = append(buf[:0], pend...)
		}
		return nil
	}
	off, rerr, err := scan(ctx, src, seg, length, o.Limit, func(p []byte) error {
		v.Write(p)
		pend = append(pend, p...)
		if cap(pend) > cap(buf) {
			buf = pend[:0] // grown into a new array, at its front
		}
		return ship(v.Verified())
	})
	if err != nil {
		return sent, err
	}
	if rerr != nil && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, torus.ErrNotExist) {
		return sent, fmt.Errorf("scrub: reading %s at %d: %w", seg, off, rerr)
	}
	// A short source: the verdict says so.
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
