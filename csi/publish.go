package csi

import (
	"context"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/torus-storage/torus"
)

// ControllerPublishVolume records in etcd that the volume is published to
// the node (torus.Attachments.PutAttachment, one compare-and-swap): of two
// controllers publishing to different nodes, one wins. The same node again
// is success; with another readonly flag, AlreadyExists; another node is
// FailedPrecondition naming the node that holds it. NotFound for a missing
// volume or a node whose node service never registered.
func (c *controller) ControllerPublishVolume(ctx context.Context, req *csipb.ControllerPublishVolumeRequest) (*csipb.ControllerPublishVolumeResponse, error) {
	const op = "publish"
	id, nodeID, vc := req.GetVolumeId(), req.GetNodeId(), req.GetVolumeCapability()
	switch {
	case id == "":
		return nil, invalid("volume ID is missing")
	case nodeID == "":
		return nil, invalid("node ID is missing")
	case vc == nil:
		return nil, invalid("volume capability is missing")
	}
	if why := checkCapability(vc); why != "" {
		return nil, invalid("%s", why)
	}
	if err := torus.ValidNodeID(nodeID); err != nil {
		return nil, status.Errorf(codes.NotFound, "%s: node %q does not exist: %v", op, nodeID, err)
	}
	if torus.ValidName(id) != nil {
		return nil, status.Errorf(codes.NotFound, "%s: volume %q does not exist", op, id)
	}
	ro := req.GetReadonly()
	a, err := c.d.meta.PutAttachment(ctx, torus.VolumeAttachment{Volume: id, Node: nodeID, ReadOnly: ro})
	if err != nil {
		return nil, toStatus(op, err)
	}
	switch {
	case a.Node != nodeID:
		return nil, status.Errorf(codes.FailedPrecondition, "%s: volume %s is published to node %s (since %s); unpublish it from %s first",
			op, id, a.Node, a.Since.Format(time.RFC3339), a.Node)
	case a.ReadOnly != ro:
		return nil, status.Errorf(codes.AlreadyExists, "%s: volume %s is published to node %s with readonly %v", op, id, nodeID, a.ReadOnly)
	}
	return &csipb.ControllerPublishVolumeResponse{}, nil
}

// ControllerUnpublishVolume removes the volume's attachment to the node
// and, in the same etcd transaction, the volume's writer lock
// (torus.Attachments.DeleteAttachment): a node that is gone, or cut off
// and still running its writer, is fenced by the next node's Lock. No
// node ID means whichever node holds it. A volume or attachment that does
// not exist, or an attachment to another node, is success (nothing to
// unpublish from this node).
func (c *controller) ControllerUnpublishVolume(ctx context.Context, req *csipb.ControllerUnpublishVolumeRequest) (*csipb.ControllerUnpublishVolumeResponse, error) {
	const op = "unpublish"
	id, nodeID := req.GetVolumeId(), req.GetNodeId()
	if id == "" {
		return nil, invalid("volume ID is missing")
	}
	if torus.ValidName(id) != nil {
		return &csipb.ControllerUnpublishVolumeResponse{}, nil
	}
	if nodeID == "" {
		a, ok, err := c.d.meta.Attachment(ctx, id)
		if Code(err) == codes.NotFound || (err == nil && !ok) {
			return &csipb.ControllerUnpublishVolumeResponse{}, nil
		}
		if err != nil {
			return nil, toStatus(op, err)
		}
		nodeID = a.Node
	}
	removed, err := c.d.meta.DeleteAttachment(ctx, id, nodeID)
	if err != nil {
		return nil, toStatus(op, err)
	}
	if removed {
		c.d.log.Info("csi: unpublished; the node's writer, if any, is fenced", "volume", id, "node", nodeID)
	}
	return &csipb.ControllerUnpublishVolumeResponse{}, nil
}
