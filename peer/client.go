package peer

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/torus-storage/torus"
)

// ClientConfig tunes a Client. Zero fields take defaults (EnsureDefaults).
type ClientConfig struct {
	// DialTimeout bounds establishing a connection. Default 5 s.
	DialTimeout time.Duration
	// RequestTimeout bounds each call (on top of the caller's ctx),
	// including sending it. Default 30 s. When a call times out and not
	// one frame arrived on the connection meanwhile, the connection is
	// dropped (the peer is silent, not just slow) and the next call
	// redials.
	RequestTimeout time.Duration
	// Dial, when set, replaces net.Dialer.DialContext: tests and the
	// in-process cluster harness use it to interpose a controllable link.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// TLS, when set, makes the client speak TLS to the daemon, over the
	// connection Dial returns, with the configuration TLS returns for the
	// host dialed. It is called on every dial, so that reloaded
	// certificates are used by the next connection; the configuration
	// should hold the caller's client certificate, verify the daemon's
	// for host and allow TLS 1.3 only (internal/tlsconfig builds one). A
	// handshake the daemon's certificate fails wraps torus.ErrPermission;
	// other handshake failures (the daemon is down, or serves plain TCP)
	// wrap torus.ErrUnavailable. Nil: plain TCP.
	TLS func(host string) *tls.Config
	// Observe, when set, is called once per request after its answer
	// (or failure) with the request's op (Op.String), how long it took
	// from send to answer, and its error (nil on success): the hook
	// metrics use. It runs on the caller's goroutine and must not block.
	Observe func(op string, took time.Duration, err error)
	// ObservePeer is Observe for a Pool: the pool calls it with the peer
	// ID of the client the request went through, and with op "dial" when
	// it cannot connect to the peer at all. A Client dialed directly
	// ignores it.
	ObservePeer func(id, op string, took time.Duration, err error)
}

// Client defaults.
const (
	DefaultDialTimeout          = 5 * time.Second
	DefaultClientRequestTimeout = 30 * time.Second
)

// EnsureDefaults fills zero or negative fields with defaults.
func (c *ClientConfig) EnsureDefaults() {
	if c.DialTimeout <= 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultClientRequestTimeout
	}
}

// Validate rejects negative timeouts (zero means the default).
func (c ClientConfig) Validate() error {
	if c.DialTimeout < 0 || c.RequestTimeout < 0 {
		return fmt.Errorf("%w: peer: negative timeout", torus.ErrInvalid)
	}
	return nil
}

// RemoteError is an error returned by the remote service. It unwraps to the
// sentinel of its Status (a torus sentinel, io.EOF, or ErrRemote), so
// errors.Is works as it would on the server.
type RemoteError struct {
	Addr   string // the peer's address
	Op     Op
	Status Status
	Msg    string // the server's error text
}

func (e *RemoteError) Error() string {
	msg := e.Msg
	if msg == "" {
		msg = e.Status.Err().Error()
	}
	return fmt.Sprintf("peer %s: %s: %s", e.Addr, e.Op, msg)
}

// Unwrap returns the status's sentinel.
func (e *RemoteError) Unwrap() error { return e.Status.Err() }

// Client is a torus.PeerService reached over TCP. Many calls may run at
// once; they share one connection. When the connection breaks, pending calls
// fail with an error wrapping torus.ErrUnavailable and the next call dials
// again. Safe for concurrent use.
type Client struct {
	addr string
	cfg  ClientConfig
	log  *slog.Logger

	nextID atomic.Uint64

	mu        sync.Mutex
	closed    bool
	closedErr error         // what calls fail with once closed
	cc        *clientConn   // current connection; nil or broken: dial on next call
	dialing   chan struct{} // closed when a dial in progress ends
	wg        sync.WaitGroup
	bufs      bufPool
	listPage  uint32 // entries asked per List page; 0: the daemon's maximum

	// Whether the daemon speaks ReadV (protocol version 3), asked once
	// per connection (speaksReadV): vok is the answer for vconn.
	vmu   sync.Mutex
	vconn *clientConn
	vok   bool
}

var _ torus.PeerService = (*Client)(nil)

var errRequestTimeout = fmt.Errorf("%w: peer: request timed out", torus.ErrUnavailable)

// Dial connects to the peer server at addr. The error wraps
// torus.ErrUnavailable when the peer cannot be reached.
func Dial(ctx context.Context, addr string, cfg ClientConfig, logger *slog.Logger) (*Client, error) {
	cfg.EnsureDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Client{addr: addr, cfg: cfg, log: logger.With("peer", addr)}
	if _, err := c.conn(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Addr is the address the client dials.
func (c *Client) Addr() string { return c.addr }

// Close fails pending calls with an error wrapping torus.ErrClosed, closes
// the connection and waits for the client's goroutine. Further calls fail
// with torus.ErrClosed. Idempotent.
func (c *Client) Close() error {
	return c.closeWith(fmt.Errorf("peer %s: client: %w", c.addr, torus.ErrClosed))
}

// closeWith closes the client; pending and later calls fail with err.
func (c *Client) closeWith(err error) error {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		c.closedErr = err
	}
	cc := c.cc
	c.mu.Unlock()
	if cc != nil {
		cc.fail(err)
	}
	c.wg.Wait()
	return nil
}

// conn returns a live connection, dialing if needed.
func (c *Client) conn(ctx context.Context) (*clientConn, error) {
	for {
		c.mu.Lock()
		if c.closed {
			err := c.closedErr
			c.mu.Unlock()
			return nil, err
		}
		if c.cc != nil && c.cc.alive() {
			cc := c.cc
			c.mu.Unlock()
			return cc, nil
		}
		if ch := c.dialing; ch != nil {
			c.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, c.ctxError(ctx, "dial")
			}
		}
		ch := make(chan struct{})
		c.dialing = ch
		c.mu.Unlock()

		dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout)
		nc, err := c.dial(dctx)
		cancel()

		c.mu.Lock()
		c.dialing = nil
		close(ch)
		if err != nil {
			c.mu.Unlock()
			if ctx.Err() != nil {
				return nil, c.ctxError(ctx, "dial")
			}
			if errors.Is(err, torus.ErrPermission) || errors.Is(err, torus.ErrUnavailable) {
				return nil, err
			}
			return nil, fmt.Errorf("peer %s: dial: %w: %v", c.addr, torus.ErrUnavailable, err)
		}
		if c.closed {
			err := c.closedErr
			c.mu.Unlock()
			nc.Close()
			return nil, err
		}
		cc := &clientConn{c: nc, addr: c.addr, bufs: &c.bufs, pending: make(map[uint64]pendingCall)}
		c.cc = cc
		c.wg.Add(1)
		c.mu.Unlock()
		c.log.Debug("peer connected", "local", nc.LocalAddr().String())
		go func() {
			defer c.wg.Done()
			err := cc.readLoop()
			if c.isClosed() {
				return
			}
			if !errors.Is(err, torus.ErrClosed) {
				c.log.Warn("peer connection lost", "err", err)
			}
		}()
		return cc, nil
	}
}

// dial opens a connection to the daemon (TCP, then TLS when configured).
func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	dial := c.cfg.Dial
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	nc, err := dial(ctx, "tcp", c.addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	if c.cfg.TLS != nil {
		return c.handshake(ctx, nc)
	}
	return nc, nil
}

// handshake runs the client side of TLS on nc. The error wraps
// torus.ErrPermission when the daemon's certificate is refused (another CA,
// not a daemon's, expired) and torus.ErrUnavailable otherwise.
func (c *Client) handshake(ctx context.Context, nc net.Conn) (net.Conn, error) {
	host, _, err := net.SplitHostPort(c.addr)
	if err != nil {
		host = c.addr
	}
	tc := tls.Client(nc, c.cfg.TLS(host))
	if err = tc.HandshakeContext(ctx); err == nil {
		return tc, nil
	}
	nc.Close()
	var (
		verr *tls.CertificateVerificationError
		uerr x509.UnknownAuthorityError
		herr x509.HostnameError
		cerr x509.CertificateInvalidError
	)
	if errors.Is(err, torus.ErrPermission) || errors.As(err, &verr) || errors.As(err, &uerr) ||
		errors.As(err, &herr) || errors.As(err, &cerr) {
		return nil, fmt.Errorf("peer %s: TLS handshake: %w: %v", c.addr, torus.ErrPermission, err)
	}
	hint := ""
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
		hint = " (does the daemon serve TLS on its peer port? it needs --peer-cert, --peer-key and --peer-ca)"
	}
	return nil, fmt.Errorf("peer %s: TLS handshake: %w: %v%s", c.addr, torus.ErrUnavailable, err, hint)
}

// ctxError describes the end of ctx: a request timeout of ours wraps
// torus.ErrUnavailable and context.DeadlineExceeded; the caller's own
// cancellation or deadline wraps ctx.Err().
func (c *Client) ctxError(ctx context.Context, op string) error {
	if errors.Is(context.Cause(ctx), errRequestTimeout) {
		return fmt.Errorf("peer %s: %s: %w after %v: %w", c.addr, op, torus.ErrUnavailable,
			c.cfg.RequestTimeout, context.DeadlineExceeded)
	}
	return fmt.Errorf("peer %s: %s: %w", c.addr, op, ctx.Err())
}

// call sends one request whose body is fixed followed by data, and waits for
// its response. A ReadAt response's data is copied into dst and resp.Data
// is set to the copied part of dst (the response buffer is recycled).
func (c *Client) call(ctx context.Context, op Op, fixed, data, dst []byte) (Response, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, c.cfg.RequestTimeout, errRequestTimeout)
	defer cancel()
	start := time.Now()
	pc, err := c.start(ctx, op, fixed, data, dst, nil)
	if err != nil {
		c.observe(op, start, err)
		return Response{}, err
	}
	resp, err := c.wait(ctx, pc)
	c.observe(op, start, err)
	return resp, err
}

// observe reports a finished request to ClientConfig.Observe.
func (c *Client) observe(op Op, start time.Time, err error) {
	if c.cfg.Observe != nil {
		c.cfg.Observe(op.String(), time.Since(start), err)
	}
}

// sentCall is a request written to a connection whose answer is awaited.
type sentCall struct {
	op   Op
	id   uint64
	cc   *clientConn
	ch   chan result
	sent int64 // unix nanoseconds
}

// start sends one request (fixed then data) and returns without waiting
// for its answer. Requests started one after another by one goroutine
// reach the server in that order. data is not retained once start returns.
// dst (ReadAt) is where the connection's reader puts the response's data,
// vec (ReadV) where it puts each range's: they belong to the call until
// wait returns.
func (c *Client) start(ctx context.Context, op Op, fixed, data, dst []byte, vec [][]byte) (*sentCall, error) {
	if ctx.Err() != nil {
		return nil, c.ctxError(ctx, op.String())
	}
	cc, err := c.conn(ctx)
	if err != nil {
		return nil, err
	}
	id := c.nextID.Add(1)
	ch := make(chan result, 1)
	if err := cc.register(id, pendingCall{op: op, ch: ch, dst: dst, vec: vec}); err != nil {
		return nil, err
	}
	if err := cc.send(ctx, op, id, fixed, data); err != nil {
		if errors.Is(err, errNotSent) {
			cc.unregister(id)
			return nil, c.ctxError(ctx, op.String())
		}
		cc.fail(fmt.Errorf("peer %s: connection lost: %w: send: %v", c.addr, torus.ErrUnavailable, err))
		r := <-ch // fail delivered the error
		return nil, r.err
	}
	return &sentCall{op: op, id: id, cc: cc, ch: ch, sent: time.Now().UnixNano()}, nil
}

// wait waits for the answer to a started request, within ctx. For a
// ReadAt the response's data is already in the dst given to start, and
// resp.Data is the filled part of it.
func (c *Client) wait(ctx context.Context, pc *sentCall) (Response, error) {
	op, cc := pc.op, pc.cc
	var r result
	select {
	case r = <-pc.ch:
	case <-ctx.Done():
		if !cc.unregister(pc.id) && (op == OpReadAt || op == OpReadV) {
			// The reader took the call: it may be filling dst, which
			// must not be written once we return. Wait for it; a body
			// that does not arrive soon ends the connection.
			select {
			case r = <-pc.ch:
			case <-time.After(claimedGrace):
				cc.fail(fmt.Errorf("peer %s: connection lost: %w: response body stalled", c.addr, torus.ErrUnavailable))
				r = <-pc.ch
			}
			if r.body != nil {
				c.bufs.put(r.body)
			}
		}
		err := c.ctxError(ctx, op.String())
		if errors.Is(context.Cause(ctx), errRequestTimeout) && cc.lastRecv.Load() < pc.sent {
			// Not one frame arrived since this request was sent: the
			// peer is silent, not merely slow on one request. Drop the
			// connection so that the next call redials (and fails fast
			// if the peer is gone) instead of waiting for TCP keepalive.
			c.log.Warn("peer silent for a whole request timeout; dropping the connection", "timeout", c.cfg.RequestTimeout)
			cc.fail(fmt.Errorf("peer %s: connection lost: %w: no response for %v", c.addr, torus.ErrUnavailable, c.cfg.RequestTimeout))
		}
		return Response{}, err
	}
	if r.err != nil {
		return Response{}, r.err
	}
	var resp Response
	var err error
	if r.vresp != nil {
		resp = *r.vresp // checked by readIntoV
	} else {
		resp, err = DecodeResponse(op, *r.body)
		c.bufs.put(r.body)
	}
	if op == OpReadAt {
		resp.Data = r.data
	}
	if err != nil {
		err = fmt.Errorf("peer %s: connection lost: %w: bad %s response: %v", c.addr, torus.ErrUnavailable, op, err)
		cc.fail(err)
		return Response{}, err
	}
	if resp.Status != StatusOK {
		return resp, &RemoteError{Addr: c.addr, Op: op, Status: resp.Status, Msg: resp.Msg}
	}
	return resp, nil
}

func (c *Client) invalid(op Op, format string, args ...any) error {
	return fmt.Errorf("peer %s: %s: %w: %s", c.addr, op, torus.ErrInvalid, fmt.Sprintf(format, args...))
}

// Append implements torus.PeerService. p is sent before Append returns and
// not retained. Payloads over MaxData fail with torus.ErrInvalid.
func (c *Client) Append(ctx context.Context, epoch uint64, seg torus.SegmentID, off int64, p []byte) error {
	if len(p) > MaxData {
		return c.invalid(OpAppend, "%d bytes exceed the limit of %d", len(p), MaxData)
	}
	if off < 0 {
		return c.invalid(OpAppend, "negative offset %d", off)
	}
	fixed := AppendRequestFixed(make([]byte, 0, 48), Request{Op: OpAppend, Epoch: epoch, Seg: seg, Off: off})
	_, err := c.call(ctx, OpAppend, fixed, p, nil)
	return err
}

// AppendAsync sends an Append like Append but returns once the request is
// written, before its answer: wait returns the answer (the error Append
// would return) and must be called exactly once. Appends started one after
// another by one goroutine reach the server in that order, and the server
// runs a connection's appends in order, so a writer may keep several
// appends of one segment in flight. p is not retained once AppendAsync
// returns. ctx bounds both the send and the wait.
func (c *Client) AppendAsync(ctx context.Context, epoch uint64, seg torus.SegmentID, off int64, p []byte) (wait func() error) {
	if len(p) > MaxData {
		err := c.invalid(OpAppend, "%d bytes exceed the limit of %d", len(p), MaxData)
		return func() error { return err }
	}
	if off < 0 {
		err := c.invalid(OpAppend, "negative offset %d", off)
		return func() error { return err }
	}
	ctx, cancel := context.WithTimeoutCause(ctx, c.cfg.RequestTimeout, errRequestTimeout)
	fixed := AppendRequestFixed(make([]byte, 0, 48), Request{Op: OpAppend, Epoch: epoch, Seg: seg, Off: off})
	start := time.Now()
	pc, err := c.start(ctx, OpAppend, fixed, p, nil, nil)
	if err != nil {
		cancel()
		c.observe(OpAppend, start, err)
		return func() error { return err }
	}
	return func() error {
		defer cancel()
		_, err := c.wait(ctx, pc)
		c.observe(OpAppend, start, err)
		return err
	}
}

// Sync implements torus.PeerService: it returns the segment's durable
// length as the daemon reports it.
func (c *Client) Sync(ctx context.Context, epoch uint64, seg torus.SegmentID) (int64, error) {
	resp, err := c.call(ctx, OpSync, EncodeRequest(Request{Op: OpSync, Epoch: epoch, Seg: seg}), nil, nil)
	return resp.Synced, err
}

// ReadAt implements torus.PeerService: it fills p, in several requests when
// p is longer than MaxData. It returns io.EOF (bare) with n < len(p) when
// the segment is shorter.
func (c *Client) ReadAt(ctx context.Context, seg torus.SegmentID, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, c.invalid(OpReadAt, "negative offset %d", off)
	}
	done := 0
	for done < len(p) || (len(p) == 0 && done == 0) {
		chunk := min(len(p)-done, MaxData)
		req := Request{Op: OpReadAt, Seg: seg, Off: off + int64(done), Length: uint32(chunk)}
		resp, err := c.call(ctx, OpReadAt, EncodeRequest(req), nil, p[done:done+chunk])
		done += len(resp.Data) // already in p
		if err != nil {
			if errors.Is(err, io.EOF) {
				return done, io.EOF
			}
			return done, err
		}
		if len(resp.Data) < chunk {
			return done, io.EOF
		}
		if len(p) == 0 {
			break
		}
	}
	return done, nil
}

// Stat implements torus.PeerService.
func (c *Client) Stat(ctx context.Context, seg torus.SegmentID) (torus.SegmentInfo, error) {
	resp, err := c.call(ctx, OpStat, EncodeRequest(Request{Op: OpStat, Seg: seg}), nil, nil)
	return resp.Info, err
}

// List implements torus.PeerService.
//
// The daemon answers in pages of at most MaxListPage entries; List fetches
// them all, so a daemon's segment count is not bounded by a frame's size.
// Pages are not one snapshot: a segment created meanwhile may be missed and
// one deleted meanwhile may be listed (GC and healing tolerate both).
func (c *Client) List(ctx context.Context, volume uint64) ([]torus.SegmentInfo, error) {
	var out []torus.SegmentInfo
	var after torus.SegmentID
	for {
		resp, err := c.call(ctx, OpList, EncodeRequest(Request{Op: OpList, Volume: volume, After: after, Limit: c.listPage}), nil, nil)
		if err != nil {
			return nil, err
		}
		out = append(out, resp.List...)
		if !resp.More || len(resp.List) == 0 {
			return out, nil
		}
		after = resp.List[len(resp.List)-1].ID
	}
}

// Delete implements torus.PeerService.
func (c *Client) Delete(ctx context.Context, seg torus.SegmentID) error {
	_, err := c.call(ctx, OpDelete, EncodeRequest(Request{Op: OpDelete, Seg: seg}), nil, nil)
	return err
}

// Fence implements torus.PeerService.
func (c *Client) Fence(ctx context.Context, volume, epoch uint64) error {
	_, err := c.call(ctx, OpFence, EncodeRequest(Request{Op: OpFence, Volume: volume, Epoch: epoch}), nil, nil)
	return err
}

// Usage implements torus.PeerService.
func (c *Client) Usage(ctx context.Context) (torus.Usage, error) {
	resp, err := c.call(ctx, OpUsage, nil, nil, nil)
	return resp.Usage, err
}

type result struct {
	body  *[]byte   // from the client's pool; for ReadAt, status and message only
	data  []byte    // ReadAt: the data, read straight into the call's dst
	vresp *Response // ReadV: the decoded response; its data is in the call's vec
	err   error
}

type pendingCall struct {
	op  Op
	ch  chan result // buffered 1
	dst []byte      // ReadAt: where the data goes
	vec [][]byte    // ReadV: where each range's data goes
}

// claimedGrace is how long a cancelled ReadAt waits for the rest of a
// response the reader has started to read into its buffer.
const claimedGrace = time.Second

// clientConn is one connection and its pending calls. Its reader goroutine
// is owned by the Client.
type clientConn struct {
	c    net.Conn
	addr string
	bufs *bufPool
	wmu  sync.Mutex

	mu      sync.Mutex
	pending map[uint64]pendingCall
	err     error // set once broken

	lastRecv atomic.Int64 // unix nanoseconds of the last frame received
}

func (cc *clientConn) alive() bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.err == nil
}

func (cc *clientConn) register(id uint64, p pendingCall) error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if cc.err != nil {
		return cc.err
	}
	cc.pending[id] = p
	return nil
}

// unregister forgets a pending call. It reports false when the call was no
// longer pending: the reader took it (and will answer on its channel) or
// the connection failed (and answered it).
func (cc *clientConn) unregister(id uint64) bool {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if _, ok := cc.pending[id]; !ok {
		return false
	}
	delete(cc.pending, id)
	return true
}

// fail breaks the connection: it closes it and fails every pending call
// with err. Only the first call has an effect.
func (cc *clientConn) fail(err error) {
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return
	}
	cc.err = err
	pending := cc.pending
	cc.pending = nil
	cc.mu.Unlock()
	cc.c.Close()
	for _, p := range pending {
		p.ch <- result{err: err}
	}
}

// errNotSent reports that a call's ctx ended while it waited to send:
// nothing was written, the connection is intact.
var errNotSent = errors.New("peer: request not sent")

func (cc *clientConn) send(ctx context.Context, op Op, id uint64, fixed, data []byte) error {
	// The checksum pass runs before the lock: calls on one connection
	// checksum in parallel and hold the lock only for the writev.
	hdr, err := frameHeader(op, 0, id, fixed, data)
	if err != nil {
		return err
	}
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	if ctx.Err() != nil {
		return errNotSent
	}
	if dl, ok := ctx.Deadline(); ok {
		cc.c.SetWriteDeadline(dl)
	}
	return writeParts(cc.c, &hdr, fixed, data)
}

// readLoop delivers responses to pending calls until the connection fails.
// It takes a call out of the pending set as soon as its header arrives, so
// that a ReadAt's data is read straight into the caller's buffer; a call
// so taken is always answered here, whatever happens to the connection.
func (cc *clientConn) readLoop() error {
	hdr := make([]byte, HeaderSize)
	r := bufio.NewReaderSize(cc.c, readBufferSize)
	for {
		h, err := cc.readHeader(r, hdr)
		var p pendingCall
		var ok bool
		if err == nil {
			cc.mu.Lock()
			p, ok = cc.pending[h.ID]
			delete(cc.pending, h.ID)
			cc.mu.Unlock()
			if ok && p.op != h.Op {
				err = fmt.Errorf("response op %s for a %s request", h.Op, p.op)
			}
		}
		var res result
		if err == nil {
			switch {
			case ok && h.Op == OpReadAt:
				res, err = cc.readInto(r, h, p.dst)
			case ok && h.Op == OpReadV:
				res, err = cc.readIntoV(r, h, p.vec)
			default:
				res.body, err = cc.readBody(r, h)
			}
			cc.lastRecv.Store(time.Now().UnixNano())
		}
		if err != nil {
			err = fmt.Errorf("peer %s: connection lost: %w: %v", cc.addr, torus.ErrUnavailable, err)
			cc.fail(err)
			if ok {
				p.ch <- result{err: err}
			}
			cc.mu.Lock()
			defer cc.mu.Unlock()
			return cc.err
		}
		if !ok {
			cc.bufs.put(res.body)
			continue // cancelled or timed out; its answer is dropped
		}
		p.ch <- res
	}
}

// readHeader reads and checks a response header.
func (cc *clientConn) readHeader(r io.Reader, hdr []byte) (Header, error) {
	if _, err := io.ReadFull(r, hdr[:HeaderSize]); err != nil {
		return Header{}, err
	}
	h, err := ParseHeader(hdr, MaxBody)
	if err == nil && !h.Response() {
		err = fmt.Errorf("%w: request frame from server", torus.ErrInvalid)
	}
	return h, err
}

// readBody reads a frame's body into a buffer from the client's pool.
func (cc *clientConn) readBody(r io.Reader, h Header) (*[]byte, error) {
	buf := cc.bufs.get(int(h.Length))
	crc, err := readBody(r, *buf)
	if err == nil && crc != h.CRC {
		err = errBadCRC
	}
	if err != nil {
		cc.bufs.put(buf)
		return nil, err
	}
	return buf, nil
}

// readInto reads a ReadAt response's body: status and message into a pool
// buffer, the data straight into dst, with one checksum pass over both.
// More data than dst holds is a protocol error (the stream is abandoned).
func (cc *clientConn) readInto(r io.Reader, h Header, dst []byte) (result, error) {
	if h.Length < 3 {
		return result{}, malformed(OpReadAt, "response of %d bytes", h.Length)
	}
	var pre [3]byte
	if _, err := io.ReadFull(r, pre[:]); err != nil {
		return result{}, unexpected(err)
	}
	n := uint32(binary.LittleEndian.Uint16(pre[1:]))
	if n > MaxMessage || 3+n > h.Length {
		return result{}, malformed(OpReadAt, "message of %d bytes", n)
	}
	dlen := h.Length - 3 - n
	if dlen > uint32(len(dst)) {
		return result{}, fmt.Errorf("%w: %d bytes returned for %d", torus.ErrInvalid, dlen, len(dst))
	}
	buf := cc.bufs.get(3 + int(n))
	copy(*buf, pre[:])
	_, err := io.ReadFull(r, (*buf)[3:])
	err = unexpected(err)
	var crc uint32
	if err == nil {
		crc, err = readBodyCRC(r, dst[:dlen], crc32.Checksum(*buf, castagnoli))
	}
	if err == nil && crc != h.CRC {
		err = errBadCRC
	}
	if err != nil {
		cc.bufs.put(buf)
		return result{}, err
	}
	return result{body: buf, data: dst[:dlen]}, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
