package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/metadata"
	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/scrub"
	"github.com/torus-storage/torus/storage"
	"github.com/torus-storage/torus/volume"
)

// Server is one storage daemon.
type Server struct {
	cfg  Config
	meta torus.Metadata
	log  *slog.Logger

	id      string
	store   torus.Store
	local   *peer.Local
	psrv    *peer.Server
	peerLn  net.Listener
	httpSrv *http.Server
	httpLn  net.Listener
	advert  string
	metrics *metrics
	pool    *peer.Pool
	ready   atomic.Bool
	inRing  atomic.Bool
	pending atomic.Int64
	// placementDegraded is 1 while the ring's topology cannot meet its
	// placement rule (reportPlacement).
	placementDegraded atomic.Bool
	life              context.Context // ends at Close; owns the liveness session
	endLife           context.CancelFunc
	tables            volume.TableCache
	view              *view                       // the cached cluster view (view.go); set by Start
	healLimit         *scrub.Limiter              // paces healing's appends (RebalanceRate)
	placements        placementCache              // the ring heal plans with, built once per version
	lastView          atomic.Pointer[clusterView] // the last maintenance pass's view, for the background scrub
	unrepMu           sync.Mutex
	unrepairable      map[torus.SegmentID][]uint64 // segments the background scrub found no good copy of
	downMu            sync.Mutex
	downSince         map[string]time.Time
	lastHealth        map[string]torus.VolumeHealth
	events            eventState
	fullLevel         atomic.Int32 // 0, 80 or 90: the last fullness warning given
	sessMu            sync.Mutex
	session           torus.Session
	cancel            context.CancelFunc
	wg                sync.WaitGroup
	closeMu           sync.Mutex
	closed            bool
	closeErr          error
	// beforeJoin, when set (tests), runs after the daemon registered and
	// sent its first heartbeat, before it joins the ring.
	beforeJoin func()
}

// New checks cfg and returns a daemon that Start will bring up.
func New(cfg Config, meta torus.Metadata, logger *slog.Logger) (*Server, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	life, endLife := context.WithCancel(context.Background())
	return &Server{cfg: cfg, meta: meta, log: logger, life: life, endLife: endLife,
		healLimit: &scrub.Limiter{Rate: cfg.RebalanceRate}}, nil
}

// ID is the daemon's stable peer ID (valid after Start).
func (s *Server) ID() string { return s.id }

// PeerAddr is the advertised peer protocol address (valid after Start).
func (s *Server) PeerAddr() string { return s.advert }

// HTTPAddr is the bound HTTP address, "" without HTTP (valid after Start).
func (s *Server) HTTPAddr() string {
	if s.httpLn == nil {
		return ""
	}
	return s.httpLn.Addr().String()
}

// Local is the daemon's own fenced peer service, for in-process callers
// (torusd --dev's NBD server reaches its own store without TCP).
func (s *Server) Local() torus.PeerService { return s.local }

// Store exposes the local store (tests and tools).
func (s *Server) Store() torus.Store { return s.store }

// Start opens the store, starts serving peers and HTTP, registers with etcd
// and, with AutoJoin, joins the ring. On error everything started is stopped.
func (s *Server) Start(ctx context.Context) (err error) {
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if _, err := s.meta.ClusterConfig(ctx); err != nil {
		if errors.Is(err, torus.ErrNotInitialized) {
			return fmt.Errorf("server: %w (run `torusctl init` first)", err)
		}
		return fmt.Errorf("server: reading cluster config: %w", err)
	}
	if s.cfg.Store != nil {
		s.store = s.cfg.Store
	} else {
		d, err := storage.OpenDisk(ctx, storage.DiskConfig{Dir: s.cfg.DataDir, Capacity: s.cfg.Capacity, Logger: s.log})
		if err != nil {
			return fmt.Errorf("server: opening store: %w", err)
		}
		s.store = d
	}
	s.id, err = storage.LoadOrCreateID(s.cfg.DataDir)
	if err != nil {
		return fmt.Errorf("server: peer id: %w", err)
	}
	s.log = s.log.With("peer", s.id)
	s.metrics = newMetrics(s)
	s.local = peer.NewLocal(meteredStore{s.store, s.metrics.ops}, s.log)
	// Learn every volume's epoch before accepting a single append.
	if err := s.refreshEpochs(ctx); err != nil {
		return err
	}

	s.peerLn, err = net.Listen("tcp", s.cfg.PeerListen)
	if err != nil {
		return fmt.Errorf("server: listening for peers: %w", err)
	}
	s.advert = s.cfg.PeerAdvertise
	if s.advert == "" {
		s.advert = s.peerLn.Addr().String()
	}
	s.psrv = peer.NewServer(s.local, peer.ServerConfig{TLS: s.cfg.PeerTLS, Refused: s.metrics.peerRefused,
		WriterCheck: newWriterLocks(s.meta).check}, s.log)
	s.goAttach(func(context.Context) {
		if err := s.psrv.Serve(s.peerLn); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, torus.ErrClosed) {
			s.log.Error("peer server stopped", "err", err)
		}
	})

	s.pool = peer.NewPool(peer.NewResolver(s.meta, 0).Resolve,
		peer.ClientConfig{TLS: s.cfg.PeerClientTLS, ObservePeer: s.metrics.ops.observePeer}, s.log)
	if s.cfg.HTTPListen != "" {
		if err := s.startHTTP(); err != nil {
			return err
		}
	}

	info := torus.PeerInfo{
		ID: s.id, Address: s.advert, HTTP: s.HTTPAddr(),
		Zone: s.cfg.Location.Zone, Rack: s.cfg.Location.Rack, Host: s.cfg.Location.Host,
		Capacity: s.cfg.Capacity, AutoJoin: s.cfg.AutoJoin,
	}
	if err := s.meta.PutPeer(ctx, info); err != nil {
		return fmt.Errorf("server: registering peer: %w", err)
	}
	// The first heartbeat may race its lease (etcd just restarted, or
	// slow): retry with a fresh session before giving up.
	for attempt := 1; ; attempt++ {
		err := s.heartbeat(ctx)
		if err == nil {
			break
		}
		if attempt == 5 || ctx.Err() != nil {
			return err
		}
		s.log.Warn("first heartbeat failed; retrying", "attempt", attempt, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt) * 500 * time.Millisecond):
		}
	}
	if s.cfg.AutoJoin {
		if s.beforeJoin != nil {
			s.beforeJoin()
		}
		if err := s.join(ctx); err != nil {
			return err
		}
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.view = newView(s.meta, s.log, s.cfg.ViewAudit, s.local.SetEpochs, func(spec torus.RingSpec) {
		s.inRing.Store(slices.ContainsFunc(spec.Members, func(m torus.RingMember) bool { return m.ID == s.id }))
	})
	// Maintenance looks at the view every MaintenanceInterval: peer
	// changes read more often than that would be read for nothing.
	s.view.coalesce = max(s.view.coalesce, s.cfg.MaintenanceInterval)
	s.goAttachCtx(runCtx, s.heartbeatLoop)
	s.goAttachCtx(runCtx, s.view.run)
	s.goAttachCtx(runCtx, s.maintenanceLoop)
	if s.cfg.ScrubInterval > 0 {
		s.goAttachCtx(runCtx, s.scrubLoop)
	}
	s.ready.Store(true)
	s.recordEvent(ctx, torus.Event{Kind: torus.EventPeerUp, Severity: torus.SeverityInfo, Peer: s.id,
		Message: fmt.Sprintf("peer %s started (%s, %s)", s.id, s.advert, s.cfg.Location)})
	s.log.Info("torusd started", "peer_address", s.advert, "peer_tls", s.cfg.PeerTLS != nil, "http_tls", s.cfg.HTTPTLS != nil, "http", s.HTTPAddr(), "location", s.cfg.Location.String(),
		"capacity", s.cfg.Capacity, "data_dir", s.cfg.DataDir)
	return nil
}

// goAttach runs f in a goroutine that Close waits for.
func (s *Server) goAttach(f func(context.Context)) { s.goAttachCtx(context.Background(), f) }

func (s *Server) goAttachCtx(ctx context.Context, f func(context.Context)) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		f(ctx)
	}()
}

// Close stops the daemon: stops serving, revokes its liveness lease (so it
// shows down at once), and closes the store. Idempotent.
func (s *Server) Close() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return s.closeErr
	}
	s.closed = true
	s.ready.Store(false)
	if s.cancel != nil {
		s.cancel()
	}
	var errs []error
	if s.httpSrv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		errs = append(errs, ignoreClosed(s.httpSrv.Shutdown(ctx)))
		cancel()
	}
	if s.psrv != nil {
		errs = append(errs, ignoreClosed(s.psrv.Close()))
	} else if s.peerLn != nil {
		s.peerLn.Close()
	}
	s.sessMu.Lock()
	sess := s.session
	s.sessMu.Unlock()
	if sess != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := sess.Close(ctx); err != nil {
			s.log.Warn("revoking liveness lease", "err", err)
		}
		cancel()
	}
	s.wg.Wait()
	s.endLife()
	if s.pool != nil {
		errs = append(errs, ignoreClosed(s.pool.Close()))
	}
	if s.store != nil {
		errs = append(errs, ignoreClosed(s.store.Close()))
	}
	s.closeErr = errors.Join(errs...)
	s.log.Info("torusd stopped")
	return s.closeErr
}

func ignoreClosed(err error) error {
	if err == nil || errors.Is(err, torus.ErrClosed) || errors.Is(err, net.ErrClosed) || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (s *Server) refreshEpochs(ctx context.Context) error {
	ep, err := s.meta.Epochs(ctx)
	if err != nil {
		return fmt.Errorf("server: reading volume epochs: %w", err)
	}
	s.local.SetEpochs(ep)
	return nil
}

// heartbeat makes sure a liveness session exists and writes the liveness key.
func (s *Server) heartbeat(ctx context.Context) error {
	s.sessMu.Lock()
	sess := s.session
	s.sessMu.Unlock()
	if sess != nil {
		select {
		case <-sess.Done():
			sess = nil
		default:
		}
	}
	if sess == nil {
		var err error
		// The lease lives until Close, not until this call's deadline:
		// a session ends when the context it was created with ends.
		sess, err = s.meta.NewSession(s.life, s.cfg.HeartbeatTTL)
		if err != nil {
			return fmt.Errorf("server: liveness lease: %w", err)
		}
		s.sessMu.Lock()
		s.session = sess
		s.sessMu.Unlock()
	}
	u := s.store.Usage()
	s.checkFullness(u)
	beat := torus.Beat{Used: u.Used, Pending: s.pending.Load(), Unrepairable: s.unrepairableBlocks()}
	if err := s.meta.Heartbeat(ctx, sess, s.id, beat); err != nil {
		if errors.Is(err, torus.ErrClosed) {
			// The lease was lost (expired while etcd was slow or
			// away): the next heartbeat starts a new session.
			s.sessMu.Lock()
			if s.session == sess {
				s.session = nil
			}
			s.sessMu.Unlock()
		}
		return fmt.Errorf("server: heartbeat: %w", err)
	}
	return nil
}

func (s *Server) heartbeatLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.HeartbeatTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		hctx, cancel := context.WithTimeout(ctx, s.cfg.HeartbeatTTL/2)
		err := s.heartbeat(hctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			s.log.Warn("heartbeat failed", "err", err)
		}
	}
}

// joinAttempts bounds join's compare-and-swaps. A conflict means another
// writer moved the ring, usually adding this daemon with its own batch;
// one that did not (this daemon registered after that writer read the
// peers) writes the next version itself.
const joinAttempts = 64

// join adds the daemon to the ring if it is not a member, together with
// every other peer waiting to auto-join (metadata.AutoJoin), in one
// compare-and-swap of the ring (JoinRing). On conflict it reads again: a
// daemon another joiner added is done. docs/design/cluster.md, "Joining".
func (s *Server) join(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		err := s.joinOnce(ctx)
		if err == nil || errors.Is(err, metadata.ErrRemoved) {
			if err != nil {
				// An operator removed this daemon: --auto-join must
				// not undo that. `torusctl peer add` brings it back.
				s.log.Warn("not rejoining the ring: this peer was removed (torusctl peer add to bring it back)")
			}
			return nil
		}
		conflict := errors.Is(err, torus.ErrConflict)
		if attempt+1 >= joinAttempts || !conflict && !errors.Is(err, torus.ErrUnavailable) {
			return fmt.Errorf("server: joining ring: %w", err)
		}
		// On a conflict the ring is read again soon, with a little
		// jitter so that losers do not meet again at once; etcd slow or
		// away (a loaded etcd times proposals out): later. The ring is
		// read again either way, so a join that did commit is seen.
		wait := time.Duration(attempt+1) * 500 * time.Millisecond
		if conflict {
			wait = rand.N(time.Duration(min(attempt+1, 25)) * 20 * time.Millisecond)
		} else {
			s.log.Warn("joining the ring: etcd unavailable; retrying", "attempt", attempt, "err", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("server: joining ring: %w", err)
		case <-time.After(wait):
		}
	}
}

// joinOnce reads the ring and the peers and, unless the daemon is a
// member, writes the next ring version with it and the peers waiting to
// auto-join.
func (s *Server) joinOnce(ctx context.Context) error {
	spec, err := s.meta.Ring(ctx)
	if err != nil {
		return fmt.Errorf("reading ring: %w", err)
	}
	if slices.ContainsFunc(spec.Members, func(m torus.RingMember) bool { return m.ID == s.id }) {
		s.inRing.Store(true)
		return nil
	}
	peers, err := s.meta.Peers(ctx)
	if err != nil {
		return fmt.Errorf("reading peers: %w", err)
	}
	next, joined, err := metadata.AutoJoin(spec, peers, s.id)
	if err != nil || joined == nil {
		return err
	}
	if err := s.meta.JoinRing(ctx, next, joined); err != nil {
		return err
	}
	s.inRing.Store(true)
	s.log.Info("joined the ring", "version", next.Version, "members", len(next.Members), "joined_together", len(joined))
	return nil
}

// checkFullness warns once when the store crosses 80 % and 90 % of its
// capacity, and notes when it falls back below.
func (s *Server) checkFullness(u torus.Usage) {
	if u.Capacity <= 0 {
		return
	}
	pct := u.Used * 100 / u.Capacity
	level := int32(0)
	switch {
	case pct >= 90:
		level = 90
	case pct >= 80:
		level = 80
	}
	old := s.fullLevel.Swap(level)
	switch {
	case level > old:
		s.log.Warn("store filling up", "percent_used", pct, "used", u.Used, "capacity", u.Capacity)
	case level < old:
		s.log.Info("store below warning level", "percent_used", pct)
	}
}
