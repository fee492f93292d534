package peer

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/torus-storage/torus"
)

// Pool is a torus.PeerPool over TCP. It resolves a peer ID to an address
// with the function it was given, dials lazily on first use and caches one
// Client per peer. When a peer's address changes, the old Client is closed
// (its pending and later calls fail with an error wrapping
// torus.ErrUnavailable: the peer moved) and a new one dialed.
type Pool struct {
	resolve func(ctx context.Context, id string) (string, error)
	cfg     ClientConfig
	log     *slog.Logger

	mu     sync.Mutex
	closed bool
	peers  map[string]*poolEntry
	local  map[string]torus.PeerService // reached in-process; see SetLocal
}

type poolEntry struct {
	mu   sync.Mutex // held while dialing
	addr string
	c    *Client
}

var _ torus.PeerPool = (*Pool)(nil)

// NewPool returns a pool. resolve maps a peer ID to its host:port; it is
// called on every Peer call, so it should be cheap (a cached membership
// view).
func NewPool(resolve func(ctx context.Context, id string) (addr string, err error), cfg ClientConfig, logger *slog.Logger) *Pool {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Pool{resolve: resolve, cfg: cfg, log: logger, peers: make(map[string]*poolEntry)}
}

// Peer implements torus.PeerPool. It fails with an error wrapping
// torus.ErrUnavailable when the ID does not resolve or the peer cannot be
// dialed (and wrapping the resolver's error too), and with torus.ErrClosed
// after Close.
func (p *Pool) Peer(ctx context.Context, id string) (torus.PeerService, error) {
	p.mu.Lock()
	if svc, ok := p.local[id]; ok && !p.closed {
		p.mu.Unlock()
		return svc, nil
	}
	p.mu.Unlock()
	addr, err := p.resolve(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("peer pool: resolve %q: %w: %w", id, torus.ErrUnavailable, err)
	}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, fmt.Errorf("peer pool: %w", torus.ErrClosed)
	}
	e := p.peers[id]
	if e == nil {
		e = &poolEntry{}
		p.peers[id] = e
	}
	p.mu.Unlock()

	e.mu.Lock()
	defer e.mu.Unlock()
	if e.c != nil && e.addr == addr {
		return e.c, nil
	}
	if e.c != nil {
		p.log.Info("peer address changed", "peer", id, "from", e.addr, "to", addr)
		e.c.closeWith(fmt.Errorf("peer %q moved from %s to %s: %w", id, e.addr, addr, torus.ErrUnavailable))
		e.c, e.addr = nil, ""
	}
	cfg := p.cfg
	if obs := cfg.ObservePeer; obs != nil {
		cfg.Observe = func(op string, took time.Duration, err error) { obs(id, op, took, err) }
	}
	start := time.Now()
	c, err := Dial(ctx, addr, cfg, p.log.With("peer_id", id))
	if err != nil {
		if cfg.ObservePeer != nil {
			cfg.ObservePeer(id, "dial", time.Since(start), err)
		}
		return nil, fmt.Errorf("peer pool: peer %q: %w", id, err)
	}
	p.mu.Lock()
	closed := p.closed
	p.mu.Unlock()
	if closed {
		c.Close()
		return nil, fmt.Errorf("peer pool: %w", torus.ErrClosed)
	}
	e.c, e.addr = c, addr
	return c, nil
}

// SetLocal makes Peer return svc for id, without resolving or dialing: a
// process that runs the daemon id itself (torusd --dev serving NBD) reaches
// its own store in-process, as a writer on another machine would over TCP,
// but without two socket round trips, two frame checksums and four
// goroutine hand-offs per request. svc must be the daemon's fencing
// service (its *Local), so that epochs are checked as for remote callers.
// A nil svc removes the entry. After Close, Peer fails as for any peer.
func (p *Pool) SetLocal(id string, svc torus.PeerService) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if svc == nil {
		delete(p.local, id)
		return
	}
	if p.local == nil {
		p.local = make(map[string]torus.PeerService)
	}
	p.local[id] = svc
}

// Close closes every cached Client. Idempotent.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	entries := make([]*poolEntry, 0, len(p.peers))
	for _, e := range p.peers {
		entries = append(entries, e)
	}
	p.mu.Unlock()
	for _, e := range entries {
		e.mu.Lock()
		if e.c != nil {
			e.c.Close()
			e.c = nil
		}
		e.mu.Unlock()
	}
	return nil
}
