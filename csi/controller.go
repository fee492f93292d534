package csi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/snapshots"
	"github.com/torus-storage/torus/ring"
)

// controller is the CSI Controller service.
type controller struct {
	csipb.UnimplementedControllerServer
	d *Driver
}

// controllerCaps are the advertised controller capabilities. Not
// advertised (and answered Unimplemented): MODIFY_VOLUME,
// LIST_VOLUMES_PUBLISHED_NODES, SINGLE_NODE_MULTI_WRITER.
var controllerCaps = []csipb.ControllerServiceCapability_RPC_Type{
	csipb.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
	csipb.ControllerServiceCapability_RPC_CLONE_VOLUME,
	csipb.ControllerServiceCapability_RPC_LIST_VOLUMES,
	csipb.ControllerServiceCapability_RPC_GET_CAPACITY,
	csipb.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
	csipb.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
	csipb.ControllerServiceCapability_RPC_GET_SNAPSHOT,
	csipb.ControllerServiceCapability_RPC_EXPAND_VOLUME,
	csipb.ControllerServiceCapability_RPC_GET_VOLUME,
	csipb.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
	csipb.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
	csipb.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
	csipb.ControllerServiceCapability_RPC_PUBLISH_READONLY,
}

func (c *controller) ControllerGetCapabilities(ctx context.Context, _ *csipb.ControllerGetCapabilitiesRequest) (*csipb.ControllerGetCapabilitiesResponse, error) {
	out := make([]*csipb.ControllerServiceCapability, 0, len(controllerCaps))
	for _, t := range controllerCaps {
		out = append(out, &csipb.ControllerServiceCapability{Type: &csipb.ControllerServiceCapability_Rpc{
			Rpc: &csipb.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csipb.ControllerGetCapabilitiesResponse{Capabilities: out}, nil
}

// Parameters a StorageClass may give.
const (
	ParamMinReplicas = "minReplicas" // VolumeInfo.MinReplicas
	ParamReplication = "replication" // VolumeInfo.Replication, at most the ring's failure domains
	// Keys under this prefix (csi.storage.k8s.io/fstype, pv/name, pvc/name,
	// pvc/namespace from the external-provisioner) are kept, not acted on.
	paramK8sPrefix = "csi.storage.k8s.io/"
)

// supportedFS are the filesystems a mount volume may ask for ("" is the
// node's default, ext4).
var supportedFS = map[string]bool{"": true, "ext4": true, "ext3": true, "xfs": true, "btrfs": true}

// checkCapability reports why Torus cannot give capability vc ("" when it
// can). A Torus volume has one writer at a time (a lease and a fencing
// epoch), so only single-node access modes are possible.
func checkCapability(vc *csipb.VolumeCapability) string {
	if vc == nil {
		return "a volume capability is nil"
	}
	switch at := vc.GetAccessType().(type) {
	case *csipb.VolumeCapability_Block:
	case *csipb.VolumeCapability_Mount:
		if fs := at.Mount.GetFsType(); !supportedFS[fs] {
			return fmt.Sprintf("filesystem %q is not supported (ext4, ext3, xfs, btrfs)", fs)
		}
	default:
		return "a volume capability has neither block nor mount access type"
	}
	switch m := vc.GetAccessMode().GetMode(); m {
	case csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER, csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:
		return ""
	default:
		return fmt.Sprintf("access mode %s is not supported: a Torus volume has a single writer (use SINGLE_NODE_WRITER or SINGLE_NODE_READER_ONLY)", m)
	}
}

func checkCapabilities(vcs []*csipb.VolumeCapability) error {
	if len(vcs) == 0 {
		return invalid("volume capabilities are missing")
	}
	for _, vc := range vcs {
		if why := checkCapability(vc); why != "" {
			return invalid("%s", why)
		}
	}
	return nil
}

// roundUp rounds n up to a multiple of torus.BlockSize.
func roundUp(n int64) int64 { return (n + torus.BlockSize - 1) / torus.BlockSize * torus.BlockSize }

// sizeFor picks a volume size for a capacity range: the required bytes
// rounded up to 4 KiB; with no required bytes DefaultVolumeSize, or the
// limit rounded down if that is smaller. OutOfRange when no multiple of
// 4 KiB lies in the range.
func sizeFor(cr *csipb.CapacityRange) (int64, error) {
	req, lim := cr.GetRequiredBytes(), cr.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, invalid("capacity range has negative bytes (required %d, limit %d)", req, lim)
	}
	if lim > 0 && req > lim {
		return 0, invalid("required bytes %d exceed limit bytes %d", req, lim)
	}
	size := roundUp(req)
	if req == 0 {
		size = DefaultVolumeSize
		if lim > 0 && lim < size {
			size = lim / torus.BlockSize * torus.BlockSize
		}
	}
	if size == 0 || (lim > 0 && size > lim) {
		return 0, status.Errorf(codes.OutOfRange, "no multiple of %d bytes lies in the capacity range [%d, %d]", torus.BlockSize, req, lim)
	}
	return size, nil
}

// fits reports whether an existing volume of size satisfies cr.
func fits(size int64, cr *csipb.CapacityRange) bool {
	return size >= cr.GetRequiredBytes() && (cr.GetLimitBytes() == 0 || size <= cr.GetLimitBytes())
}

// parseParameters checks CreateVolume parameters against the ring and
// returns the volume's MinReplicas and Replication (0: the cluster's).
// replication must be placeable (ring.CheckReplication); minReplicas at
// most the volume's replication.
func parseParameters(params map[string]string, spec torus.RingSpec) (minReplicas, replication int, err error) {
	for _, k := range slices.Sorted(maps.Keys(params)) {
		v := params[k]
		switch {
		case k == ParamMinReplicas:
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 16 {
				return 0, 0, invalid("parameter %s=%q must be an integer in 0..16", k, v)
			}
			minReplicas = n
		case k == ParamReplication:
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return 0, 0, invalid("parameter %s=%q must be a positive integer", k, v)
			}
			if err := ring.CheckReplication(spec, n); err != nil {
				return 0, 0, invalid("parameter %s=%q: %v", k, v, err)
			}
			replication = n
		case strings.HasPrefix(k, paramK8sPrefix):
		default:
			return 0, 0, invalid("unknown parameter %q (supported: %s, %s, %s*)", k, ParamMinReplicas, ParamReplication, paramK8sPrefix)
		}
	}
	repl := replication
	if repl == 0 {
		repl = spec.Replication
	}
	if minReplicas > repl {
		return 0, 0, invalid("parameter %s=%d exceeds the volume's replication %d", ParamMinReplicas, minReplicas, repl)
	}
	return minReplicas, replication, nil
}

// labelsFor are the labels of a volume created for CSI name with params.
func labelsFor(name string, params map[string]string) (map[string]string, error) {
	l := map[string]string{LabelName: name}
	if len(params) > 0 {
		b, err := json.Marshal(params) // keys sorted: deterministic
		if err != nil {
			return nil, status.Errorf(codes.Internal, "encode parameters: %v", err)
		}
		if len(b) > torus.MaxLabelValueLen {
			return nil, invalid("parameters take %d bytes as JSON, more than %d", len(b), torus.MaxLabelValueLen)
		}
		l[LabelParameters] = string(b)
	}
	if err := torus.ValidLabels(l); err != nil {
		return nil, invalid("%v", err)
	}
	return l, nil
}

func csiVolume(v torus.VolumeInfo) *csipb.Volume {
	return &csipb.Volume{VolumeId: v.Name, CapacityBytes: v.Size}
}

// CreateVolume creates the Torus volume TorusName(name), idempotently: a
// volume that exists for the same CSI name, parameters and content source
// and fits the capacity range is returned as it is; one of another size,
// other parameters or another source is AlreadyExists. With a content
// source the volume is a clone (snapshots.Clone: it shares the source's
// segments): of the snapshot, or of the source volume as it is now (its
// writer takes the snapshot if it is attached). NotFound when the source
// does not exist; OutOfRange when the capacity range cannot hold the
// source's size.
func (c *controller) CreateVolume(ctx context.Context, req *csipb.CreateVolumeRequest) (*csipb.CreateVolumeResponse, error) {
	name := req.GetName()
	if err := checkCSIName("volume", name); err != nil {
		return nil, invalid("%v", err)
	}
	if err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
		return nil, err
	}
	if len(req.GetMutableParameters()) > 0 {
		return nil, invalid("mutable parameters are not supported (no MODIFY_VOLUME)")
	}
	size, err := sizeFor(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	src, err := c.source(ctx, req.GetVolumeContentSource())
	if err != nil {
		return nil, err
	}
	if src != nil && size < src.size {
		if !fits(src.size, req.GetCapacityRange()) {
			return nil, status.Errorf(codes.OutOfRange, "the source %s has %d bytes, more than the capacity range allows (limit %d)",
				src.name(), src.size, req.GetCapacityRange().GetLimitBytes())
		}
		size = src.size
	}
	spec, err := c.d.meta.Ring(ctx)
	if err != nil {
		return nil, toStatus("create volume: read ring", err)
	}
	minReplicas, replication, err := parseParameters(req.GetParameters(), spec)
	if err != nil {
		return nil, err
	}
	labels, err := labelsFor(name, req.GetParameters())
	if err != nil {
		return nil, err
	}
	tname := TorusName(name)
	release, err := c.d.acquire("volume " + tname)
	if err != nil {
		return nil, err
	}
	defer release()
	info := torus.VolumeInfo{Name: tname, Size: size, MinReplicas: minReplicas, Replication: replication, Labels: labels}
	var v torus.VolumeInfo
	if src == nil {
		v, err = c.d.meta.CreateVolume(ctx, info)
	} else {
		if _, gerr := c.d.meta.Volume(ctx, tname); gerr == nil {
			err = fmt.Errorf("volume %s: %w", tname, torus.ErrExist)
		} else {
			v, err = snapshots.Clone(ctx, c.d.meta, src.volume, src.snapshot, info, c.d.cfg.SnapshotTimeout, c.d.snap)
		}
	}
	if errors.Is(err, torus.ErrExist) {
		v, err = c.d.meta.Volume(ctx, tname)
		if err != nil {
			return nil, toStatus("create volume: read existing "+tname, err)
		}
		switch {
		case v.Labels[LabelName] != name:
			return nil, status.Errorf(codes.AlreadyExists, "Torus volume %s exists but was not created for CSI name %q (its %s label is %q)",
				tname, name, LabelName, v.Labels[LabelName])
		case v.Labels[LabelParameters] != labels[LabelParameters]:
			return nil, status.Errorf(codes.AlreadyExists, "volume %q exists with other parameters (%s, asked %s)",
				name, v.Labels[LabelParameters], labels[LabelParameters])
		case !fits(v.Size, req.GetCapacityRange()) && (src == nil || v.Size != src.size):
			return nil, status.Errorf(codes.AlreadyExists, "volume %q exists with size %d, outside the capacity range [%d, %d]",
				name, v.Size, req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes())
		case !src.madeFrom(v):
			return nil, status.Errorf(codes.AlreadyExists, "volume %q exists with another content source (%s)", name, parentOf(v))
		}
		return c.created(v, req), nil
	}
	if err != nil {
		return nil, toStatus("create volume "+tname, err)
	}
	return c.created(v, req), nil
}

// created is CreateVolume's answer: the volume, with the request's
// content source when it has one.
func (c *controller) created(v torus.VolumeInfo, req *csipb.CreateVolumeRequest) *csipb.CreateVolumeResponse {
	out := csiVolume(v)
	out.ContentSource = req.GetVolumeContentSource()
	return &csipb.CreateVolumeResponse{Volume: out}
}

// cloneSource is a CreateVolume content source that exists: a snapshot
// (snapshot != "") or a volume.
type cloneSource struct {
	volume, snapshot string
	size             int64 // the source volume's size
}

func (s *cloneSource) name() string {
	if s.snapshot == "" {
		return "volume " + s.volume
	}
	return "snapshot " + SnapshotID(s.volume, s.snapshot)
}

// madeFrom reports whether v is a clone of s (or s is nil and v no clone).
func (s *cloneSource) madeFrom(v torus.VolumeInfo) bool {
	if s == nil || v.Parent == nil {
		return s == nil && v.Parent == nil
	}
	if s.snapshot == "" { // cloned through the implicit snapshot
		return v.Parent.Volume == s.volume && strings.HasPrefix(v.Parent.Snapshot, snapshots.CloneSnapshotPrefix)
	}
	return v.Parent.Volume == s.volume && v.Parent.Snapshot == s.snapshot
}

func parentOf(v torus.VolumeInfo) string {
	if v.Parent == nil {
		return "none"
	}
	return SnapshotID(v.Parent.Volume, v.Parent.Snapshot)
}

// source resolves a content source: nil for none, NotFound if it does not
// exist.
func (c *controller) source(ctx context.Context, src *csipb.VolumeContentSource) (*cloneSource, error) {
	if src == nil {
		return nil, nil
	}
	switch t := src.GetType().(type) {
	case *csipb.VolumeContentSource_Snapshot:
		id := t.Snapshot.GetSnapshotId()
		vol, snap, ok := ParseSnapshotID(id)
		if !ok {
			return nil, status.Errorf(codes.NotFound, "source snapshot %q does not exist", id)
		}
		if _, err := c.d.meta.Snapshot(ctx, vol, snap); err != nil {
			return nil, toStatus("source snapshot "+id, err)
		}
		v, err := c.d.meta.Volume(ctx, vol)
		if err != nil {
			return nil, toStatus("source snapshot "+id, err)
		}
		return &cloneSource{volume: vol, snapshot: snap, size: v.Size}, nil
	case *csipb.VolumeContentSource_Volume:
		id := t.Volume.GetVolumeId()
		if torus.ValidName(id) != nil {
			return nil, status.Errorf(codes.NotFound, "source volume %q does not exist", id)
		}
		v, err := c.d.meta.Volume(ctx, id)
		if err != nil {
			return nil, toStatus("source volume "+id, err)
		}
		return &cloneSource{volume: id, size: v.Size}, nil
	}
	return nil, invalid("unknown volume content source")
}

// volume reads a volume by CSI volume ID; an ID that is no valid Torus
// name is NotFound.
func (c *controller) volume(ctx context.Context, op, id string) (torus.VolumeInfo, error) {
	if id == "" {
		return torus.VolumeInfo{}, invalid("%s: volume ID is missing", op)
	}
	if torus.ValidName(id) != nil {
		return torus.VolumeInfo{}, status.Errorf(codes.NotFound, "%s: volume %q does not exist", op, id)
	}
	v, err := c.d.meta.Volume(ctx, id)
	if err != nil {
		return torus.VolumeInfo{}, toStatus(op, err)
	}
	return v, nil
}

// DeleteVolume deletes a volume the driver created. A missing volume is
// success. FailedPrecondition when the volume is attached (its writer is
// named), when it has snapshots (Torus deletes a volume's snapshots with
// it, and CSI snapshots must outlive their source), or when the driver did
// not create it.
func (c *controller) DeleteVolume(ctx context.Context, req *csipb.DeleteVolumeRequest) (*csipb.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	v, err := c.volume(ctx, "delete volume", id)
	if status.Code(err) == codes.NotFound {
		return &csipb.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	release, err := c.d.acquire("volume " + id)
	if err != nil {
		return nil, err
	}
	defer release()
	if _, ok := v.Labels[LabelName]; !ok {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s was not created by the CSI driver (no %s label); delete it with torusctl", id, LabelName)
	}
	snaps, err := c.d.meta.Snapshots(ctx, id)
	if errors.Is(err, torus.ErrNotExist) {
		return &csipb.DeleteVolumeResponse{}, nil
	}
	if err != nil {
		return nil, toStatus("delete volume "+id+": list snapshots", err)
	}
	if len(snaps) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s has %d snapshots (first %s); delete them first",
			id, len(snaps), SnapshotID(id, snaps[0].Name))
	}
	err = c.d.meta.DeleteVolume(ctx, id)
	var le *torus.LockedError
	switch {
	case err == nil, errors.Is(err, torus.ErrNotExist):
		return &csipb.DeleteVolumeResponse{}, nil
	case errors.As(err, &le):
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is in use: attached by %s (epoch %d)", id, le.Holder, le.Epoch)
	}
	return nil, toStatus("delete volume "+id, err)
}

// ValidateVolumeCapabilities confirms the capabilities when Torus can give
// all of them, and otherwise says why not.
func (c *controller) ValidateVolumeCapabilities(ctx context.Context, req *csipb.ValidateVolumeCapabilitiesRequest) (*csipb.ValidateVolumeCapabilitiesResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, invalid("volume ID is missing")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, invalid("volume capabilities are missing")
	}
	if _, err := c.volume(ctx, "validate volume capabilities", id); err != nil {
		return nil, err
	}
	for _, vc := range req.GetVolumeCapabilities() {
		if why := checkCapability(vc); why != "" {
			return &csipb.ValidateVolumeCapabilitiesResponse{Message: why}, nil
		}
	}
	return &csipb.ValidateVolumeCapabilitiesResponse{Confirmed: &csipb.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// health is a volume's CSI health from the status the daemons publish:
// healthy (or not reported yet) has no entries, degraded is DEGRADED (every
// segment readable, some with too few copies), unavailable is
// INACCESSIBLE (some segment has no copy on an up daemon).
func health(name string, st torus.VolumeStatus, ok bool) *csipb.VolumeHealth {
	h := &csipb.VolumeHealth{VolumeId: name}
	if !ok || st.Health == torus.VolumeHealthy {
		return h
	}
	msg := fmt.Sprintf("%d segments under-replicated, %d with no copy on an up daemon, %d bytes to heal (reported by %s at %s)",
		st.UnderReplicated, st.Unavailable, st.PendingBytes, st.Reporter, st.Updated.UTC().Format("2006-01-02T15:04:05Z"))
	t := csipb.VolumeHealthErrorType_DEGRADED
	if st.Health == torus.VolumeUnavailable {
		t = csipb.VolumeHealthErrorType_INACCESSIBLE
	}
	h.HealthStatuses = []*csipb.VolumeHealth_VolumeHealthEntry{{Status: t, Reason: string(st.Health), Message: msg}}
	return h
}

// ListVolumes lists the volumes the driver created, by Torus name, in
// pages of MaxEntries (0: all). A token the driver did not make is
// Aborted.
func (c *controller) ListVolumes(ctx context.Context, req *csipb.ListVolumesRequest) (*csipb.ListVolumesResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, invalid("max entries %d is negative", req.GetMaxEntries())
	}
	start, ok := parseToken(req.GetStartingToken())
	if !ok {
		return nil, status.Errorf(codes.Aborted, "starting token %q was not made by this driver", req.GetStartingToken())
	}
	vols, err := c.d.meta.Volumes(ctx)
	if err != nil {
		return nil, toStatus("list volumes", err)
	}
	var mine []torus.VolumeInfo
	for _, v := range vols { // sorted by name
		if _, ok := v.Labels[LabelName]; ok && v.Name >= start {
			mine = append(mine, v)
		}
	}
	page, next := paginate(mine, int(req.GetMaxEntries()), func(v torus.VolumeInfo) string { return v.Name })
	resp := &csipb.ListVolumesResponse{NextToken: next}
	for _, v := range page {
		resp.Entries = append(resp.Entries, &csipb.ListVolumesResponse_Entry{Volume: csiVolume(v)})
	}
	return resp, nil
}

// paginate cuts items (sorted by key) to max entries (0: all) and returns
// the token of the next page ("" when none).
func paginate[T any](items []T, max int, key func(T) string) ([]T, string) {
	if max == 0 || len(items) <= max {
		return items, ""
	}
	return items[:max], pageToken(key(items[max]))
}

// ControllerGetVolume reports a volume.
func (c *controller) ControllerGetVolume(ctx context.Context, req *csipb.ControllerGetVolumeRequest) (*csipb.ControllerGetVolumeResponse, error) {
	v, err := c.volume(ctx, "get volume", req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	return &csipb.ControllerGetVolumeResponse{Volume: csiVolume(v), Status: &csipb.ControllerGetVolumeResponse_VolumeStatus{}}, nil
}

// ControllerGetVolumeHealth reports a volume's health (see health).
func (c *controller) ControllerGetVolumeHealth(ctx context.Context, req *csipb.ControllerGetVolumeHealthRequest) (*csipb.ControllerGetVolumeHealthResponse, error) {
	v, err := c.volume(ctx, "get volume health", req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	statuses, err := c.d.meta.VolumeStatuses(ctx)
	if err != nil {
		return nil, toStatus("get volume health: statuses", err)
	}
	st, ok := statuses[v.Name]
	return &csipb.ControllerGetVolumeHealthResponse{VolumeHealth: health(v.Name, st, ok)}, nil
}

// ControllerListVolumeHealth reports the health of the driver's volumes,
// paginated as ListVolumes.
func (c *controller) ControllerListVolumeHealth(ctx context.Context, req *csipb.ControllerListVolumeHealthRequest) (*csipb.ControllerListVolumeHealthResponse, error) {
	lv, err := c.ListVolumes(ctx, &csipb.ListVolumesRequest{MaxEntries: req.GetMaxEntries(), StartingToken: req.GetStartingToken()})
	if err != nil {
		return nil, err
	}
	statuses, err := c.d.meta.VolumeStatuses(ctx)
	if err != nil {
		return nil, toStatus("list volume health: statuses", err)
	}
	resp := &csipb.ControllerListVolumeHealthResponse{NextToken: lv.GetNextToken()}
	for _, e := range lv.GetEntries() {
		id := e.GetVolume().GetVolumeId()
		st, ok := statuses[id]
		resp.Entries = append(resp.Entries, health(id, st, ok))
	}
	return resp, nil
}

// TopologyZoneKey is the topology segment naming a zone: a daemon's
// location zone (torusd --location zone=Z), a node's torus-csi --zone.
const TopologyZoneKey = "topology.torus.io/zone"

// GetCapacity is the space free on the up daemons divided by the
// replication factor: what new data can still take (volumes are thin).
// With accessible_topology naming a zone (TopologyZoneKey), only that
// zone's daemons count: the capacity the external-provisioner publishes
// per zone (CSIStorageCapacity). Other segments are ignored.
func (c *controller) GetCapacity(ctx context.Context, req *csipb.GetCapacityRequest) (*csipb.GetCapacityResponse, error) {
	for _, vc := range req.GetVolumeCapabilities() {
		if checkCapability(vc) != "" {
			return &csipb.GetCapacityResponse{}, nil
		}
	}
	ring, err := c.d.meta.Ring(ctx)
	if err != nil {
		return nil, toStatus("get capacity: ring", err)
	}
	peers, err := c.d.meta.Peers(ctx)
	if err != nil {
		return nil, toStatus("get capacity: peers", err)
	}
	zone, byZone := req.GetAccessibleTopology().GetSegments()[TopologyZoneKey]
	var free int64
	for _, p := range peers {
		if byZone && p.Zone != zone {
			continue
		}
		if p.State == torus.PeerUp && p.Capacity > p.Used {
			free += p.Capacity - p.Used
		}
	}
	if ring.Replication > 0 {
		free /= int64(ring.Replication)
	}
	return &csipb.GetCapacityResponse{AvailableCapacity: free}, nil
}

// ControllerExpandVolume grows a volume to the required bytes rounded up
// to 4 KiB (never shrinks). An attached writer picks the new size up
// within its refresh interval (online); a mount volume's filesystem must
// still be grown on the node.
func (c *controller) ControllerExpandVolume(ctx context.Context, req *csipb.ControllerExpandVolumeRequest) (*csipb.ControllerExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, invalid("volume ID is missing")
	}
	if req.GetCapacityRange() == nil {
		return nil, invalid("capacity range is missing")
	}
	if vc := req.GetVolumeCapability(); vc != nil {
		if why := checkCapability(vc); why != "" {
			return nil, invalid("%s", why)
		}
	}
	cr := req.GetCapacityRange()
	if cr.GetRequiredBytes() < 0 || cr.GetLimitBytes() < 0 || (cr.GetLimitBytes() > 0 && cr.GetRequiredBytes() > cr.GetLimitBytes()) {
		return nil, invalid("bad capacity range [%d, %d]", cr.GetRequiredBytes(), cr.GetLimitBytes())
	}
	release, err := c.d.acquire("volume " + id)
	if err != nil {
		return nil, err
	}
	defer release()
	v, err := c.volume(ctx, "expand volume", id)
	if err != nil {
		return nil, err
	}
	size := roundUp(cr.GetRequiredBytes())
	if lim := cr.GetLimitBytes(); lim > 0 && size > lim {
		return nil, status.Errorf(codes.OutOfRange, "no multiple of %d bytes lies in [%d, %d]", torus.BlockSize, cr.GetRequiredBytes(), lim)
	}
	nodeExpand := req.GetVolumeCapability().GetBlock() == nil
	if size <= v.Size {
		return &csipb.ControllerExpandVolumeResponse{CapacityBytes: v.Size, NodeExpansionRequired: nodeExpand}, nil
	}
	v.Size = size
	if err := c.d.meta.UpdateVolume(ctx, v); err != nil {
		return nil, toStatus("expand volume "+id, err)
	}
	return &csipb.ControllerExpandVolumeResponse{CapacityBytes: size, NodeExpansionRequired: nodeExpand}, nil
}

func (c *controller) csiSnapshot(s torus.Snapshot, size int64) *csipb.Snapshot {
	return &csipb.Snapshot{
		SnapshotId:     SnapshotID(s.Volume, s.Name),
		SourceVolumeId: s.Volume,
		SizeBytes:      size,
		CreationTime:   timestamppb.New(s.Created),
		ReadyToUse:     true,
	}
}

// findSnapshot looks for a Torus snapshot named tname on any volume.
func (c *controller) findSnapshot(ctx context.Context, tname string) (torus.Snapshot, bool, error) {
	vols, err := c.d.meta.Volumes(ctx)
	if err != nil {
		return torus.Snapshot{}, false, err
	}
	for _, v := range vols {
		s, err := c.d.meta.Snapshot(ctx, v.Name, tname)
		if err == nil {
			return s, true, nil
		}
		if !errors.Is(err, torus.ErrNotExist) {
			return torus.Snapshot{}, false, err
		}
	}
	return torus.Snapshot{}, false, nil
}

// CreateSnapshot takes the Torus snapshot TorusName(name) of the source
// volume: through its writer when it is attached (waiting up to
// Config.SnapshotTimeout), else by opening it briefly. Idempotent by name;
// the same name on another volume is AlreadyExists. Snapshots are ready at
// once (ReadyToUse).
func (c *controller) CreateSnapshot(ctx context.Context, req *csipb.CreateSnapshotRequest) (*csipb.CreateSnapshotResponse, error) {
	name, src := req.GetName(), req.GetSourceVolumeId()
	if err := checkCSIName("snapshot", name); err != nil {
		return nil, invalid("%v", err)
	}
	if src == "" {
		return nil, invalid("source volume ID is missing")
	}
	if len(req.GetParameters()) > 0 {
		return nil, invalid("snapshot parameters are not supported (got %d)", len(req.GetParameters()))
	}
	tname := TorusName(name)
	release, err := c.d.acquire("snapshot " + tname)
	if err != nil {
		return nil, err
	}
	defer release()
	v, err := c.volume(ctx, "create snapshot", src)
	if err != nil {
		return nil, err
	}
	existing, ok, err := c.findSnapshot(ctx, tname)
	if err != nil {
		return nil, toStatus("create snapshot: look for "+tname, err)
	}
	if ok {
		if existing.Volume != src {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %q exists already, of volume %s, not %s", name, existing.Volume, src)
		}
		return &csipb.CreateSnapshotResponse{Snapshot: c.csiSnapshot(existing, v.Size)}, nil
	}
	err = snapshots.Take(ctx, c.d.meta, src, tname, c.d.cfg.SnapshotTimeout, c.d.snap)
	if err != nil && !errors.Is(err, torus.ErrExist) {
		return nil, toStatus("create snapshot "+SnapshotID(src, tname), err)
	}
	s, err := c.d.meta.Snapshot(ctx, src, tname)
	if err != nil {
		return nil, toStatus("create snapshot: read "+SnapshotID(src, tname), err)
	}
	return &csipb.CreateSnapshotResponse{Snapshot: c.csiSnapshot(s, v.Size)}, nil
}

// DeleteSnapshot deletes a snapshot; a missing one is success. Its
// segments are collected by the daemons' GC.
func (c *controller) DeleteSnapshot(ctx context.Context, req *csipb.DeleteSnapshotRequest) (*csipb.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, invalid("snapshot ID is missing")
	}
	vol, snap, ok := ParseSnapshotID(id)
	if !ok {
		return &csipb.DeleteSnapshotResponse{}, nil
	}
	release, err := c.d.acquire("snapshot " + snap)
	if err != nil {
		return nil, err
	}
	defer release()
	if err := c.d.meta.DeleteSnapshot(ctx, vol, snap); err != nil && !errors.Is(err, torus.ErrNotExist) {
		return nil, toStatus("delete snapshot "+id, err)
	}
	return &csipb.DeleteSnapshotResponse{}, nil
}

// GetSnapshot reads one snapshot: NotFound if it does not exist.
func (c *controller) GetSnapshot(ctx context.Context, req *csipb.GetSnapshotRequest) (*csipb.GetSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, invalid("snapshot ID is missing")
	}
	vol, snap, ok := ParseSnapshotID(id)
	if !ok {
		return nil, status.Errorf(codes.NotFound, "snapshot %q does not exist", id)
	}
	s, err := c.d.meta.Snapshot(ctx, vol, snap)
	if err != nil {
		return nil, toStatus("get snapshot "+id, err)
	}
	v, err := c.d.meta.Volume(ctx, vol)
	if err != nil {
		return nil, toStatus("get snapshot "+id+": volume", err)
	}
	return &csipb.GetSnapshotResponse{Snapshot: c.csiSnapshot(s, v.Size)}, nil
}

// ListSnapshots lists snapshots sorted by ID, in pages of MaxEntries (0:
// all): one by snapshot ID, those of one source volume, or those of every
// volume. Unknown IDs give an empty list; a token the driver did not make
// is Aborted.
func (c *controller) ListSnapshots(ctx context.Context, req *csipb.ListSnapshotsRequest) (*csipb.ListSnapshotsResponse, error) {
	if req.GetMaxEntries() < 0 {
		return nil, invalid("max entries %d is negative", req.GetMaxEntries())
	}
	start, ok := parseToken(req.GetStartingToken())
	if !ok {
		return nil, status.Errorf(codes.Aborted, "starting token %q was not made by this driver", req.GetStartingToken())
	}
	type entry struct {
		s    torus.Snapshot
		size int64
	}
	var all []entry
	add := func(v torus.VolumeInfo, snaps ...torus.Snapshot) {
		for _, s := range snaps {
			all = append(all, entry{s, v.Size})
		}
	}
	switch {
	case req.GetSnapshotId() != "":
		vol, snap, ok := ParseSnapshotID(req.GetSnapshotId())
		if !ok || (req.GetSourceVolumeId() != "" && req.GetSourceVolumeId() != vol) {
			break
		}
		v, err := c.d.meta.Volume(ctx, vol)
		if errors.Is(err, torus.ErrNotExist) {
			break
		}
		if err != nil {
			return nil, toStatus("list snapshots", err)
		}
		s, err := c.d.meta.Snapshot(ctx, vol, snap)
		if errors.Is(err, torus.ErrNotExist) {
			break
		}
		if err != nil {
			return nil, toStatus("list snapshots", err)
		}
		add(v, s)
	case req.GetSourceVolumeId() != "":
		id := req.GetSourceVolumeId()
		if torus.ValidName(id) != nil {
			break
		}
		v, err := c.d.meta.Volume(ctx, id)
		if errors.Is(err, torus.ErrNotExist) {
			break
		}
		if err != nil {
			return nil, toStatus("list snapshots", err)
		}
		snaps, err := c.d.meta.Snapshots(ctx, id)
		if err != nil && !errors.Is(err, torus.ErrNotExist) {
			return nil, toStatus("list snapshots of "+id, err)
		}
		add(v, snaps...)
	default:
		vols, err := c.d.meta.Volumes(ctx)
		if err != nil {
			return nil, toStatus("list snapshots", err)
		}
		for _, v := range vols {
			snaps, err := c.d.meta.Snapshots(ctx, v.Name)
			if errors.Is(err, torus.ErrNotExist) {
				continue // deleted meanwhile
			}
			if err != nil {
				return nil, toStatus("list snapshots of "+v.Name, err)
			}
			add(v, snaps...)
		}
	}
	sort.Slice(all, func(i, j int) bool {
		return SnapshotID(all[i].s.Volume, all[i].s.Name) < SnapshotID(all[j].s.Volume, all[j].s.Name)
	})
	from := sort.Search(len(all), func(i int) bool { return SnapshotID(all[i].s.Volume, all[i].s.Name) >= start })
	page, next := paginate(all[from:], int(req.GetMaxEntries()), func(e entry) string { return SnapshotID(e.s.Volume, e.s.Name) })
	resp := &csipb.ListSnapshotsResponse{NextToken: next}
	for _, e := range page {
		resp.Entries = append(resp.Entries, &csipb.ListSnapshotsResponse_Entry{Snapshot: c.csiSnapshot(e.s, e.size)})
	}
	return resp, nil
}
