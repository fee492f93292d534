package csi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/blockdev"
)

// node is the CSI Node service: it stages a volume (attach through the
// Attacher, format a device that reads as empty, mount at the staging
// path), publishes it (bind mounts), expands and reports on it. What it
// staged is kept in state files under Config.StateDir, so a restarted node
// service carries on. See docs/kubernetes.md.
type node struct {
	csipb.UnimplementedNodeServer
	d *Driver
}

// nodeCaps are the advertised node capabilities.
var nodeCaps = []csipb.NodeServiceCapability_RPC_Type{
	csipb.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
	csipb.NodeServiceCapability_RPC_EXPAND_VOLUME,
	csipb.NodeServiceCapability_RPC_GET_VOLUME_STATS,
	csipb.NodeServiceCapability_RPC_GET_VOLUME_HEALTH, // CSI v1.13's successor of VOLUME_CONDITION
}

// Bounds of the node's waits.
const (
	// deviceWait bounds how long NodeStage and NodeExpand wait for the
	// device to show the volume's size.
	deviceWait = 30 * time.Second
)

func (n *node) NodeGetInfo(ctx context.Context, _ *csipb.NodeGetInfoRequest) (*csipb.NodeGetInfoResponse, error) {
	resp := &csipb.NodeGetInfoResponse{NodeId: n.d.cfg.NodeID}
	if z := n.d.cfg.Zone; z != "" {
		resp.AccessibleTopology = &csipb.Topology{Segments: map[string]string{TopologyZoneKey: z}}
	}
	return resp, nil
}

func (n *node) NodeGetCapabilities(ctx context.Context, _ *csipb.NodeGetCapabilitiesRequest) (*csipb.NodeGetCapabilitiesResponse, error) {
	out := make([]*csipb.NodeServiceCapability, 0, len(nodeCaps))
	for _, t := range nodeCaps {
		out = append(out, &csipb.NodeServiceCapability{Type: &csipb.NodeServiceCapability_Rpc{
			Rpc: &csipb.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csipb.NodeGetCapabilitiesResponse{Capabilities: out}, nil
}

// attacher is the node's Attacher, FailedPrecondition when it has none.
func (n *node) attacher(op string) (Attacher, error) {
	if n.d.attacher == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "%s: this node service has no attach backend (torus-csi --torusblk)", op)
	}
	return n.d.attacher, nil
}

// lock takes the per-volume node lock: a second call on the volume while
// one is in flight is Aborted (the CO retries).
func (n *node) lock(volume string) (func(), error) { return n.d.acquire("node/" + volume) }

// volume reads the volume's record; a volume ID that is not a Torus name
// cannot exist (NotFound).
func (n *node) volume(ctx context.Context, op, id string) (torus.VolumeInfo, error) {
	if torus.ValidName(id) != nil {
		return torus.VolumeInfo{}, status.Errorf(codes.NotFound, "%s: volume %q does not exist", op, id)
	}
	v, err := n.d.meta.Volume(ctx, id)
	if err != nil {
		return torus.VolumeInfo{}, toStatus(op, err)
	}
	return v, nil
}

func (n *node) NodeStageVolume(ctx context.Context, req *csipb.NodeStageVolumeRequest) (*csipb.NodeStageVolumeResponse, error) {
	const op = "stage"
	id, staging, vc := req.GetVolumeId(), req.GetStagingTargetPath(), req.GetVolumeCapability()
	switch {
	case id == "":
		return nil, invalid("volume ID is missing")
	case staging == "":
		return nil, invalid("staging target path is missing")
	case vc == nil:
		return nil, invalid("volume capability is missing")
	}
	if why := checkCapability(vc); why != "" {
		return nil, invalid("%s", why)
	}
	release, err := n.lock(id)
	if err != nil {
		return nil, err
	}
	defer release()
	v, err := n.volume(ctx, op, id)
	if err != nil {
		return nil, err
	}
	if a, ok, err := n.d.meta.Attachment(ctx, id); err != nil {
		return nil, toStatus(op, err)
	} else if ok && a.Node != n.d.cfg.NodeID {
		return nil, status.Errorf(codes.FailedPrecondition, "%s: volume %s is published to node %s (since %s), not to this node %s",
			op, id, a.Node, a.Since.Format(time.RFC3339), n.d.cfg.NodeID)
	}
	want := nodeState{
		Volume: id, StagingPath: staging,
		ReadOnly: vc.GetAccessMode().GetMode() == csipb.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
	}
	if m := vc.GetMount(); m != nil {
		want.FSType = m.GetFsType()
		if want.FSType == "" {
			want.FSType = n.d.cfg.DefaultFSType
		}
		want.MountFlags = m.GetMountFlags()
	} else {
		want.Block = true
	}
	st, ok, err := n.d.states.load(id)
	if err != nil {
		return nil, toStatus(op, err)
	}
	if ok {
		if st.StagingPath != staging || st.Block != want.Block || st.ReadOnly != want.ReadOnly || st.FSType != want.FSType {
			return nil, status.Errorf(codes.AlreadyExists, "%s: volume %s is staged at %s (block %v, fs %q, read-only %v) on this node, incompatible with this request",
				op, id, st.StagingPath, st.Block, st.FSType, st.ReadOnly)
		}
		want.Targets = st.Targets
	}
	// The state is on disk before anything is attached, so that whatever
	// follows can be found and undone after a crash.
	if err := n.d.states.save(want); err != nil {
		return nil, toStatus(op, err)
	}
	att, err := n.attacher(op)
	if err != nil {
		return nil, err
	}
	a, err := att.Attach(ctx, id, want.ReadOnly)
	if err != nil {
		return nil, toStatus(op+": attach", err)
	}
	want.Device = a.Device
	if err := n.d.states.save(want); err != nil {
		return nil, toStatus(op, err)
	}
	if _, err := waitSize(ctx, a.Device, v.Size); err != nil {
		return nil, toStatus(op, err)
	}
	if !want.Block {
		if err := n.mountStaging(ctx, want); err != nil {
			return nil, err
		}
	}
	want.Staged = true
	if err := n.d.states.save(want); err != nil {
		return nil, toStatus(op, err)
	}
	n.d.log.Info("csi: staged", "volume", id, "device", a.Device, "staging", staging, "block", want.Block, "fs", want.FSType)
	return &csipb.NodeStageVolumeResponse{}, nil
}

// mountStaging formats the device if it reads as empty and mounts it at
// the staging path; a staging path already mounted is left as it is.
func (n *node) mountStaging(ctx context.Context, st nodeState) error {
	const op = "stage"
	if err := os.MkdirAll(st.StagingPath, 0o750); err != nil {
		return status.Errorf(codes.Internal, "%s: staging path: %v", op, err)
	}
	mounted, err := n.d.mounter.IsMountPoint(st.StagingPath)
	if err != nil {
		return status.Errorf(codes.Internal, "%s: is %s a mount point: %v", op, st.StagingPath, err)
	}
	if mounted {
		return nil
	}
	fs, err := blockdev.Probe(ctx, st.Device)
	if err != nil {
		return status.Errorf(Code(err), "%s: %v", op, err)
	}
	switch {
	case fs == "" && st.ReadOnly:
		return status.Errorf(codes.FailedPrecondition, "%s: volume %s has no filesystem and is attached read-only: nothing to mount", op, st.Volume)
	case fs == "":
		if err := blockdev.Mkfs(ctx, st.FSType, st.Device); err != nil {
			return status.Errorf(codes.Internal, "%s: %v", op, err)
		}
		n.d.log.Info("csi: formatted", "volume", st.Volume, "device", st.Device, "fs", st.FSType)
	case fs != st.FSType:
		return status.Errorf(codes.FailedPrecondition, "%s: volume %s holds a %s filesystem, not the %s asked for", op, st.Volume, fs, st.FSType)
	}
	opts := append([]string(nil), st.MountFlags...)
	if st.ReadOnly {
		// A read-only device cannot replay a journal: mount without it.
		opts = append(opts, "ro")
		switch st.FSType {
		case "ext4", "ext3":
			opts = append(opts, "noload")
		case "xfs":
			opts = append(opts, "norecovery")
		}
	}
	if err := n.d.mounter.Mount(st.Device, st.StagingPath, st.FSType, opts); err != nil {
		return status.Errorf(codes.Internal, "%s: mount %s at %s: %v", op, st.Device, st.StagingPath, err)
	}
	return nil
}

// deviceSize is a block device's size in bytes.
func deviceSize(dev string) (int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.Seek(0, io.SeekEnd)
}

// waitSize waits until dev shows at least size bytes, up to deviceWait.
func waitSize(ctx context.Context, dev string, size int64) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, deviceWait)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		got, err := deviceSize(dev)
		if err == nil && got >= size {
			return got, nil
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return 0, fmt.Errorf("device %s: %w: %w", dev, torus.ErrUnavailable, err)
			}
			return 0, fmt.Errorf("device %s shows %d bytes, not the volume's %d, after %v: %w", dev, got, size, deviceWait, torus.ErrUnavailable)
		case <-t.C:
		}
	}
}

func (n *node) NodeUnstageVolume(ctx context.Context, req *csipb.NodeUnstageVolumeRequest) (*csipb.NodeUnstageVolumeResponse, error) {
	const op = "unstage"
	id, staging := req.GetVolumeId(), req.GetStagingTargetPath()
	switch {
	case id == "":
		return nil, invalid("volume ID is missing")
	case staging == "":
		return nil, invalid("staging target path is missing")
	}
	if torus.ValidName(id) != nil {
		return &csipb.NodeUnstageVolumeResponse{}, nil // no such volume: nothing staged
	}
	release, err := n.lock(id)
	if err != nil {
		return nil, err
	}
	defer release()
	st, ok, err := n.d.states.load(id)
	if err != nil {
		return nil, toStatus(op, err)
	}
	if ok && len(st.Targets) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "%s: volume %s is still published at %s", op, id, st.Targets[0].Path)
	}
	paths := []string{staging}
	if ok && st.StagingPath != staging {
		paths = append(paths, st.StagingPath) // staged elsewhere: that mount is this volume's too
	}
	for _, p := range paths {
		if err := n.unmount(p); err != nil {
			return nil, status.Errorf(codes.Internal, "%s: %v", op, err)
		}
	}
	att, err := n.attacher(op)
	if err != nil {
		return nil, err
	}
	if err := att.Detach(ctx, id); err != nil {
		return nil, toStatus(op+": detach", err)
	}
	if err := n.d.states.remove(id); err != nil {
		return nil, toStatus(op, err)
	}
	n.d.log.Info("csi: unstaged", "volume", id, "staging", staging)
	return &csipb.NodeUnstageVolumeResponse{}, nil
}

// unmount unmounts path while it is a mount point; a missing path is
// success.
func (n *node) unmount(path string) error {
	for range 8 { // a path may carry stacked mounts
		mounted, err := n.d.mounter.IsMountPoint(path)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("is %s a mount point: %w", path, err)
		}
		if !mounted {
			return nil
		}
		if err := n.d.mounter.Unmount(path); err != nil {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	return fmt.Errorf("%s is still mounted after 8 unmounts", path)
}

func (n *node) NodePublishVolume(ctx context.Context, req *csipb.NodePublishVolumeRequest) (*csipb.NodePublishVolumeResponse, error) {
	const op = "publish"
	id, tgt, staging, vc := req.GetVolumeId(), req.GetTargetPath(), req.GetStagingTargetPath(), req.GetVolumeCapability()
	switch {
	case id == "":
		return nil, invalid("volume ID is missing")
	case tgt == "":
		return nil, invalid("target path is missing")
	case staging == "":
		return nil, invalid("staging target path is missing")
	case vc == nil:
		return nil, invalid("volume capability is missing")
	}
	if why := checkCapability(vc); why != "" {
		return nil, invalid("%s", why)
	}
	if _, err := n.volume(ctx, op, id); err != nil {
		return nil, err
	}
	release, err := n.lock(id)
	if err != nil {
		return nil, err
	}
	defer release()
	st, ok, err := n.d.states.load(id)
	if err != nil {
		return nil, toStatus(op, err)
	}
	if !ok || !st.Staged {
		return nil, status.Errorf(codes.FailedPrecondition, "%s: volume %s is not staged on this node (NodeStageVolume first)", op, id)
	}
	if st.StagingPath != staging {
		return nil, status.Errorf(codes.FailedPrecondition, "%s: volume %s is staged at %s, not %s", op, id, st.StagingPath, staging)
	}
	if st.Block != (vc.GetBlock() != nil) {
		return nil, status.Errorf(codes.InvalidArgument, "%s: volume %s is staged as block=%v, asked for block=%v", op, id, st.Block, vc.GetBlock() != nil)
	}
	ro := req.GetReadonly() || st.ReadOnly
	if t, ok := st.target(tgt); ok {
		if t.ReadOnly != ro {
			return nil, status.Errorf(codes.AlreadyExists, "%s: volume %s is published at %s with read-only %v", op, id, tgt, t.ReadOnly)
		}
		if mounted, err := n.d.mounter.IsMountPoint(tgt); err == nil && mounted {
			return &csipb.NodePublishVolumeResponse{}, nil
		}
	}
	src := st.StagingPath
	if st.Block {
		src = st.Device
		if err := os.MkdirAll(filepath.Dir(tgt), 0o750); err != nil {
			return nil, status.Errorf(codes.Internal, "%s: target directory: %v", op, err)
		}
		f, err := os.OpenFile(tgt, os.O_CREATE|os.O_RDONLY, 0o640)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "%s: target file: %v", op, err)
		}
		f.Close()
	} else if err := os.MkdirAll(tgt, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "%s: target directory: %v", op, err)
	}
	// The target is recorded before it is mounted, so a crash leaves
	// nothing mounted that the state does not name.
	st.setTarget(target{Path: tgt, ReadOnly: ro})
	if err := n.d.states.save(st); err != nil {
		return nil, toStatus(op, err)
	}
	opts := []string{"bind"}
	if ro {
		opts = append(opts, "ro")
	}
	if err := n.d.mounter.Mount(src, tgt, "", opts); err != nil {
		return nil, status.Errorf(codes.Internal, "%s: bind mount %s at %s: %v", op, src, tgt, err)
	}
	return &csipb.NodePublishVolumeResponse{}, nil
}

func (n *node) NodeUnpublishVolume(ctx context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	const op = "unpublish"
	id, tgt := req.GetVolumeId(), req.GetTargetPath()
	switch {
	case id == "":
		return nil, invalid("volume ID is missing")
	case tgt == "":
		return nil, invalid("target path is missing")
	}
	if torus.ValidName(id) == nil {
		release, err := n.lock(id)
		if err != nil {
			return nil, err
		}
		defer release()
	}
	if err := n.unmount(tgt); err != nil {
		return nil, status.Errorf(codes.Internal, "%s: %v", op, err)
	}
	if err := os.Remove(tgt); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "%s: remove target %s: %v", op, tgt, err)
	}
	if torus.ValidName(id) != nil {
		return &csipb.NodeUnpublishVolumeResponse{}, nil
	}
	st, ok, err := n.d.states.load(id)
	if err != nil {
		return nil, toStatus(op, err)
	}
	if ok {
		if _, had := st.target(tgt); had {
			st.dropTarget(tgt)
			if err := n.d.states.save(st); err != nil {
				return nil, toStatus(op, err)
			}
		}
	}
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}

// stagedAt finds the state of a volume that path belongs to: its staging
// path or one of its targets. NotFound otherwise.
func (n *node) stagedAt(op, id, path string) (nodeState, error) {
	if torus.ValidName(id) != nil {
		return nodeState{}, status.Errorf(codes.NotFound, "%s: volume %q does not exist", op, id)
	}
	st, ok, err := n.d.states.load(id)
	if err != nil {
		return nodeState{}, toStatus(op, err)
	}
	if !ok || !st.Staged {
		return nodeState{}, status.Errorf(codes.NotFound, "%s: volume %s is not staged on this node", op, id)
	}
	if _, isTarget := st.target(path); path != st.StagingPath && !isTarget {
		return nodeState{}, status.Errorf(codes.NotFound, "%s: volume %s is not staged or published at %s", op, id, path)
	}
	return st, nil
}

func (n *node) NodeExpandVolume(ctx context.Context, req *csipb.NodeExpandVolumeRequest) (*csipb.NodeExpandVolumeResponse, error) {
	const op = "node expand"
	id, path := req.GetVolumeId(), req.GetVolumePath()
	switch {
	case id == "":
		return nil, invalid("volume ID is missing")
	case path == "":
		return nil, invalid("volume path is missing")
	}
	release, err := n.lock(id)
	if err != nil {
		return nil, err
	}
	defer release()
	st, err := n.stagedAt(op, id, path)
	if err != nil {
		return nil, err
	}
	v, err := n.volume(ctx, op, id)
	if err != nil {
		return nil, err
	}
	if req.GetCapacityRange().GetRequiredBytes() > v.Size {
		return nil, status.Errorf(codes.OutOfRange, "%s: volume %s is %d bytes, less than the %d asked for (ControllerExpandVolume first)",
			op, id, v.Size, req.GetCapacityRange().GetRequiredBytes())
	}
	att, err := n.attacher(op)
	if err != nil {
		return nil, err
	}
	if err := att.Resize(ctx, id); err != nil {
		return nil, toStatus(op+": resize device", err)
	}
	size, err := waitSize(ctx, st.Device, v.Size)
	if err != nil {
		return nil, toStatus(op, err)
	}
	if !st.Block && !st.ReadOnly {
		if _, err := mount.NewResizeFs(n.d.exec).Resize(st.Device, st.StagingPath); err != nil {
			return nil, status.Errorf(codes.Internal, "%s: grow the %s filesystem of %s: %v", op, st.FSType, id, err)
		}
	}
	return &csipb.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

func (n *node) NodeGetVolumeStats(ctx context.Context, req *csipb.NodeGetVolumeStatsRequest) (*csipb.NodeGetVolumeStatsResponse, error) {
	const op = "volume stats"
	id, path := req.GetVolumeId(), req.GetVolumePath()
	switch {
	case id == "":
		return nil, invalid("volume ID is missing")
	case path == "":
		return nil, invalid("volume path is missing")
	}
	st, err := n.stagedAt(op, id, path)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(path); err != nil {
		return nil, status.Errorf(codes.NotFound, "%s: %v", op, err)
	}
	resp := &csipb.NodeGetVolumeStatsResponse{}
	if st.Block {
		size, err := deviceSize(st.Device)
		if err == nil {
			resp.Usage = []*csipb.VolumeUsage{{Unit: csipb.VolumeUsage_BYTES, Total: size}}
		}
		return resp, nil
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return nil, status.Errorf(codes.Internal, "%s: statfs %s: %v", op, path, err)
	}
	bs := int64(fs.Bsize)
	resp.Usage = []*csipb.VolumeUsage{
		{Unit: csipb.VolumeUsage_BYTES, Total: int64(fs.Blocks) * bs, Available: int64(fs.Bavail) * bs, Used: int64(fs.Blocks-fs.Bfree) * bs},
		{Unit: csipb.VolumeUsage_INODES, Total: int64(fs.Files), Available: int64(fs.Ffree), Used: int64(fs.Files - fs.Ffree)},
	}
	return resp, nil
}

// NodeGetVolumeHealth reports the cluster's view of the volume (as
// ControllerGetVolumeHealth) and, when it is staged here, this node's:
// INACCESSIBLE when the device is gone, the attacher no longer has the
// volume, or (for a writable attach) no writer holds the volume's lock —
// the writer on this node was fenced or lost its lease.
func (n *node) NodeGetVolumeHealth(ctx context.Context, req *csipb.NodeGetVolumeHealthRequest) (*csipb.NodeGetVolumeHealthResponse, error) {
	const op = "node volume health"
	id := req.GetVolumeId()
	if id == "" {
		return nil, invalid("volume ID is missing")
	}
	if _, err := n.volume(ctx, op, id); err != nil {
		return nil, err
	}
	sts, err := n.d.meta.VolumeStatuses(ctx)
	if err != nil {
		return nil, toStatus(op, err)
	}
	cs, ok := sts[id]
	h := health(id, cs, ok)
	st, staged, err := n.d.states.load(id)
	if err != nil {
		return nil, toStatus(op, err)
	}
	if staged {
		if e := n.nodeHealth(ctx, st); e != nil {
			h.HealthStatuses = append(h.HealthStatuses, e)
		}
	}
	return &csipb.NodeGetVolumeHealthResponse{VolumeHealth: h}, nil
}

// nodeHealth is this node's adverse condition of a staged volume, nil
// when there is none.
func (n *node) nodeHealth(ctx context.Context, st nodeState) *csipb.VolumeHealth_VolumeHealthEntry {
	bad := func(reason, format string, args ...any) *csipb.VolumeHealth_VolumeHealthEntry {
		return &csipb.VolumeHealth_VolumeHealthEntry{Status: csipb.VolumeHealthErrorType_INACCESSIBLE, Reason: reason, Message: fmt.Sprintf(format, args...)}
	}
	if n.d.attacher == nil {
		return bad("NoAttachBackend", "this node service has no attach backend")
	}
	a, ok, err := n.d.attacher.Get(st.Volume)
	switch {
	case err != nil:
		return bad("AttachmentUnknown", "attachment of %s: %v", st.Volume, err)
	case !ok:
		return bad("NotAttached", "volume %s is staged but no longer attached on this node", st.Volume)
	}
	if _, err := os.Stat(a.Device); err != nil {
		return bad("DeviceGone", "device %s of volume %s is gone: %v", a.Device, st.Volume, err)
	}
	if st.ReadOnly {
		return nil
	}
	if _, ok, err := n.d.meta.Writer(ctx, st.Volume); err != nil {
		return bad("WriterUnknown", "cannot check the writer of %s: %v", st.Volume, err)
	} else if !ok {
		return bad("WriterFenced", "no writer holds volume %s: the writer on this node was fenced or lost its lease; I/O fails until the volume is staged again", st.Volume)
	}
	return nil
}

// defaultExec is the command runner of filesystem resizes.
func defaultExec() utilexec.Interface { return utilexec.New() }
