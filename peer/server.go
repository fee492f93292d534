package peer

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/torus-storage/torus"
)

// ServerConfig tunes a Server. Zero fields take defaults (EnsureDefaults).
type ServerConfig struct {
	// MaxInflightBytes bounds the request and response bodies held per
	// connection; when reached the server stops reading that connection.
	// Default 64 MiB.
	MaxInflightBytes int64
	// MaxConcurrentReads bounds the ReadAt/Stat/List/Usage requests
	// running at once per connection. Default 64.
	MaxConcurrentReads int
	// RequestTimeout bounds each call into the service. Default 60 s.
	RequestTimeout time.Duration
	// WriteTimeout bounds sending one response. Default 30 s.
	WriteTimeout time.Duration
	// TLS, when set, makes the server require TLS on every connection:
	// it should hold the daemon's certificate, require and verify client
	// certificates (internal/tlsconfig.Server builds one), and allow TLS
	// 1.3 only. Every request is then checked against the caller's role
	// (Authorize). A plain connection's first request is answered with
	// an error wrapping torus.ErrPermission that names TLS, and the
	// connection is closed. Nil: plain TCP, every caller trusted (a
	// development cluster).
	TLS *tls.Config
	// HandshakeTimeout bounds the TLS handshake. Default 10 s.
	HandshakeTimeout time.Duration
	// Refused, when set, is called for every request refused by
	// Authorize (role "daemon", "client" or "none", op the request's), every
	// plain connection refused by a TLS server (role "plain") and every
	// failed TLS handshake (role "unauthenticated", op "handshake": no
	// certificate, another CA's, expired); a daemon counts them in a metric.
	Refused func(id Identity, role, op string)
	// WriterCheck, when set, is asked on a TLS server whether a client
	// certificate id may write to volume at epoch (its Append, Sync and
	// Fence requests, after Authorize allowed them): the daemon answers
	// from the volume's writer lock, which names the identity that locked
	// the epoch. An error (wrapping torus.ErrPermission for a refusal) is
	// the request's answer, counted like Authorize's refusals.
	WriterCheck func(ctx context.Context, id Identity, volume, epoch uint64) error
}

// Server defaults.
const (
	DefaultMaxInflightBytes   = 64 << 20
	DefaultMaxConcurrentReads = 64
	DefaultRequestTimeout     = 60 * time.Second
	DefaultWriteTimeout       = 30 * time.Second
	DefaultHandshakeTimeout   = 10 * time.Second
)

// EnsureDefaults fills zero or negative fields with defaults.
func (c *ServerConfig) EnsureDefaults() {
	if c.MaxInflightBytes <= 0 {
		c.MaxInflightBytes = DefaultMaxInflightBytes
	}
	if c.MaxConcurrentReads <= 0 {
		c.MaxConcurrentReads = DefaultMaxConcurrentReads
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = DefaultWriteTimeout
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
}

// Validate rejects negative settings (zero means the default).
func (c ServerConfig) Validate() error {
	switch {
	case c.MaxInflightBytes < 0:
		return fmt.Errorf("%w: peer: negative max in-flight bytes %d", torus.ErrInvalid, c.MaxInflightBytes)
	case c.MaxConcurrentReads < 0:
		return fmt.Errorf("%w: peer: negative max concurrent reads %d", torus.ErrInvalid, c.MaxConcurrentReads)
	case c.RequestTimeout < 0 || c.WriteTimeout < 0:
		return fmt.Errorf("%w: peer: negative timeout", torus.ErrInvalid)
	}
	return nil
}

// Server serves a torus.PeerService over TCP. All its goroutines are owned:
// Close stops them and waits for them.
type Server struct {
	svc torus.PeerService
	cfg ServerConfig
	log *slog.Logger

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}
	wg        sync.WaitGroup // every goroutine of the server
	bufs      bufPool
}

// NewServer returns a server for svc. It serves nothing until Serve.
func NewServer(svc torus.PeerService, cfg ServerConfig, logger *slog.Logger) *Server {
	cfg.EnsureDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		svc: svc, cfg: cfg, log: logger,
		ctx: ctx, cancel: cancel,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*serverConn]struct{}),
	}
}

// Serve accepts connections on ln until Close, or until ln fails. It
// closes ln when it returns. After Close it returns an error wrapping
// torus.ErrClosed; otherwise the listener's error.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return fmt.Errorf("peer: serve: %w", torus.ErrClosed)
	}
	s.listeners[ln] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()

	s.log.Info("peer server listening", "addr", ln.Addr().String())
	backoff := 5 * time.Millisecond
	for {
		c, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return fmt.Errorf("peer: serve %s: %w", ln.Addr(), torus.ErrClosed)
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("peer: serve %s: %w", ln.Addr(), err)
			}
			// Anything else (EMFILE, ECONNABORTED, ...) may pass.
			s.log.Warn("peer accept failed; retrying", "err", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
			case <-s.ctx.Done():
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		s.startConn(c)
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close stops accepting, closes every connection (cancelling the requests
// running on them) and waits for every goroutine of the server. Idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		s.cancel()
		for ln := range s.listeners {
			ln.Close()
		}
		for sc := range s.conns {
			sc.abort()
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

// ConnCount reports the number of open connections (for tests and metrics).
func (s *Server) ConnCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *Server) startConn(c net.Conn) {
	ctx, cancel := context.WithCancel(s.ctx)
	sc := &serverConn{
		s: s, c: c, raw: c, ctx: ctx, cancel: cancel,
		log:     s.log.With("remote", c.RemoteAddr().String()),
		ordered: make(chan *job, 256),
		reads:   make(chan *job),
	}
	sc.cond = sync.NewCond(&sc.bmu)
	sc.wcond = sync.NewCond(&sc.wmu)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		c.Close()
		return
	}
	s.conns[sc] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go sc.run()
}

// serverConn is one accepted connection. Its goroutines: run (the reader
// and owner), orderedLoop, and up to MaxConcurrentReads read workers
// started as reads need them; all are counted in both sc.wg and the
// server's wg.
type serverConn struct {
	s      *Server
	c      net.Conn // what requests are read from: raw, or TLS over raw
	raw    net.Conn // the accepted connection; closing it ends c
	id     Identity // with TLS: the verified client certificate's
	ctx    context.Context
	cancel context.CancelFunc
	log    *slog.Logger

	// Responses: whoever queues one and finds writing false writes the
	// queue, in batches with one writev each, until it is empty.
	wmu     sync.Mutex
	wcond   *sync.Cond // on wmu: a batch was written
	queue   []outFrame
	spare   []outFrame
	writing bool
	werr    error  // the first write error; later responses are dropped
	queued  uint64 // responses queued so far
	written uint64 // responses written (or dropped) so far
	iov     net.Buffers
	heads   []byte

	bmu    sync.Mutex // guards used and stop
	cond   *sync.Cond
	used   int64
	stop   bool
	closer sync.Once

	ordered chan *job
	reads   chan *job // unbuffered: to an idle read worker
	readers int       // read workers started; only the reader touches it
	wg      sync.WaitGroup
}

// outFrame is a response waiting to be written, and what to release once
// it is: the request's job and the read buffer its data is in.
type outFrame struct {
	hdr        [HeaderSize]byte
	body, data []byte
	j          *job
	rbuf       *[]byte
}

type job struct {
	h    Header
	req  Request
	cost int64   // budget held until the response is sent
	buf  *[]byte // the request body (from the server's pool)
}

// done releases what a job holds: its budget and its body buffer.
func (sc *serverConn) done(j *job) {
	sc.release(j.cost)
	sc.s.bufs.put(j.buf)
}

// abort cancels everything on the connection and closes it.
func (sc *serverConn) abort() {
	sc.cancel()
	sc.closer.Do(func() { sc.raw.Close() })
}

func (sc *serverConn) goAttach(f func()) {
	sc.wg.Add(1)
	sc.s.wg.Add(1)
	go func() {
		defer sc.s.wg.Done()
		defer sc.wg.Done()
		f()
	}()
}

// acquire takes n bytes of the connection's budget, waiting while it is
// used up. Only the reader goroutine acquires, so a request larger than the
// whole budget runs alone instead of deadlocking.
func (sc *serverConn) acquire(n int64) bool {
	sc.bmu.Lock()
	defer sc.bmu.Unlock()
	for !sc.stop && sc.used > 0 && sc.used+n > sc.s.cfg.MaxInflightBytes {
		sc.cond.Wait()
	}
	if sc.stop {
		return false
	}
	sc.used += n
	return true
}

func (sc *serverConn) release(n int64) {
	sc.bmu.Lock()
	sc.used -= n
	sc.bmu.Unlock()
	sc.cond.Broadcast()
}

func (sc *serverConn) run() {
	defer sc.s.wg.Done()
	stopWake := context.AfterFunc(sc.ctx, func() {
		sc.bmu.Lock()
		sc.stop = true
		sc.bmu.Unlock()
		sc.cond.Broadcast()
	})
	defer stopWake()
	if sc.s.cfg.TLS != nil {
		if err := sc.secure(); err != nil {
			sc.log.Warn("peer connection refused", "err", err)
			if f := sc.s.cfg.Refused; f != nil && errors.Is(err, errHandshake) {
				f(Identity{}, "unauthenticated", "handshake")
			}
			sc.cancel()
			sc.abort()
			sc.s.mu.Lock()
			delete(sc.s.conns, sc)
			sc.s.mu.Unlock()
			return
		}
	}
	sc.log.Debug("peer connection open")

	sc.wg.Add(1)
	sc.s.wg.Add(1)
	go func() {
		defer sc.s.wg.Done()
		defer sc.wg.Done()
		sc.orderedLoop()
	}()

	// Whatever ends the read loop ends the connection: nobody could read
	// the answers of the requests still running, so they are cancelled.
	err := sc.readLoop()
	switch {
	case errors.Is(err, io.EOF), sc.ctx.Err() != nil, errors.Is(err, net.ErrClosed):
	default:
		sc.log.Warn("peer connection closed on error", "err", err)
	}
	sc.cancel()
	close(sc.ordered)
	close(sc.reads)
	sc.wg.Wait()
	sc.abort()

	sc.s.mu.Lock()
	delete(sc.s.conns, sc)
	sc.s.mu.Unlock()
	sc.log.Debug("peer connection closed", "err", err)
}

// readLoop reads requests until the connection fails or a frame is
// malformed, dispatching each to the ordered queue or a read goroutine.
func (sc *serverConn) readLoop() error {
	hdr := make([]byte, HeaderSize)
	// Buffered: a header and a small body (or several small requests)
	// cost one read syscall instead of two per request. Large bodies are
	// read straight into their buffers (bufio bypasses its buffer then).
	r := bufio.NewReaderSize(sc.c, readBufferSize)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			return err
		}
		h, err := ParseHeader(hdr, MaxBody)
		if err == nil && h.Response() {
			err = fmt.Errorf("%w: peer: response frame sent to server", torus.ErrInvalid)
		}
		if err != nil {
			if fatalHeaderError(err) {
				sc.log.Warn("peer protocol error; closing connection without answer", "err", err)
				sc.cancel()
				sc.lingerClose()
				return err
			}
			return sc.protocolError(h, err)
		}
		cost := int64(h.Length)
		if !sc.acquire(cost) {
			return sc.ctx.Err()
		}
		buf := sc.s.bufs.get(int(h.Length))
		crc, err := readBody(r, *buf)
		if err != nil {
			sc.release(cost)
			sc.s.bufs.put(buf)
			return err
		}
		if crc != h.CRC {
			sc.release(cost)
			sc.s.bufs.put(buf)
			return sc.protocolError(h, errBadCRC)
		}
		req, err := DecodeRequest(h.Op, *buf)
		if err != nil {
			sc.release(cost)
			sc.s.bufs.put(buf)
			return sc.protocolError(h, err)
		}
		j := &job{h: h, req: req, cost: cost, buf: buf}
		if h.Op.ordered() {
			select {
			case sc.ordered <- j:
			case <-sc.ctx.Done():
				sc.done(j)
				return sc.ctx.Err()
			}
			continue
		}
		if h.Op == OpReadAt || h.Op == OpReadV {
			// Re-take the budget for the body and the answer together,
			// so that a read larger than the budget can run alone.
			sc.release(cost)
			j.cost += readLength(req)
			if !sc.acquire(j.cost) {
				j.cost = 0
				sc.done(j)
				return sc.ctx.Err()
			}
		}
		if !sc.dispatchRead(j) {
			sc.done(j)
			return sc.ctx.Err()
		}
	}
}

// dispatchRead hands j to an idle read worker, or to a new one while there
// are fewer than MaxConcurrentReads, or else waits for one. Workers live as
// long as the connection, so a stack grown by the store's read path stays
// grown. It reports false when the connection ends first.
func (sc *serverConn) dispatchRead(j *job) bool {
	select {
	case sc.reads <- j:
		return true
	default:
	}
	if sc.readers < sc.s.cfg.MaxConcurrentReads {
		sc.readers++
		sc.goAttach(func() { sc.readWorker(j) })
		return true
	}
	select {
	case sc.reads <- j:
		return true
	case <-sc.ctx.Done():
		return false
	}
}

// readWorker serves j, then every read handed to it until reads is closed.
func (sc *serverConn) readWorker(j *job) {
	for ok := true; ok; j, ok = <-sc.reads {
		if sc.ctx.Err() != nil {
			sc.done(j)
			continue
		}
		sc.serve(j)
	}
}

// protocolError answers a malformed request (its header was readable),
// shuts down the write side and drains what the client still sends for a
// moment, so that the answer is not lost to a reset.
func (sc *serverConn) protocolError(h Header, err error) error {
	sc.log.Warn("peer protocol error; answering and closing connection", "op", h.Op, "id", h.ID, "err", err)
	sc.cancel()
	body := AppendResponse(nil, h.Op, Response{Status: StatusOf(err), Msg: err.Error()})
	if werr := sc.sendWait(h.Op, h.ID, body); werr == nil {
		sc.lingerClose()
	}
	return err
}

// lingerClose shuts down the write side and discards what the client still
// sends for up to a second, so that closing does not reset the connection
// (a reset can destroy an answer the client has not read yet).
func (sc *serverConn) lingerClose() {
	if tc, ok := sc.c.(interface{ CloseWrite() error }); ok {
		tc.CloseWrite()
	}
	sc.c.SetReadDeadline(time.Now().Add(time.Second))
	io.CopyN(io.Discard, sc.c, 2*MaxBody)
}

func (sc *serverConn) orderedLoop() {
	for j := range sc.ordered {
		if sc.ctx.Err() != nil {
			sc.done(j)
			continue
		}
		sc.serve(j)
	}
}

// serve runs one request and queues its response; what the job holds is
// released once the response is written.
func (sc *serverConn) serve(j *job) {
	ctx, cancel := context.WithTimeout(sc.ctx, sc.s.cfg.RequestTimeout)
	defer cancel()
	svc, r := sc.s.svc, j.req
	var resp Response
	var rbuf *[]byte
	err := sc.authorize(ctx, r)
	switch {
	case err != nil:
	case r.Op == OpAppend:
		err = svc.Append(ctx, r.Epoch, r.Seg, r.Off, r.Data)
	case r.Op == OpSync:
		resp.Synced, err = svc.Sync(ctx, r.Epoch, r.Seg)
	case r.Op == OpReadAt:
		rbuf = sc.s.bufs.get(int(r.Length))
		buf := *rbuf
		var n int
		n, err = svc.ReadAt(ctx, r.Seg, buf, r.Off)
		if n < 0 || n > len(buf) {
			n, err = 0, fmt.Errorf("peer: service read returned %d bytes of %d", n, len(buf))
		}
		resp.Data = buf[:n]
	case r.Op == OpStat:
		resp.Info, err = svc.Stat(ctx, r.Seg)
	case r.Op == OpList:
		var all []torus.SegmentInfo
		all, err = svc.List(ctx, r.Volume)
		if err == nil {
			resp.List, resp.More = listPage(all, r.After, int(r.Limit))
		}
	case r.Op == OpDelete:
		err = svc.Delete(ctx, r.Seg)
	case r.Op == OpFence:
		err = svc.Fence(ctx, r.Volume, r.Epoch)
	case r.Op == OpUsage:
		resp.Usage, err = svc.Usage(ctx)
	case r.Op == OpReadV:
		rbuf = sc.s.bufs.get(int(readLength(r)))
		resp.Ranges, resp.Data, err = serveReadV(ctx, svc, r.Ranges, *rbuf)
	}
	resp.Status = StatusOf(err)
	if err != nil {
		resp.Msg = err.Error()
		if resp.Status == StatusGeneric {
			sc.log.Warn("peer request failed", "op", r.Op, "seg", r.Seg.String(), "err", err)
		} else {
			sc.log.Debug("peer request failed", "op", r.Op, "seg", r.Seg.String(), "err", err)
		}
	}
	var body, data []byte
	if r.Op == OpReadAt || r.Op == OpReadV {
		data, resp.Data = resp.Data, nil
	}
	body = AppendResponse(nil, r.Op, resp)
	hdr, err := frameHeader(r.Op, FlagResponse, j.h.ID, body, data)
	if err != nil {
		sc.log.Warn("peer response failed; closing connection", "err", err)
		sc.abort()
		sc.free(outFrame{j: j, rbuf: rbuf})
		return
	}
	sc.send(outFrame{hdr: hdr, body: body, data: data, j: j, rbuf: rbuf})
}

// readLength is the data a read request asks for: a ReadAt's length, the
// sum of a ReadV's ranges (at most MaxData: DecodeRequest checked).
func readLength(r Request) int64 {
	if r.Op == OpReadAt {
		return int64(r.Length)
	}
	var n int64
	for _, g := range r.Ranges {
		n += int64(g.Length)
	}
	return n
}

// serveReadV reads each range into buf, one after another with no gaps
// (a short range takes only the bytes it read), through ReadRanges. It
// returns each range's status, the data and the request's own error: ctx's
// end (the answer would be dropped anyway).
func serveReadV(ctx context.Context, svc torus.PeerService, ranges []Range, buf []byte) ([]RangeStatus, []byte, error) {
	rr := make([]torus.ReadRange, len(ranges))
	pos := 0
	for i, g := range ranges {
		rr[i] = torus.ReadRange{Seg: g.Seg, Off: g.Off, P: buf[pos : pos+int(g.Length)]}
		pos += int(g.Length)
	}
	if err := ReadRanges(ctx, svc, rr); err != nil {
		return nil, nil, err
	}
	// Pack the ranges' bytes: a short range leaves a gap to close.
	out := make([]RangeStatus, len(ranges))
	pos = 0
	for i, g := range rr {
		n := min(max(g.N, 0), len(g.P))
		st := StatusOf(g.Err)
		switch {
		case st == StatusEOF && n == len(g.P):
			st = StatusOK // io.EOF with every byte: a whole read
		case st == StatusOK && n < len(g.P):
			st = StatusEOF
		}
		pos += copy(buf[pos:], g.P[:n])
		out[i] = RangeStatus{Status: st, N: uint32(n)}
	}
	return out, buf[:pos], nil
}

// free releases what a written or dropped response held.
func (sc *serverConn) free(f outFrame) {
	if f.rbuf != nil {
		sc.s.bufs.put(f.rbuf)
	}
	if f.j != nil {
		sc.done(f.j)
	}
}

// send queues f and, unless another goroutine is writing, writes the queue
// until it is empty; it returns f's sequence number. After a write error
// the connection is aborted and later responses are dropped; what they
// hold is always released.
func (sc *serverConn) send(f outFrame) uint64 {
	sc.wmu.Lock()
	sc.queue = append(sc.queue, f)
	sc.queued++
	seq := sc.queued
	if sc.writing {
		sc.wmu.Unlock()
		return seq
	}
	sc.writing = true
	for len(sc.queue) > 0 {
		batch := sc.queue[:min(len(sc.queue), maxBatch)]
		sc.queue = append(sc.spare[:0], sc.queue[len(batch):]...)
		werr := sc.werr
		sc.wmu.Unlock()
		if werr == nil {
			if werr = sc.write(batch); werr != nil {
				if sc.ctx.Err() == nil {
					sc.log.Warn("peer response failed; closing connection", "err", werr)
				}
				sc.abort()
			}
		}
		for _, f := range batch {
			sc.free(f)
		}
		clear(batch)
		sc.wmu.Lock()
		if sc.werr == nil {
			sc.werr = werr
		}
		sc.written += uint64(len(batch))
		sc.spare = batch[:0]
		sc.wcond.Broadcast()
	}
	sc.writing = false
	sc.wmu.Unlock()
	return seq
}

// sendWait sends one response frame whose body is body and waits until it
// is written, returning the connection's write error if any.
func (sc *serverConn) sendWait(op Op, id uint64, body []byte) error {
	hdr, err := frameHeader(op, FlagResponse, id, body)
	if err != nil {
		return err
	}
	seq := sc.send(outFrame{hdr: hdr, body: body})
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	for sc.written < seq {
		sc.wcond.Wait()
	}
	return sc.werr
}

// maxBatch bounds the responses written by one writev.
const maxBatch = 256

// write sends a batch of frames with one writev: headers and small bodies
// of consecutive frames share one buffer; large bodies and read data go
// from their own buffers uncopied. Only the writer calls it.
func (sc *serverConn) write(batch []outFrame) error {
	const small = 4 << 10
	n := 0
	for i := range batch {
		n += HeaderSize
		if len(batch[i].body) <= small {
			n += len(batch[i].body)
		}
	}
	if cap(sc.heads) < n {
		sc.heads = make([]byte, 0, n)
	}
	heads, iov := sc.heads[:0], sc.iov[:0]
	mark := 0
	for i := range batch {
		f := &batch[i]
		heads = append(heads, f.hdr[:]...)
		bigBody := len(f.body) > small
		if !bigBody {
			heads = append(heads, f.body...)
		}
		if bigBody || len(f.data) > 0 {
			iov = append(iov, heads[mark:])
			mark = len(heads)
			if bigBody {
				iov = append(iov, f.body)
			}
			if len(f.data) > 0 {
				iov = append(iov, f.data)
			}
		}
	}
	if mark < len(heads) {
		iov = append(iov, heads[mark:])
	}
	sc.iov, sc.heads = iov[:0], heads[:0]
	used := len(iov)
	sc.c.SetWriteDeadline(time.Now().Add(sc.s.cfg.WriteTimeout))
	_, err := iov.WriteTo(sc.c) // consumes iov, not sc.iov
	clear(sc.iov[:used])
	return err
}

// writeFrame writes a frame whose body is the concatenation of parts with
// one writev, without copying the parts.
func writeFrame(w io.Writer, op Op, flags uint16, id uint64, parts ...[]byte) error {
	hdr, err := frameHeader(op, flags, id, parts...)
	if err != nil {
		return err
	}
	return writeParts(w, &hdr, parts...)
}

// frameHeader encodes the header of a frame whose body is the concatenation
// of parts, with their CRC32C: the one pass over the body's bytes on the
// sending side. It needs no lock, so callers compute it before taking the
// connection's write lock.
func frameHeader(op Op, flags uint16, id uint64, parts ...[]byte) ([HeaderSize]byte, error) {
	var hdr [HeaderSize]byte
	var n int
	var crc uint32
	for _, p := range parts {
		n += len(p)
		crc = crc32.Update(crc, castagnoli, p)
	}
	if n > MaxBody {
		return hdr, fmt.Errorf("%w: peer: frame body of %d bytes exceeds %d", torus.ErrInvalid, n, MaxBody)
	}
	PutHeader(hdr[:], Header{Version: op.Version(), Op: op, Flags: flags, ID: id, Length: uint32(n), CRC: crc})
	return hdr, nil
}

// writeParts writes a frame header and its body parts with one writev.
func writeParts(w io.Writer, hdr *[HeaderSize]byte, parts ...[]byte) error {
	bufs := make(net.Buffers, 0, 1+len(parts))
	bufs = append(bufs, hdr[:])
	for _, p := range parts {
		if len(p) > 0 {
			bufs = append(bufs, p)
		}
	}
	_, err := bufs.WriteTo(w)
	return err
}

// listPage returns the entries of all after the cursor, in SegmentID order,
// at most limit (0: MaxListPage) of them, and whether more remain.
func listPage(all []torus.SegmentInfo, after torus.SegmentID, limit int) ([]torus.SegmentInfo, bool) {
	if limit <= 0 || limit > MaxListPage {
		limit = MaxListPage
	}
	slices.SortFunc(all, func(a, b torus.SegmentInfo) int { return compareSeg(a.ID, b.ID) })
	i := 0
	if after != (torus.SegmentID{}) {
		i, _ = slices.BinarySearchFunc(all, after, func(e torus.SegmentInfo, t torus.SegmentID) int { return compareSeg(e.ID, t) })
		if i < len(all) && all[i].ID == after {
			i++
		}
	}
	page := all[i:]
	if len(page) > limit {
		return page[:limit], true
	}
	return page, false
}

// compareSeg orders segment IDs by volume, epoch, seq, kind.
func compareSeg(a, b torus.SegmentID) int {
	return cmp.Or(cmp.Compare(a.Volume, b.Volume), cmp.Compare(a.Epoch, b.Epoch),
		cmp.Compare(a.Seq, b.Seq), cmp.Compare(a.Kind, b.Kind))
}
