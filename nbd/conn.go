package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/torus-storage/torus"
)

// conn is one client connection.
type conn struct {
	srv *Server
	log *slog.Logger
	nc  net.Conn // the socket; nil when serving a bare stream (fuzzing)
	tc  *tls.Conn
	r   io.Reader // nc, or tc after STARTTLS
	w   io.Writer
	neg negotiation

	mu       sync.Mutex
	stopping bool
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{srv: s, nc: nc, r: nc, w: nc}
	remote := "local"
	if a := nc.RemoteAddr(); a != nil && a.String() != "" {
		remote = a.String()
	}
	c.log = s.log.With("remote", remote)
	return c
}

// stop makes the connection stop reading: a reader blocked in Read
// returns at once and no new request is read. In-flight requests go on.
func (c *conn) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopping = true
	if c.nc != nil {
		c.nc.SetReadDeadline(time.Unix(1, 0))
	}
}

// abort closes the socket: replies still to be written are dropped.
func (c *conn) abort() {
	if c.nc != nil {
		c.nc.Close()
	}
}

// serve runs the connection to its end and closes it.
func (c *conn) serve() (err error) {
	defer c.srv.untrack(c)
	defer c.nc.Close()
	start := time.Now()
	c.log.Info("nbd: client connected")
	defer func() {
		switch {
		case err == nil || errors.Is(err, errAbort):
			c.log.Info("nbd: client disconnected", "duration", time.Since(start))
		case errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded):
			c.log.Info("nbd: client disconnected", "duration", time.Since(start), "err", err)
		default:
			c.log.Warn("nbd: connection failed", "duration", time.Since(start), "err", err)
		}
	}()

	c.mu.Lock()
	if c.stopping {
		c.mu.Unlock()
		return ErrServerClosed
	}
	c.nc.SetDeadline(time.Now().Add(c.srv.cfg.HandshakeTimeout))
	c.mu.Unlock()
	if tc, ok := c.nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}

	exp, err := c.handshake(c.srv.base)
	if err != nil {
		return err
	}
	defer c.closeExport(exp)

	c.mu.Lock()
	if c.stopping {
		c.mu.Unlock()
		return ErrServerClosed
	}
	c.nc.SetDeadline(time.Time{})
	c.mu.Unlock()
	c.log.Info("nbd: transmission", "export", exp.name, "size", exp.dev.Size(), "flags", fmt.Sprintf("%#x", exp.flags), "structured", c.neg.structured, "tls", c.neg.tls)
	return c.transmit(exp)
}

// run reads requests from r until the end of the transmission, then waits
// for the workers.
func (t *transmission) run(r io.Reader) error {
	readErr := t.readLoop(r)
	close(t.work)
	t.wg.Wait()
	if readErr != nil {
		return readErr
	}
	return t.werr
}

// transmit runs the transmission phase: this goroutine reads requests and
// hands each to an idle worker of the connection (starting one while fewer
// than MaxInflightRequests exist); a worker runs the request and sends its
// reply, together with every reply that completed meanwhile, in one writev.
// It returns after every request read has completed and its reply was sent
// (or dropped because the socket failed).
func (c *conn) transmit(exp *export) error {
	t := &transmission{
		c:      c,
		exp:    exp,
		ctx:    c.srv.base,
		w:      c.w,
		work:   make(chan job),
		budget: newBudget(c.srv.cfg.MaxInflightRequests, c.srv.cfg.MaxInflightBytes),
	}
	return t.run(bufio.NewReaderSize(c.r, 64<<10))
}

// transmission is the state of one connection's transmission phase.
type transmission struct {
	c      *conn
	exp    *export
	ctx    context.Context
	w      io.Writer
	budget *budget

	// Workers: started by the reader (the only one to touch workers),
	// each runs jobs until work is closed. Unbuffered: a job is handed
	// only to a worker waiting for one.
	work    chan job
	workers int
	wg      sync.WaitGroup

	// Replies: whoever finds writing false becomes the writer and writes
	// the queue, in batches, until it is empty; the others queue their
	// reply and go back to work.
	wmu     sync.Mutex
	queue   []*reply
	spare   []*reply
	writing bool
	werr    error // the first write error; later replies are dropped
	iov     net.Buffers
	heads   []byte
}

// job is one request read, with its payload (WRITE data) and the budget it
// holds.
type job struct {
	req     request
	payload []byte
	cost    int64
}

// reply is one reply ready to send: head (header and small payload), then
// data (read data, from the buffer pool). cost is what it holds of the
// budget.
type reply struct {
	head []byte
	data []byte
	cost int64
}

// readLoop reads requests until NBD_CMD_DISC (nil), end of stream or a
// protocol violation (error).
func (t *transmission) readLoop(r io.Reader) error {
	var hdr [requestLen]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		req, err := decodeRequest(hdr[:])
		if err != nil {
			return err
		}
		if req.typ == cmdDisc {
			t.c.log.Debug("nbd: NBD_CMD_DISC")
			return nil
		}
		var cost int64
		switch {
		case req.typ == cmdWrite && req.length > MaxRequestSize:
			// Keep the stream decodable: drop the payload, fail the request.
			if _, err := io.CopyN(io.Discard, r, int64(req.length)); err != nil {
				return err
			}
			t.budget.acquire(0)
			t.send(t.errorReply(req, errInval, fmt.Sprintf("request of %d bytes exceeds the maximum %d", req.length, MaxRequestSize), 0))
			continue
		case req.typ == cmdWrite || (req.typ == cmdRead && req.length <= MaxRequestSize):
			cost = int64(req.length)
		}
		t.budget.acquire(cost)
		var payload []byte
		if req.typ == cmdWrite {
			payload = getBuf(int(req.length))
			if _, err := io.ReadFull(r, payload); err != nil {
				putBuf(payload)
				t.budget.release(cost)
				return err
			}
		}
		t.dispatch(job{req: req, payload: payload, cost: cost})
	}
}

// dispatch hands j to an idle worker, or to a new one while there are
// fewer than MaxInflightRequests. Otherwise it waits for a worker: the
// budget admits fewer requests than that, so one is about to be free.
func (t *transmission) dispatch(j job) {
	select {
	case t.work <- j:
		return
	default:
	}
	if t.workers < t.c.srv.cfg.MaxInflightRequests {
		t.workers++
		t.wg.Add(1)
		go t.worker(j)
		return
	}
	t.work <- j
}

// worker runs j, then every job handed to it, until work is closed. A
// worker lives as long as its connection, so its stack, once grown by the
// device's call path, stays grown.
func (t *transmission) worker(j job) {
	defer t.wg.Done()
	for ok := true; ok; j, ok = <-t.work {
		t.send(t.handle(j.req, j.payload, j.cost))
	}
}

// maxBatch bounds the replies written by one writev.
const maxBatch = 256

// send queues rep and, unless another goroutine is writing, writes the
// queue until it is empty. After a write error the connection is aborted
// (the reader stops) and replies are dropped; budget and buffers are
// always released.
func (t *transmission) send(rep *reply) {
	t.wmu.Lock()
	t.queue = append(t.queue, rep)
	if t.writing {
		t.wmu.Unlock()
		return
	}
	t.writing = true
	for len(t.queue) > 0 {
		batch := t.queue[:min(len(t.queue), maxBatch)]
		rest := t.queue[len(batch):]
		t.queue = append(t.spare[:0], rest...)
		werr := t.werr
		t.wmu.Unlock()
		if werr == nil {
			if werr = t.write(batch); werr != nil {
				t.c.abort() // unblock the reader
			}
		}
		for _, r := range batch {
			if r.data != nil {
				putBuf(r.data)
			}
			t.budget.release(r.cost)
		}
		clear(batch)
		t.wmu.Lock()
		if t.werr == nil {
			t.werr = werr
		}
		t.spare = batch[:0]
	}
	t.writing = false
	t.wmu.Unlock()
}

// write sends a batch of replies with one writev: the heads of consecutive
// replies share one buffer, data goes from its own buffer uncopied. Only
// the writer calls it.
func (t *transmission) write(batch []*reply) error {
	n := 0
	for _, r := range batch {
		n += len(r.head)
	}
	if cap(t.heads) < n {
		t.heads = make([]byte, 0, n)
	}
	heads, iov := t.heads[:0], t.iov[:0]
	mark := 0
	for _, r := range batch {
		heads = append(heads, r.head...)
		if len(r.data) > 0 {
			iov = append(iov, heads[mark:], r.data)
			mark = len(heads)
		}
	}
	if mark < len(heads) {
		iov = append(iov, heads[mark:])
	}
	t.iov, t.heads = iov[:0], heads[:0]
	used := len(iov)
	_, err := iov.WriteTo(t.w) // consumes iov, not t.iov
	clear(t.iov[:used])
	return err
}

// errnoFor maps a device error to an NBD error.
func errnoFor(err error, write bool) uint32 {
	switch {
	case errors.Is(err, torus.ErrOutOfRange):
		if write {
			return errNoSpc
		}
		return errInval
	case errors.Is(err, torus.ErrReadOnly):
		return errPerm
	case errors.Is(err, torus.ErrNoSpace):
		return errNoSpc
	case errors.Is(err, torus.ErrInvalid):
		return errInval
	default:
		return errIO
	}
}

// validate checks a request against the export before it runs. It returns
// 0 or the NBD error to reply with.
func validate(req request, size int64, readOnly, structured, meta bool) (uint32, string) {
	allowed := uint16(cmdFlagFUA)
	write := false
	switch req.typ {
	case cmdRead:
		if structured {
			allowed |= cmdFlagDF
		}
	case cmdWrite, cmdTrim:
		write = true
	case cmdWriteZeroes:
		write = true
		allowed |= cmdFlagNoHole | cmdFlagFastZero
	case cmdFlush, cmdCache:
	case cmdBlockStatus:
		if !meta {
			return errInval, "no metadata context negotiated for this export"
		}
		allowed |= cmdFlagReqOne
	default:
		return errInval, fmt.Sprintf("unknown command %d", req.typ)
	}
	if req.flags&^allowed != 0 {
		return errInval, fmt.Sprintf("invalid flags %#x for command %d", req.flags, req.typ)
	}
	if write && readOnly {
		return errPerm, "export is read-only"
	}
	if req.typ == cmdFlush {
		return 0, ""
	}
	if (req.typ == cmdRead || req.typ == cmdWrite) && req.length > MaxRequestSize {
		return errInval, fmt.Sprintf("request of %d bytes exceeds the maximum %d", req.length, MaxRequestSize)
	}
	if req.typ == cmdBlockStatus && req.length == 0 {
		return errInval, "zero-length block status"
	}
	if req.offset > uint64(size) || uint64(req.length) > uint64(size)-req.offset {
		msg := fmt.Sprintf("range [%d,+%d) is beyond the end of the export (%d bytes)", req.offset, req.length, size)
		if req.typ == cmdWrite || req.typ == cmdWriteZeroes {
			return errNoSpc, msg
		}
		return errInval, msg
	}
	return 0, ""
}

// errorReply builds the error reply to req.
func (t *transmission) errorReply(req request, errno uint32, msg string, cost int64) *reply {
	t.c.log.Debug("nbd: request failed", "cmd", req.typ, "offset", req.offset, "length", req.length, "errno", errno, "msg", msg)
	if t.c.neg.structured {
		return &reply{head: appendErrorChunk(nil, req.handle, errno, msg), cost: cost}
	}
	return &reply{head: appendSimpleReply(nil, errno, req.handle), cost: cost}
}

// zeroBuf is written for WRITE_ZEROES with NO_HOLE; never modified.
var zeroBuf = make([]byte, 1<<20)

// handle runs one request and builds its reply. payload (WRITE data) is
// returned to the pool here.
func (t *transmission) handle(req request, payload []byte, cost int64) *reply {
	ctx := t.ctx
	dev := t.exp.dev
	if payload != nil {
		defer putBuf(payload)
	}
	readOnly := t.exp.flags&tflagReadOnly != 0
	if errno, msg := validate(req, dev.Size(), readOnly, t.c.neg.structured, t.exp.meta); errno != 0 {
		return t.errorReply(req, errno, msg, cost)
	}
	off, n := int64(req.offset), int64(req.length)
	fua := req.flags&cmdFlagFUA != 0
	var err error
	switch req.typ {
	case cmdRead:
		return t.read(ctx, req, cost)
	case cmdWrite:
		err = dev.WriteAt(ctx, payload, off, fua)
	case cmdFlush:
		err = dev.Flush(ctx)
	case cmdTrim:
		if n > 0 {
			err = dev.Trim(ctx, off, n)
		}
		if err == nil && fua {
			err = dev.Flush(ctx)
		}
	case cmdCache:
		// Validated no-op: the device has no cache to fill.
	case cmdWriteZeroes:
		err = t.writeZeroes(ctx, req, off, n, fua)
	case cmdBlockStatus:
		return t.blockStatus(ctx, req, cost)
	}
	if err != nil {
		write := req.typ == cmdWrite || req.typ == cmdWriteZeroes
		if req.typ == cmdWriteZeroes && errors.Is(err, errFastZero) {
			return t.errorReply(req, errNotSup, "fast zeroing is not possible with NO_HOLE", cost)
		}
		return t.errorReply(req, errnoFor(err, write), err.Error(), cost)
	}
	return &reply{head: appendSimpleReply(nil, 0, req.handle), cost: cost}
}

var errFastZero = errors.New("nbd: fast zero refused")

func (t *transmission) writeZeroes(ctx context.Context, req request, off, n int64, fua bool) error {
	dev := t.exp.dev
	if req.flags&cmdFlagNoHole == 0 {
		if n == 0 {
			return nil
		}
		return dev.WriteZeroes(ctx, off, n, fua)
	}
	if req.flags&cmdFlagFastZero != 0 {
		return errFastZero
	}
	// NO_HOLE: the range must stay allocated, so write real zeroes.
	for done := int64(0); done < n; {
		k := min(n-done, int64(len(zeroBuf)))
		if err := dev.WriteAt(ctx, zeroBuf[:k], off+done, false); err != nil {
			return err
		}
		done += k
	}
	if fua && n > 0 {
		return dev.Flush(ctx)
	}
	return nil
}

func (t *transmission) read(ctx context.Context, req request, cost int64) *reply {
	buf := getBuf(int(req.length))
	if err := t.exp.dev.ReadAt(ctx, buf, int64(req.offset)); err != nil {
		putBuf(buf)
		return t.errorReply(req, errnoFor(err, false), err.Error(), cost)
	}
	var head []byte
	if !t.c.neg.structured {
		head = appendSimpleReply(nil, 0, req.handle)
	} else if req.length == 0 {
		head = appendChunk(nil, replyFlagDone, replyTypeNone, req.handle, 0)
	} else {
		head = appendChunk(nil, replyFlagDone, replyTypeOffsetData, req.handle, 8+req.length)
		head = binaryAppendU64(head, req.offset)
	}
	return &reply{head: head, data: buf, cost: cost}
}

func (t *transmission) blockStatus(ctx context.Context, req request, cost int64) *reply {
	ext, err := t.exp.dev.Extents(ctx, int64(req.offset), int64(req.length))
	if err != nil {
		return t.errorReply(req, errnoFor(err, false), err.Error(), cost)
	}
	descs := blockDescriptors(ext, req.offset, req.length, req.flags&cmdFlagReqOne != 0)
	if len(descs) == 0 {
		return t.errorReply(req, errIO, "device reported no extents", cost)
	}
	head := appendChunk(nil, replyFlagDone, replyTypeBlockStatus, req.handle, uint32(4+8*len(descs)))
	head = binaryAppendU32(head, metaAllocID)
	for _, d := range descs {
		head = binaryAppendU32(head, d.length)
		head = binaryAppendU32(head, d.flags)
	}
	return &reply{head: head, cost: cost}
}

type descriptor struct{ length, flags uint32 }

// blockDescriptors converts device extents to base:allocation descriptors
// for [off, off+length): clipped to the range, merged when consecutive
// extents have the same status, at most maxDescriptors (one with reqOne).
// It stops at the first gap or disorder in what the device returned.
func blockDescriptors(ext []torus.Extent, off uint64, length uint32, reqOne bool) []descriptor {
	var out []descriptor
	pos, end := off, off+uint64(length)
	for _, e := range ext {
		if pos >= end || e.Length <= 0 || e.Offset < 0 {
			break
		}
		eo, ee := uint64(e.Offset), uint64(e.Offset)+uint64(e.Length)
		if eo > pos || ee <= pos {
			break // a gap or an extent before pos: trust nothing further
		}
		ee = min(ee, end)
		flags := uint32(0)
		if e.Zero {
			flags = stateHole | stateZero
		}
		n := uint32(ee - pos)
		if k := len(out); k > 0 && out[k-1].flags == flags {
			out[k-1].length += n
		} else {
			if len(out) == maxDescriptors {
				break
			}
			out = append(out, descriptor{length: n, flags: flags})
		}
		pos = ee
	}
	if reqOne && len(out) > 1 {
		out = out[:1]
	}
	return out
}

// budget bounds a connection's outstanding requests and payload bytes.
type budget struct {
	mu       sync.Mutex
	cond     *sync.Cond
	reqs     int
	maxReqs  int
	bytes    int64
	maxBytes int64
}

func newBudget(maxReqs int, maxBytes int64) *budget {
	b := &budget{maxReqs: maxReqs, maxBytes: maxBytes}
	b.cond = sync.NewCond(&b.mu)
	return b
}

// acquire blocks until one more request of n payload bytes fits. A request
// always fits when nothing else is outstanding.
func (b *budget) acquire(n int64) {
	b.mu.Lock()
	for b.reqs > 0 && (b.reqs >= b.maxReqs || b.bytes+n > b.maxBytes) {
		b.cond.Wait()
	}
	b.reqs++
	b.bytes += n
	b.mu.Unlock()
}

func (b *budget) release(n int64) {
	b.mu.Lock()
	b.reqs--
	b.bytes -= n
	b.mu.Unlock()
	b.cond.Broadcast()
}

// Buffer pool: size classes of powers of two from 4 KiB to MaxRequestSize.
const (
	minBufShift = 12
	maxBufShift = 25
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

func bufClass(n int) int {
	c := 0
	for (1 << (minBufShift + c)) < n {
		c++
	}
	return c
}

// getBuf returns a buffer of length n (n <= MaxRequestSize), not zeroed.
func getBuf(n int) []byte {
	if n == 0 {
		return []byte{}
	}
	c := bufClass(n)
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		return (*p)[:n]
	}
	return make([]byte, n, 1<<(minBufShift+c))
}

// putBuf returns a buffer from getBuf to the pool.
func putBuf(b []byte) {
	c := cap(b)
	if c < 1<<minBufShift || c&(c-1) != 0 || c > 1<<maxBufShift {
		return
	}
	b = b[:c]
	bufPools[bufClass(c)].Put(&b)
}
