package server

import (
	"context"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
)

// countingMeta counts the metadata requests a daemon makes, by method.
// Methods it does not override are passed through uncounted; it overrides
// every read and write the daemon's loops make.
type countingMeta struct {
	torus.Metadata
	mu sync.Mutex
	n  map[string]int
}

func (m *countingMeta) count(method string) {
	m.mu.Lock()
	m.n[method]++
	m.mu.Unlock()
}

func (m *countingMeta) take() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := maps.Clone(m.n)
	clear(m.n)
	return out
}

func (m *countingMeta) ClusterConfig(ctx context.Context) (torus.ClusterConfig, error) {
	m.count("ClusterConfig")
	return m.Metadata.ClusterConfig(ctx)
}

func (m *countingMeta) Heartbeat(ctx context.Context, s torus.Session, id string, b torus.Beat) error {
	m.count("Heartbeat")
	return m.Metadata.Heartbeat(ctx, s, id, b)
}

func (m *countingMeta) Peers(ctx context.Context) ([]torus.PeerInfo, error) {
	m.count("Peers")
	return m.Metadata.Peers(ctx)
}

func (m *countingMeta) Ring(ctx context.Context) (torus.RingSpec, error) {
	m.count("Ring")
	return m.Metadata.Ring(ctx)
}

func (m *countingMeta) Revision(ctx context.Context) (int64, error) {
	m.count("Revision")
	return m.Metadata.Revision(ctx)
}

func (m *countingMeta) VolumesChangedSince(ctx context.Context, rev int64) (bool, error) {
	m.count("VolumesChangedSince")
	return m.Metadata.VolumesChangedSince(ctx, rev)
}

func (m *countingMeta) Volume(ctx context.Context, name string) (torus.VolumeInfo, error) {
	m.count("Volume")
	return m.Metadata.Volume(ctx, name)
}

func (m *countingMeta) Volumes(ctx context.Context) ([]torus.VolumeInfo, error) {
	m.count("Volumes")
	return m.Metadata.Volumes(ctx)
}

func (m *countingMeta) Writer(ctx context.Context, volume string) (torus.WriterInfo, bool, error) {
	m.count("Writer")
	return m.Metadata.Writer(ctx, volume)
}

func (m *countingMeta) Epochs(ctx context.Context) (map[uint64]uint64, error) {
	m.count("Epochs")
	return m.Metadata.Epochs(ctx)
}

func (m *countingMeta) Head(ctx context.Context, volume string) (torus.Head, error) {
	m.count("Head")
	return m.Metadata.Head(ctx, volume)
}

func (m *countingMeta) Snapshots(ctx context.Context, volume string) ([]torus.Snapshot, error) {
	m.count("Snapshots")
	return m.Metadata.Snapshots(ctx, volume)
}

func (m *countingMeta) PutVolumeStatuses(ctx context.Context, st []torus.VolumeStatus) error {
	m.count("PutVolumeStatuses")
	return m.Metadata.PutVolumeStatuses(ctx, st)
}

func (m *countingMeta) VolumeStatuses(ctx context.Context) (map[string]torus.VolumeStatus, error) {
	m.count("VolumeStatuses")
	return m.Metadata.VolumeStatuses(ctx)
}

// TestIdleCostFlat: once started, a daemon of an idle cluster (no change
// but heartbeats) makes a number of metadata requests that does not grow
// with the number of volumes: its heartbeats and the view's audit (at most
// three reads per ViewAudit), no full read of the view, no healing pass
// (which would publish statuses and list every peer), and GC, with
// nothing to collect, reads nothing.
func TestIdleCostFlat(t *testing.T) {
	for _, nvol := range []int{5, 200} {
		meta := &countingMeta{Metadata: initMeta(t), n: map[string]int{}}
		ctx := context.Background()
		for i := range nvol {
			if _, err := meta.CreateVolume(ctx, torus.VolumeInfo{Name: "v" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Size: 1 << 20}); err != nil {
				t.Fatal(err)
			}
		}
		const audit = 50 * time.Millisecond
		s, err := New(Config{DataDir: t.TempDir(), Capacity: 64 << 20, AutoJoin: true, HeartbeatTTL: time.Second,
			MaintenanceInterval: 10 * time.Millisecond, GCInterval: 20 * time.Millisecond, ViewAudit: audit, ScrubInterval: -1},
			meta, testutil.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
		// Start-up: the view's full read, the first passes.
		waitView(t, s, func(st clusterState) bool { return len(st.volumes) == nvol && len(st.ring.Members) == 1 })
		for s.lastView.Load() == nil {
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(100 * time.Millisecond)
		meta.take()
		const idle = time.Second
		time.Sleep(idle)
		got := meta.take()
		s.Close()

		audits := int(idle/audit) + 2
		perVolume := got["Volume"] + got["Head"] + got["Writer"] + got["Snapshots"]
		t.Logf("%d volumes: %d requests per %v idle: %v", nvol, total(got)-got["Heartbeat"], idle, got)
		if perVolume > 3*audits {
			t.Errorf("%d volumes: %d per-volume reads in %v idle, want at most %d (the audit's): %v", nvol, perVolume, idle, 3*audits, got)
		}
		for _, m := range []string{"Volumes", "Epochs", "Revision", "PutVolumeStatuses", "VolumeStatuses", "VolumesChangedSince", "ClusterConfig"} {
			if got[m] > 0 {
				t.Errorf("%d volumes: %d %s requests in %v idle, want none (a full read or a healing pass): %v", nvol, got[m], m, idle, got)
			}
		}
		if n := got["Ring"] + got["Peers"]; n > 2*audits {
			t.Errorf("%d volumes: %d ring and peer reads in %v idle, want at most %d: %v", nvol, n, idle, 2*audits, got)
		}
	}
}

func total(m map[string]int) int {
	n := 0
	for _, c := range m {
		n += c
	}
	return n
}

// deafMeta is a store whose watch delivers nothing: every change is lost.
type deafMeta struct{ torus.Metadata }

func (deafMeta) WatchChanges(ctx context.Context, from int64) <-chan torus.Change {
	return make(chan torus.Change) // never closed: the view does not resync
}

// TestViewAuditCorrectsMissedChange: changes the watch never delivers (a
// new head, a writer, a deleted volume, a new ring) reach the view within
// one round of the audit, and move its generation so maintenance plans
// again.
func TestViewAuditCorrectsMissedChange(t *testing.T) {
	mem := initMeta(t)
	ctx := context.Background()
	for _, name := range []string{"a", "b"} {
		if _, err := mem.CreateVolume(ctx, torus.VolumeInfo{Name: name, Size: 1 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	v := newView(deafMeta{mem}, testutil.Logger(t), 10*time.Millisecond, func(map[uint64]uint64) {}, func(torus.RingSpec) {})
	vctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); v.run(vctx) }()
	defer func() { cancel(); <-done }()
	s := &Server{view: v}
	st := waitView(t, s, func(st clusterState) bool { return len(st.volumes) == 2 })

	sess, err := mem.NewSession(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close(ctx)
	e, err := mem.Lock(ctx, sess, "b", torus.WriterInfo{Owner: "w"})
	if err != nil {
		t.Fatal(err)
	}
	if err := mem.CommitHead(ctx, "b", e, torus.Head{Epoch: e, NextSeq: 7}); err != nil {
		t.Fatal(err)
	}
	if err := mem.DeleteVolume(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	ring := st.ring
	ring.Version++
	if err := mem.SetRing(ctx, ring); err != nil {
		t.Fatal(err)
	}
	after := waitView(t, s, func(x clusterState) bool {
		_, a := x.volumes["a"]
		b := x.volumes["b"]
		return !a && b.writer && b.head.NextSeq == 7 && x.ring.Version == st.ring.Version+1
	})
	if after.gen == st.gen {
		t.Error("the audit's corrections did not move the view generation")
	}
}

// TestHealListsNoPeerWithoutSegments: while no volume has a live segment,
// healing passes (here: after a ring change) ask no peer for its listing,
// so daemons of a cluster of empty volumes do not connect to one another.
func TestHealListsNoPeerWithoutSegments(t *testing.T) {
	meta := initMeta(t)
	ctx := context.Background()
	if _, err := meta.CreateVolume(ctx, torus.VolumeInfo{Name: "empty", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var dialed atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dialed.Add(1)
			c.Close()
		}
	}()
	s := startTestServer(t, meta)
	if err := meta.PutPeer(ctx, torus.PeerInfo{ID: "other", Address: ln.Addr().String(), Capacity: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	sess, err := meta.NewSession(ctx, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close(ctx)
	if err := meta.Heartbeat(ctx, sess, "other", torus.Beat{}); err != nil {
		t.Fatal(err)
	}
	ring, err := meta.Ring(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ring.Version++
	ring.Members = append(ring.Members, torus.NewRingMember("other", torus.Location{}, 1<<30))
	if err := meta.SetRing(ctx, ring); err != nil {
		t.Fatal(err)
	}
	st := waitView(t, s, func(st clusterState) bool {
		return len(st.ring.Members) == 2 && slices.ContainsFunc(st.peers, func(p torus.PeerInfo) bool { return p.ID == "other" && p.State == torus.PeerUp })
	})
	if _, err := s.heal(ctx, s.cachedView(ctx, st, make(liveCache)), st); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * s.cfg.MaintenanceInterval / 2) // the loop's own pass for the ring change
	if n := dialed.Load(); n > 0 {
		t.Errorf("healing with no live segment connected to a peer %d times", n)
	}
}
