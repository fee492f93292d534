package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/etcdtest"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/metadata/etcd"
	"github.com/torus-storage/torus/metadata/metadatatest"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func newStore(t *testing.T, eps []string, prefix string) *etcd.Store {
	t.Helper()
	s, err := etcd.New(context.Background(), etcd.Config{Endpoints: eps, Prefix: prefix, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatalf("etcd.New: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	eps := etcdtest.Start(t)
	var n atomic.Int64
	metadatatest.Run(t, func(t *testing.T) torus.Metadata {
		// Each subtest gets its own key space on the shared server.
		return newStore(t, eps, fmt.Sprintf("/test%d/", n.Add(1)))
	})
}

// closedPort returns an address where nothing listens.
func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr
}

func TestUnreachable(t *testing.T) {
	ep := closedPort(t)
	start := time.Now()
	_, err := etcd.New(context.Background(), etcd.Config{Endpoints: []string{ep}})
	took := time.Since(start)
	if !errors.Is(err, torus.ErrUnavailable) {
		t.Fatalf("New against a closed port: %v, want ErrUnavailable", err)
	}
	if !strings.Contains(err.Error(), ep) {
		t.Fatalf("error %q does not name the endpoint %s", err, ep)
	}
	if took > 5*time.Second {
		t.Fatalf("New took %v to fail, want ≤ 5s", took)
	}
	t.Logf("failed after %v: %v", took, err)
}

func TestEtcdGoesDown(t *testing.T) {
	e := etcdtest.StartEmbedded(t)
	s, err := etcd.New(context.Background(), etcd.Config{
		Endpoints: e.Endpoints(), RequestTimeout: 2 * time.Second, Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.InitCluster(ctx, torus.ClusterConfig{}); err != nil {
		t.Fatal(err)
	}
	ses, err := s.NewSession(ctx, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer ses.Close(ctx)
	e.Close()
	start := time.Now()
	_, err = s.Volumes(ctx)
	if !errors.Is(err, torus.ErrUnavailable) || !strings.Contains(err.Error(), e.Endpoints()[0]) {
		t.Fatalf("Volumes with etcd down: %v, want ErrUnavailable naming %s", err, e.Endpoints()[0])
	}
	if took := time.Since(start); took > 4*time.Second {
		t.Fatalf("Volumes took %v to fail with RequestTimeout 2s", took)
	}
	// No keepalive can succeed: the session must end within about its TTL.
	select {
	case <-ses.Done():
		t.Logf("session lost %v after etcd stopped", time.Since(start))
	case <-time.After(8 * time.Second):
		t.Fatal("session still alive 8s after etcd stopped (TTL 2s)")
	}
}

func TestLeaseExpiryMarksPeerDown(t *testing.T) {
	eps := etcdtest.Start(t)
	s := newStore(t, eps, "/expiry/")
	ctx := context.Background()
	if err := s.InitCluster(ctx, torus.ClusterConfig{}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutPeer(ctx, torus.PeerInfo{ID: "p"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetRing(ctx, torus.RingSpec{Version: 2, Replication: 2, VirtualNodes: 8,
		Members: []torus.RingMember{{ID: "p", Weight: 1}}}); err != nil {
		t.Fatal(err)
	}
	// A daemon heartbeats, then dies: its keepalives stop (ctx ends)
	// without a revoke. The liveness key must vanish with the lease TTL.
	dctx, die := context.WithCancel(ctx)
	ses, err := s.NewSession(dctx, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Heartbeat(ctx, ses, "p", torus.Beat{Used: 1}); err != nil {
		t.Fatal(err)
	}
	state := func() torus.PeerState {
		ps, err := s.Peers(ctx)
		if err != nil || len(ps) != 1 {
			t.Fatalf("Peers: %v %v", ps, err)
		}
		return ps[0].State
	}
	if st := state(); st != torus.PeerUp {
		t.Fatalf("state %q, want up", st)
	}
	die()
	start := time.Now()
	for state() != torus.PeerDown {
		if time.Since(start) > 6*time.Second {
			t.Fatal("peer not down 6s after its daemon stopped (TTL 2s)")
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("peer down %v after its daemon stopped (TTL 2s)", time.Since(start))
	ps, _ := s.Peers(ctx)
	if ps[0].Used != 1 || ps[0].LastSeen.IsZero() {
		t.Fatalf("last known usage lost: %+v", ps[0])
	}
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []etcd.Config{
		{},
		{Endpoints: []string{""}},
		{Endpoints: []string{"http://x"}, CertFile: "c"},
		{Endpoints: []string{"http://x"}, DialTimeout: -1},
	} {
		if err := c.Validate(); !errors.Is(err, torus.ErrInvalid) {
			t.Errorf("Validate(%+v) = %v, want ErrInvalid", c, err)
		}
	}
	_, err := etcd.New(context.Background(), etcd.Config{Endpoints: []string{"http://127.0.0.1:1"}, CAFile: "/nonexistent"})
	if !errors.Is(err, torus.ErrInvalid) {
		t.Fatalf("New with a missing CA file: %v, want ErrInvalid", err)
	}
}

// TestStaleStatusDeleted checks that PutVolumeStatuses deletes status keys
// of volumes that no longer exist (left by an older version or a crash
// between a delete and a publish) and that the status watch filter keeps
// status refreshes from waking watchers.
func TestStaleStatusDeleted(t *testing.T) {
	eps := etcdtest.Start(t)
	s := newStore(t, eps, "/stale/")
	ctx := context.Background()
	if err := s.InitCluster(ctx, torus.ClusterConfig{}); err != nil {
		t.Fatal(err)
	}
	v, err := s.CreateVolume(ctx, torus.VolumeInfo{Name: "v", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if _, err := cli.Put(ctx, "/stale/status/gone", `{"volume":"gone","health":"healthy"}`); err != nil {
		t.Fatal(err)
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := s.Watch(wctx)
	// Let the watch start, then consume any initial signal.
	time.Sleep(300 * time.Millisecond)
	select {
	case <-w:
	default:
	}
	st := torus.VolumeStatus{Volume: "v", ID: v.ID, Health: torus.VolumeHealthy, Used: 1}
	if err := s.PutVolumeStatuses(ctx, []torus.VolumeStatus{st}); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "/stale/status/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Key) != "/stale/status/v" {
		t.Fatalf("status keys after publish: %v, want only /stale/status/v", resp.Kvs)
	}
	select {
	case <-w:
		t.Fatal("a status refresh woke a watcher")
	case <-time.After(500 * time.Millisecond):
	}
}

// TestRingOfManyMembers: a ring grows one join at a time past etcd's
// default limit of 128 operations per transaction (a delete of every
// member's removed mark made each join past 127 fail), and a member
// removed and added back loses its mark.
func TestRingOfManyMembers(t *testing.T) {
	eps := etcdtest.Start(t)
	s := newStore(t, eps, "/bigring/")
	ctx := context.Background()
	if err := s.InitCluster(ctx, torus.ClusterConfig{}); err != nil {
		t.Fatal(err)
	}
	spec, err := s.Ring(ctx)
	if err != nil {
		t.Fatal(err)
	}
	spec.Format = torus.RingFormatCurrent
	for i := range 200 {
		id := fmt.Sprintf("p%03d", i)
		if err := s.PutPeer(ctx, torus.PeerInfo{ID: id, Address: "127.0.0.1:1", Capacity: 1 << 30}); err != nil {
			t.Fatal(err)
		}
		spec.Version++
		spec.Members = append(spec.Members, torus.NewRingMember(id, torus.Location{}, 1<<30))
		if err := s.SetRing(ctx, spec); err != nil {
			t.Fatalf("join of member %d: %v", i+1, err)
		}
	}
	state := func(id string) torus.PeerState {
		ps, err := s.Peers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if p.ID == id {
				return p.State
			}
		}
		t.Fatalf("peer %s not listed", id)
		return ""
	}
	gone := spec.Members[0]
	spec.Version++
	spec.Members = spec.Members[1:]
	if err := s.SetRing(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if st := state(gone.ID); st != torus.PeerRemoved {
		t.Fatalf("removed member %s: state %s, want %s", gone.ID, st, torus.PeerRemoved)
	}
	spec.Version++
	spec.Members = append(spec.Members, gone)
	if err := s.SetRing(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if st := state(gone.ID); st == torus.PeerRemoved {
		t.Fatalf("member %s added back is still marked removed", gone.ID)
	}
}

// TestRepeatHeartbeatWritesOnlyUnwatchedKeys: a repeat heartbeat (same
// lease, same findings) writes no key of the change watch's range
// [prefix, prefix+"~") — etcd then sends no event to any daemon's watch —
// and Peers takes the later of a beat in ~beats/ and one in seen/ (written
// by daemons before 2026-12-03).
func TestRepeatHeartbeatWritesOnlyUnwatchedKeys(t *testing.T) {
	eps := etcdtest.Start(t)
	const prefix = "/hb/"
	s := newStore(t, eps, prefix)
	ctx := context.Background()
	if err := s.InitCluster(ctx, torus.ClusterConfig{}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutPeer(ctx, torus.PeerInfo{ID: "p"}); err != nil {
		t.Fatal(err)
	}
	ses, err := s.NewSession(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer ses.Close(ctx)
	if err := s.Heartbeat(ctx, ses, "p", torus.Beat{Used: 1}); err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := cli.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	<-wch // created
	for used := int64(2); used < 6; used++ {
		if err := s.Heartbeat(ctx, ses, "p", torus.Beat{Used: used}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutPeer(ctx, torus.PeerInfo{ID: "marker"}); err != nil {
		t.Fatal(err)
	}
	var beats int
	for done := false; !done; {
		select {
		case resp := <-wch:
			for _, ev := range resp.Events {
				key := strings.TrimPrefix(string(ev.Kv.Key), prefix)
				switch {
				case key == "peers/marker":
					done = true
				case strings.HasPrefix(key, "~"):
					beats++
				default:
					t.Errorf("a repeat heartbeat wrote %s, inside the change watch's range", ev.Kv.Key)
				}
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no event for the marker")
		}
	}
	if beats != 4 {
		t.Errorf("%d beat records written by 4 heartbeats, want 4", beats)
	}
	ps, err := s.Peers(ctx)
	if err != nil || len(ps) != 2 || ps[1].ID != "p" || ps[1].Used != 5 || !ps[1].Alive {
		t.Fatalf("Peers = %+v, %v; want p alive with used 5", ps, err)
	}
	// An older daemon's beat in seen/, later than the last ~beats/ one.
	later := time.Now().Add(time.Minute).UTC().Format(time.RFC3339Nano)
	if _, err := cli.Put(ctx, prefix+"seen/p", `{"used":77,"pending":0,"last_seen":"`+later+`"}`); err != nil {
		t.Fatal(err)
	}
	if ps, err = s.Peers(ctx); err != nil || ps[1].Used != 77 {
		t.Fatalf("Peers = %+v, %v; want the later beat (seen/, used 77)", ps, err)
	}
}
