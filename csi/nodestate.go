package csi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/statefile"
)

// Attacher makes a Torus volume a block device on this node and keeps it
// attached beyond the CSI process (internal/attach in production: a
// detached `torusblk fuse` process and a loop device). Every method is
// idempotent.
type Attacher interface {
	// Attach attaches the volume (read-only if readOnly) and returns its
	// device; an attached volume is returned as it is.
	Attach(ctx context.Context, volume string, readOnly bool) (Attachment, error)
	// Detach detaches it; a volume not attached is success.
	Detach(ctx context.Context, volume string) error
	// Get reports the volume's attachment, ok=false when none.
	Get(volume string) (a Attachment, ok bool, err error)
	// Resize makes the device follow the volume's grown size.
	Resize(ctx context.Context, volume string) error
}

// Attachment is an attached volume: Device is a block device path.
type Attachment struct {
	Volume   string
	Device   string
	ReadOnly bool
}

// nodeStateVersion is the version of the node state file. A file of
// another version is refused (ErrCorrupt): the node does not guess.
const nodeStateVersion = 1

// nodeState is what the node service remembers about a staged volume, in
// STATEDIR/volumes/VOLUME.json (testdata/nodestate-v1.json is the golden
// file). It is written before the volume is attached and kept until it is
// detached, so a restarted node service finds what it staged and published
// (and NodeUnstage cleans up) without the Kubernetes API.
type nodeState struct {
	Version     int      `json:"version"`
	Volume      string   `json:"volume"`
	StagingPath string   `json:"staging_path"`
	Block       bool     `json:"block"`             // raw block: no filesystem, nothing mounted at the staging path
	FSType      string   `json:"fs_type,omitempty"` // mount volumes: the filesystem
	MountFlags  []string `json:"mount_flags,omitempty"`
	ReadOnly    bool     `json:"read_only,omitempty"` // attached read-only (SINGLE_NODE_READER_ONLY)
	Device      string   `json:"device,omitempty"`    // set once attached
	Staged      bool     `json:"staged"`              // the staging step finished
	Targets     []target `json:"targets,omitempty"`   // NodePublishVolume's target paths, sorted
}

type target struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

func (s *nodeState) target(path string) (target, bool) {
	i := slices.IndexFunc(s.Targets, func(t target) bool { return t.Path == path })
	if i < 0 {
		return target{}, false
	}
	return s.Targets[i], true
}

func (s *nodeState) setTarget(t target) {
	s.dropTarget(t.Path)
	s.Targets = append(s.Targets, t)
	slices.SortFunc(s.Targets, func(a, b target) int {
		switch {
		case a.Path < b.Path:
			return -1
		case a.Path > b.Path:
			return 1
		}
		return 0
	})
}

func (s *nodeState) dropTarget(path string) {
	s.Targets = slices.DeleteFunc(s.Targets, func(t target) bool { return t.Path == path })
}

func encodeNodeState(s nodeState) ([]byte, error) {
	s.Version = nodeStateVersion
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func decodeNodeState(b []byte) (nodeState, error) {
	var s nodeState
	if err := json.Unmarshal(b, &s); err != nil {
		return nodeState{}, fmt.Errorf("csi: node state: %w: %w", torus.ErrCorrupt, err)
	}
	if s.Version != nodeStateVersion {
		return nodeState{}, fmt.Errorf("csi: node state: %w: version %d (this driver reads %d)", torus.ErrCorrupt, s.Version, nodeStateVersion)
	}
	if torus.ValidName(s.Volume) != nil || s.StagingPath == "" {
		return nodeState{}, fmt.Errorf("csi: node state: %w: volume %q, staging path %q", torus.ErrCorrupt, s.Volume, s.StagingPath)
	}
	return s, nil
}

// stateStore keeps the node state files under dir.
type stateStore struct{ dir string }

func (st stateStore) path(volume string) string {
	return filepath.Join(st.dir, "volumes", volume+".json")
}

// load reads a volume's state; ok=false when there is none.
func (st stateStore) load(volume string) (nodeState, bool, error) {
	b, err := os.ReadFile(st.path(volume))
	if errors.Is(err, os.ErrNotExist) {
		return nodeState{}, false, nil
	}
	if err != nil {
		return nodeState{}, false, fmt.Errorf("csi: read node state: %w", err)
	}
	s, err := decodeNodeState(b)
	if err != nil {
		return nodeState{}, false, fmt.Errorf("%w (%s)", err, st.path(volume))
	}
	if s.Volume != volume {
		return nodeState{}, false, fmt.Errorf("csi: node state %s: %w: names volume %q", st.path(volume), torus.ErrCorrupt, s.Volume)
	}
	return s, true, nil
}

// save writes a volume's state durably (statefile.Write).
func (st stateStore) save(s nodeState) error {
	b, err := encodeNodeState(s)
	if err != nil {
		return fmt.Errorf("csi: encode node state: %w", err)
	}
	if err := statefile.Write(st.path(s.Volume), b, 0o600); err != nil {
		return fmt.Errorf("csi: node state: %w", err)
	}
	return nil
}

// remove deletes a volume's state; none is success.
func (st stateStore) remove(volume string) error {
	if err := statefile.Remove(st.path(volume)); err != nil {
		return fmt.Errorf("csi: remove node state: %w", err)
	}
	return nil
}
