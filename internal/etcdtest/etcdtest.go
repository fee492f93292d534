// Package etcdtest starts an embedded etcd server for tests.
package etcdtest

import (
	"context"
	"fmt"
	"net"
	"testing"

	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/metadata/etcd"
)

// Start runs an embedded etcd on free 127.0.0.1 ports with its data in
// t.TempDir() (fsync off), stops it in t.Cleanup, and returns its client
// endpoints. Starting takes about a second.
func Start(t testing.TB) []string {
	t.Helper()
	return StartEmbedded(t).Endpoints()
}

// StartEmbedded is Start returning the server, for tests that stop it
// early (Close is idempotent) to simulate etcd going down.
func StartEmbedded(t testing.TB) *etcd.Embedded {
	t.Helper()
	var lastErr error
	for range 5 {
		ports, err := freePorts(2)
		if err != nil {
			t.Fatalf("etcdtest: %v", err)
		}
		e, err := etcd.StartEmbedded(context.Background(), etcd.EmbedConfig{
			Dir:           t.TempDir(),
			ClientURL:     fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
			PeerURL:       fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
			Logger:        testutil.Logger(t),
			UnsafeNoFsync: true,
		})
		if err != nil {
			lastErr = err // most likely a port taken since we probed it
			continue
		}
		t.Cleanup(e.Close)
		return e
	}
	t.Fatalf("etcdtest: start embedded etcd: %v", lastErr)
	return nil
}

// freePorts returns n distinct ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
