package csi

import (
	"context"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
)

// node is the CSI Node service. For now it only identifies the node:
// staging, publishing, expansion and stats are not implemented
// (Unimplemented), and no node capability is advertised. See
// docs/kubernetes.md for what is missing.
type node struct {
	csipb.UnimplementedNodeServer
	d *Driver
}

func (n *node) NodeGetInfo(ctx context.Context, _ *csipb.NodeGetInfoRequest) (*csipb.NodeGetInfoResponse, error) {
	return &csipb.NodeGetInfoResponse{NodeId: n.d.cfg.NodeID}, nil
}

func (n *node) NodeGetCapabilities(ctx context.Context, _ *csipb.NodeGetCapabilitiesRequest) (*csipb.NodeGetCapabilitiesResponse, error) {
	return &csipb.NodeGetCapabilitiesResponse{}, nil
}

// NodeUnpublishVolume succeeds for any well-formed request: this node
// service never publishes a volume, so none is published at the target,
// and unpublish is idempotent by the spec.
func (n *node) NodeUnpublishVolume(ctx context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, invalid("volume ID is missing")
	}
	if req.GetTargetPath() == "" {
		return nil, invalid("target path is missing")
	}
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}
