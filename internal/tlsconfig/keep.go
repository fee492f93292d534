package tlsconfig

import (
	"context"
	"log/slog"
	"os"
	"time"
)

// DefaultWatchInterval is how often Keep checks certificate files for
// changes.
const DefaultWatchInterval = 10 * time.Second

// Peer loads the peer protocol's TLS files: nil (plain TCP) when none is
// set; an error unless certificate, key and CA are all set (the peer
// protocol is mutual TLS).
func Peer(files Files, logger *slog.Logger) (*Reloader, error) {
	if !files.Enabled() {
		return nil, nil
	}
	if err := files.Validate("peer TLS (--peer-cert, --peer-key, --peer-ca)", true); err != nil {
		return nil, err
	}
	return New("peer TLS", files, logger)
}

// Keep reloads every non-nil reloader on each signal from hup (SIGHUP)
// and whenever its files change (checked every interval), until ctx ends.
// It receives from hup until then even with no reloader, so a process that
// has nothing to reload still survives SIGHUP (the caller registered hup
// with signal.Notify, and stops it when Keep returns).
func Keep(ctx context.Context, hup <-chan os.Signal, interval time.Duration, rs ...*Reloader) {
	var live []*Reloader
	for _, r := range rs {
		if r != nil {
			live = append(live, r)
		}
	}
	done := make(chan struct{})
	for _, r := range live {
		go func() {
			defer func() { done <- struct{}{} }()
			r.Watch(ctx, interval)
		}()
	}
	defer func() {
		for range live {
			<-done
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			for _, r := range live {
				r.Reload()
			}
		}
	}
}
