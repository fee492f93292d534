// Package metadatatest is the conformance suite of torus.Metadata. Every
// implementation runs it (metadata.Memory in package metadata, the etcd
// store in metadata/etcd against an embedded etcd), which is what lets the
// other packages' unit tests use the in-memory fake with confidence.
//
// Usage, in an implementation's test:
//
//	func TestConformance(t *testing.T) {
//		metadatatest.Run(t, func(t *testing.T) torus.Metadata {
//			m := newStore(t) // empty; closed by t.Cleanup
//			return m
//		})
//	}
//
// The factory must return an empty store each time it is called (a fresh
// instance or a fresh key prefix). The store should implement
// SessionExpirer; the tests that need a lease to expire are skipped
// otherwise.
package metadatatest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/metadata"
)

// SessionExpirer is implemented by stores that can end a session as if its
// lease had expired (metadata.Memory, the etcd store).
type SessionExpirer interface {
	ExpireSession(id int64)
}

// Compactor is implemented by stores whose change history can be
// compacted on demand (metadata.Memory, the etcd store): the test of a
// too-old WatchChanges revision is skipped otherwise.
type Compactor interface {
	Compact(rev int64)
}

// signalWait bounds how long the suite waits for asynchronous effects:
// watch signals, session expiry.
const signalWait = 10 * time.Second

// Run runs the conformance suite. newStore returns an empty store.
func Run(t *testing.T, newStore func(t *testing.T) torus.Metadata) {
	tests := []struct {
		name string
		fn   func(t *testing.T, m torus.Metadata)
	}{
		{"Cluster", testCluster},
		{"Ring", testRing},
		{"JoinRing", testJoinRing},
		{"JoinRace", testJoinRace},
		{"Peers", testPeers},
		{"SessionClose", testSessionClose},
		{"SessionContext", testSessionContext},
		{"SessionExpiry", testSessionExpiry},
		{"Volumes", testVolumes},
		{"VolumeValidation", testVolumeValidation},
		{"UpdateVolume", testUpdateVolume},
		{"Labels", testLabels},
		{"LabelValidation", testLabelValidation},
		{"LabelsRace", testLabelsRace},
		{"Lock", testLock},
		{"LockRace", testLockRace},
		{"CreateVolumeRace", testCreateVolumeRace},
		{"CommitHead", testCommitHead},
		{"ForceUnlock", testForceUnlock},
		{"DeleteVolume", testDeleteVolume},
		{"Attachments", testAttachments},
		{"AttachRace", testAttachRace},
		{"Events", testEvents},
		{"LockIdentity", testLockIdentity},
		{"EventBounds", testEventBounds},
		{"Snapshots", testSnapshots},
		{"CloneVolume", testCloneVolume},
		{"RestoreSnapshot", testRestoreSnapshot},
		{"VolumeReplication", testVolumeReplication},
		{"SnapshotRequests", testSnapshotRequests},
		{"DefaultExport", testDefaultExport},
		{"VolumeStatuses", testVolumeStatuses},
		{"VolumeStatusesMany", testVolumeStatusesMany},
		{"Watch", testWatch},
		{"WatchChanges", testWatchChanges},
		{"WatchChangesResync", testWatchChangesResync},
		{"VolumesChangedSince", testVolumesChangedSince},
		{"Close", testClose},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newStore(t))
		})
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func must(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func wantErr(t *testing.T, err, target error, what string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got error %v, want one wrapping %v", what, err, target)
	}
}

func initCluster(t *testing.T, m torus.Metadata) {
	t.Helper()
	must(t, m.InitCluster(ctxT(t), torus.ClusterConfig{}), "InitCluster")
}

func newSession(t *testing.T, m torus.Metadata, ttl time.Duration) torus.Session {
	t.Helper()
	s, err := m.NewSession(context.Background(), ttl)
	must(t, err, "NewSession")
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

func createVolume(t *testing.T, m torus.Metadata, name string, size int64) torus.VolumeInfo {
	t.Helper()
	v, err := m.CreateVolume(ctxT(t), torus.VolumeInfo{Name: name, Size: size})
	must(t, err, "CreateVolume "+name)
	return v
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(signalWait):
		t.Fatalf("%s: not closed within %v", what, signalWait)
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func testCluster(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	_, err := m.ClusterConfig(ctx)
	wantErr(t, err, torus.ErrNotInitialized, "ClusterConfig before init")
	_, err = m.Ring(ctx)
	wantErr(t, err, torus.ErrNotInitialized, "Ring before init")
	wantErr(t, m.SetRing(ctx, torus.RingSpec{Version: 1, Replication: 1, VirtualNodes: 1}),
		torus.ErrNotInitialized, "SetRing before init")
	wantErr(t, m.InitCluster(ctx, torus.ClusterConfig{Replication: 99}), torus.ErrInvalid, "InitCluster replication 99")
	wantErr(t, m.InitCluster(ctx, torus.ClusterConfig{SegmentSize: 4097}), torus.ErrInvalid, "InitCluster unaligned segment size")
	_, err = m.ClusterConfig(ctx)
	wantErr(t, err, torus.ErrNotInitialized, "ClusterConfig after failed init")

	must(t, m.InitCluster(ctx, torus.ClusterConfig{Replication: 3}), "InitCluster")
	cfg, err := m.ClusterConfig(ctx)
	must(t, err, "ClusterConfig")
	want := torus.ClusterConfig{Replication: 3}
	want.EnsureDefaults()
	if cfg != want {
		t.Fatalf("ClusterConfig = %+v, want %+v", cfg, want)
	}
	wantErr(t, m.InitCluster(ctx, torus.ClusterConfig{}), torus.ErrExist, "second InitCluster")
	cfg, err = m.ClusterConfig(ctx)
	must(t, err, "ClusterConfig")
	if cfg != want {
		t.Fatalf("second InitCluster changed the config to %+v", cfg)
	}
	r, err := m.Ring(ctx)
	must(t, err, "Ring")
	if r.Version != 1 || r.Replication != 3 || r.VirtualNodes != torus.DefaultVirtualNodes || len(r.Members) != 0 {
		t.Fatalf("initial ring = %+v, want version 1, replication 3, default virtual nodes, no members", r)
	}
}

func testRing(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	r, err := m.Ring(ctx)
	must(t, err, "Ring")
	next := torus.RingSpec{Version: r.Version + 1, Replication: 2, VirtualNodes: 64,
		Members: []torus.RingMember{{ID: "a", Weight: 10}, {ID: "b", Zone: "z2", Weight: 20}}}
	must(t, m.SetRing(ctx, next), "SetRing version+1")
	got, err := m.Ring(ctx)
	must(t, err, "Ring")
	if !reflect.DeepEqual(got, next) {
		t.Fatalf("Ring = %+v, want %+v", got, next)
	}
	wantErr(t, m.SetRing(ctx, next), torus.ErrConflict, "SetRing same version again")
	skip := next
	skip.Version += 2
	wantErr(t, m.SetRing(ctx, skip), torus.ErrConflict, "SetRing version+2")
	stale := next
	stale.Version = 1
	wantErr(t, m.SetRing(ctx, stale), torus.ErrConflict, "SetRing older version")

	dup := next
	dup.Version++
	dup.Members = []torus.RingMember{{ID: "a", Weight: 1}, {ID: "a", Weight: 1}}
	wantErr(t, m.SetRing(ctx, dup), torus.ErrInvalid, "SetRing duplicate member")
	bad := next
	bad.Version++
	bad.Replication = 0
	wantErr(t, m.SetRing(ctx, bad), torus.ErrInvalid, "SetRing replication 0")
	got, err = m.Ring(ctx)
	must(t, err, "Ring")
	if got.Version != next.Version {
		t.Fatalf("rejected SetRing changed the version to %d", got.Version)
	}

	// Concurrent CAS: exactly one of many writers of the same version wins.
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, conflicts := 0, 0
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			spec := next
			spec.Version++
			spec.Members = []torus.RingMember{{ID: fmt.Sprintf("p%d", i), Weight: 1}}
			err := m.SetRing(ctx, spec)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, torus.ErrConflict):
				conflicts++
			default:
				t.Errorf("concurrent SetRing: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || conflicts != 7 {
		t.Fatalf("concurrent SetRing: %d wins, %d conflicts; want 1 and 7", wins, conflicts)
	}
}

// testJoinRing: JoinRing stores the next version as SetRing does, only if
// every joining peer still has its record; its arguments are checked; a
// peer's AutoJoin flag is kept in its record.
func testJoinRing(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	for _, id := range []string{"a", "b", "c"} {
		must(t, m.PutPeer(ctx, torus.PeerInfo{ID: id, Address: "10.0.0.1:4000", Capacity: 1 << 30, AutoJoin: id != "c"}), "PutPeer")
	}
	if !peerByID(t, m, "a").AutoJoin || peerByID(t, m, "c").AutoJoin {
		t.Fatalf("Peers lost or invented the AutoJoin flag: a %+v, c %+v", peerByID(t, m, "a"), peerByID(t, m, "c"))
	}
	r, err := m.Ring(ctx)
	must(t, err, "Ring")
	next := r
	next.Version++
	next.Members = []torus.RingMember{{ID: "a", Weight: 1}, {ID: "b", Weight: 1}}

	wantErr(t, m.JoinRing(ctx, next, nil), torus.ErrInvalid, "JoinRing nobody joining")
	wantErr(t, m.JoinRing(ctx, next, []string{"a", "c"}), torus.ErrInvalid, "JoinRing of a peer the ring lacks")
	wantErr(t, m.JoinRing(ctx, next, []string{"a", "a"}), torus.ErrInvalid, "JoinRing of a peer twice")
	many := next
	var ids []string
	for i := range torus.MaxJoinBatch + 1 {
		ids = append(ids, fmt.Sprintf("m%d", i))
		many.Members = append(many.Members, torus.RingMember{ID: ids[i], Weight: 1})
	}
	wantErr(t, m.JoinRing(ctx, many, ids), torus.ErrInvalid, "JoinRing of more than MaxJoinBatch peers")
	skip := next
	skip.Version++
	wantErr(t, m.JoinRing(ctx, skip, []string{"a", "b"}), torus.ErrConflict, "JoinRing version+2")

	must(t, m.JoinRing(ctx, next, []string{"a", "b"}), "JoinRing")
	got, err := m.Ring(ctx)
	must(t, err, "Ring")
	if !reflect.DeepEqual(got, next) {
		t.Fatalf("Ring = %+v, want %+v", got, next)
	}
	wantErr(t, m.JoinRing(ctx, next, []string{"a", "b"}), torus.ErrConflict, "JoinRing same version again")

	// A peer forgotten (DeletePeer) after it was read is not added.
	must(t, m.PutPeer(ctx, torus.PeerInfo{ID: "d", Address: "10.0.0.4:4000", Capacity: 1 << 30, AutoJoin: true}), "PutPeer d")
	must(t, m.DeletePeer(ctx, "d"), "DeletePeer d")
	withD := got
	withD.Version++
	withD.Members = append(slices.Clone(got.Members), torus.RingMember{ID: "c", Weight: 1}, torus.RingMember{ID: "d", Weight: 1})
	wantErr(t, m.JoinRing(ctx, withD, []string{"c", "d"}), torus.ErrConflict, "JoinRing of a forgotten peer")
	after, err := m.Ring(ctx)
	must(t, err, "Ring")
	if after.Version != got.Version {
		t.Fatalf("a refused JoinRing changed the ring to version %d", after.Version)
	}
	if st := peerByID(t, m, "a").State; st != torus.PeerDown {
		t.Fatalf("a joined member without liveness is %s, want down", st)
	}
}

// testJoinRace: joiners running metadata.AutoJoin's loop together, all
// registered and alive first, write one ring version between them, each
// joins once, and a registered peer the operator forgets meanwhile ends
// either forgotten and out of the ring or a member whose record remains
// (DeletePeer refused): never a member without a record.
func testJoinRace(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	const n = 8
	ids := []string{"forget"}
	for i := range n {
		ids = append(ids, fmt.Sprintf("j%d", i))
	}
	for _, id := range ids {
		must(t, m.PutPeer(ctx, torus.PeerInfo{ID: id, Address: "10.0.0.1:4000", Capacity: 1 << 30, AutoJoin: true}), "PutPeer")
		must(t, m.Heartbeat(ctx, newSession(t, m, 10*time.Second), id, torus.Beat{}), "Heartbeat")
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	writes := 0
	errs := make(chan error, n+1)
	for _, id := range ids[1:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 64 {
				r, err := m.Ring(ctx)
				if err != nil {
					errs <- err
					return
				}
				ps, err := m.Peers(ctx)
				if err != nil {
					errs <- err
					return
				}
				next, joined, err := metadata.AutoJoin(r, ps, id)
				if err != nil || joined == nil {
					errs <- err
					return
				}
				err = m.JoinRing(ctx, next, joined)
				if err == nil {
					mu.Lock()
					writes++
					mu.Unlock()
					errs <- nil
					return
				}
				if !errors.Is(err, torus.ErrConflict) {
					errs <- err
					return
				}
			}
			errs <- fmt.Errorf("%s: still conflicting after 64 attempts", id)
		}()
	}
	forgetErr := m.DeletePeer(ctx, "forget")
	wg.Wait()
	for range n {
		must(t, <-errs, "joiner")
	}
	r, err := m.Ring(ctx)
	must(t, err, "Ring")
	members := map[string]int{}
	for _, mb := range r.Members {
		members[mb.ID]++
	}
	for _, id := range ids[1:] {
		if members[id] != 1 {
			t.Errorf("joiner %s is %d times in the ring", id, members[id])
		}
	}
	if writes != 1 {
		// Every successful write adds every joiner: all registered first.
		t.Errorf("%d joiners wrote %d ring versions, want 1", n, writes)
	}
	ps, err := m.Peers(ctx)
	must(t, err, "Peers")
	recorded := slices.ContainsFunc(ps, func(p torus.PeerInfo) bool { return p.ID == "forget" })
	switch {
	case members["forget"] == 1 && (!recorded || !errors.Is(forgetErr, torus.ErrInvalid)):
		t.Errorf("the forgotten peer is a member (record kept: %v), DeletePeer: %v", recorded, forgetErr)
	case members["forget"] == 0 && (recorded || forgetErr != nil):
		t.Errorf("the forgotten peer is out of the ring but its record is kept (%v), DeletePeer: %v", recorded, forgetErr)
	}
}

func peerByID(t *testing.T, m torus.Metadata, id string) torus.PeerInfo {
	t.Helper()
	ps, err := m.Peers(ctxT(t))
	must(t, err, "Peers")
	for _, p := range ps {
		if p.ID == id {
			return p
		}
	}
	t.Fatalf("peer %q not listed in %+v", id, ps)
	return torus.PeerInfo{}
}

func setMembers(t *testing.T, m torus.Metadata, ids ...string) {
	t.Helper()
	ctx := ctxT(t)
	r, err := m.Ring(ctx)
	must(t, err, "Ring")
	r.Version++
	r.Members = nil
	for _, id := range ids {
		r.Members = append(r.Members, torus.RingMember{ID: id, Weight: 1})
	}
	must(t, m.SetRing(ctx, r), "SetRing")
}

func testPeers(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	ps, err := m.Peers(ctx)
	must(t, err, "Peers")
	if len(ps) != 0 {
		t.Fatalf("Peers on an empty cluster = %+v", ps)
	}
	wantErr(t, m.PutPeer(ctx, torus.PeerInfo{ID: ""}), torus.ErrInvalid, "PutPeer empty id")
	wantErr(t, m.PutPeer(ctx, torus.PeerInfo{ID: "a/b"}), torus.ErrInvalid, "PutPeer id with slash")
	must(t, m.PutPeer(ctx, torus.PeerInfo{ID: "p2", Address: "10.0.0.2:4000", Capacity: 2 << 30}), "PutPeer p2")
	must(t, m.PutPeer(ctx, torus.PeerInfo{ID: "p1", Address: "10.0.0.1:4000", Zone: "z1", Capacity: 1 << 30,
		State: torus.PeerUp, Used: 77}), "PutPeer p1")
	ps, err = m.Peers(ctx)
	must(t, err, "Peers")
	if len(ps) != 2 || ps[0].ID != "p1" || ps[1].ID != "p2" {
		t.Fatalf("Peers = %+v, want p1, p2 in order", ps)
	}
	p1 := ps[0]
	if p1.Address != "10.0.0.1:4000" || p1.Zone != "z1" || p1.Capacity != 1<<30 {
		t.Fatalf("p1 = %+v, static fields not stored", p1)
	}
	if p1.State != torus.PeerNew || p1.Used != 0 {
		t.Fatalf("p1 = %+v: want state new, used 0 (State and Used passed to PutPeer are ignored)", p1)
	}

	setMembers(t, m, "p1", "p2")
	if st := peerByID(t, m, "p1").State; st != torus.PeerDown {
		t.Fatalf("ring member without heartbeat: state %q, want down", st)
	}
	s := newSession(t, m, 5*time.Second)
	wantErr(t, m.Heartbeat(ctx, s, "nope", torus.Beat{Used: 1, Pending: 2}), torus.ErrNotExist, "Heartbeat unknown peer")
	before := time.Now().Add(-time.Second)
	must(t, m.Heartbeat(ctx, s, "p1", torus.Beat{Used: 123, Pending: 45}), "Heartbeat")
	p1 = peerByID(t, m, "p1")
	if p1.State != torus.PeerUp || p1.Used != 123 || p1.Pending != 45 || p1.LastSeen.Before(before) {
		t.Fatalf("after heartbeat p1 = %+v, want up, used 123, pending 45, recent last seen", p1)
	}
	// Scrub findings travel with the beat: sorted, without repeats,
	// bounded; the next beat replaces them.
	many := make([]uint64, torus.MaxBeatBlocks+10)
	for i := range many {
		many[i] = uint64(len(many) - i)
	}
	must(t, m.Heartbeat(ctx, s, "p1", torus.Beat{Used: 123, Pending: 45,
		Unrepairable: map[uint64][]uint64{7: {9, 3, 9}, 8: many, 9: nil}}), "Heartbeat with findings")
	p1 = peerByID(t, m, "p1")
	if got := p1.Unrepairable[7]; !slices.Equal(got, []uint64{3, 9}) {
		t.Fatalf("unrepairable blocks of volume 7 = %v, want [3 9]", got)
	}
	if got := p1.Unrepairable[8]; len(got) != torus.MaxBeatBlocks || got[0] != 1 {
		t.Fatalf("unrepairable blocks of volume 8: %d from %v, want %d from 1", len(got), got[:1], torus.MaxBeatBlocks)
	}
	if _, ok := p1.Unrepairable[9]; ok || len(p1.Unrepairable) != 2 {
		t.Fatalf("unrepairable = %v, want volumes 7 and 8 only", p1.Unrepairable)
	}
	must(t, m.Heartbeat(ctx, s, "p1", torus.Beat{Used: 123, Pending: 45}), "Heartbeat without findings")
	if p1 = peerByID(t, m, "p1"); len(p1.Unrepairable) != 0 {
		t.Fatalf("findings kept after a beat without them: %v", p1.Unrepairable)
	}
	// PutPeer again (a restart with a new address) keeps liveness.
	must(t, m.PutPeer(ctx, torus.PeerInfo{ID: "p1", Address: "10.0.0.9:4000", Capacity: 1 << 30}), "PutPeer update")
	p1 = peerByID(t, m, "p1")
	if p1.Address != "10.0.0.9:4000" || p1.State != torus.PeerUp {
		t.Fatalf("after PutPeer update p1 = %+v", p1)
	}

	must(t, m.SetDraining(ctx, "p1", true), "SetDraining")
	if st := peerByID(t, m, "p1").State; st != torus.PeerDraining {
		t.Fatalf("draining member: state %q", st)
	}
	must(t, m.SetDraining(ctx, "p1", false), "SetDraining false")
	if st := peerByID(t, m, "p1").State; st != torus.PeerUp {
		t.Fatalf("undrained member: state %q, want up", st)
	}
	wantErr(t, m.SetDraining(ctx, "nope", true), torus.ErrNotExist, "SetDraining unknown peer")

	wantErr(t, m.DeletePeer(ctx, "p2"), torus.ErrInvalid, "DeletePeer of a ring member")
	setMembers(t, m, "p1")
	if st := peerByID(t, m, "p2").State; st != torus.PeerRemoved {
		t.Fatalf("peer dropped from the ring: state %q, want removed", st)
	}
	must(t, m.DeletePeer(ctx, "p2"), "DeletePeer")
	wantErr(t, m.DeletePeer(ctx, "p2"), torus.ErrNotExist, "DeletePeer twice")
	ps, err = m.Peers(ctx)
	must(t, err, "Peers")
	if len(ps) != 1 || ps[0].ID != "p1" {
		t.Fatalf("Peers after delete = %+v", ps)
	}
	// Re-adding a removed peer makes it a member again.
	must(t, m.PutPeer(ctx, torus.PeerInfo{ID: "p2", Address: "x:1"}), "PutPeer p2 again")
	setMembers(t, m, "p1")
	setMembers(t, m, "p1", "p2")
	if st := peerByID(t, m, "p2").State; st != torus.PeerDown {
		t.Fatalf("re-added member: state %q, want down", st)
	}
}

func testSessionClose(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	_, err := m.NewSession(ctx, 0)
	wantErr(t, err, torus.ErrInvalid, "NewSession ttl 0")
	createVolume(t, m, "v", 1<<20)
	must(t, m.PutPeer(ctx, torus.PeerInfo{ID: "p"}), "PutPeer")
	setMembers(t, m, "p")
	s, err := m.NewSession(ctx, 5*time.Second)
	must(t, err, "NewSession")
	s2 := newSession(t, m, 5*time.Second)
	if s.ID() == s2.ID() {
		t.Fatalf("two sessions share ID %d", s.ID())
	}
	if isClosed(s.Done()) {
		t.Fatal("new session is done")
	}
	must(t, m.Heartbeat(ctx, s, "p", torus.Beat{}), "Heartbeat")
	_, err = m.Lock(ctx, s, "v", torus.WriterInfo{Owner: "w1"})
	must(t, err, "Lock")
	must(t, s.Close(ctx), "Session.Close")
	waitClosed(t, s.Done(), "Done after Close")
	must(t, s.Close(ctx), "second Session.Close")
	if _, ok, err := m.Writer(ctx, "v"); err != nil || ok {
		t.Fatalf("Writer after session Close: ok=%v err=%v, want no writer", ok, err)
	}
	if st := peerByID(t, m, "p").State; st != torus.PeerDown {
		t.Fatalf("peer state after its session closed: %q, want down", st)
	}
	if isClosed(s2.Done()) {
		t.Fatal("closing one session ended another")
	}
}

func testSessionContext(t *testing.T, m torus.Metadata) {
	ctx, cancel := context.WithCancel(context.Background())
	s, err := m.NewSession(ctx, 5*time.Second)
	must(t, err, "NewSession")
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	cancel()
	waitClosed(t, s.Done(), "Done after the session's context ended")
}

func testSessionExpiry(t *testing.T, m torus.Metadata) {
	exp, ok := m.(SessionExpirer)
	if !ok {
		t.Skipf("%T does not implement SessionExpirer", m)
	}
	ctx := ctxT(t)
	initCluster(t, m)
	createVolume(t, m, "v", 1<<20)
	must(t, m.PutPeer(ctx, torus.PeerInfo{ID: "p"}), "PutPeer")
	setMembers(t, m, "p")
	s := newSession(t, m, 10*time.Second)
	must(t, m.Heartbeat(ctx, s, "p", torus.Beat{Used: 1}), "Heartbeat")
	e1, err := m.Lock(ctx, s, "v", torus.WriterInfo{Owner: "w1"})
	must(t, err, "Lock")
	must(t, m.CommitHead(ctx, "v", e1, torus.Head{Epoch: e1, NextSeq: 1}), "CommitHead")

	exp.ExpireSession(s.ID())
	waitClosed(t, s.Done(), "Done after expiry")
	if _, ok, err := m.Writer(ctx, "v"); err != nil || ok {
		t.Fatalf("Writer after expiry: ok=%v err=%v, want no writer", ok, err)
	}
	if st := peerByID(t, m, "p").State; st != torus.PeerDown {
		t.Fatalf("peer state after expiry: %q, want down", st)
	}
	wantErr(t, m.CommitHead(ctx, "v", e1, torus.Head{Epoch: e1, NextSeq: 2}), torus.ErrFenced, "CommitHead after expiry")
	if err := m.Heartbeat(ctx, s, "p", torus.Beat{Used: 1}); err == nil {
		t.Fatal("Heartbeat with an expired session succeeded")
	}
	if _, err := m.Lock(ctx, s, "v", torus.WriterInfo{Owner: "w1"}); err == nil {
		t.Fatal("Lock with an expired session succeeded")
	}
	s2 := newSession(t, m, 10*time.Second)
	e2, err := m.Lock(ctx, s2, "v", torus.WriterInfo{Owner: "w2"})
	must(t, err, "Lock after expiry")
	if e2 <= e1 {
		t.Fatalf("epoch after takeover %d, want > %d", e2, e1)
	}
}

func testVolumes(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	_, err := m.CreateVolume(ctx, torus.VolumeInfo{Name: "early", Size: 4096})
	wantErr(t, err, torus.ErrNotInitialized, "CreateVolume before init")
	initCluster(t, m)
	vs, err := m.Volumes(ctx)
	must(t, err, "Volumes")
	if len(vs) != 0 {
		t.Fatalf("Volumes on an empty cluster = %+v", vs)
	}
	before := time.Now().Add(-time.Second)
	b, err := m.CreateVolume(ctx, torus.VolumeInfo{Name: "b", Size: 1 << 30, MinReplicas: 1, ID: 999})
	must(t, err, "CreateVolume b")
	a := createVolume(t, m, "a", 4096)
	if b.ID == 0 || a.ID == 0 || a.ID == b.ID {
		t.Fatalf("volume IDs %d, %d: want distinct and non-zero", b.ID, a.ID)
	}
	if b.ID == 999 {
		t.Fatal("CreateVolume kept the caller's ID")
	}
	if b.Created.Before(before) || b.MinReplicas != 1 || b.Size != 1<<30 || b.Name != "b" {
		t.Fatalf("CreateVolume returned %+v", b)
	}
	_, err = m.CreateVolume(ctx, torus.VolumeInfo{Name: "a", Size: 8192})
	wantErr(t, err, torus.ErrExist, "CreateVolume duplicate")

	got, err := m.Volume(ctx, "b")
	must(t, err, "Volume")
	if got.ID != b.ID || got.Size != b.Size || got.MinReplicas != 1 || !got.Created.Equal(b.Created) {
		t.Fatalf("Volume(b) = %+v, want %+v", got, b)
	}
	_, err = m.Volume(ctx, "nope")
	wantErr(t, err, torus.ErrNotExist, "Volume missing")
	vs, err = m.Volumes(ctx)
	must(t, err, "Volumes")
	if len(vs) != 2 || vs[0].Name != "a" || vs[1].Name != "b" {
		t.Fatalf("Volumes = %+v, want a, b sorted", vs)
	}
	h, err := m.Head(ctx, "a")
	must(t, err, "Head")
	if h.Epoch != 0 || h.Checkpoint != nil || len(h.Sealed) != 0 || h.Open != nil || h.NextSeq != 0 {
		t.Fatalf("head of a new volume = %+v, want empty", h)
	}
	_, err = m.Head(ctx, "nope")
	wantErr(t, err, torus.ErrNotExist, "Head missing")
	eps, err := m.Epochs(ctx)
	must(t, err, "Epochs")
	if len(eps) != 2 || eps[a.ID] != 0 || eps[b.ID] != 0 {
		t.Fatalf("Epochs = %v, want both volumes at 0", eps)
	}
	if _, ok, err := m.Writer(ctx, "a"); err != nil || ok {
		t.Fatalf("Writer of a new volume: ok=%v err=%v", ok, err)
	}
	_, _, err = m.Writer(ctx, "nope")
	wantErr(t, err, torus.ErrNotExist, "Writer missing")
}

func testVolumeValidation(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	for _, name := range []string{"", "A", "-a", ".a", "a/b", "a b", "ä", strings.Repeat("a", 64)} {
		_, err := m.CreateVolume(ctx, torus.VolumeInfo{Name: name, Size: 4096})
		wantErr(t, err, torus.ErrInvalid, fmt.Sprintf("CreateVolume name %q", name))
	}
	for _, size := range []int64{0, -4096, 1, 4095, 4097, 1<<30 + 512} {
		_, err := m.CreateVolume(ctx, torus.VolumeInfo{Name: "v", Size: size})
		wantErr(t, err, torus.ErrInvalid, fmt.Sprintf("CreateVolume size %d", size))
	}
	_, err := m.CreateVolume(ctx, torus.VolumeInfo{Name: "v", Size: 4096, MinReplicas: -1})
	wantErr(t, err, torus.ErrInvalid, "CreateVolume min replicas -1")
	vs, err := m.Volumes(ctx)
	must(t, err, "Volumes")
	if len(vs) != 0 {
		t.Fatalf("rejected creates left volumes: %+v", vs)
	}
	createVolume(t, m, strings.Repeat("a", 63), 4096)
	createVolume(t, m, "0.9_x-y", 4096)
}

func testUpdateVolume(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	v := createVolume(t, m, "v", 1<<20)
	grow := v
	grow.Size = 2 << 20
	grow.MinReplicas = 2
	grow.ID = 12345
	must(t, m.UpdateVolume(ctx, grow), "UpdateVolume grow")
	got, err := m.Volume(ctx, "v")
	must(t, err, "Volume")
	if got.Size != 2<<20 || got.MinReplicas != 2 || got.ID != v.ID || !got.Created.Equal(v.Created) {
		t.Fatalf("after update Volume = %+v (ID and Created must not change)", got)
	}
	same := got
	must(t, m.UpdateVolume(ctx, same), "UpdateVolume same size")
	for _, size := range []int64{1 << 20, 0, 2<<20 + 1} {
		bad := got
		bad.Size = size
		wantErr(t, m.UpdateVolume(ctx, bad), torus.ErrInvalid, fmt.Sprintf("UpdateVolume size %d", size))
	}
	bad := got
	bad.MinReplicas = -1
	wantErr(t, m.UpdateVolume(ctx, bad), torus.ErrInvalid, "UpdateVolume min replicas -1")
	wantErr(t, m.UpdateVolume(ctx, torus.VolumeInfo{Name: "nope", Size: 4096}), torus.ErrNotExist, "UpdateVolume missing")
	got2, err := m.Volume(ctx, "v")
	must(t, err, "Volume")
	if got2.Size != got.Size || got2.MinReplicas != got.MinReplicas {
		t.Fatalf("rejected updates changed the volume to %+v", got2)
	}
}

// testLabels: labels given at create are stored and listed; SetVolumeLabels
// adds, replaces and removes keys atomically and returns the result;
// UpdateVolume leaves labels alone; returned maps are copies.
func testLabels(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	in := map[string]string{"csi.torus.io/name": "PVC-Upper/Case name", "team": "", "app.kubernetes.io/part-of": "db"}
	v, err := m.CreateVolume(ctx, torus.VolumeInfo{Name: "v", Size: 4096, Labels: in})
	must(t, err, "CreateVolume with labels")
	if !reflect.DeepEqual(v.Labels, in) {
		t.Fatalf("CreateVolume returned labels %v, want %v", v.Labels, in)
	}
	in["team"] = "changed by the caller"
	v.Labels["team"] = "changed by the caller"
	got, err := m.Volume(ctx, "v")
	must(t, err, "Volume")
	if got.Labels["team"] != "" || len(got.Labels) != 3 {
		t.Fatalf("stored labels %v share a map with the caller", got.Labels)
	}
	got.Labels["x"] = "y"
	plain := createVolume(t, m, "w", 4096)
	if plain.Labels != nil {
		t.Fatalf("a volume created without labels has labels %v", plain.Labels)
	}
	vs, err := m.Volumes(ctx)
	must(t, err, "Volumes")
	if len(vs) != 2 || len(vs[0].Labels) != 3 || vs[0].Labels["csi.torus.io/name"] != "PVC-Upper/Case name" || vs[1].Labels != nil {
		t.Fatalf("Volumes = %+v, want v with its 3 labels and w with none", vs)
	}

	res, err := m.SetVolumeLabels(ctx, "v", map[string]string{"team": "storage", "tier": "gold"}, []string{"app.kubernetes.io/part-of", "absent"})
	must(t, err, "SetVolumeLabels")
	want := map[string]string{"csi.torus.io/name": "PVC-Upper/Case name", "team": "storage", "tier": "gold"}
	if !reflect.DeepEqual(res.Labels, want) || res.ID != v.ID || res.Size != 4096 {
		t.Fatalf("SetVolumeLabels returned %+v, want labels %v", res, want)
	}
	got, err = m.Volume(ctx, "v")
	must(t, err, "Volume")
	if !reflect.DeepEqual(got.Labels, want) {
		t.Fatalf("after SetVolumeLabels Volume has labels %v, want %v", got.Labels, want)
	}
	// Set then remove the same key in one call: removed.
	res, err = m.SetVolumeLabels(ctx, "v", map[string]string{"tier": "silver"}, []string{"tier"})
	must(t, err, "SetVolumeLabels set+remove")
	if _, ok := res.Labels["tier"]; ok {
		t.Fatalf("a key both set and removed is still there: %v", res.Labels)
	}

	grow := got
	grow.Size = 8192
	grow.Labels = nil
	must(t, m.UpdateVolume(ctx, grow), "UpdateVolume")
	got, err = m.Volume(ctx, "v")
	must(t, err, "Volume")
	if got.Size != 8192 || len(got.Labels) != 2 || got.Labels["team"] != "storage" {
		t.Fatalf("UpdateVolume changed labels: %+v", got)
	}

	res, err = m.SetVolumeLabels(ctx, "v", nil, []string{"team", "csi.torus.io/name"})
	must(t, err, "SetVolumeLabels remove all")
	if res.Labels != nil {
		t.Fatalf("after removing every label: %v, want nil", res.Labels)
	}
	got, err = m.Volume(ctx, "v")
	must(t, err, "Volume")
	if got.Labels != nil {
		t.Fatalf("after removing every label Volume has %v, want nil", got.Labels)
	}
	_, err = m.SetVolumeLabels(ctx, "nope", map[string]string{"a": "b"}, nil)
	wantErr(t, err, torus.ErrNotExist, "SetVolumeLabels of a missing volume")
}

// testLabelValidation: bad keys, values, counts and sizes are ErrInvalid at
// create and at SetVolumeLabels, and change nothing.
func testLabelValidation(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	many := make(map[string]string)
	for i := range torus.MaxLabels + 1 {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	big := make(map[string]string)
	for i := range torus.MaxLabelsSize/torus.MaxLabelValueLen + 1 {
		big[fmt.Sprintf("k%d", i)] = strings.Repeat("x", torus.MaxLabelValueLen)
	}
	bad := []map[string]string{
		{"": "v"},
		{"-a": "v"},
		{"a-": "v"},
		{"a b": "v"},
		{strings.Repeat("a", 64): "v"},
		{"/a": "v"},
		{"Upper.example/a": "v"},
		{"a/b/c": "v"},
		{"ex_ample.com/a": "v"},
		{strings.Repeat("a", 254) + "/a": "v"},
		{"a": "line\nbreak"},
		{"a": "\xff"},
		{"a": strings.Repeat("x", torus.MaxLabelValueLen+1)},
		many,
		big,
	}
	for i, l := range bad {
		_, err := m.CreateVolume(ctx, torus.VolumeInfo{Name: "v", Size: 4096, Labels: l})
		wantErr(t, err, torus.ErrInvalid, fmt.Sprintf("CreateVolume with bad labels #%d", i))
	}
	if vs, err := m.Volumes(ctx); err != nil || len(vs) != 0 {
		t.Fatalf("rejected creates left volumes: %+v, %v", vs, err)
	}
	good := map[string]string{
		"a": "", "A.b_c-9": "Any text, even / and = and ünïcode", strings.Repeat("a", 63): "x",
		strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "/n": strings.Repeat("x", torus.MaxLabelValueLen),
		"k8s.io/x": "y", "csi.torus.io/parameters": `{"fsType":"ext4"}`,
	}
	_, err := m.CreateVolume(ctx, torus.VolumeInfo{Name: "v", Size: 4096, Labels: good})
	must(t, err, "CreateVolume with good labels")
	for i, l := range bad {
		_, err := m.SetVolumeLabels(ctx, "v", l, nil)
		wantErr(t, err, torus.ErrInvalid, fmt.Sprintf("SetVolumeLabels with bad labels #%d", i))
	}
	// 6 labels stored; adding 59 more exceeds MaxLabels.
	more := make(map[string]string)
	for i := range torus.MaxLabels - len(good) + 1 {
		more[fmt.Sprintf("m%d", i)] = ""
	}
	_, err = m.SetVolumeLabels(ctx, "v", more, nil)
	wantErr(t, err, torus.ErrInvalid, "SetVolumeLabels past MaxLabels")
	got, err := m.Volume(ctx, "v")
	must(t, err, "Volume")
	if !reflect.DeepEqual(got.Labels, good) {
		t.Fatalf("rejected label changes changed the labels to %v", got.Labels)
	}
}

// testLabelsRace: concurrent SetVolumeLabels of distinct keys all land.
func testLabelsRace(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	createVolume(t, m, "v", 4096)
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := m.SetVolumeLabels(ctx, "v", map[string]string{fmt.Sprintf("k%d", i): "v"}, nil)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		must(t, err, "concurrent SetVolumeLabels")
	}
	got, err := m.Volume(ctx, "v")
	must(t, err, "Volume")
	if len(got.Labels) != n {
		t.Fatalf("after %d concurrent label sets: %v", n, got.Labels)
	}
}

func testLock(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	v := createVolume(t, m, "v", 1<<20)
	s1 := newSession(t, m, 10*time.Second)
	s2 := newSession(t, m, 10*time.Second)
	_, err := m.Lock(ctx, s1, "nope", torus.WriterInfo{Owner: "w1"})
	wantErr(t, err, torus.ErrNotExist, "Lock missing volume")
	_, err = m.Lock(ctx, s1, "v", torus.WriterInfo{Owner: ""})
	wantErr(t, err, torus.ErrInvalid, "Lock with empty owner")

	before := time.Now().Add(-time.Second)
	e1, err := m.Lock(ctx, s1, "v", torus.WriterInfo{Owner: "w1"})
	must(t, err, "Lock")
	if e1 != 1 {
		t.Fatalf("first epoch = %d, want 1", e1)
	}
	w, ok, err := m.Writer(ctx, "v")
	must(t, err, "Writer")
	if !ok || w.Owner != "w1" || w.Epoch != e1 || w.Since.Before(before) {
		t.Fatalf("Writer = %+v ok=%v, want w1 at epoch %d", w, ok, e1)
	}
	_, err = m.Lock(ctx, s2, "v", torus.WriterInfo{Owner: "w2"})
	wantErr(t, err, torus.ErrLocked, "Lock by another writer")
	var le *torus.LockedError
	if !errors.As(err, &le) || le.Holder != "w1" || le.Epoch != e1 || le.Volume != "v" || le.InUse {
		t.Fatalf("Lock by another writer: %v, want *LockedError naming w1 at epoch %d", err, e1)
	}
	if !strings.Contains(err.Error(), "w1") {
		t.Fatalf("lock error %q does not name the holder", err)
	}
	_, err = m.Lock(ctx, s1, "v", torus.WriterInfo{Owner: "w1"})
	wantErr(t, err, torus.ErrLocked, "Lock again by the holder")

	must(t, m.Unlock(ctx, "v", e1+7), "Unlock with a wrong epoch")
	if _, ok, _ := m.Writer(ctx, "v"); !ok {
		t.Fatal("Unlock with a wrong epoch removed the writer")
	}
	must(t, m.Unlock(ctx, "v", e1), "Unlock")
	if _, ok, _ := m.Writer(ctx, "v"); ok {
		t.Fatal("writer still present after Unlock")
	}
	must(t, m.Unlock(ctx, "v", e1), "second Unlock")
	must(t, m.Unlock(ctx, "nope", 1), "Unlock of a missing volume")

	e2, err := m.Lock(ctx, s2, "v", torus.WriterInfo{Owner: "w2"})
	must(t, err, "Lock after Unlock")
	if e2 != e1+1 {
		t.Fatalf("epoch after relock = %d, want %d", e2, e1+1)
	}
	eps, err := m.Epochs(ctx)
	must(t, err, "Epochs")
	if eps[v.ID] != e2 {
		t.Fatalf("Epochs[%d] = %d, want %d", v.ID, eps[v.ID], e2)
	}
	// The head is untouched by locking.
	h, err := m.Head(ctx, "v")
	must(t, err, "Head")
	if h.Epoch != 0 {
		t.Fatalf("Lock changed the head: %+v", h)
	}
}

func testLockRace(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	createVolume(t, m, "v", 1<<20)
	const n = 6
	var wg sync.WaitGroup
	var mu sync.Mutex
	var wins []uint64
	locked := 0
	for i := range n {
		s := newSession(t, m, 10*time.Second)
		wg.Add(1)
		go func() {
			defer wg.Done()
			e, err := m.Lock(ctx, s, "v", torus.WriterInfo{Owner: fmt.Sprintf("w%d", i)})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins = append(wins, e)
			case errors.Is(err, torus.ErrLocked):
				locked++
			default:
				t.Errorf("concurrent Lock: %v", err)
			}
		}()
	}
	wg.Wait()
	if len(wins) != 1 || locked != n-1 || wins[0] != 1 {
		t.Fatalf("concurrent Lock: wins %v, %d locked; want one win at epoch 1", wins, locked)
	}
}

func testCreateVolumeRace(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	const n = 8
	var wg sync.WaitGroup
	ids := make([]uint64, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := m.CreateVolume(ctx, torus.VolumeInfo{Name: fmt.Sprintf("v%d", i), Size: 4096})
			if err != nil {
				t.Errorf("CreateVolume: %v", err)
				return
			}
			ids[i] = v.ID
		}()
	}
	wg.Wait()
	seen := map[uint64]bool{}
	for _, id := range ids {
		if id == 0 || seen[id] {
			t.Fatalf("concurrent CreateVolume IDs %v: want distinct, non-zero", ids)
		}
		seen[id] = true
	}
	// Same name concurrently: exactly one wins.
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = m.CreateVolume(ctx, torus.VolumeInfo{Name: "same", Size: 4096})
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		} else if !errors.Is(err, torus.ErrExist) {
			t.Fatalf("concurrent CreateVolume of one name: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("concurrent CreateVolume of one name: %d succeeded, want 1", ok)
	}
}

func sampleHead(epoch uint64) torus.Head {
	return torus.Head{
		Epoch:      epoch,
		Checkpoint: &torus.SegmentRef{ID: torus.SegmentID{Volume: 1, Epoch: epoch, Seq: 3, Kind: torus.KindCheckpoint}, Length: 999},
		Sealed: []torus.SegmentRef{
			{ID: torus.SegmentID{Volume: 1, Epoch: epoch, Seq: 4}, Length: 32 << 20},
			{ID: torus.SegmentID{Volume: 1, Epoch: epoch, Seq: 5}, Length: 12},
		},
		Open:    &torus.SegmentID{Volume: 1, Epoch: epoch, Seq: 6},
		NextSeq: 7,
	}
}

func testCommitHead(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	createVolume(t, m, "v", 1<<20)
	s1 := newSession(t, m, 10*time.Second)
	s2 := newSession(t, m, 10*time.Second)
	wantErr(t, m.CommitHead(ctx, "v", 0, torus.Head{}), torus.ErrFenced, "CommitHead without a lock")
	wantErr(t, m.CommitHead(ctx, "nope", 1, torus.Head{}), torus.ErrNotExist, "CommitHead missing volume")
	e1, err := m.Lock(ctx, s1, "v", torus.WriterInfo{Owner: "w1"})
	must(t, err, "Lock")
	wantErr(t, m.CommitHead(ctx, "v", e1+1, torus.Head{}), torus.ErrFenced, "CommitHead with a future epoch")
	h1 := sampleHead(e1)
	must(t, m.CommitHead(ctx, "v", e1, h1), "CommitHead")
	got, err := m.Head(ctx, "v")
	must(t, err, "Head")
	if !reflect.DeepEqual(got, h1) {
		t.Fatalf("Head = %+v, want %+v", got, h1)
	}
	// The stored head is a copy.
	h1.Sealed[0].Length = 1
	got, _ = m.Head(ctx, "v")
	if got.Sealed[0].Length != 32<<20 {
		t.Fatal("the stored head aliases the caller's slice")
	}

	// Another writer takes over (forced): the old epoch is fenced.
	must(t, m.ForceUnlock(ctx, "v"), "ForceUnlock")
	wantErr(t, m.CommitHead(ctx, "v", e1, sampleHead(e1)), torus.ErrFenced, "CommitHead after ForceUnlock")
	e2, err := m.Lock(ctx, s2, "v", torus.WriterInfo{Owner: "w2"})
	must(t, err, "Lock by w2")
	if e2 <= e1 {
		t.Fatalf("epoch %d after takeover, want > %d", e2, e1)
	}
	wantErr(t, m.CommitHead(ctx, "v", e1, sampleHead(e1)), torus.ErrFenced, "CommitHead by the old writer")
	got, _ = m.Head(ctx, "v")
	if got.Epoch != e1 || got.Sealed[0].Length != 32<<20 {
		t.Fatalf("a fenced CommitHead changed the head: %+v", got)
	}
	h2 := torus.Head{Epoch: e2, Sealed: []torus.SegmentRef{{ID: torus.SegmentID{Volume: 1, Epoch: e2, Seq: 9}, Length: 1}}, NextSeq: 10}
	must(t, m.CommitHead(ctx, "v", e2, h2), "CommitHead by the new writer")
	got, _ = m.Head(ctx, "v")
	if !reflect.DeepEqual(got, h2) {
		t.Fatalf("Head = %+v, want %+v", got, h2)
	}
	must(t, m.Unlock(ctx, "v", e2), "Unlock")
	wantErr(t, m.CommitHead(ctx, "v", e2, h2), torus.ErrFenced, "CommitHead after Unlock")
}

func testForceUnlock(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	createVolume(t, m, "v", 1<<20)
	wantErr(t, m.ForceUnlock(ctx, "nope"), torus.ErrNotExist, "ForceUnlock missing volume")
	must(t, m.ForceUnlock(ctx, "v"), "ForceUnlock without a writer")
	s1 := newSession(t, m, 10*time.Second)
	e1, err := m.Lock(ctx, s1, "v", torus.WriterInfo{Owner: "w1"})
	must(t, err, "Lock")
	must(t, m.ForceUnlock(ctx, "v"), "ForceUnlock")
	if _, ok, _ := m.Writer(ctx, "v"); ok {
		t.Fatal("writer still present after ForceUnlock")
	}
	if isClosed(s1.Done()) {
		t.Fatal("ForceUnlock ended the old writer's session")
	}
	s2 := newSession(t, m, 10*time.Second)
	e2, err := m.Lock(ctx, s2, "v", torus.WriterInfo{Owner: "w2"})
	must(t, err, "Lock after ForceUnlock")
	if e2 != e1+1 {
		t.Fatalf("epoch after ForceUnlock+Lock = %d, want %d", e2, e1+1)
	}
	// The old writer's Unlock must not release the new writer's lock.
	must(t, m.Unlock(ctx, "v", e1), "stale Unlock")
	w, ok, err := m.Writer(ctx, "v")
	must(t, err, "Writer")
	if !ok || w.Owner != "w2" {
		t.Fatalf("stale Unlock released the new writer: %+v ok=%v", w, ok)
	}
}

func testDeleteVolume(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	v := createVolume(t, m, "v", 1<<20)
	createVolume(t, m, "other", 1<<20)
	must(t, m.CreateSnapshot(ctx, 0, torus.Snapshot{Volume: "v", Name: "s1"}), "CreateSnapshot")
	must(t, m.RequestSnapshot(ctx, "v", "r1"), "RequestSnapshot")
	must(t, m.SetDefaultExport(ctx, "v"), "SetDefaultExport")
	s := newSession(t, m, 10*time.Second)
	e, err := m.Lock(ctx, s, "v", torus.WriterInfo{Owner: "torusblk@host pid 7"})
	must(t, err, "Lock")

	err = m.DeleteVolume(ctx, "v")
	wantErr(t, err, torus.ErrInUse, "DeleteVolume of a locked volume")
	var le *torus.LockedError
	if !errors.As(err, &le) || !le.InUse || le.Holder != "torusblk@host pid 7" || le.Epoch != e {
		t.Fatalf("DeleteVolume of a locked volume: %v, want *LockedError{InUse} naming the holder", err)
	}
	if errors.Is(err, torus.ErrLocked) {
		t.Fatal("delete of an in-use volume matched ErrLocked; it should match ErrInUse only")
	}
	if _, err := m.Volume(ctx, "v"); err != nil {
		t.Fatalf("refused delete removed the volume: %v", err)
	}
	must(t, m.Unlock(ctx, "v", e), "Unlock")
	must(t, m.DeleteVolume(ctx, "v"), "DeleteVolume")
	_, err = m.Volume(ctx, "v")
	wantErr(t, err, torus.ErrNotExist, "Volume after delete")
	_, err = m.Head(ctx, "v")
	wantErr(t, err, torus.ErrNotExist, "Head after delete")
	_, err = m.Snapshots(ctx, "v")
	wantErr(t, err, torus.ErrNotExist, "Snapshots after delete")
	wantErr(t, m.DeleteVolume(ctx, "v"), torus.ErrNotExist, "DeleteVolume twice")
	if d, err := m.DefaultExport(ctx); err != nil || d != "" {
		t.Fatalf("default export after deleting its volume = %q, %v; want cleared", d, err)
	}
	eps, err := m.Epochs(ctx)
	must(t, err, "Epochs")
	if _, ok := eps[v.ID]; ok || len(eps) != 1 {
		t.Fatalf("Epochs after delete = %v", eps)
	}
	// Recreating the name gives a new ID, an empty head, no snapshots, epoch 0.
	v2 := createVolume(t, m, "v", 1<<20)
	if v2.ID == v.ID {
		t.Fatalf("recreated volume reused ID %d", v.ID)
	}
	snaps, err := m.Snapshots(ctx, "v")
	must(t, err, "Snapshots")
	reqs, err := m.SnapshotRequests(ctx, "v")
	must(t, err, "SnapshotRequests")
	if len(snaps) != 0 || len(reqs) != 0 {
		t.Fatalf("recreated volume inherited snapshots %v or requests %v", snaps, reqs)
	}
	e2, err := m.Lock(ctx, s, "v", torus.WriterInfo{Owner: "w"})
	must(t, err, "Lock recreated")
	if e2 != 1 {
		t.Fatalf("first epoch of the recreated volume = %d, want 1", e2)
	}
	if _, err := m.Volume(ctx, "other"); err != nil {
		t.Fatalf("deleting v touched other: %v", err)
	}
}

func testSnapshots(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	createVolume(t, m, "v", 1<<20)
	createVolume(t, m, "v2", 1<<20)
	head := sampleHead(3)
	head.Open = nil
	before := time.Now().Add(-time.Second)
	must(t, m.CreateSnapshot(ctx, 0, torus.Snapshot{Volume: "v", Name: "b", Head: head}), "CreateSnapshot b")
	must(t, m.CreateSnapshot(ctx, 0, torus.Snapshot{Volume: "v", Name: "a"}), "CreateSnapshot a")
	wantErr(t, m.CreateSnapshot(ctx, 0, torus.Snapshot{Volume: "v", Name: "a"}), torus.ErrExist, "CreateSnapshot duplicate")
	wantErr(t, m.CreateSnapshot(ctx, 0, torus.Snapshot{Volume: "nope", Name: "a"}), torus.ErrNotExist, "CreateSnapshot missing volume")
	wantErr(t, m.CreateSnapshot(ctx, 0, torus.Snapshot{Volume: "v", Name: "Bad"}), torus.ErrInvalid, "CreateSnapshot bad name")
	wantErr(t, m.CreateSnapshot(ctx, 0, torus.Snapshot{Volume: "v", Name: "o", Head: sampleHead(3)}), torus.ErrInvalid,
		"CreateSnapshot with an open segment")

	s, err := m.Snapshot(ctx, "v", "b")
	must(t, err, "Snapshot")
	if s.Volume != "v" || s.Name != "b" || s.Created.Before(before) || !reflect.DeepEqual(s.Head, head) {
		t.Fatalf("Snapshot = %+v, want head %+v", s, head)
	}
	_, err = m.Snapshot(ctx, "v", "nope")
	wantErr(t, err, torus.ErrNotExist, "Snapshot missing")
	_, err = m.Snapshot(ctx, "nope", "a")
	wantErr(t, err, torus.ErrNotExist, "Snapshot of a missing volume")
	list, err := m.Snapshots(ctx, "v")
	must(t, err, "Snapshots")
	if len(list) != 2 || list[0].Name != "a" || list[1].Name != "b" {
		t.Fatalf("Snapshots = %+v, want a, b", list)
	}
	list, err = m.Snapshots(ctx, "v2")
	must(t, err, "Snapshots v2")
	if len(list) != 0 {
		t.Fatalf("Snapshots of v2 = %+v, want none", list)
	}

	// Fenced creation by a writer.
	ses := newSession(t, m, 10*time.Second)
	e, err := m.Lock(ctx, ses, "v", torus.WriterInfo{Owner: "w"})
	must(t, err, "Lock")
	wantErr(t, m.CreateSnapshot(ctx, e+1, torus.Snapshot{Volume: "v", Name: "c"}), torus.ErrFenced, "CreateSnapshot future epoch")
	must(t, m.CreateSnapshot(ctx, e, torus.Snapshot{Volume: "v", Name: "c"}), "CreateSnapshot at the writer's epoch")
	must(t, m.ForceUnlock(ctx, "v"), "ForceUnlock")
	wantErr(t, m.CreateSnapshot(ctx, e, torus.Snapshot{Volume: "v", Name: "d"}), torus.ErrFenced, "CreateSnapshot by a fenced writer")
	if _, err := m.Snapshot(ctx, "v", "d"); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("fenced CreateSnapshot stored a snapshot: %v", err)
	}

	must(t, m.DeleteSnapshot(ctx, "v", "a"), "DeleteSnapshot")
	wantErr(t, m.DeleteSnapshot(ctx, "v", "a"), torus.ErrNotExist, "DeleteSnapshot twice")
	wantErr(t, m.DeleteSnapshot(ctx, "nope", "a"), torus.ErrNotExist, "DeleteSnapshot missing volume")
	list, err = m.Snapshots(ctx, "v")
	must(t, err, "Snapshots")
	if len(list) != 2 || list[0].Name != "b" || list[1].Name != "c" {
		t.Fatalf("Snapshots after delete = %+v, want b, c", list)
	}
}

func testSnapshotRequests(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	createVolume(t, m, "v", 1<<20)
	wantErr(t, m.RequestSnapshot(ctx, "nope", "s"), torus.ErrNotExist, "RequestSnapshot missing volume")
	wantErr(t, m.RequestSnapshot(ctx, "v", "Bad!"), torus.ErrInvalid, "RequestSnapshot bad name")
	_, _, err := m.SnapshotRequestResult(ctx, "v", "s1")
	wantErr(t, err, torus.ErrNotExist, "SnapshotRequestResult never requested")
	wantErr(t, m.DoneSnapshotRequest(ctx, "v", "s1", ""), torus.ErrNotExist, "DoneSnapshotRequest never requested")

	must(t, m.RequestSnapshot(ctx, "v", "s2"), "RequestSnapshot s2")
	must(t, m.RequestSnapshot(ctx, "v", "s1"), "RequestSnapshot s1")
	wantErr(t, m.RequestSnapshot(ctx, "v", "s1"), torus.ErrExist, "RequestSnapshot pending twice")
	reqs, err := m.SnapshotRequests(ctx, "v")
	must(t, err, "SnapshotRequests")
	if !reflect.DeepEqual(reqs, []string{"s1", "s2"}) {
		t.Fatalf("SnapshotRequests = %v, want [s1 s2]", reqs)
	}
	done, _, err := m.SnapshotRequestResult(ctx, "v", "s1")
	must(t, err, "SnapshotRequestResult")
	if done {
		t.Fatal("pending request reported done")
	}

	// The writer answers: s1 succeeds, s2 fails.
	must(t, m.CreateSnapshot(ctx, 0, torus.Snapshot{Volume: "v", Name: "s1"}), "CreateSnapshot s1")
	must(t, m.DoneSnapshotRequest(ctx, "v", "s1", ""), "DoneSnapshotRequest s1")
	must(t, m.DoneSnapshotRequest(ctx, "v", "s2", "flush failed: peers down"), "DoneSnapshotRequest s2")
	done, failure, err := m.SnapshotRequestResult(ctx, "v", "s1")
	must(t, err, "SnapshotRequestResult s1")
	if !done || failure != "" {
		t.Fatalf("result s1 = %v %q, want done without failure", done, failure)
	}
	done, failure, err = m.SnapshotRequestResult(ctx, "v", "s2")
	must(t, err, "SnapshotRequestResult s2")
	if !done || failure != "flush failed: peers down" {
		t.Fatalf("result s2 = %v %q, want done with the failure text", done, failure)
	}
	reqs, err = m.SnapshotRequests(ctx, "v")
	must(t, err, "SnapshotRequests")
	if len(reqs) != 0 {
		t.Fatalf("requests left after answers: %v", reqs)
	}
	wantErr(t, m.DoneSnapshotRequest(ctx, "v", "s1", ""), torus.ErrNotExist, "DoneSnapshotRequest twice")
	wantErr(t, m.RequestSnapshot(ctx, "v", "s1"), torus.ErrExist, "RequestSnapshot of an existing snapshot")

	// Retrying a failed name starts over.
	must(t, m.RequestSnapshot(ctx, "v", "s2"), "RequestSnapshot s2 again")
	done, _, err = m.SnapshotRequestResult(ctx, "v", "s2")
	must(t, err, "SnapshotRequestResult")
	if done {
		t.Fatal("a new request reported the old result")
	}
}

func testDefaultExport(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	d, err := m.DefaultExport(ctx)
	must(t, err, "DefaultExport")
	if d != "" {
		t.Fatalf("initial default export %q", d)
	}
	wantErr(t, m.SetDefaultExport(ctx, "nope"), torus.ErrNotExist, "SetDefaultExport missing volume")
	createVolume(t, m, "v", 4096)
	must(t, m.SetDefaultExport(ctx, "v"), "SetDefaultExport")
	d, err = m.DefaultExport(ctx)
	must(t, err, "DefaultExport")
	if d != "v" {
		t.Fatalf("default export %q, want v", d)
	}
	must(t, m.SetDefaultExport(ctx, ""), "SetDefaultExport clear")
	d, _ = m.DefaultExport(ctx)
	if d != "" {
		t.Fatalf("default export after clearing %q", d)
	}
}

func sampleStatus(v torus.VolumeInfo, h torus.VolumeHealth, used int64) torus.VolumeStatus {
	return torus.VolumeStatus{
		Volume: v.Name, ID: v.ID, Health: h, Used: used, Stored: 2 * used,
		UnderReplicated: 3, Unavailable: 1, PendingBytes: 4096, Reporter: "p1",
		Updated: time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC),
	}
}

func wantStatuses(t *testing.T, m torus.Metadata, want map[string]torus.VolumeStatus, what string) {
	t.Helper()
	got, err := m.VolumeStatuses(ctxT(t))
	must(t, err, what+": VolumeStatuses")
	if len(got) != len(want) {
		t.Fatalf("%s: %d statuses %v, want %d %v", what, len(got), got, len(want), want)
	}
	for name, w := range want {
		g, ok := got[name]
		if !ok {
			t.Fatalf("%s: no status of %q", what, name)
		}
		if !g.Updated.Equal(w.Updated) {
			t.Fatalf("%s: %q updated %v, want %v", what, name, g.Updated, w.Updated)
		}
		g.Updated = w.Updated
		if g != w {
			t.Fatalf("%s: status of %q = %+v, want %+v", what, name, g, w)
		}
	}
}

func testVolumeStatuses(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	wantStatuses(t, m, nil, "empty store")
	a := createVolume(t, m, "a", 1<<20)
	b := createVolume(t, m, "b", 1<<20)
	wantStatuses(t, m, nil, "never reported")

	sa, sb := sampleStatus(a, torus.VolumeHealthy, 100), sampleStatus(b, torus.VolumeDegraded, 200)
	ghost := sampleStatus(torus.VolumeInfo{Name: "ghost", ID: 99}, torus.VolumeHealthy, 1)
	must(t, m.PutVolumeStatuses(ctx, []torus.VolumeStatus{sa, sb, ghost}), "PutVolumeStatuses")
	wantStatuses(t, m, map[string]torus.VolumeStatus{"a": sa, "b": sb}, "after put (ghost dropped)")

	for _, bad := range [][]torus.VolumeStatus{
		{{Volume: "a", Health: "fine"}},
		{{Volume: "", Health: torus.VolumeHealthy}},
		{{Volume: "a/b", Health: torus.VolumeHealthy}},
		{{Volume: "a", Health: torus.VolumeHealthy, Used: -1}},
		{{Volume: "a", Health: torus.VolumeHealthy, PendingBytes: -1}},
		{sa, sa},
	} {
		wantErr(t, m.PutVolumeStatuses(ctx, bad), torus.ErrInvalid, fmt.Sprintf("PutVolumeStatuses(%+v)", bad))
	}
	wantStatuses(t, m, map[string]torus.VolumeStatus{"a": sa, "b": sb}, "after refused puts")

	// A partial report keeps the others; a status for another incarnation
	// of a name (wrong ID) is dropped.
	sa2 := sampleStatus(a, torus.VolumeUnavailable, 300)
	wrong := sampleStatus(torus.VolumeInfo{Name: "b", ID: b.ID + 100}, torus.VolumeHealthy, 1)
	must(t, m.PutVolumeStatuses(ctx, []torus.VolumeStatus{sa2, wrong}), "PutVolumeStatuses partial")
	wantStatuses(t, m, map[string]torus.VolumeStatus{"a": sa2, "b": sb}, "after partial put")
	must(t, m.PutVolumeStatuses(ctx, nil), "PutVolumeStatuses empty")
	wantStatuses(t, m, map[string]torus.VolumeStatus{"a": sa2, "b": sb}, "after empty put")

	// Deleting a volume drops its status; a new volume of that name starts
	// unreported.
	must(t, m.DeleteVolume(ctx, "b"), "DeleteVolume")
	wantStatuses(t, m, map[string]torus.VolumeStatus{"a": sa2}, "after delete")
	must(t, m.PutVolumeStatuses(ctx, []torus.VolumeStatus{sb}), "PutVolumeStatuses of a deleted volume")
	b2 := createVolume(t, m, "b", 1<<20)
	wantStatuses(t, m, map[string]torus.VolumeStatus{"a": sa2}, "recreated volume")
	sb2 := sampleStatus(b2, torus.VolumeHealthy, 0)
	sb2.ID = 0 // a status without an ID attaches by name
	must(t, m.PutVolumeStatuses(ctx, []torus.VolumeStatus{sb2}), "PutVolumeStatuses without ID")
	wantStatuses(t, m, map[string]torus.VolumeStatus{"a": sa2, "b": sb2}, "status without ID")
}

// testVolumeStatusesMany publishes more statuses than fit etcd's default
// limit of operations per transaction.
func testVolumeStatusesMany(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	const n = 140
	var st []torus.VolumeStatus
	want := make(map[string]torus.VolumeStatus)
	for i := range n {
		v := createVolume(t, m, fmt.Sprintf("v%03d", i), 4096)
		s := sampleStatus(v, torus.VolumeHealthy, int64(i))
		st = append(st, s)
		want[v.Name] = s
	}
	must(t, m.PutVolumeStatuses(ctx, st), "PutVolumeStatuses")
	wantStatuses(t, m, want, "many")
	for i := range n / 2 {
		name := fmt.Sprintf("v%03d", i)
		must(t, m.DeleteVolume(ctx, name), "DeleteVolume")
		delete(want, name)
	}
	must(t, m.PutVolumeStatuses(ctx, st), "PutVolumeStatuses after deletes")
	wantStatuses(t, m, want, "many after deletes")
}

func drain(ch <-chan struct{}) {
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-time.After(200 * time.Millisecond):
			return
		}
	}
}

func waitSignal(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case _, ok := <-ch:
		if !ok {
			t.Fatalf("watch closed, waiting for %s", what)
		}
	case <-time.After(signalWait):
		t.Fatalf("no watch signal within %v after %s", signalWait, what)
	}
}

func testWatch(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := m.Watch(wctx)
	if cap(ch) > 1 {
		t.Fatalf("watch channel capacity %d, want at most 1 (coalesced)", cap(ch))
	}
	drain(ch)
	initCluster(t, m)
	waitSignal(t, ch, "InitCluster")
	drain(ch)
	createVolume(t, m, "v", 4096)
	waitSignal(t, ch, "CreateVolume")
	drain(ch)
	s := newSession(t, m, 10*time.Second)
	e, err := m.Lock(ctx, s, "v", torus.WriterInfo{Owner: "w"})
	must(t, err, "Lock")
	waitSignal(t, ch, "Lock")
	drain(ch)
	must(t, m.CommitHead(ctx, "v", e, torus.Head{Epoch: e}), "CommitHead")
	waitSignal(t, ch, "CommitHead")
	drain(ch)
	must(t, m.PutPeer(ctx, torus.PeerInfo{ID: "p"}), "PutPeer")
	waitSignal(t, ch, "PutPeer")
	drain(ch)
	setMembers(t, m, "p")
	waitSignal(t, ch, "SetRing")
	drain(ch)

	// Many changes while nobody reads coalesce into pending signals
	// without blocking the writer.
	for i := range 20 {
		must(t, m.SetDefaultExport(ctx, "v"), fmt.Sprint("SetDefaultExport ", i))
	}
	waitSignal(t, ch, "many changes")

	ch2 := m.Watch(ctx)
	drain(ch2)
	cancel()
	deadline := time.After(signalWait)
	for open := true; open; {
		select {
		case _, open = <-ch:
		case <-deadline:
			t.Fatal("watch channel not closed after its context ended")
		}
	}
	drain(ch2)
	must(t, m.SetDefaultExport(ctx, ""), "SetDefaultExport")
	waitSignal(t, ch2, "a change seen by a second watcher")
}

func testClose(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	ch := m.Watch(ctx)
	must(t, m.Close(), "Close")
	must(t, m.Close(), "second Close")
	_, err := m.Volumes(ctx)
	wantErr(t, err, torus.ErrClosed, "Volumes after Close")
	_, err = m.NewSession(ctx, time.Second)
	wantErr(t, err, torus.ErrClosed, "NewSession after Close")
	deadline := time.After(signalWait)
	for open := true; open; {
		select {
		case _, open = <-ch:
		case <-deadline:
			t.Fatal("watch channel not closed by Close")
		}
	}
}

// testCloneVolume: CloneVolume copies the snapshot's head (epoch 0, no open
// segment), records Parent and Shares (transitively), refuses a missing
// snapshot, a taken name and a size below the source's, and the clone's
// head is independent of later changes to the source.
func testCloneVolume(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	src := createVolume(t, m, "src", 1<<20)
	head := sampleHead(3)
	head.Open = nil
	must(t, m.CreateSnapshot(ctx, 0, torus.Snapshot{Volume: "src", Name: "s1", Head: head}), "CreateSnapshot")

	c, err := m.CloneVolume(ctx, torus.VolumeInfo{Name: "c1", Size: 2 << 20, Labels: map[string]string{"k": "v"}}, "src", "s1")
	must(t, err, "CloneVolume")
	if c.ID == 0 || c.ID == src.ID || c.Size != 2<<20 || c.Labels["k"] != "v" {
		t.Fatalf("clone = %+v", c)
	}
	if c.Parent == nil || *c.Parent != (torus.VolumeParent{Volume: "src", ID: src.ID, Snapshot: "s1"}) || !reflect.DeepEqual(c.Shares, []uint64{src.ID}) {
		t.Fatalf("clone parent %+v shares %v, want src@s1 and [%d]", c.Parent, c.Shares, src.ID)
	}
	got, err := m.Volume(ctx, "c1")
	must(t, err, "Volume c1")
	if !reflect.DeepEqual(got.Parent, c.Parent) || !reflect.DeepEqual(got.Shares, c.Shares) {
		t.Fatalf("stored clone %+v, returned %+v", got, c)
	}
	want := head
	want.Epoch = 0
	h, err := m.Head(ctx, "c1")
	must(t, err, "Head c1")
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("clone head = %+v, want %+v", h, want)
	}
	// A clone of the clone shares both.
	must(t, m.CreateSnapshot(ctx, 0, torus.Snapshot{Volume: "c1", Name: "t", Head: want}), "CreateSnapshot c1@t")
	cc, err := m.CloneVolume(ctx, torus.VolumeInfo{Name: "c2", Size: 2 << 20}, "c1", "t")
	must(t, err, "CloneVolume of a clone")
	if !reflect.DeepEqual(cc.Shares, []uint64{c.ID, src.ID}) {
		t.Fatalf("clone of clone shares %v, want [%d %d]", cc.Shares, c.ID, src.ID)
	}
	// CreateVolume ignores Parent and Shares.
	plain, err := m.CreateVolume(ctx, torus.VolumeInfo{Name: "plain", Size: 4096, Shares: []uint64{src.ID}, Parent: &torus.VolumeParent{Volume: "x"}})
	must(t, err, "CreateVolume")
	if plain.Parent != nil || plain.Shares != nil {
		t.Fatalf("CreateVolume kept parent %+v shares %v", plain.Parent, plain.Shares)
	}

	_, err = m.CloneVolume(ctx, torus.VolumeInfo{Name: "c3", Size: 1 << 20}, "src", "nope")
	wantErr(t, err, torus.ErrNotExist, "CloneVolume of a missing snapshot")
	_, err = m.CloneVolume(ctx, torus.VolumeInfo{Name: "c3", Size: 1 << 20}, "nope", "s1")
	wantErr(t, err, torus.ErrNotExist, "CloneVolume of a missing volume")
	_, err = m.CloneVolume(ctx, torus.VolumeInfo{Name: "c1", Size: 1 << 20}, "src", "s1")
	wantErr(t, err, torus.ErrExist, "CloneVolume onto a taken name")
	_, err = m.CloneVolume(ctx, torus.VolumeInfo{Name: "c3", Size: 4096}, "src", "s1")
	wantErr(t, err, torus.ErrInvalid, "CloneVolume smaller than the source")
	if _, err := m.Volume(ctx, "c3"); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("failed clones left volume c3: %v", err)
	}
	// Deleting the source and its snapshot leaves the clone as it was.
	must(t, m.DeleteVolume(ctx, "src"), "DeleteVolume src")
	h, err = m.Head(ctx, "c1")
	must(t, err, "Head c1 after the source is deleted")
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("clone head after deleting the source = %+v", h)
	}
}

// testRestoreSnapshot: RestoreSnapshot is fenced like CommitHead, refuses a
// missing snapshot, and stores the snapshot's head at the writer's epoch
// without lowering NextSeq.
func testRestoreSnapshot(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	createVolume(t, m, "v", 1<<20)
	snapHead := sampleHead(2)
	snapHead.Open, snapHead.NextSeq = nil, 5
	must(t, m.CreateSnapshot(ctx, 0, torus.Snapshot{Volume: "v", Name: "s", Head: snapHead}), "CreateSnapshot")
	ses := newSession(t, m, 10*time.Second)
	e, err := m.Lock(ctx, ses, "v", torus.WriterInfo{Owner: "restorer"})
	must(t, err, "Lock")
	must(t, m.CommitHead(ctx, "v", e, sampleHead(e)), "CommitHead")

	_, err = m.RestoreSnapshot(ctx, e+1, "v", "s")
	wantErr(t, err, torus.ErrFenced, "RestoreSnapshot at a wrong epoch")
	_, err = m.RestoreSnapshot(ctx, e, "v", "nope")
	wantErr(t, err, torus.ErrNotExist, "RestoreSnapshot of a missing snapshot")
	_, err = m.RestoreSnapshot(ctx, e, "nope", "s")
	wantErr(t, err, torus.ErrNotExist, "RestoreSnapshot of a missing volume")

	h, err := m.RestoreSnapshot(ctx, e, "v", "s")
	must(t, err, "RestoreSnapshot")
	want := torus.Head{Epoch: e, Checkpoint: snapHead.Checkpoint, Sealed: snapHead.Sealed, NextSeq: 7}
	if !reflect.DeepEqual(h, want) {
		t.Fatalf("restored head = %+v, want %+v", h, want)
	}
	stored, err := m.Head(ctx, "v")
	must(t, err, "Head")
	if !reflect.DeepEqual(stored, want) {
		t.Fatalf("stored head = %+v, want %+v", stored, want)
	}
	must(t, m.Unlock(ctx, "v", e), "Unlock")
	_, err = m.RestoreSnapshot(ctx, e, "v", "s")
	wantErr(t, err, torus.ErrFenced, "RestoreSnapshot without the lock")
}

// testVolumeReplication: Replication is stored, bounded, and MinReplicas
// may not exceed it (at create and at update).
func testVolumeReplication(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	v, err := m.CreateVolume(ctx, torus.VolumeInfo{Name: "r3", Size: 4096, Replication: 3, MinReplicas: 2})
	must(t, err, "CreateVolume replication 3")
	got, err := m.Volume(ctx, "r3")
	must(t, err, "Volume")
	if got.Replication != 3 || got.MinReplicas != 2 || v.Replication != 3 {
		t.Fatalf("stored %+v", got)
	}
	_, err = m.CreateVolume(ctx, torus.VolumeInfo{Name: "bad", Size: 4096, Replication: 1, MinReplicas: 2})
	wantErr(t, err, torus.ErrInvalid, "MinReplicas above Replication")
	_, err = m.CreateVolume(ctx, torus.VolumeInfo{Name: "bad", Size: 4096, Replication: -1})
	wantErr(t, err, torus.ErrInvalid, "negative Replication")
	_, err = m.CreateVolume(ctx, torus.VolumeInfo{Name: "bad", Size: 4096, Replication: 17})
	wantErr(t, err, torus.ErrInvalid, "Replication 17")
	upd := got
	upd.MinReplicas = 4
	wantErr(t, m.UpdateVolume(ctx, upd), torus.ErrInvalid, "UpdateVolume MinReplicas above Replication")
	upd.MinReplicas, upd.Replication = 1, 1
	must(t, m.UpdateVolume(ctx, upd), "UpdateVolume")
	got, err = m.Volume(ctx, "r3")
	must(t, err, "Volume")
	if got.Replication != 3 || got.MinReplicas != 1 {
		t.Fatalf("after update %+v, want replication 3 (unchanged by UpdateVolume), min 1", got)
	}
}

// nextChange reads changes from ch, skipping heartbeats of other tests'
// sessions and kinds not asked for, until one of kind arrives for name.
func nextChange(t *testing.T, ch <-chan torus.Change, kind torus.ChangeKind, name string) torus.Change {
	t.Helper()
	deadline := time.After(signalWait)
	for {
		select {
		case c, ok := <-ch:
			if !ok {
				t.Fatalf("change channel closed while waiting for %v %q", kind, name)
			}
			if c.Kind == kind && c.Name == name {
				return c
			}
		case <-deadline:
			t.Fatalf("no %v change for %q within %v", kind, name, signalWait)
		}
	}
}

// testWatchChanges: every change after the revision given is delivered,
// typed, with its value and a revision that grows and is covered by
// Revision; repeat heartbeats of a live peer and published statuses are
// not reported.
func testWatchChanges(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	rev0, err := m.Revision(ctx)
	must(t, err, "Revision")
	ch := m.WatchChanges(ctx, rev0)
	v := createVolume(t, m, "v", 4096)
	cv := nextChange(t, ch, torus.ChangeVolume, "v")
	if cv.Revision <= rev0 || cv.Deleted {
		t.Fatalf("create volume: %+v, want a revision after %d, not deleted", cv, rev0)
	}
	s := newSession(t, m, 10*time.Second)
	e, err := m.Lock(ctx, s, "v", torus.WriterInfo{Owner: "w"})
	must(t, err, "Lock")
	// Lock's epoch and writer changes share a revision, in either order.
	var ce, cw torus.Change
	for deadline := time.After(signalWait); ce.Kind == 0 || cw.Kind == 0; {
		select {
		case c := <-ch:
			switch {
			case c.Name != "v" || c.Revision == cv.Revision: // CreateVolume's epoch 0 and head
			case c.Kind == torus.ChangeEpoch:
				ce = c
			case c.Kind == torus.ChangeWriter:
				cw = c
			}
		case <-deadline:
			t.Fatalf("lock: epoch change %+v, writer change %+v; want both", ce, cw)
		}
	}
	if ce.Epoch != e || ce.Revision <= cv.Revision {
		t.Fatalf("lock: epoch change %+v, want epoch %d after revision %d", ce, e, cv.Revision)
	}
	if cw.Deleted || cw.Revision != ce.Revision {
		t.Fatalf("lock: writer change %+v, want a writer at the epoch's revision %d", cw, ce.Revision)
	}
	h := torus.Head{Epoch: e, NextSeq: 7, Sealed: []torus.SegmentRef{{ID: torus.SegmentID{Volume: v.ID, Epoch: e, Seq: 6}, Length: 42}}}
	must(t, m.CommitHead(ctx, "v", e, h), "CommitHead")
	ch1 := nextChange(t, ch, torus.ChangeHead, "v")
	if ch1.Head == nil || ch1.Head.NextSeq != 7 || len(ch1.Head.Sealed) != 1 || ch1.Revision <= ce.Revision {
		t.Fatalf("commit head: %+v, want the head committed after revision %d", ch1, ce.Revision)
	}
	if r, err := m.Revision(ctx); err != nil || r < ch1.Revision {
		t.Fatalf("Revision after the head commit = %d, %v; want at least %d", r, err, ch1.Revision)
	}
	must(t, m.CreateSnapshot(ctx, e, torus.Snapshot{Volume: "v", Name: "s1", Head: h}), "CreateSnapshot")
	if c := nextChange(t, ch, torus.ChangeSnapshot, "v"); c.Snapshot != "s1" || c.Deleted {
		t.Fatalf("create snapshot: %+v, want snapshot s1", c)
	}
	must(t, m.PutVolumeStatuses(ctx, []torus.VolumeStatus{{Volume: "v", ID: v.ID, Health: torus.VolumeHealthy}}), "PutVolumeStatuses")
	must(t, m.PutPeer(ctx, torus.PeerInfo{ID: "p"}), "PutPeer")
	// The status was published before the peer: nothing of it may come first.
	deadline := time.After(signalWait)
	for done := false; !done; {
		select {
		case c := <-ch:
			if c.Kind == torus.ChangePeer && c.Name == "p" {
				done = true
			} else if c.Kind != torus.ChangePeer {
				t.Fatalf("unexpected change %+v before the peer's (statuses are not reported)", c)
			}
		case <-deadline:
			t.Fatal("no peer change")
		}
	}
	ps := newSession(t, m, 10*time.Second)
	must(t, m.Heartbeat(ctx, ps, "p", torus.Beat{Used: 1}), "Heartbeat")
	if c := nextChange(t, ch, torus.ChangePeer, "p"); c.Beat {
		t.Fatalf("first heartbeat %+v is marked Beat: it makes the peer up", c)
	}
	// Repeat heartbeats change neither liveness nor findings: they are
	// not delivered at all (every daemon's watch would otherwise carry
	// every daemon's beats, O(daemons²) events on an idle cluster). The
	// next change delivered is the marker written after them.
	for used := int64(2); used < 5; used++ {
		must(t, m.Heartbeat(ctx, ps, "p", torus.Beat{Used: used}), "Heartbeat")
	}
	must(t, m.PutPeer(ctx, torus.PeerInfo{ID: "marker"}), "PutPeer")
	select {
	case c := <-ch:
		if c.Kind != torus.ChangePeer || c.Name != "marker" {
			t.Fatalf("after repeat heartbeats: change %+v delivered; want none before the marker peer's", c)
		}
	case <-time.After(signalWait):
		t.Fatal("no change for the marker peer")
	}
	// What they report is still read by Peers, with the liveness.
	if p := peerByID(t, m, "p"); p.Used != 4 || !p.Alive || p.State != torus.PeerNew {
		t.Fatalf("peer after repeat heartbeats: used %d, alive %v, state %s; want 4, alive, new", p.Used, p.Alive, p.State)
	}
	// New scrub findings are not a mere beat: the health they change is
	// published by another daemon's maintenance.
	must(t, m.Heartbeat(ctx, ps, "p", torus.Beat{Used: 2, Unrepairable: map[uint64][]uint64{v.ID: {3}}}), "Heartbeat")
	if c := nextChange(t, ch, torus.ChangePeer, "p"); c.Beat {
		t.Fatalf("heartbeat with new findings %+v is marked Beat", c)
	}
	setMembers(t, m, "p")
	if c := nextChange(t, ch, torus.ChangeRing, ""); c.Ring == nil || len(c.Ring.Members) != 1 {
		t.Fatalf("set ring: %+v, want the new spec", c)
	}
	must(t, m.Unlock(ctx, "v", e), "Unlock")
	if c := nextChange(t, ch, torus.ChangeWriter, "v"); !c.Deleted {
		t.Fatalf("unlock: %+v, want the writer deleted", c)
	}
	must(t, m.DeleteVolume(ctx, "v"), "DeleteVolume")
	if c := nextChange(t, ch, torus.ChangeVolume, "v"); !c.Deleted {
		t.Fatalf("delete volume: %+v, want deleted", c)
	}

	// A second watch from the first revision replays the same history.
	ch2 := m.WatchChanges(ctx, rev0)
	if c := nextChange(t, ch2, torus.ChangeHead, "v"); c.Revision != cv.Revision {
		// the first head change is the empty head of CreateVolume
		t.Fatalf("replayed first head change at revision %d, want %d (CreateVolume's)", c.Revision, cv.Revision)
	}
	if c := nextChange(t, ch2, torus.ChangeHead, "v"); c.Revision != ch1.Revision {
		t.Fatalf("replayed head change at revision %d, want %d", c.Revision, ch1.Revision)
	}
}

// testWatchChangesResync: a watch from a compacted revision starts with a
// ChangeResync carrying a revision at least the compacted one, then
// delivers the changes after it.
func testWatchChangesResync(t *testing.T, m torus.Metadata) {
	c, ok := m.(Compactor)
	if !ok {
		t.Skip("store cannot compact its history")
	}
	ctx := ctxT(t)
	initCluster(t, m)
	old, err := m.Revision(ctx)
	must(t, err, "Revision")
	createVolume(t, m, "a", 4096)
	createVolume(t, m, "b", 4096)
	now, err := m.Revision(ctx)
	must(t, err, "Revision")
	c.Compact(now)
	ch := m.WatchChanges(ctx, old)
	var first torus.Change
	select {
	case first = <-ch:
	case <-time.After(signalWait):
		t.Fatal("no event from a watch at a compacted revision")
	}
	if first.Kind != torus.ChangeResync || first.Revision < now {
		t.Fatalf("first event %+v, want a resync at revision %d or later", first, now)
	}
	createVolume(t, m, "c", 4096)
	if got := nextChange(t, ch, torus.ChangeVolume, "c"); got.Revision <= first.Revision {
		t.Fatalf("change after the resync at revision %d, want after %d", got.Revision, first.Revision)
	}
}

// testVolumesChangedSince: true after a volume, writer, head or snapshot
// is created or updated; false for heartbeats, peers, statuses and
// deletions.
func testVolumesChangedSince(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	rev := func() int64 {
		t.Helper()
		r, err := m.Revision(ctx)
		must(t, err, "Revision")
		return r
	}
	changed := func(since int64, want bool, what string) {
		t.Helper()
		got, err := m.VolumesChangedSince(ctx, since)
		must(t, err, "VolumesChangedSince")
		if got != want {
			t.Fatalf("after %s: VolumesChangedSince = %v, want %v", what, got, want)
		}
	}
	r := rev()
	changed(r, false, "nothing")
	v := createVolume(t, m, "v", 4096)
	changed(r, true, "CreateVolume")
	r = rev()
	must(t, m.PutPeer(ctx, torus.PeerInfo{ID: "p"}), "PutPeer")
	ps := newSession(t, m, 10*time.Second)
	must(t, m.Heartbeat(ctx, ps, "p", torus.Beat{}), "Heartbeat")
	must(t, m.PutVolumeStatuses(ctx, []torus.VolumeStatus{{Volume: "v", ID: v.ID, Health: torus.VolumeHealthy}}), "PutVolumeStatuses")
	changed(r, false, "a peer, a heartbeat and a status")
	s := newSession(t, m, 10*time.Second)
	e, err := m.Lock(ctx, s, "v", torus.WriterInfo{Owner: "w"})
	must(t, err, "Lock")
	changed(r, true, "Lock")
	r = rev()
	must(t, m.CommitHead(ctx, "v", e, torus.Head{Epoch: e, NextSeq: 3}), "CommitHead")
	changed(r, true, "CommitHead")
	r = rev()
	must(t, m.CreateSnapshot(ctx, e, torus.Snapshot{Volume: "v", Name: "s"}), "CreateSnapshot")
	changed(r, true, "CreateSnapshot")
	r = rev()
	must(t, m.DeleteSnapshot(ctx, "v", "s"), "DeleteSnapshot")
	changed(r, false, "DeleteSnapshot")
}
