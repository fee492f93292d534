package peer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
)

func TestPool(t *testing.T) {
	ctx := context.Background()
	storeA, storeB := newFakeStore(100), newFakeStore(200)
	_, addrA := startServer(t, NewLocal(storeA, testutil.Logger(t)), ServerConfig{})
	_, addrB := startServer(t, NewLocal(storeB, testutil.Logger(t)), ServerConfig{})
	var mu sync.Mutex
	addrs := map[string]string{"a": addrA, "b": addrB}
	resolve := func(ctx context.Context, id string) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		if a, ok := addrs[id]; ok {
			return a, nil
		}
		return "", fmt.Errorf("peer %q: %w", id, torus.ErrNotExist)
	}
	pool := NewPool(resolve, ClientConfig{}, testutil.Logger(t))
	defer pool.Close()

	usage := func(id string) int64 {
		t.Helper()
		svc, err := pool.Peer(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		u, err := svc.Usage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return u.Capacity
	}
	if usage("a") != 100 || usage("b") != 200 {
		t.Fatal("peers reach the wrong stores")
	}
	a1, _ := pool.Peer(ctx, "a")
	a2, _ := pool.Peer(ctx, "a")
	if a1 != a2 {
		t.Fatal("the client is not cached")
	}

	// Concurrent first use dials once per peer.
	var wg sync.WaitGroup
	got := make([]torus.PeerService, 16)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], _ = pool.Peer(ctx, "b")
		}()
	}
	wg.Wait()
	for _, g := range got {
		if g == nil || g != got[0] {
			t.Fatal("concurrent Peer calls got different clients")
		}
	}

	// The address changes: a new client, the old one closed.
	mu.Lock()
	addrs["a"] = addrB
	mu.Unlock()
	if usage("a") != 200 {
		t.Fatal("the pool did not follow the address change")
	}
	if _, err := a1.Usage(ctx); !errors.Is(err, torus.ErrUnavailable) {
		t.Fatalf("old client after the move: %v", err)
	}

	// Unknown and unreachable peers.
	if _, err := pool.Peer(ctx, "zz"); !errors.Is(err, torus.ErrUnavailable) || !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("unknown peer: %v", err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	mu.Lock()
	addrs["dead"] = dead
	mu.Unlock()
	if _, err := pool.Peer(ctx, "dead"); !errors.Is(err, torus.ErrUnavailable) {
		t.Fatalf("unreachable peer: %v", err)
	}

	pool.Close()
	if _, err := pool.Peer(ctx, "b"); !errors.Is(err, torus.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	if _, err := got[0].Usage(ctx); !errors.Is(err, torus.ErrClosed) {
		t.Fatalf("cached client after Close: %v", err)
	}
	if pool.Close() != nil {
		t.Fatal("second Close")
	}
}

// TestPoolSetLocal: a local peer is returned without resolving or dialing;
// removing it goes back to the network; Close ends it too.
func TestPoolSetLocal(t *testing.T) {
	ctx := context.Background()
	resolved := 0
	p := NewPool(func(ctx context.Context, id string) (string, error) {
		resolved++
		return "", fmt.Errorf("%w: no such peer", torus.ErrUnavailable)
	}, ClientConfig{}, testutil.Logger(t))
	local := NewLocal(newFakeStore(1<<20), testutil.Logger(t))
	p.SetLocal("me", local)
	got, err := p.Peer(ctx, "me")
	if err != nil || got != torus.PeerService(local) {
		t.Fatalf("Peer(me) = %v, %v; want the local service", got, err)
	}
	if resolved != 0 {
		t.Fatalf("resolved %d times for a local peer", resolved)
	}
	p.SetLocal("me", nil)
	if _, err := p.Peer(ctx, "me"); !errors.Is(err, torus.ErrUnavailable) || resolved != 1 {
		t.Fatalf("after removal: %v (resolved %d), want a resolve and ErrUnavailable", err, resolved)
	}
	p.SetLocal("me", local)
	p.Close()
	if _, err := p.Peer(ctx, "me"); err == nil {
		t.Fatal("Peer after Close succeeded")
	}
}
