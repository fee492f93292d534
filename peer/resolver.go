package peer

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/torus-storage/torus"
)

// Resolver maps peer IDs to addresses from the metadata store's peer list,
// cached for a short time so that a Pool can call it on every request
// without touching etcd. An unknown ID refreshes the cache at once (at most
// once per MinRefresh), so a daemon that just registered is found.
type Resolver struct {
	meta       torus.Metadata
	ttl        time.Duration
	minRefresh time.Duration

	mu      sync.Mutex
	addrs   map[string]string
	fetched time.Time
}

// NewResolver returns a resolver over meta that re-reads the peer list
// when its view is older than ttl (default 2 s when ttl is 0).
func NewResolver(meta torus.Metadata, ttl time.Duration) *Resolver {
	if ttl <= 0 {
		ttl = 2 * time.Second
	}
	return &Resolver{meta: meta, ttl: ttl, minRefresh: 200 * time.Millisecond}
}

// Resolve returns the peer's address. It fails with an error wrapping
// torus.ErrUnavailable when the peer is not registered, or with the
// metadata store's error when the list cannot be read and nothing is cached.
func (r *Resolver) Resolve(ctx context.Context, id string) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	age := time.Since(r.fetched)
	addr, ok := r.addrs[id]
	if ok && age < r.ttl {
		return addr, nil
	}
	if !ok && r.addrs != nil && age < r.minRefresh {
		return "", fmt.Errorf("%w: peer %s is not registered", torus.ErrUnavailable, id)
	}
	peers, err := r.meta.Peers(ctx)
	if err != nil {
		if ok {
			return addr, nil // etcd unreachable: the last known address is the best guess
		}
		return "", err
	}
	r.addrs = make(map[string]string, len(peers))
	for _, p := range peers {
		r.addrs[p.ID] = p.Address
	}
	r.fetched = time.Now()
	if addr, ok := r.addrs[id]; ok {
		return addr, nil
	}
	return "", fmt.Errorf("%w: peer %s is not registered", torus.ErrUnavailable, id)
}
