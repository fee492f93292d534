package server

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/etcdtest"
	"github.com/torus-storage/torus/internal/testutil"
	etcdmeta "github.com/torus-storage/torus/metadata/etcd"
	"github.com/torus-storage/torus/storage"
)

// ringRecorder records every ring version this process stored.
type ringRecorder struct {
	torus.Metadata
	mu    sync.Mutex
	rings []torus.RingSpec
}

func (m *ringRecorder) SetRing(ctx context.Context, spec torus.RingSpec) error {
	err := m.Metadata.SetRing(ctx, spec)
	m.record(spec, err)
	return err
}

func (m *ringRecorder) JoinRing(ctx context.Context, spec torus.RingSpec, joined []string) error {
	err := m.Metadata.JoinRing(ctx, spec, joined)
	m.record(spec, err)
	return err
}

func (m *ringRecorder) record(spec torus.RingSpec, err error) {
	if err == nil {
		m.mu.Lock()
		m.rings = append(m.rings, spec)
		m.mu.Unlock()
	}
}

func (m *ringRecorder) take() []torus.RingSpec {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := m.rings
	m.rings = nil
	return out
}

func initEtcdMeta(t *testing.T) torus.Metadata {
	m, err := etcdmeta.New(context.Background(), etcdmeta.Config{Endpoints: etcdtest.Start(t), Logger: testutil.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return initCluster(t, m)
}

// TestAutoJoinBatches: daemons starting together with --auto-join share
// one ring version (one each before: N versions, each reaching every
// daemon's watch and placement), each is added exactly once, and the
// ring's rules hold: an operator's member keeps its weight and zone, a
// removed peer that is alive and asks to auto-join stays removed, a
// registered peer that is not alive (died after registering) and a live
// peer without --auto-join (left to `torusctl peer add`) are not added.
// With the in-memory metadata and with etcd.
func TestAutoJoinBatches(t *testing.T) {
	for _, tc := range []struct {
		name string
		meta func(t *testing.T) torus.Metadata
	}{{"memory", initMeta}, {"etcd", initEtcdMeta}} {
		t.Run(tc.name, func(t *testing.T) { testAutoJoinBatches(t, tc.meta(t)) })
	}
}

func testAutoJoinBatches(t *testing.T, store torus.Metadata) {
	ctx := context.Background()
	meta := &ringRecorder{Metadata: store}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	alive := func(id string) {
		t.Helper()
		s, err := meta.NewSession(ctx, 10*time.Second)
		must(err)
		t.Cleanup(func() { s.Close(context.Background()) })
		must(meta.Heartbeat(ctx, s, id, torus.Beat{}))
	}
	setRing := func(members ...torus.RingMember) {
		t.Helper()
		r, err := meta.Ring(ctx)
		must(err)
		r.Version++
		r.Members = members
		must(meta.SetRing(ctx, r))
	}
	// The operator's doing before the daemons start.
	op := torus.RingMember{ID: "op0", Zone: "zop", Weight: 7}
	must(meta.PutPeer(ctx, torus.PeerInfo{ID: "gone", Address: "127.0.0.1:1", Capacity: 1 << 30, AutoJoin: true}))
	alive("gone")
	setRing(op, torus.RingMember{ID: "gone", Weight: 1 << 30})
	setRing(op) // removed while alive and asking to auto-join
	must(meta.PutPeer(ctx, torus.PeerInfo{ID: "dead", Address: "127.0.0.1:2", Capacity: 1 << 30, AutoJoin: true}))
	must(meta.PutPeer(ctx, torus.PeerInfo{ID: "manual", Address: "127.0.0.1:3", Capacity: 1 << 30}))
	alive("manual")
	before, err := meta.Ring(ctx)
	must(err)
	meta.take()

	const n = 8
	var registered sync.WaitGroup
	registered.Add(n)
	servers := make([]*Server, n)
	for i := range servers {
		s, err := New(Config{DataDir: t.TempDir(), Capacity: 64 << 20, Store: storage.NewMemory(64 << 20), AutoJoin: true,
			HeartbeatTTL: 2 * time.Second, ScrubInterval: -1}, meta, testutil.Logger(t))
		must(err)
		// Every daemon registered and alive before any joins: they
		// started together.
		s.beforeJoin = func() { registered.Done(); registered.Wait() }
		servers[i] = s
		t.Cleanup(func() { s.Close() })
	}
	errs := make(chan error, n)
	for _, s := range servers {
		go func() { errs <- s.Start(ctx) }()
	}
	for range n {
		must(<-errs)
	}

	rings := meta.take()
	if len(rings) != 1 {
		t.Errorf("%d daemons starting together wrote %d ring versions, want 1", n, len(rings))
	}
	// Every version adds members and drops none; each daemon is added
	// once; the others never.
	added := map[string]int{}
	prev := before
	for _, r := range rings {
		for _, m := range prev.Members {
			if !slices.ContainsFunc(r.Members, func(x torus.RingMember) bool { return x == m }) {
				t.Errorf("ring version %d dropped or changed member %+v", r.Version, m)
			}
		}
		for _, m := range r.Members {
			if !slices.ContainsFunc(prev.Members, func(x torus.RingMember) bool { return x.ID == m.ID }) {
				added[m.ID]++
			}
		}
		prev = r
	}
	final, err := meta.Ring(ctx)
	must(err)
	if len(final.Members) != n+1 {
		t.Errorf("ring has %d members, want %d daemons and the operator's: %+v", len(final.Members), n, final.Members)
	}
	for _, s := range servers {
		if added[s.ID()] != 1 || !s.inRing.Load() {
			t.Errorf("daemon %s added %d times (in ring: %v), want once", s.ID(), added[s.ID()], s.inRing.Load())
		}
	}
	for _, id := range []string{"gone", "dead", "manual"} {
		if added[id] != 0 {
			t.Errorf("peer %s was added to the ring", id)
		}
	}
	want := map[string]torus.PeerState{"gone": torus.PeerRemoved, "dead": torus.PeerNew, "manual": torus.PeerNew}
	peers, err := meta.Peers(ctx)
	must(err)
	for _, p := range peers {
		if w, ok := want[p.ID]; ok && p.State != w {
			t.Errorf("peer %s is %s, want %s", p.ID, p.State, w)
		}
	}
	if i := slices.IndexFunc(final.Members, func(m torus.RingMember) bool { return m.ID == op.ID }); i < 0 || final.Members[i] != op {
		t.Errorf("the operator's member became %+v, want %+v", final.Members, op)
	}
}

// TestRemovedDaemonDoesNotRejoin: a daemon the operator dropped from the
// ring starts again with --auto-join and stays out of it (removed).
func TestRemovedDaemonDoesNotRejoin(t *testing.T) {
	ctx := context.Background()
	meta := initMeta(t)
	dir := t.TempDir()
	newServer := func() *Server {
		s, err := New(Config{DataDir: dir, Capacity: 64 << 20, Store: storage.NewMemory(64 << 20), AutoJoin: true,
			HeartbeatTTL: time.Second, ScrubInterval: -1}, meta, testutil.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	a := newServer()
	r, err := meta.Ring(ctx)
	if err != nil || len(r.Members) != 1 {
		t.Fatalf("ring after the first start: %+v, %v", r, err)
	}
	r.Version++
	r.Members = nil
	if err := meta.SetRing(ctx, r); err != nil {
		t.Fatal(err)
	}
	a.Close()
	b := newServer()
	if b.inRing.Load() {
		t.Error("the removed daemon thinks it is in the ring")
	}
	r2, err := meta.Ring(ctx)
	if err != nil || r2.Version != r.Version || len(r2.Members) != 0 {
		t.Errorf("ring after the removed daemon restarted: %+v, %v; want version %d, no members", r2, err, r.Version)
	}
}
