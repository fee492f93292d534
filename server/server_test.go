package server

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/metadata"
)

func startTestServer(t *testing.T, meta torus.Metadata) *Server {
	t.Helper()
	s, err := New(Config{DataDir: t.TempDir(), Capacity: 64 << 20, HTTPListen: "127.0.0.1:0", AutoJoin: true,
		HeartbeatTTL: time.Second}, meta, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func initMeta(t *testing.T) torus.Metadata {
	return initCluster(t, metadata.NewMemory())
}

// initCluster initialises m as a cluster of replication 2.
func initCluster(t *testing.T, m torus.Metadata) torus.Metadata {
	t.Helper()
	cfg := torus.ClusterConfig{Replication: 2}
	cfg.EnsureDefaults()
	if err := m.InitCluster(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestConfigValidate(t *testing.T) {
	for _, c := range []Config{
		{},
		{DataDir: "d"},
		{DataDir: "d", Capacity: 1, PeerListen: "nonsense"},
		{DataDir: "d", Capacity: 1, PeerListen: "127.0.0.1:0", PeerAdvertise: "0.0.0.0:1"},
		{DataDir: "d", Capacity: 1, PeerListen: "127.0.0.1:0", HTTPListen: "x"},
		{DataDir: "d", Capacity: 1, PeerListen: "127.0.0.1:0", RebalanceRate: -1},
	} {
		c.EnsureDefaults()
		if err := c.Validate(); !errors.Is(err, torus.ErrInvalid) {
			t.Errorf("Validate(%+v) = %v, want ErrInvalid", c, err)
		}
	}
}

func TestStartNeedsInit(t *testing.T) {
	s, err := New(Config{DataDir: t.TempDir(), Capacity: 1 << 20}, metadata.NewMemory(), testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	err = s.Start(context.Background())
	if !errors.Is(err, torus.ErrNotInitialized) || !strings.Contains(err.Error(), "torusctl init") {
		t.Fatalf("Start on an uninitialized cluster: %v", err)
	}
}

func TestJoinHeartbeatHTTPAndStop(t *testing.T) {
	meta := initMeta(t)
	a := startTestServer(t, meta)
	b := startTestServer(t, meta)
	ctx := context.Background()
	spec, err := meta.Ring(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(spec.Members) != 2 {
		t.Fatalf("ring members = %+v, want both daemons", spec.Members)
	}
	if spec.Format != torus.RingFormatCurrent {
		t.Errorf("the first daemon to join gave the ring format %d, want %d", spec.Format, torus.RingFormatCurrent)
	}
	peers, err := meta.Peers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range peers {
		if p.State != torus.PeerUp {
			t.Errorf("peer %s state %s, want up", p.ID, p.State)
		}
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := http.Get("http://" + a.HTTPAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: %d %s", path, resp.StatusCode, body)
		}
		if path == "/metrics" && !strings.Contains(string(body), "torus_store_capacity_bytes") {
			t.Errorf("/metrics lacks torus_store_capacity_bytes")
		}
		if path == "/metrics" && !strings.Contains(string(body), "torus_placement_degraded") {
			t.Errorf("/metrics lacks torus_placement_degraded")
		}
	}
	// A clean stop revokes the liveness lease: the peer is down at once.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	peers, _ = meta.Peers(ctx)
	for _, p := range peers {
		want := torus.PeerUp
		if p.ID == b.ID() {
			want = torus.PeerDown
		}
		if p.State != want {
			t.Errorf("after stopping b: peer %s state %s, want %s", p.ID, p.State, want)
		}
	}
}

func TestFencingFollowsEtcd(t *testing.T) {
	meta := initMeta(t)
	s := startTestServer(t, meta)
	ctx := context.Background()
	v, err := meta.CreateVolume(ctx, torus.VolumeInfo{Name: "v", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := meta.NewSession(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	e1, err := meta.Lock(ctx, sess, "v", torus.WriterInfo{Owner: "w1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := meta.Unlock(ctx, "v", e1); err != nil {
		t.Fatal(err)
	}
	e2, err := meta.Lock(ctx, sess, "v", torus.WriterInfo{Owner: "w2"})
	if err != nil {
		t.Fatal(err)
	}
	seg := torus.SegmentID{Volume: v.ID, Epoch: e1, Seq: 1}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.local.Append(ctx, e1, seg, 0, []byte("late"))
		if errors.Is(err, torus.ErrFenced) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("append at stale epoch %d (current %d) still accepted: %v", e1, e2, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestFullnessWarnings(t *testing.T) {
	s := &Server{log: testutil.Logger(t)}
	for _, c := range []struct {
		used int64
		want int32
	}{{10, 0}, {79, 0}, {80, 80}, {85, 80}, {95, 90}, {50, 0}} {
		s.checkFullness(torus.Usage{Used: c.used, Capacity: 100})
		if got := s.fullLevel.Load(); got != c.want {
			t.Errorf("at %d%%: level %d, want %d", c.used, got, c.want)
		}
	}
}

// TestHeartbeatRecoversLostLease: a daemon whose liveness lease expires
// behind its back gets a new one at the next heartbeat and shows up again.
func TestHeartbeatRecoversLostLease(t *testing.T) {
	meta := initMeta(t).(*metadata.Memory)
	s := startTestServer(t, meta)
	ctx := context.Background()
	s.sessMu.Lock()
	old := s.session
	s.sessMu.Unlock()
	meta.ExpireSession(old.ID())
	deadline := time.Now().Add(10 * time.Second)
	for {
		peers, err := meta.Peers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		s.sessMu.Lock()
		cur := s.session
		s.sessMu.Unlock()
		if len(peers) == 1 && peers[0].State == torus.PeerUp && cur != nil && cur.ID() != old.ID() && s.isReady() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("daemon did not come back up after its lease expired: %+v", peers)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
