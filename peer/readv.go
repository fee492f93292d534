package peer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"

	"github.com/torus-storage/torus"
)

// ReadRanges reads every range from svc: with one ReadV when svc is a
// torus.VectorReader, otherwise with a ReadAt per range, in order. The
// error is the call's as a whole (torus.VectorReader's contract): with
// ReadAt, only ctx's end.
func ReadRanges(ctx context.Context, svc torus.PeerService, ranges []torus.ReadRange) error {
	if vr, ok := svc.(torus.VectorReader); ok {
		return vr.ReadV(ctx, ranges)
	}
	for i := range ranges {
		if err := ctx.Err(); err != nil {
			return err
		}
		g := &ranges[i]
		g.N, g.Err = svc.ReadAt(ctx, g.Seg, g.P, g.Off)
	}
	return nil
}

var _ torus.VectorReader = (*Client)(nil)

// ReadV implements torus.VectorReader. The ranges go in as few ReadV
// requests as the limits allow (MaxReadVRanges ranges and MaxData bytes
// each), all sent before the first answer is awaited, and each range's
// data is read from the socket straight into its P. An empty range is not
// sent: it reads 0 bytes with no error, as ReadAt of nothing. A range longer than
// MaxData, or at a negative offset, gets an error wrapping
// torus.ErrInvalid without being sent. A range's failure on the daemon
// is its Err: io.EOF (bare) when short, otherwise a *RemoteError. A
// daemon that predates ReadV (protocol version 2) is read with a ReadAt
// per range instead, also all sent at once; which kind of daemon it is is
// asked once per connection (speaksReadV). The call is bounded by
// RequestTimeout and ctx.
func (c *Client) ReadV(ctx context.Context, ranges []torus.ReadRange) error {
	var send []int // indexes of the ranges to send
	for i := range ranges {
		g := &ranges[i]
		g.N, g.Err = 0, nil
		switch {
		case len(g.P) == 0:
		case len(g.P) > MaxData:
			g.Err = c.invalid(OpReadV, "range of %d bytes exceeds the limit of %d", len(g.P), MaxData)
		case g.Off < 0:
			g.Err = c.invalid(OpReadV, "negative offset %d", g.Off)
		default:
			send = append(send, i)
		}
	}
	if len(send) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeoutCause(ctx, c.cfg.RequestTimeout, errRequestTimeout)
	defer cancel()
	cc, err := c.conn(ctx)
	if err != nil {
		return err
	}
	if !c.speaksReadV(ctx, cc) {
		return c.readVByReadAt(ctx, ranges, send)
	}
	type batch struct {
		idx   []int
		pc    *sentCall
		start time.Time
	}
	var batches []batch
	var firstErr error
	for len(send) > 0 && firstErr == nil {
		n, total := 0, 0
		for n < len(send) && n < MaxReadVRanges && total+len(ranges[send[n]].P) <= MaxData {
			total += len(ranges[send[n]].P)
			n++
		}
		b := batch{idx: send[:n], start: time.Now()}
		send = send[n:]
		req := Request{Op: OpReadV, Ranges: make([]Range, n)}
		vec := make([][]byte, n)
		for k, i := range b.idx {
			g := &ranges[i]
			req.Ranges[k] = Range{Seg: g.Seg, Off: g.Off, Length: uint32(len(g.P))}
			vec[k] = g.P
		}
		b.pc, err = c.start(ctx, OpReadV, EncodeRequest(req), nil, nil, vec)
		if err != nil {
			c.observe(OpReadV, b.start, err)
			firstErr = err
			break
		}
		batches = append(batches, b)
	}
	// Every started request is waited for: until its wait returns, the
	// connection's reader may be writing into its ranges' buffers.
	for _, b := range batches {
		resp, err := c.wait(ctx, b.pc)
		c.observe(OpReadV, b.start, err)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		for k, i := range b.idx {
			g, st := &ranges[i], resp.Ranges[k]
			g.N = int(st.N)
			switch st.Status {
			case StatusOK:
			case StatusEOF:
				g.Err = io.EOF
			default:
				g.Err = &RemoteError{Addr: c.addr, Op: OpReadV, Status: st.Status,
					Msg: fmt.Sprintf("range %s at %d: %v", g.Seg, g.Off, st.Status.Err())}
			}
		}
	}
	return firstErr
}

// readVByReadAt is ReadV for a daemon that predates it: a ReadAt per range
// of send, all started before the first is awaited.
func (c *Client) readVByReadAt(ctx context.Context, ranges []torus.ReadRange, send []int) error {
	pcs := make([]*sentCall, len(send))
	starts := make([]time.Time, len(send))
	var firstErr error
	for k, i := range send {
		g := &ranges[i]
		starts[k] = time.Now()
		fixed := EncodeRequest(Request{Op: OpReadAt, Seg: g.Seg, Off: g.Off, Length: uint32(len(g.P))})
		pc, err := c.start(ctx, OpReadAt, fixed, nil, g.P, nil)
		if err != nil {
			c.observe(OpReadAt, starts[k], err)
			firstErr = err
			break
		}
		pcs[k] = pc
	}
	for k, pc := range pcs {
		if pc == nil {
			continue
		}
		g := &ranges[send[k]]
		resp, err := c.wait(ctx, pc)
		c.observe(OpReadAt, starts[k], err)
		g.N = len(resp.Data)
		var re *RemoteError
		switch {
		case err == nil && g.N == len(g.P):
		case err == nil || errors.Is(err, io.EOF):
			g.Err = io.EOF
		case errors.As(err, &re):
			g.Err = err // the range's own failure on the daemon
		case firstErr == nil:
			firstErr = err
		}
	}
	return firstErr
}

// speaksReadV reports whether the daemon behind cc serves ReadV, asking it
// on a connection of its own the first time it is needed for cc (probeReadV):
// an older daemon closes the connection a frame of an unknown version
// arrives on, which must not fail the calls in flight on cc. A daemon
// restarted (upgraded) is asked again on the new connection. When asking
// fails, the answer for cc is no (reads still work, range by range).
func (c *Client) speaksReadV(ctx context.Context, cc *clientConn) bool {
	c.vmu.Lock()
	defer c.vmu.Unlock()
	if c.vconn == cc {
		return c.vok
	}
	ok, err := c.probeReadV(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return false // not an answer: ask again next time
		}
		c.log.Warn("could not ask the daemon whether it serves ReadV; reading range by range on this connection", "err", err)
	} else if !ok {
		c.log.Info("daemon predates ReadV (peer protocol version 2); reading range by range")
	}
	c.vconn, c.vok = cc, ok
	return ok
}

// probeReadV dials a connection of its own and sends a ReadV of no ranges
// (protocol version 3) on it: a daemon that serves ReadV answers it with
// status OK; one of version 2 answers with a version-2 frame (status
// ErrInvalid, "unsupported protocol version") and closes.
func (c *Client) probeReadV(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
	defer cancel()
	nc, err := c.dial(ctx)
	if err != nil {
		return false, fmt.Errorf("peer %s: readv probe: dial: %w", c.addr, err)
	}
	defer nc.Close()
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Now()) })
	defer stop()
	if err := writeFrame(nc, OpReadV, 0, 0, EncodeRequest(Request{Op: OpReadV})); err != nil {
		return false, fmt.Errorf("peer %s: readv probe: %w", c.addr, err)
	}
	h, body, err := ReadFrame(nc, make([]byte, HeaderSize), MaxBody)
	if h.Response() && h.Op == OpReadV && h.Version >= MinVersion && h.Version < OpReadV.Version() {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("peer %s: readv probe: %w", c.addr, err)
	}
	if !h.Response() || h.Op != OpReadV || h.ID != 0 {
		return false, fmt.Errorf("peer %s: readv probe: %w: answered with %s frame %d", c.addr, torus.ErrInvalid, h.Op, h.ID)
	}
	resp, err := DecodeResponse(OpReadV, body)
	if err != nil {
		return false, fmt.Errorf("peer %s: readv probe: %w", c.addr, err)
	}
	if resp.Status != StatusOK {
		return false, &RemoteError{Addr: c.addr, Op: OpReadV, Status: resp.Status, Msg: resp.Msg}
	}
	return true, nil
}

// readIntoV reads a ReadV response's body: status, message and range
// table into a buffer of their own, then each range's data straight into
// its buffer of vec, with one checksum pass over the whole. A table that
// does not match the request (another count, more bytes than a range
// asked, a range OK but short) is a protocol error.
func (cc *clientConn) readIntoV(r io.Reader, h Header, vec [][]byte) (result, error) {
	if h.Length < 3 {
		return result{}, malformed(OpReadV, "response of %d bytes", h.Length)
	}
	head := make([]byte, 3, 3+MaxMessage+4+MaxReadVRanges*rangeStatusSize)
	if _, err := io.ReadFull(r, head); err != nil {
		return result{}, unexpected(err)
	}
	n := uint32(binary.LittleEndian.Uint16(head[1:]))
	if n > MaxMessage || 3+n > h.Length {
		return result{}, malformed(OpReadV, "message of %d bytes", n)
	}
	more := func(k uint32) error {
		if uint32(len(head))+k > h.Length {
			return malformed(OpReadV, "response of %d bytes", h.Length)
		}
		m := len(head)
		head = append(head, make([]byte, k)...)
		_, err := io.ReadFull(r, head[m:])
		return unexpected(err)
	}
	if err := more(n); err != nil {
		return result{}, err
	}
	resp := Response{Status: Status(head[0]), Msg: string(head[3 : 3+n])}
	if resp.Status != StatusOK {
		if uint32(len(head)) != h.Length {
			return result{}, malformed(OpReadV, "payload on status %d", resp.Status)
		}
	} else {
		if err := more(4); err != nil {
			return result{}, err
		}
		count := binary.LittleEndian.Uint32(head[len(head)-4:])
		if count != uint32(len(vec)) {
			return result{}, fmt.Errorf("%w: %d ranges answered for %d", torus.ErrInvalid, count, len(vec))
		}
		if err := more(count * rangeStatusSize); err != nil {
			return result{}, err
		}
		ranges, _, total, err := decodeReadVTable(head[3+n:])
		if err != nil {
			return result{}, err
		}
		if uint64(h.Length)-uint64(len(head)) != total {
			return result{}, malformed(OpReadV, "%d data bytes for ranges of %d", h.Length-uint32(len(head)), total)
		}
		for i, g := range ranges {
			if int(g.N) > len(vec[i]) || (g.Status == StatusOK && int(g.N) != len(vec[i])) {
				return result{}, fmt.Errorf("%w: range %d: %d bytes with status %d for %d", torus.ErrInvalid, i, g.N, g.Status, len(vec[i]))
			}
		}
		resp.Ranges = ranges
	}
	crc := crc32.Checksum(head, castagnoli)
	for i, g := range resp.Ranges {
		var err error
		if crc, err = readBodyCRC(r, vec[i][:g.N], crc); err != nil {
			return result{}, err
		}
	}
	if crc != h.CRC {
		return result{}, errBadCRC
	}
	return result{vresp: &resp}, nil
}
