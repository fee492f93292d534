package nbd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/torus-storage/torus"
)

// ErrServerClosed is returned by Serve and ServeConn after Shutdown.
var ErrServerClosed = errors.New("nbd: server closed")

// ExportInfo describes one export for NBD_OPT_LIST and NBD_OPT_INFO.
type ExportInfo struct {
	Name        string
	Description string // shown by clients (nbdinfo --list); may be empty
	Size        int64
	ReadOnly    bool // snapshots are read-only
}

// Exports is what the server serves: torus volumes and snapshots in
// production (cmd/torusblk), memdev devices in tests.
type Exports interface {
	// Open opens the named export. With readOnly the device must refuse
	// writes. It fails with an error wrapping torus.ErrNotExist for an
	// unknown name and torus.ErrLocked (a *torus.LockedError) when another
	// process holds the volume.
	Open(ctx context.Context, name string, readOnly bool) (torus.Device, error)
	// List lists the exports, for NBD_OPT_LIST and NBD_OPT_INFO.
	List(ctx context.Context) ([]ExportInfo, error)
	// Default names the export served for the empty export name; ""
	// means there is none.
	Default(ctx context.Context) (string, error)
}

// Config configures a Server. The zero value serves read-write without TLS
// with default limits.
type Config struct {
	// ReadOnly serves every export read-only.
	ReadOnly bool
	// TLS enables NBD_OPT_STARTTLS with this configuration (which must
	// hold a certificate). Nil: STARTTLS is refused with ERR_UNSUP.
	TLS *tls.Config
	// TLSRequired refuses every option but STARTTLS and ABORT until TLS
	// is up (FORCEDTLS mode). Needs TLS.
	TLSRequired bool
	// Authorizer, when set, decides per client certificate which exports
	// a client sees and attaches, and whether read-write (ExportList).
	// A client it gives AccessNone does not see the export in NBD_OPT_LIST
	// and is refused it at NBD_OPT_INFO/GO (NBD_REP_ERR_POLICY) and
	// NBD_OPT_EXPORT_NAME (the connection is closed); AccessReadOnly
	// serves it read-only to that connection (writes fail with EPERM).
	// Nil: every client may attach every export. Needs TLS with client
	// certificates to be useful: a client without one gets nothing.
	Authorizer Authorizer
	// MaxInflightRequests bounds the requests one connection has
	// outstanding; beyond it the server stops reading. Default 128.
	MaxInflightRequests int
	// MaxInflightBytes bounds the payload buffers (write data read, read
	// data not yet sent) of one connection. Default 64 MiB; at least
	// MaxRequestSize.
	MaxInflightBytes int64
	// HandshakeTimeout bounds the option haggling of one connection.
	// Default 30 s.
	HandshakeTimeout time.Duration
	// CloseTimeout bounds the flush and close of a device after its last
	// connection ended. Default 1 min.
	CloseTimeout time.Duration
}

// Defaults for Config.
const (
	DefaultMaxInflightRequests = 128
	DefaultMaxInflightBytes    = 64 << 20
	DefaultHandshakeTimeout    = 30 * time.Second
	DefaultCloseTimeout        = time.Minute
)

// EnsureDefaults fills zero fields with defaults.
func (c *Config) EnsureDefaults() {
	if c.MaxInflightRequests == 0 {
		c.MaxInflightRequests = DefaultMaxInflightRequests
	}
	if c.MaxInflightBytes == 0 {
		c.MaxInflightBytes = DefaultMaxInflightBytes
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = DefaultCloseTimeout
	}
}

// Validate checks the configuration (after EnsureDefaults).
func (c Config) Validate() error {
	switch {
	case c.TLSRequired && c.TLS == nil:
		return fmt.Errorf("%w: nbd: TLS required but no TLS configuration", torus.ErrInvalid)
	case c.TLS != nil && len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil && c.TLS.GetConfigForClient == nil:
		return fmt.Errorf("%w: nbd: TLS configuration has no certificate", torus.ErrInvalid)
	case c.MaxInflightRequests < 1:
		return fmt.Errorf("%w: nbd: max in-flight requests %d", torus.ErrInvalid, c.MaxInflightRequests)
	case c.MaxInflightBytes < MaxRequestSize:
		return fmt.Errorf("%w: nbd: max in-flight bytes %d below the max request size %d", torus.ErrInvalid, c.MaxInflightBytes, MaxRequestSize)
	case c.HandshakeTimeout < 0 || c.CloseTimeout < 0:
		return fmt.Errorf("%w: nbd: negative timeout", torus.ErrInvalid)
	}
	return nil
}

// Server serves Exports over NBD. Create it with NewServer; run it with
// Serve (any number of listeners) or ServeConn; stop it with Shutdown.
type Server struct {
	cfg     Config
	cfgErr  error
	exports Exports
	log     *slog.Logger

	// base is the context of all device I/O; cancelled only when
	// Shutdown gives up waiting.
	base   context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	devs      map[string]*sharedDev
	wg        sync.WaitGroup // connections

	firstCloseErr error
}

// NewServer returns a server for exports. A nil logger discards logs.
// Configuration errors are reported by Serve and ServeConn.
//
// Log levels: Debug per request error and option; Info per connection
// start/end; Warn for protocol violations and failed handshakes; Error when
// flushing or closing a device failed (possible data loss).
func NewServer(cfg Config, exports Exports, logger *slog.Logger) *Server {
	cfg.EnsureDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg:       cfg,
		cfgErr:    cfg.Validate(),
		exports:   exports,
		log:       logger,
		base:      ctx,
		cancel:    cancel,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
		devs:      make(map[string]*sharedDev),
	}
}

// Serve accepts connections on ln and serves each in its own goroutine
// until Shutdown (then it returns ErrServerClosed) or until Accept fails
// permanently. ln is closed when Serve returns.
func (s *Server) Serve(ln net.Listener) error {
	if s.cfgErr != nil {
		ln.Close()
		return s.cfgErr
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd: accept failed; retrying", "err", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("nbd: accept: %w", err)
		}
		backoff = 0
		c, err := s.track(nc)
		if err != nil {
			nc.Close()
			return err
		}
		go func() {
			defer s.wg.Done()
			c.serve()
		}()
	}
}

// ServeConn serves one already-accepted connection (a TCP connection or one
// end of a socketpair, as torusblk does for the kernel client) and returns
// when it ends. It closes nc.
func (s *Server) ServeConn(nc net.Conn) error {
	if s.cfgErr != nil {
		nc.Close()
		return s.cfgErr
	}
	c, err := s.track(nc)
	if err != nil {
		nc.Close()
		return err
	}
	defer s.wg.Done()
	return c.serve()
}

// track registers a new connection; the caller must call s.wg.Done when
// the connection's goroutine ends.
func (s *Server) track(nc net.Conn) (*conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrServerClosed
	}
	c := newConn(s, nc)
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return c, nil
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// Shutdown stops accepting connections, stops reading new requests, lets
// the requests in flight complete and their replies go out, closes every
// connection, and flushes and closes every device (which releases its
// writer lease). If ctx ends first, connections are closed at once and the
// request I/O still running is cancelled; devices are still closed (each
// close bounded by Config.CloseTimeout), then Shutdown returns ctx's error.
// Shutdown is idempotent; it returns the first device close error, if any.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.stop()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return s.closeErr()
	case <-ctx.Done():
	}
	s.mu.Lock()
	for c := range s.conns {
		c.abort()
	}
	s.mu.Unlock()
	s.cancel()
	<-done
	return ctx.Err()
}

// closeErr reports device close failures seen so far.
func (s *Server) closeErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.firstCloseErr
}

// isClosed reports whether Shutdown was called.
func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// sharedDev is one opened export shared by the connections to it.
type sharedDev struct {
	name     string
	ready    chan struct{} // closed once Open returned
	dev      torus.Device
	err      error
	refs     int
	closing  bool
	closed   chan struct{} // closed once Close returned
	readOnly bool
}

// isSnapshot reports whether an export name names a snapshot (vol@snap).
func isSnapshot(name string) bool { return strings.Contains(name, "@") }

// acquire returns the shared device of name, opening it if this is its
// first connection. Every successful acquire must be paired with release.
func (s *Server) acquire(ctx context.Context, name string) (*sharedDev, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, ErrServerClosed
		}
		sd := s.devs[name]
		if sd == nil {
			sd = &sharedDev{
				name:     name,
				ready:    make(chan struct{}),
				closed:   make(chan struct{}),
				refs:     1,
				readOnly: s.cfg.ReadOnly || isSnapshot(name),
			}
			s.devs[name] = sd
			s.mu.Unlock()
			dev, err := s.exports.Open(ctx, name, sd.readOnly)
			s.mu.Lock()
			sd.dev, sd.err = dev, err
			if err != nil {
				delete(s.devs, name)
			} else if dev.ReadOnly() {
				sd.readOnly = true
			}
			close(sd.ready)
			s.mu.Unlock()
			if err != nil {
				return nil, err
			}
			s.log.Info("nbd: export opened", "export", name, "size", dev.Size(), "read_only", sd.readOnly)
			return sd, nil
		}
		if sd.closing {
			ch := sd.closed
			s.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		sd.refs++
		s.mu.Unlock()
		select {
		case <-sd.ready:
		case <-ctx.Done():
			s.release(sd)
			return nil, ctx.Err()
		}
		if sd.err != nil {
			return nil, sd.err
		}
		return sd, nil
	}
}

// release drops one reference; the last one flushes and closes the device.
func (s *Server) release(sd *sharedDev) {
	s.mu.Lock()
	sd.refs--
	if sd.refs > 0 || sd.closing {
		s.mu.Unlock()
		return
	}
	select {
	case <-sd.ready:
	default:
		// Still opening: the opener holds a reference, so refs > 0.
		s.mu.Unlock()
		return
	}
	if sd.err != nil {
		s.mu.Unlock()
		return
	}
	sd.closing = true
	s.mu.Unlock()

	// Not derived from s.base: even after a forced Shutdown the device
	// must be closed, which releases its writer lease.
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.CloseTimeout)
	err := sd.dev.Close(ctx)
	cancel()
	if err != nil {
		s.log.Error("nbd: closing export failed", "export", sd.name, "err", err)
	} else {
		s.log.Info("nbd: export closed", "export", sd.name)
	}
	s.mu.Lock()
	if err != nil && s.firstCloseErr == nil {
		s.firstCloseErr = fmt.Errorf("nbd: close export %q: %w", sd.name, err)
	}
	if s.devs[sd.name] == sd {
		delete(s.devs, sd.name)
	}
	close(sd.closed)
	s.mu.Unlock()
}

// openDev returns the shared device of name if it is open, without taking
// a reference.
func (s *Server) openDev(name string) torus.Device {
	s.mu.Lock()
	defer s.mu.Unlock()
	sd := s.devs[name]
	if sd == nil || sd.closing {
		return nil
	}
	select {
	case <-sd.ready:
		if sd.err == nil {
			return sd.dev
		}
	default:
	}
	return nil
}
