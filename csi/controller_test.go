package csi

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/metadata"
)

// fixture is a controller over metadata.Memory with one up peer; closed
// volumes are snapshotted by storing the snapshot directly.
type fixture struct {
	t    *testing.T
	m    *metadata.Memory
	c    *controller
	ses  torus.Session
	ctx  context.Context
	snap int // SnapshotClosed calls
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	m := metadata.NewMemory()
	t.Cleanup(func() { _ = m.Close() })
	if err := m.InitCluster(ctx, torus.ClusterConfig{Replication: 2}); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, m: m, ctx: ctx}
	d, err := New(Config{Endpoint: "unix://" + filepath.Join(t.TempDir(), "s"), Mode: ModeController}, Deps{
		Meta: m,
		SnapshotClosed: func(ctx context.Context, md torus.Metadata, vol, name string) error {
			f.snap++
			return md.CreateSnapshot(ctx, 0, torus.Snapshot{Volume: vol, Name: name})
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.c = &controller{d: d}
	for i, used := range []int64{1 << 30, 3 << 30} {
		id := fmt.Sprintf("p%d", i)
		if err := m.PutPeer(ctx, torus.PeerInfo{ID: id, Address: id + ":1", Capacity: 4 << 30, Zone: fmt.Sprintf("z%d", i)}); err != nil {
			t.Fatal(err)
		}
		ring, _ := m.Ring(ctx)
		ring.Version++
		ring.Members = append(ring.Members, torus.RingMember{ID: id, Weight: 1})
		if err := m.SetRing(ctx, ring); err != nil {
			t.Fatal(err)
		}
		if f.ses == nil {
			if f.ses, err = m.NewSession(ctx, time.Minute); err != nil {
				t.Fatal(err)
			}
		}
		if err := m.Heartbeat(ctx, f.ses, id, torus.Beat{Used: used}); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

var mountRW = &csipb.VolumeCapability{
	AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: "ext4"}},
	AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
}

func (f *fixture) create(name string, req, lim int64, params map[string]string) (*csipb.Volume, error) {
	r, err := f.c.CreateVolume(f.ctx, &csipb.CreateVolumeRequest{
		Name: name, VolumeCapabilities: []*csipb.VolumeCapability{mountRW},
		CapacityRange: &csipb.CapacityRange{RequiredBytes: req, LimitBytes: lim}, Parameters: params,
	})
	return r.GetVolume(), err
}

func wantCode(t *testing.T, err error, code codes.Code, what string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: got %v, want code %v", what, err, code)
	}
}

// TestCreateVolume: a CSI name with uppercase and 128 characters becomes a
// valid Torus volume whose labels keep the name and parameters; sizes round
// up to 4 KiB; a repeat is idempotent; another size, other parameters, or a
// hash collision with a foreign volume is AlreadyExists; bad input is
// InvalidArgument; an impossible range is OutOfRange.
func TestCreateVolume(t *testing.T) {
	f := newFixture(t)
	name := "PVC-" + fmt.Sprintf("%0124d", 7)
	params := map[string]string{"minReplicas": "1", "csi.storage.k8s.io/fstype": "ext4"}
	v, err := f.create(name, 1<<30+1, 0, params)
	if err != nil {
		t.Fatal(err)
	}
	if v.VolumeId != TorusName(name) || v.CapacityBytes != 1<<30+4096 {
		t.Fatalf("created %+v, want id %s and size rounded up to 4 KiB", v, TorusName(name))
	}
	info, err := f.m.Volume(f.ctx, v.VolumeId)
	if err != nil {
		t.Fatal(err)
	}
	if info.Labels[LabelName] != name || info.Labels[LabelParameters] != `{"csi.storage.k8s.io/fstype":"ext4","minReplicas":"1"}` || info.MinReplicas != 1 {
		t.Fatalf("stored %+v", info)
	}
	again, err := f.create(name, 1<<30, 2<<30, params)
	if err != nil || again.VolumeId != v.VolumeId || again.CapacityBytes != v.CapacityBytes {
		t.Fatalf("repeat: %+v, %v", again, err)
	}
	_, err = f.create(name, 2<<30, 0, params)
	wantCode(t, err, codes.AlreadyExists, "same name, larger size")
	_, err = f.create(name, 1<<30, 0, map[string]string{"minReplicas": "2"})
	wantCode(t, err, codes.AlreadyExists, "same name, other parameters")
	if _, err := f.m.CreateVolume(f.ctx, torus.VolumeInfo{Name: TorusName("foreign"), Size: 4096}); err != nil {
		t.Fatal(err)
	}
	_, err = f.create("foreign", 4096, 0, nil)
	wantCode(t, err, codes.AlreadyExists, "Torus name taken by a volume the driver did not create")

	v, err = f.create("no-range", 0, 0, nil)
	if err != nil || v.CapacityBytes != DefaultVolumeSize {
		t.Fatalf("no capacity range: %+v, %v", v, err)
	}
	v, err = f.create("limit-only", 0, 10000, nil)
	if err != nil || v.CapacityBytes != 8192 {
		t.Fatalf("limit only: %+v, %v (want 8192)", v, err)
	}
	_, err = f.create("tiny", 1, 4000, nil)
	wantCode(t, err, codes.OutOfRange, "no 4 KiB multiple in [1, 4000]")

	for what, req := range map[string]*csipb.CreateVolumeRequest{
		"no name":          {VolumeCapabilities: []*csipb.VolumeCapability{mountRW}},
		"name too long":    {Name: fmt.Sprintf("%0129d", 1), VolumeCapabilities: []*csipb.VolumeCapability{mountRW}},
		"no capabilities":  {Name: "x"},
		"multi-node":       {Name: "x", VolumeCapabilities: []*csipb.VolumeCapability{{AccessType: mountRW.AccessType, AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}}}},
		"unknown fs":       {Name: "x", VolumeCapabilities: []*csipb.VolumeCapability{{AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: "zfs"}}, AccessMode: mountRW.AccessMode}}},
		"unknown param":    {Name: "x", VolumeCapabilities: []*csipb.VolumeCapability{mountRW}, Parameters: map[string]string{"colour": "red"}},
		"replication":      {Name: "x", VolumeCapabilities: []*csipb.VolumeCapability{mountRW}, Parameters: map[string]string{"replication": "3"}},
		"minReplicas > R":  {Name: "x", VolumeCapabilities: []*csipb.VolumeCapability{mountRW}, Parameters: map[string]string{"minReplicas": "3"}},
		"mutable params":   {Name: "x", VolumeCapabilities: []*csipb.VolumeCapability{mountRW}, MutableParameters: map[string]string{"a": "b"}},
		"negative bytes":   {Name: "x", VolumeCapabilities: []*csipb.VolumeCapability{mountRW}, CapacityRange: &csipb.CapacityRange{RequiredBytes: -1}},
		"required > limit": {Name: "x", VolumeCapabilities: []*csipb.VolumeCapability{mountRW}, CapacityRange: &csipb.CapacityRange{RequiredBytes: 8192, LimitBytes: 4096}},
	} {
		_, err := f.c.CreateVolume(f.ctx, req)
		wantCode(t, err, codes.InvalidArgument, what)
	}
	if _, err := f.create("rep-ok", 4096, 0, map[string]string{"replication": "2"}); err != nil {
		t.Fatalf("replication 2 on 2 peers: %v", err)
	}
}

// TestCreateVolumeFromSource: a volume from a snapshot or from a volume is
// a clone of it (Parent set, the content source returned), idempotent for
// the same source, AlreadyExists for another source, NotFound for a
// missing source, OutOfRange when the range cannot hold the source.
func TestCreateVolumeFromSource(t *testing.T) {
	f := newFixture(t)
	src, err := f.create("src", 8192, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := f.c.CreateSnapshot(f.ctx, &csipb.CreateSnapshotRequest{Name: "s", SourceVolumeId: src.VolumeId})
	if err != nil {
		t.Fatal(err)
	}
	req := func(name string, cs *csipb.VolumeContentSource) *csipb.CreateVolumeRequest {
		return &csipb.CreateVolumeRequest{Name: name, VolumeCapabilities: []*csipb.VolumeCapability{mountRW}, VolumeContentSource: cs,
			CapacityRange: &csipb.CapacityRange{RequiredBytes: 4096}}
	}
	fromSnap := func(id string) *csipb.VolumeContentSource {
		return &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Snapshot{Snapshot: &csipb.VolumeContentSource_SnapshotSource{SnapshotId: id}}}
	}
	fromVol := func(id string) *csipb.VolumeContentSource {
		return &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Volume{Volume: &csipb.VolumeContentSource_VolumeSource{VolumeId: id}}}
	}
	_, err = f.c.CreateVolume(f.ctx, req("new", fromSnap("non-existing-snapshot-id")))
	wantCode(t, err, codes.NotFound, "from a missing snapshot")
	_, err = f.c.CreateVolume(f.ctx, req("new", fromSnap(src.VolumeId+"@nope")))
	wantCode(t, err, codes.NotFound, "from a missing snapshot of an existing volume")
	_, err = f.c.CreateVolume(f.ctx, req("new", fromVol("fake-vol-id")))
	wantCode(t, err, codes.NotFound, "from a missing volume")
	small := req("new", fromSnap(snap.Snapshot.SnapshotId))
	small.CapacityRange.LimitBytes = 4096
	_, err = f.c.CreateVolume(f.ctx, small)
	wantCode(t, err, codes.OutOfRange, "a range too small for the source")
	if _, err := f.m.Volume(f.ctx, TorusName("new")); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("a refused create left a volume: %v", err)
	}

	for _, tc := range []struct {
		name     string
		cs       *csipb.VolumeContentSource
		snapshot string // expected Parent.Snapshot; "" for the implicit one
	}{
		{"from-snap", fromSnap(snap.Snapshot.SnapshotId), TorusName("s")},
		{"from-vol", fromVol(src.VolumeId), ""},
	} {
		r, err := f.c.CreateVolume(f.ctx, req(tc.name, tc.cs))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if r.Volume.CapacityBytes != 8192 || r.Volume.ContentSource == nil {
			t.Fatalf("%s: %+v, want the source's 8192 bytes and the content source", tc.name, r.Volume)
		}
		v, err := f.m.Volume(f.ctx, r.Volume.VolumeId)
		if err != nil {
			t.Fatal(err)
		}
		if v.Parent == nil || v.Parent.Volume != src.VolumeId || tc.snapshot != "" && v.Parent.Snapshot != tc.snapshot {
			t.Fatalf("%s: parent %+v", tc.name, v.Parent)
		}
		again, err := f.c.CreateVolume(f.ctx, req(tc.name, tc.cs))
		if err != nil || again.Volume.VolumeId != r.Volume.VolumeId {
			t.Fatalf("%s again: %v %+v", tc.name, err, again)
		}
	}
	_, err = f.c.CreateVolume(f.ctx, req("from-snap", fromVol(src.VolumeId)))
	wantCode(t, err, codes.AlreadyExists, "the same name from another source")
	_, err = f.c.CreateVolume(f.ctx, &csipb.CreateVolumeRequest{Name: "from-snap", VolumeCapabilities: []*csipb.VolumeCapability{mountRW},
		CapacityRange: &csipb.CapacityRange{RequiredBytes: 4096}})
	wantCode(t, err, codes.AlreadyExists, "the name of a clone without a source")
	if snaps, _ := f.m.Snapshots(f.ctx, src.VolumeId); len(snaps) != 1 {
		t.Fatalf("snapshots of the source: %+v, want only s (the implicit one deleted)", snaps)
	}
}

// TestCreateVolumeReplication: the replication parameter is stored as the
// volume's own replication, refused beyond the ring's peers, and
// minReplicas may not exceed it.
func TestCreateVolumeReplication(t *testing.T) {
	f := newFixture(t)
	if _, err := f.create("r1", 4096, 0, map[string]string{"replication": "1", "minReplicas": "1"}); err != nil {
		t.Fatal(err)
	}
	v, err := f.m.Volume(f.ctx, TorusName("r1"))
	if err != nil || v.Replication != 1 || v.MinReplicas != 1 {
		t.Fatalf("r1: %+v %v, want replication 1, min 1", v, err)
	}
	_, err = f.create("r1b", 4096, 0, map[string]string{"replication": "1", "minReplicas": "2"})
	wantCode(t, err, codes.InvalidArgument, "minReplicas above the volume's replication")
	_, err = f.create("r3", 4096, 0, map[string]string{"replication": "3"})
	wantCode(t, err, codes.InvalidArgument, "replication 3 on 2 peers")
	if s, _ := status.FromError(err); !contains(s.Message(), "2 peers") {
		t.Fatalf("message %q does not say what the ring has", s.Message())
	}
}

// TestDeleteVolume: idempotent; refused with FailedPrecondition while the
// volume is attached (naming the writer), while it has snapshots, and for
// volumes the driver did not create.
func TestDeleteVolume(t *testing.T) {
	f := newFixture(t)
	v, err := f.create("v", 4096, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	epoch, err := f.m.Lock(f.ctx, f.ses, v.VolumeId, torus.WriterInfo{Owner: "torusblk@node-a"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.c.DeleteVolume(f.ctx, &csipb.DeleteVolumeRequest{VolumeId: v.VolumeId})
	wantCode(t, err, codes.FailedPrecondition, "delete an attached volume")
	if s, _ := status.FromError(err); !contains(s.Message(), "torusblk@node-a") {
		t.Fatalf("message %q does not name the writer", s.Message())
	}
	if err := f.m.Unlock(f.ctx, v.VolumeId, epoch); err != nil {
		t.Fatal(err)
	}
	if _, err := f.c.CreateSnapshot(f.ctx, &csipb.CreateSnapshotRequest{Name: "s", SourceVolumeId: v.VolumeId}); err != nil {
		t.Fatal(err)
	}
	_, err = f.c.DeleteVolume(f.ctx, &csipb.DeleteVolumeRequest{VolumeId: v.VolumeId})
	wantCode(t, err, codes.FailedPrecondition, "delete a volume with snapshots")
	if _, err := f.c.DeleteSnapshot(f.ctx, &csipb.DeleteSnapshotRequest{SnapshotId: SnapshotID(v.VolumeId, TorusName("s"))}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := f.c.DeleteVolume(f.ctx, &csipb.DeleteVolumeRequest{VolumeId: v.VolumeId}); err != nil {
			t.Fatalf("delete (twice): %v", err)
		}
	}
	if _, err := f.m.CreateVolume(f.ctx, torus.VolumeInfo{Name: "manual", Size: 4096}); err != nil {
		t.Fatal(err)
	}
	_, err = f.c.DeleteVolume(f.ctx, &csipb.DeleteVolumeRequest{VolumeId: "manual"})
	wantCode(t, err, codes.FailedPrecondition, "delete a volume torusctl made")
	for _, id := range []string{"fake-vol-id", "Not/A/Name"} {
		if _, err := f.c.DeleteVolume(f.ctx, &csipb.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatalf("delete missing %q: %v", id, err)
		}
	}
	_, err = f.c.DeleteVolume(f.ctx, &csipb.DeleteVolumeRequest{})
	wantCode(t, err, codes.InvalidArgument, "delete without ID")
}

// TestEtcdDown: every controller call fails with Unavailable, naming the
// cause, while the metadata store cannot be reached.
func TestEtcdDown(t *testing.T) {
	f := newFixture(t)
	v, err := f.create("v", 4096, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.m.SetFailure(fmt.Errorf("etcd at 10.0.0.1:2379: %w", torus.ErrUnavailable))
	defer f.m.SetFailure(nil)
	_, err = f.create("w", 4096, 0, nil)
	wantCode(t, err, codes.Unavailable, "CreateVolume")
	if s, _ := status.FromError(err); !contains(s.Message(), "10.0.0.1:2379") {
		t.Fatalf("message %q lost the cause", s.Message())
	}
	_, err = f.c.DeleteVolume(f.ctx, &csipb.DeleteVolumeRequest{VolumeId: v.VolumeId})
	wantCode(t, err, codes.Unavailable, "DeleteVolume")
	_, err = f.c.ListVolumes(f.ctx, &csipb.ListVolumesRequest{})
	wantCode(t, err, codes.Unavailable, "ListVolumes")
	_, err = f.c.CreateSnapshot(f.ctx, &csipb.CreateSnapshotRequest{Name: "s", SourceVolumeId: v.VolumeId})
	wantCode(t, err, codes.Unavailable, "CreateSnapshot")
	_, err = f.c.GetCapacity(f.ctx, &csipb.GetCapacityRequest{})
	wantCode(t, err, codes.Unavailable, "GetCapacity")
	_, err = (&identity{d: f.c.d}).Probe(f.ctx, &csipb.ProbeRequest{})
	wantCode(t, err, codes.Unavailable, "Probe")
}

// TestProbe: ready with an up daemon; FailedPrecondition, saying so, when
// none is up.
func TestProbe(t *testing.T) {
	f := newFixture(t)
	id := &identity{d: f.c.d}
	if r, err := id.Probe(f.ctx, &csipb.ProbeRequest{}); err != nil || !r.GetReady().GetValue() {
		t.Fatalf("probe with peers up: %v, %v", r, err)
	}
	if err := f.ses.Close(f.ctx); err != nil {
		t.Fatal(err)
	}
	_, err := id.Probe(f.ctx, &csipb.ProbeRequest{})
	wantCode(t, err, codes.FailedPrecondition, "probe with no daemon up")
}

// TestListVolumesPages: pages of MaxEntries cover every volume the driver
// made exactly once, in order; foreign volumes are not listed; a token the
// driver did not make is Aborted.
func TestListVolumesPages(t *testing.T) {
	f := newFixture(t)
	want := map[string]bool{}
	for i := range 7 {
		v, err := f.create(fmt.Sprintf("vol-%d", i), 4096, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		want[v.VolumeId] = true
	}
	if _, err := f.m.CreateVolume(f.ctx, torus.VolumeInfo{Name: "manual", Size: 4096}); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	tok, pages, last := "", 0, ""
	for {
		r, err := f.c.ListVolumes(f.ctx, &csipb.ListVolumesRequest{MaxEntries: 3, StartingToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, e := range r.Entries {
			id := e.Volume.VolumeId
			if got[id] || id <= last {
				t.Fatalf("page %d: %s repeated or out of order", pages, id)
			}
			got[id], last = true, id
		}
		if tok = r.NextToken; tok == "" {
			break
		}
	}
	if pages != 3 || len(got) != len(want) {
		t.Fatalf("%d pages, %d volumes (%v), want 3 pages of the 7 CSI volumes", pages, len(got), got)
	}
	for id := range want {
		if !got[id] {
			t.Fatalf("%s not listed", id)
		}
	}
	_, err := f.c.ListVolumes(f.ctx, &csipb.ListVolumesRequest{StartingToken: "invalid-token"})
	wantCode(t, err, codes.Aborted, "bad token")
}

// TestSnapshots: create is idempotent by name, AlreadyExists on another
// source; list filters by ID and source and pages; delete is idempotent;
// an attached volume's snapshot is asked of its writer.
func TestSnapshots(t *testing.T) {
	f := newFixture(t)
	a, _ := f.create("a", 4096, 0, nil)
	b, _ := f.create("b", 8192, 0, nil)
	s1, err := f.c.CreateSnapshot(f.ctx, &csipb.CreateSnapshotRequest{Name: "Snap-1", SourceVolumeId: a.VolumeId})
	if err != nil {
		t.Fatal(err)
	}
	if s := s1.Snapshot; s.SnapshotId != SnapshotID(a.VolumeId, TorusName("Snap-1")) || s.SourceVolumeId != a.VolumeId || !s.ReadyToUse || s.SizeBytes != 4096 || s.CreationTime == nil {
		t.Fatalf("snapshot %+v", s)
	}
	again, err := f.c.CreateSnapshot(f.ctx, &csipb.CreateSnapshotRequest{Name: "Snap-1", SourceVolumeId: a.VolumeId})
	if err != nil || again.Snapshot.SnapshotId != s1.Snapshot.SnapshotId || f.snap != 1 {
		t.Fatalf("repeat: %v, %v (%d snapshots taken)", again, err, f.snap)
	}
	_, err = f.c.CreateSnapshot(f.ctx, &csipb.CreateSnapshotRequest{Name: "Snap-1", SourceVolumeId: b.VolumeId})
	wantCode(t, err, codes.AlreadyExists, "same name, other source")
	_, err = f.c.CreateSnapshot(f.ctx, &csipb.CreateSnapshotRequest{Name: "x", SourceVolumeId: "fake-vol-id"})
	wantCode(t, err, codes.NotFound, "missing source")
	_, err = f.c.CreateSnapshot(f.ctx, &csipb.CreateSnapshotRequest{Name: "x", SourceVolumeId: a.VolumeId, Parameters: map[string]string{"a": "b"}})
	wantCode(t, err, codes.InvalidArgument, "snapshot parameters")

	// b is attached: its writer takes the snapshot on request.
	epoch, err := f.m.Lock(f.ctx, f.ses, b.VolumeId, torus.WriterInfo{Owner: "writer"})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			reqs, _ := f.m.SnapshotRequests(f.ctx, b.VolumeId)
			for _, r := range reqs {
				_ = f.m.CreateSnapshot(f.ctx, epoch, torus.Snapshot{Volume: b.VolumeId, Name: r})
				_ = f.m.DoneSnapshotRequest(f.ctx, b.VolumeId, r, "")
			}
		}
	}()
	for i := range 3 {
		if _, err := f.c.CreateSnapshot(f.ctx, &csipb.CreateSnapshotRequest{Name: fmt.Sprintf("b-%d", i), SourceVolumeId: b.VolumeId}); err != nil {
			t.Fatalf("snapshot of an attached volume: %v", err)
		}
	}
	if f.snap != 1 {
		t.Fatalf("an attached volume was snapshotted as closed")
	}

	list := func(req *csipb.ListSnapshotsRequest) []string {
		t.Helper()
		r, err := f.c.ListSnapshots(f.ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, e := range r.Entries {
			ids = append(ids, e.Snapshot.SnapshotId)
		}
		return ids
	}
	if ids := list(&csipb.ListSnapshotsRequest{}); len(ids) != 4 {
		t.Fatalf("all snapshots: %v", ids)
	}
	if ids := list(&csipb.ListSnapshotsRequest{SnapshotId: s1.Snapshot.SnapshotId}); len(ids) != 1 || ids[0] != s1.Snapshot.SnapshotId {
		t.Fatalf("by ID: %v", ids)
	}
	if ids := list(&csipb.ListSnapshotsRequest{SourceVolumeId: b.VolumeId}); len(ids) != 3 {
		t.Fatalf("by source: %v", ids)
	}
	for _, req := range []*csipb.ListSnapshotsRequest{{SnapshotId: "none-exist-id"}, {SourceVolumeId: "fake-vol-id"}, {SnapshotId: s1.Snapshot.SnapshotId, SourceVolumeId: b.VolumeId}} {
		if ids := list(req); len(ids) != 0 {
			t.Fatalf("%v: %v, want none", req, ids)
		}
	}
	r, err := f.c.ListSnapshots(f.ctx, &csipb.ListSnapshotsRequest{MaxEntries: 3})
	if err != nil || len(r.Entries) != 3 || r.NextToken == "" {
		t.Fatalf("first page: %v, %v", r, err)
	}
	r2, err := f.c.ListSnapshots(f.ctx, &csipb.ListSnapshotsRequest{StartingToken: r.NextToken})
	if err != nil || len(r2.Entries) != 1 || r2.NextToken != "" {
		t.Fatalf("second page: %v, %v", r2, err)
	}
	_, err = f.c.ListSnapshots(f.ctx, &csipb.ListSnapshotsRequest{StartingToken: "bogus"})
	wantCode(t, err, codes.Aborted, "bad token")

	g, err := f.c.GetSnapshot(f.ctx, &csipb.GetSnapshotRequest{SnapshotId: s1.Snapshot.SnapshotId})
	if err != nil || g.Snapshot.SnapshotId != s1.Snapshot.SnapshotId {
		t.Fatalf("get: %v, %v", g, err)
	}
	_, err = f.c.GetSnapshot(f.ctx, &csipb.GetSnapshotRequest{SnapshotId: "none-exist-id"})
	wantCode(t, err, codes.NotFound, "get missing")
	for range 2 {
		if _, err := f.c.DeleteSnapshot(f.ctx, &csipb.DeleteSnapshotRequest{SnapshotId: s1.Snapshot.SnapshotId}); err != nil {
			t.Fatal(err)
		}
	}
	if ids := list(&csipb.ListSnapshotsRequest{}); len(ids) != 3 {
		t.Fatalf("after delete: %v", ids)
	}
}

// TestExpandAndCapacity: expansion rounds up to 4 KiB, never shrinks, asks
// for node expansion of mount volumes only; capacity is the free space of
// up daemons over the replication factor.
func TestExpandAndCapacity(t *testing.T) {
	f := newFixture(t)
	v, _ := f.create("v", 1<<20, 0, nil)
	r, err := f.c.ControllerExpandVolume(f.ctx, &csipb.ControllerExpandVolumeRequest{
		VolumeId: v.VolumeId, CapacityRange: &csipb.CapacityRange{RequiredBytes: 2<<20 + 1}, VolumeCapability: mountRW})
	if err != nil || r.CapacityBytes != 2<<20+4096 || !r.NodeExpansionRequired {
		t.Fatalf("expand: %v, %v", r, err)
	}
	if info, _ := f.m.Volume(f.ctx, v.VolumeId); info.Size != 2<<20+4096 {
		t.Fatalf("stored size %d", info.Size)
	}
	block := &csipb.VolumeCapability{AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}}, AccessMode: mountRW.AccessMode}
	r, err = f.c.ControllerExpandVolume(f.ctx, &csipb.ControllerExpandVolumeRequest{
		VolumeId: v.VolumeId, CapacityRange: &csipb.CapacityRange{RequiredBytes: 1 << 20}, VolumeCapability: block})
	if err != nil || r.CapacityBytes != 2<<20+4096 || r.NodeExpansionRequired {
		t.Fatalf("shrink request: %v, %v (want the current size, no node expansion for block)", r, err)
	}
	_, err = f.c.ControllerExpandVolume(f.ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: "fake-vol-id", CapacityRange: &csipb.CapacityRange{RequiredBytes: 4096}})
	wantCode(t, err, codes.NotFound, "expand missing")
	_, err = f.c.ControllerExpandVolume(f.ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: v.VolumeId})
	wantCode(t, err, codes.InvalidArgument, "expand without range")

	c, err := f.c.GetCapacity(f.ctx, &csipb.GetCapacityRequest{})
	if err != nil || c.AvailableCapacity != (3<<30+1<<30)/2 {
		t.Fatalf("capacity: %v, %v, want (3 GiB + 1 GiB free) / 2 copies", c, err)
	}
	// By zone (capacity tracking): only that zone's daemons count.
	for zone, want := range map[string]int64{"z0": (3 << 30) / 2, "z1": (1 << 30) / 2, "z9": 0} {
		c, err := f.c.GetCapacity(f.ctx, &csipb.GetCapacityRequest{
			AccessibleTopology: &csipb.Topology{Segments: map[string]string{TopologyZoneKey: zone}}})
		if err != nil || c.AvailableCapacity != want {
			t.Errorf("capacity of zone %s: %v, %v, want %d", zone, c, err, want)
		}
	}
}

// TestValidateCapabilities: single-node modes, block and mount, are
// confirmed; multi-node writers are not, with the reason.
func TestValidateCapabilities(t *testing.T) {
	f := newFixture(t)
	v, _ := f.create("v", 4096, 0, nil)
	mode := func(m csipb.VolumeCapability_AccessMode_Mode, block bool) *csipb.VolumeCapability {
		vc := &csipb.VolumeCapability{AccessType: mountRW.AccessType, AccessMode: &csipb.VolumeCapability_AccessMode{Mode: m}}
		if block {
			vc.AccessType = &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}}
		}
		return vc
	}
	for _, block := range []bool{false, true} {
		for m, ok := range map[csipb.VolumeCapability_AccessMode_Mode]bool{
			csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER:       true,
			csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:  true,
			csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER:  false,
			csipb.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER: false,
			csipb.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY:   false,
		} {
			r, err := f.c.ValidateVolumeCapabilities(f.ctx, &csipb.ValidateVolumeCapabilitiesRequest{VolumeId: v.VolumeId, VolumeCapabilities: []*csipb.VolumeCapability{mode(m, block)}})
			if err != nil || (r.Confirmed != nil) != ok || (!ok && r.Message == "") {
				t.Errorf("%v block=%v: %v, %v (want confirmed=%v)", m, block, r, err, ok)
			}
		}
	}
	_, err := f.c.ValidateVolumeCapabilities(f.ctx, &csipb.ValidateVolumeCapabilitiesRequest{VolumeId: "fake-vol-id", VolumeCapabilities: []*csipb.VolumeCapability{mountRW}})
	wantCode(t, err, codes.NotFound, "validate missing")
}

// TestVolumeHealth: the published health becomes CSI volume health.
func TestVolumeHealth(t *testing.T) {
	f := newFixture(t)
	v, _ := f.create("v", 4096, 0, nil)
	w, _ := f.create("w", 4096, 0, nil)
	infoV, _ := f.m.Volume(f.ctx, v.VolumeId)
	infoW, _ := f.m.Volume(f.ctx, w.VolumeId)
	if err := f.m.PutVolumeStatuses(f.ctx, []torus.VolumeStatus{
		{Volume: infoV.Name, ID: infoV.ID, Health: torus.VolumeDegraded, UnderReplicated: 2, Reporter: "p0", Updated: time.Now()},
		{Volume: infoW.Name, ID: infoW.ID, Health: torus.VolumeHealthy, Reporter: "p0", Updated: time.Now()},
	}); err != nil {
		t.Fatal(err)
	}
	h, err := f.c.ControllerGetVolumeHealth(f.ctx, &csipb.ControllerGetVolumeHealthRequest{VolumeId: v.VolumeId})
	if err != nil || len(h.VolumeHealth.HealthStatuses) != 1 || h.VolumeHealth.HealthStatuses[0].Status != csipb.VolumeHealthErrorType_DEGRADED {
		t.Fatalf("degraded volume health: %v, %v", h, err)
	}
	l, err := f.c.ControllerListVolumeHealth(f.ctx, &csipb.ControllerListVolumeHealthRequest{})
	if err != nil || len(l.Entries) != 2 {
		t.Fatalf("list health: %v, %v", l, err)
	}
	for _, e := range l.Entries {
		if want := map[string]int{v.VolumeId: 1, w.VolumeId: 0}[e.VolumeId]; len(e.HealthStatuses) != want {
			t.Fatalf("list health of %s: %v, want %d entries", e.VolumeId, e.HealthStatuses, want)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// TestBusy: a second call on a volume while one is in flight is Aborted;
// a volume and a snapshot of the same CSI name do not block each other.
func TestBusy(t *testing.T) {
	f := newFixture(t)
	release, err := f.c.d.acquire("volume " + TorusName("v"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.create("v", 4096, 0, nil)
	wantCode(t, err, codes.Aborted, "create while busy")
	release()
	v, err := f.create("v", 4096, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	release, err = f.c.d.acquire("volume " + TorusName("v"))
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if _, err := f.c.CreateSnapshot(f.ctx, &csipb.CreateSnapshotRequest{Name: "v", SourceVolumeId: v.VolumeId}); err != nil {
		t.Fatalf("snapshot named like a busy volume: %v", err)
	}
}
