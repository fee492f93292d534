package etcd

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

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
	// Logger receives start and stop messages, and etcd's own messages of
	// error level and above (except those etcd logs while shutting down).
	Logger *slog.Logger
	// UnsafeNoFsync disables fsync in etcd: for tests only, where the data
	// dir is thrown away anyway.
	UnsafeNoFsync bool
}

// Embedded is a running in-process etcd server.
type Embedded struct {
	once    sync.Once
	closing *atomic.Bool // set by Close: etcd's shutdown "errors" are dropped
	e       *embed.Etcd
	log     *slog.Logger
	eps     []string
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
	closing := new(atomic.Bool)
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zapToSlog(cfg.Logger, closing))
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
	return &Embedded{e: e, log: cfg.Logger, eps: eps, closing: closing}, nil
}

// Endpoints returns the client URLs to pass to New.
func (e *Embedded) Endpoints() []string { return append([]string(nil), e.eps...) }

// Close stops the server and waits until it has stopped. Idempotent.
func (e *Embedded) Close() {
	e.once.Do(func() {
		e.closing.Store(true)
		e.e.Close()
		<-e.e.Server.StopNotify()
		e.log.Info("embedded etcd stopped", "client", e.eps)
	})
}

// zapToSlog builds etcd's zap logger: error level and above, each entry
// forwarded to log at Error, none once closing is set.
func zapToSlog(log *slog.Logger, closing *atomic.Bool) *zap.Logger {
	enc := zapcore.NewConsoleEncoder(zapcore.EncoderConfig{MessageKey: "msg", LineEnding: "\n"})
	w := zapcore.AddSync(writerFunc(func(p []byte) (int, error) {
		if !closing.Load() {
			log.Error("embedded etcd", "msg", strings.TrimSpace(string(p)))
		}
		return len(p), nil
	}))
	return zap.New(zapcore.NewCore(enc, w, zap.ErrorLevel))
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
