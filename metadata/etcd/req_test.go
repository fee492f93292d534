package etcd

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/torus-storage/torus"
)

// TestReqRetriesElection: a request etcd refuses while it has no leader
// (or lost it mid-read) is tried again and succeeds when the election is
// over; one that keeps failing ends as ErrUnavailable after
// electionRetries more tries; a permission refusal is not retried and is
// ErrPermission.
func TestReqRetriesElection(t *testing.T) {
	s := &Store{cfg: Config{Endpoints: []string{"x"}, RequestTimeout: time.Second, Prefix: DefaultPrefix}, log: slog.New(slog.DiscardHandler)}
	ctx := context.Background()
	calls := 0
	err := s.req(ctx, "get", func(context.Context) error {
		calls++
		switch calls {
		case 1:
			return rpctypes.ErrNoLeader
		case 2:
			return rpctypes.ErrLeaderChanged
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("after an election: %v after %d calls, want nil after 3", err, calls)
	}
	calls = 0
	err = s.req(ctx, "get", func(context.Context) error { calls++; return rpctypes.ErrNoLeader })
	if !errors.Is(err, torus.ErrUnavailable) || calls != electionRetries+1 {
		t.Fatalf("no leader ever: %v after %d calls, want ErrUnavailable after %d", err, calls, electionRetries+1)
	}
	calls = 0
	err = s.req(ctx, "get", func(context.Context) error { calls++; return rpctypes.ErrPermissionDenied })
	if !errors.Is(err, torus.ErrPermission) || errors.Is(err, torus.ErrUnavailable) || calls != 1 {
		t.Fatalf("permission denied: %v after %d calls, want ErrPermission after 1", err, calls)
	}
}
