package peer

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/storage"
)

// TestPoolObservePeer: a Pool reports every request to
// ClientConfig.ObservePeer with the peer ID it went to, its op and its
// error: a Stat of a missing segment (ErrNotExist from the daemon), an
// append that succeeds, and a call to a peer whose port is closed
// (ErrUnavailable).
func TestPoolObservePeer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(NewLocal(storage.NewMemory(1<<20), nil), ServerConfig{}, nil)
	go srv.Serve(ln)
	defer srv.Close()
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()

	type obs struct {
		id  string
		op  string
		err error
	}
	var mu sync.Mutex
	var seen []obs
	addrs := map[string]string{"up": ln.Addr().String(), "gone": deadAddr}
	pool := NewPool(func(_ context.Context, id string) (string, error) { return addrs[id], nil },
		ClientConfig{DialTimeout: time.Second, ObservePeer: func(id, op string, took time.Duration, err error) {
			if took < 0 {
				t.Errorf("negative duration %v", took)
			}
			mu.Lock()
			seen = append(seen, obs{id, op, err})
			mu.Unlock()
		}}, nil)
	defer pool.Close()
	ctx := context.Background()
	seg := torus.SegmentID{Volume: 1, Epoch: 1, Seq: 1}
	up, err := pool.Peer(ctx, "up")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := up.Stat(ctx, seg); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("Stat of a missing segment: %v", err)
	}
	if err := up.Append(ctx, 1, seg, 0, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if gone, err := pool.Peer(ctx, "gone"); err == nil {
		if _, err := gone.Stat(ctx, seg); !errors.Is(err, torus.ErrUnavailable) {
			t.Fatalf("Stat on a closed port: %v", err)
		}
	} else if !errors.Is(err, torus.ErrUnavailable) {
		t.Fatalf("dialing a closed port: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	var kinds []string
	for _, o := range seen {
		kinds = append(kinds, o.id+"/"+o.op+"/"+torus.ErrorKind(o.err))
	}
	// The closed port shows as a failed dial or a failed stat, by peer.
	if len(seen) != 3 || kinds[0] != "up/stat/not-exist" || kinds[1] != "up/append/" || seen[1].err != nil ||
		(kinds[2] != "gone/dial/unavailable" && kinds[2] != "gone/stat/unavailable") {
		t.Fatalf("observed %v, want up/stat/not-exist, a successful up/append, then gone/dial or gone/stat unavailable", kinds)
	}
	t.Logf("observed %v", kinds)
}
