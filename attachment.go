package torus

import (
	"context"
	"fmt"
	"time"
	"unicode"
)

// VolumeAttachment records that a volume is published to one node: the CSI
// controller's ControllerPublishVolume stores it, ControllerUnpublishVolume
// removes it (docs/kubernetes.md). At most one exists per volume, which is
// what keeps a second node from attaching while the first still may.
type VolumeAttachment struct {
	Volume   string    `json:"volume"`
	Node     string    `json:"node"` // the CSI node ID (NodeGetInfo)
	ReadOnly bool      `json:"readonly,omitempty"`
	Since    time.Time `json:"since"` // when it was stored
}

// MaxNodeIDLen bounds a node ID (a Kubernetes node name is at most 253).
const MaxNodeIDLen = 256

// ValidNodeID checks a node ID: 1..MaxNodeIDLen bytes of UTF-8 without
// control characters, spaces or '/' (a Kubernetes node name qualifies).
// Errors wrap ErrInvalid.
func ValidNodeID(id string) error {
	if id == "" || len(id) > MaxNodeIDLen {
		return fmt.Errorf("torus: %w: node ID must be 1..%d bytes, got %d", ErrInvalid, MaxNodeIDLen, len(id))
	}
	for _, r := range id {
		if r == unicode.ReplacementChar || r == '/' || unicode.IsControl(r) || unicode.IsSpace(r) {
			return fmt.Errorf("torus: %w: node ID %q has a '/', space or control character", ErrInvalid, id)
		}
	}
	return nil
}

// Attachments is the role of Metadata that records which node a volume is
// published to. Each method is one compare-and-swap in etcd, so two
// controllers racing to publish a volume to different nodes cannot both win.
type Attachments interface {
	// RegisterNode records that a CSI node service runs on node id (its
	// NodeGetInfo ID), with the time; a repeat refreshes the time. The
	// record is not leased: a node that is down stays known. ErrInvalid
	// for a bad ID (ValidNodeID).
	RegisterNode(ctx context.Context, id string) error
	// NodeRegistered reports whether RegisterNode was called for id.
	NodeRegistered(ctx context.Context, id string) (bool, error)
	// PutAttachment stores a (Since set to now) if the volume has no
	// attachment, and returns it. If the volume has one already, nothing
	// changes and the stored one is returned with a nil error: the caller
	// compares Node and ReadOnly (the same node is an idempotent
	// repeat, another node is a refusal naming it). ErrNotExist for a
	// missing volume or a node never registered (the message says which);
	// ErrInvalid for a bad node ID (ValidNodeID).
	PutAttachment(ctx context.Context, a VolumeAttachment) (VolumeAttachment, error)
	// Attachment reads the volume's attachment, ok=false when it has none.
	// ErrNotExist for a missing volume.
	Attachment(ctx context.Context, volume string) (a VolumeAttachment, ok bool, err error)
	// DeleteAttachment removes the volume's attachment if it names node
	// and, in the same step, the volume's writer record (as ForceUnlock),
	// so that any writer the node may still run is fenced: its head
	// commits fail with ErrFenced at once, and its stores once the next
	// Lock has incremented the epoch.
	// removed=false, with nothing changed, when the volume has no
	// attachment to node (already removed, attached to another node, or
	// the volume does not exist): unpublish is idempotent.
	DeleteAttachment(ctx context.Context, volume, node string) (removed bool, err error)
}
