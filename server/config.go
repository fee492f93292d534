package server

import (
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/torus-storage/torus"
)

// Config configures a daemon. cmd/torusd fills it from flags.
type Config struct {
	// DataDir holds the segment store and the peer ID.
	DataDir string
	// Store, when set, is the segment store served instead of the one in
	// DataDir (which then holds only the peer ID): in-process clusters
	// with memory stores (bench/scale). The daemon closes it.
	Store torus.Store
	// Capacity is the most bytes the store may hold (--size, resolved).
	Capacity int64
	// PeerListen is the TCP address of the peer protocol. Port 0 picks one.
	PeerListen string
	// PeerAdvertise is the address others dial; default: the bound
	// PeerListen address.
	PeerAdvertise string
	// HTTPListen serves /metrics, /healthz, /readyz (and /debug/pprof with
	// Pprof); "" for none.
	HTTPListen string
	// Location is the daemon's failure-domain path (zone, rack, host) used
	// by placement; cmd/torusd defaults its host to the machine's name.
	Location torus.Location
	// HTTPTLS, when set, serves HTTPListen over TLS with it (no client
	// certificates: metrics and probes stay readable).
	HTTPTLS *tls.Config
	// Pprof serves /debug/pprof on the HTTP port. Off by default: a
	// profile leaks memory contents and costs CPU.
	Pprof bool
	// PeerTLS, when set, makes the peer port require mutual TLS and check
	// every request against the caller's certificate role
	// (peer.ServerConfig.TLS). Nil: plain TCP, every caller trusted.
	PeerTLS *tls.Config
	// PeerClientTLS is the TLS configuration of the daemon's own calls to
	// other daemons (healing, scrub, rebalancing; peer.ClientConfig.TLS).
	// Set it with PeerTLS: a TLS cluster talks TLS everywhere.
	PeerClientTLS func(host string) *tls.Config
	// AutoJoin adds the daemon to the ring at start if it is not a member.
	AutoJoin bool
	// HeartbeatTTL is the liveness lease TTL: a dead daemon shows down
	// at most this long after it died. Default 5 s.
	HeartbeatTTL time.Duration
	// DownGrace is how long a member must stay down before its data is
	// re-replicated elsewhere. Default 2 min.
	DownGrace time.Duration
	// RebalanceRate limits healing and rebalancing copies, bytes per
	// second; 0 means unlimited.
	RebalanceRate int64
	// MaintenanceInterval is how often the daemon looks at its cached
	// cluster view to plan healing, rebalancing and garbage collection;
	// it plans only when the view changed or work is left (see
	// maintenanceLoop). Default 2 s.
	MaintenanceInterval time.Duration
	// ViewAudit is how often the cached cluster view checks one part of
	// itself against the metadata store (one volume's record, head and
	// writer, in turn, or the ring and peers), as a safety net behind the
	// watch: at most three requests per interval whatever the cluster's
	// size. Default 20 s.
	ViewAudit time.Duration
	// GCInterval is how often the daemon sweeps its store for segments
	// that no head or snapshot names. Default 30 s.
	GCInterval time.Duration
	// ScrubInterval is how often the background scrub reads and
	// verifies each sealed segment copy this daemon holds (and replaces
	// a bad one from a good holder). Default 168 h (weekly); negative
	// turns the background scrub off.
	ScrubInterval time.Duration
	// ScrubRate limits the background scrub's reads, bytes per second.
	// Default 32 MiB/s; negative means unlimited.
	ScrubRate int64
}

// Defaults of the background scrub.
const (
	DefaultScrubInterval = 168 * time.Hour
	DefaultScrubRate     = 32 << 20
)

// EnsureDefaults fills unset fields.
func (c *Config) EnsureDefaults() {
	if c.HeartbeatTTL == 0 {
		c.HeartbeatTTL = 5 * time.Second
	}
	if c.DownGrace == 0 {
		c.DownGrace = 2 * time.Minute
	}
	if c.MaintenanceInterval == 0 {
		c.MaintenanceInterval = 2 * time.Second
	}
	if c.GCInterval == 0 {
		c.GCInterval = 30 * time.Second
	}
	if c.ViewAudit == 0 {
		c.ViewAudit = 20 * time.Second
	}
	if c.ScrubInterval == 0 {
		c.ScrubInterval = DefaultScrubInterval
	}
	if c.ScrubRate == 0 {
		c.ScrubRate = DefaultScrubRate
	}
	if c.PeerListen == "" {
		c.PeerListen = "127.0.0.1:0"
	}
}

// Validate checks the config.
func (c Config) Validate() error {
	switch {
	case c.DataDir == "":
		return fmt.Errorf("%w: data dir is required", torus.ErrInvalid)
	case c.Capacity <= 0:
		return fmt.Errorf("%w: capacity %d must be positive", torus.ErrInvalid, c.Capacity)
	case c.HeartbeatTTL < time.Second:
		return fmt.Errorf("%w: heartbeat TTL %v must be at least 1s", torus.ErrInvalid, c.HeartbeatTTL)
	case c.ViewAudit < 0:
		return fmt.Errorf("%w: view audit interval %v must not be negative", torus.ErrInvalid, c.ViewAudit)
	case c.RebalanceRate < 0:
		return fmt.Errorf("%w: rebalance rate %d must not be negative", torus.ErrInvalid, c.RebalanceRate)
	}
	if err := c.Location.Validate(); err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(c.PeerListen); err != nil {
		return fmt.Errorf("%w: peer address %q: %v", torus.ErrInvalid, c.PeerListen, err)
	}
	if c.PeerAdvertise != "" {
		host, _, err := net.SplitHostPort(c.PeerAdvertise)
		if err != nil {
			return fmt.Errorf("%w: advertised peer address %q: %v", torus.ErrInvalid, c.PeerAdvertise, err)
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			return fmt.Errorf("%w: advertised peer address %q must not be unspecified", torus.ErrInvalid, c.PeerAdvertise)
		}
	}
	if (c.PeerTLS == nil) != (c.PeerClientTLS == nil) {
		return fmt.Errorf("%w: peer TLS for serving and for dialing other daemons go together", torus.ErrInvalid)
	}
	if c.HTTPListen != "" {
		if _, _, err := net.SplitHostPort(c.HTTPListen); err != nil {
			return fmt.Errorf("%w: http address %q: %v", torus.ErrInvalid, c.HTTPListen, err)
		}
	}
	return nil
}
