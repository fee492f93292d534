package etcd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/torus-storage/torus"
)

// Defaults for EmbedConfig.
const (
	DefaultClientURL = "http://127.0.0.1:2379"
	DefaultPeerURL   = "http://127.0.0.1:2380"
)

// embedStartTimeout bounds how long StartEmbedded waits for the server to
// become ready.
const embedStartTimeout = 30 * time.Second

// EmbedConfig configures an in-process etcd server.
type EmbedConfig struct {
	// Dir holds the etcd data; it is created if missing.
	Dir string
	// ClientURL and PeerURL are the listen (and advertised) URLs;
	// defaults DefaultClientURL and DefaultPeerURL.
	ClientURL, PeerURL string
	// Logger receives start and stop messages. etcd's own logging is set
	// to error level, on stderr.
	Logger *slog.Logger
	// UnsafeNoFsync disables fsync in etcd: for tests only, where the data
	// dir is thrown away anyway.
	UnsafeNoFsync bool
}

// Embedded is a running in-process etcd server.
type Embedded struct {
	once sync.Once
	e    *embed.Etcd
	log  *slog.Logger
	eps  []string
}

// StartEmbedded starts a single-member etcd server and waits until it
// serves clients.
func StartEmbedded(ctx context.Context, cfg EmbedConfig) (*Embedded, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("metadata/etcd: embedded: %w: no data dir", torus.ErrInvalid)
	}
	if cfg.ClientURL == "" {
		cfg.ClientURL = DefaultClientURL
	}
	if cfg.PeerURL == "" {
		cfg.PeerURL = DefaultPeerURL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	cu, err := url.Parse(cfg.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("metadata/etcd: embedded: %w: client URL: %w", torus.ErrInvalid, err)
	}
	pu, err := url.Parse(cfg.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("metadata/etcd: embedded: %w: peer URL: %w", torus.ErrInvalid, err)
	}
	ec := embed.NewConfig()
	ec.Name = "torus"
	ec.Dir = cfg.Dir
	ec.ListenClientUrls = []url.URL{*cu}
	ec.AdvertiseClientUrls = []url.URL{*cu}
	ec.ListenPeerUrls = []url.URL{*pu}
	ec.AdvertisePeerUrls = []url.URL{*pu}
	ec.InitialCluster = ec.InitialClusterFromName(ec.Name)
	ec.LogLevel = "error"
	ec.UnsafeNoFsync = cfg.UnsafeNoFsync
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("metadata/etcd: start embedded etcd at %s: %w", cfg.ClientURL, err)
	}
	timer := time.NewTimer(embedStartTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("metadata/etcd: embedded etcd at %s: %w", cfg.ClientURL, err)
	case <-timer.C:
		e.Close()
		return nil, fmt.Errorf("metadata/etcd: embedded etcd at %s: %w: not ready after %v", cfg.ClientURL, torus.ErrUnavailable, embedStartTimeout)
	case <-ctx.Done():
		e.Close()
		return nil, fmt.Errorf("metadata/etcd: embedded etcd: %w", ctx.Err())
	}
	eps := make([]string, 0, len(e.Clients))
	for _, l := range e.Clients {
		eps = append(eps, cu.Scheme+"://"+l.Addr().String())
	}
	cfg.Logger.Info("embedded etcd started", "client", eps, "dir", cfg.Dir)
	return &Embedded{e: e, log: cfg.Logger, eps: eps}, nil
}

// Endpoints returns the client URLs to pass to New.
func (e *Embedded) Endpoints() []string { return append([]string(nil), e.eps...) }

// Close stops the server and waits until it has stopped. Idempotent.
func (e *Embedded) Close() {
	e.once.Do(func() {
		e.e.Close()
		<-e.e.Server.StopNotify()
		e.log.Info("embedded etcd stopped", "client", e.eps)
	})
}
