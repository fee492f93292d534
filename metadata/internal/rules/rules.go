// Package rules holds the validation and derivation rules shared by every
// torus.Metadata implementation (metadata.Memory and metadata/etcd), so both
// accept and reject exactly the same inputs. It does no I/O.
package rules

import (
	"fmt"
	"slices"
	"strings"
	"unicode"

	"github.com/torus-storage/torus"
)

// MaxMinReplicas bounds VolumeInfo.MinReplicas (the largest replication
// factor ClusterConfig.Validate accepts).
const MaxMinReplicas = 16

// Cluster applies defaults to cfg and validates it.
func Cluster(cfg torus.ClusterConfig) (torus.ClusterConfig, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return cfg, fmt.Errorf("metadata: init: %w", err)
	}
	return cfg, nil
}

// InitialRing is the ring stored by InitCluster: version 1, no members.
func InitialRing(cfg torus.ClusterConfig) torus.RingSpec {
	return torus.RingSpec{Version: 1, Replication: cfg.Replication, VirtualNodes: cfg.VirtualNodes}
}

// Size checks a volume size: positive and a multiple of torus.BlockSize.
func Size(size int64) error {
	if size <= 0 {
		return fmt.Errorf("%w: volume size %d must be positive", torus.ErrInvalid, size)
	}
	if size%torus.BlockSize != 0 {
		return fmt.Errorf("%w: volume size %d is not a multiple of %d", torus.ErrInvalid, size, torus.BlockSize)
	}
	return nil
}

// Volume checks a volume record given to CreateVolume.
func Volume(v torus.VolumeInfo) error {
	if err := torus.ValidName(v.Name); err != nil {
		return fmt.Errorf("metadata: volume: %w", err)
	}
	if err := Size(v.Size); err != nil {
		return fmt.Errorf("metadata: volume %q: %w", v.Name, err)
	}
	if err := torus.ValidLabels(v.Labels); err != nil {
		return fmt.Errorf("metadata: volume %q: %w", v.Name, err)
	}
	return MinReplicas(v)
}

// Labels applies a SetVolumeLabels request to the stored labels and
// returns the labels to store (a new map; nil when none are left), checked
// with torus.ValidLabels. old is not modified.
func Labels(volume string, old, set map[string]string, remove []string) (map[string]string, error) {
	out := make(map[string]string, len(old)+len(set))
	for k, v := range old {
		out[k] = v
	}
	for k, v := range set {
		out[k] = v
	}
	for _, k := range remove {
		delete(out, k)
	}
	if err := torus.ValidLabels(out); err != nil {
		return nil, fmt.Errorf("metadata: volume %q: %w", volume, err)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// CloneLabels copies a label map, so a stored record never shares its map
// with a caller. An empty map becomes nil, as it reads back from JSON.
func CloneLabels(l map[string]string) map[string]string {
	if len(l) == 0 {
		return nil
	}
	out := make(map[string]string, len(l))
	for k, v := range l {
		out[k] = v
	}
	return out
}

// MinReplicas checks v.MinReplicas and v.Replication: each 0..16, and
// MinReplicas <= Replication when both are set.
func MinReplicas(v torus.VolumeInfo) error {
	if v.MinReplicas < 0 || v.MinReplicas > MaxMinReplicas {
		return fmt.Errorf("metadata: volume %q: %w: min-replicas %d must be 0..%d",
			v.Name, torus.ErrInvalid, v.MinReplicas, MaxMinReplicas)
	}
	if v.Replication < 0 || v.Replication > MaxMinReplicas {
		return fmt.Errorf("metadata: volume %q: %w: replication %d must be 0..%d",
			v.Name, torus.ErrInvalid, v.Replication, MaxMinReplicas)
	}
	if v.Replication > 0 && v.MinReplicas > v.Replication {
		return fmt.Errorf("metadata: volume %q: %w: min-replicas %d exceeds the volume's replication %d",
			v.Name, torus.ErrInvalid, v.MinReplicas, v.Replication)
	}
	return nil
}

// Clone checks a CloneVolume request against the source volume and its
// snapshot and returns the record and head to store: v with Parent and
// Shares set, and the snapshot's head at epoch 0.
func Clone(v, src torus.VolumeInfo, snap torus.Snapshot) (torus.VolumeInfo, torus.Head, error) {
	if err := Volume(v); err != nil {
		return v, torus.Head{}, err
	}
	if v.Size < src.Size {
		return v, torus.Head{}, fmt.Errorf("metadata: clone %q of %s@%s: %w: size %d is smaller than the source's %d",
			v.Name, src.Name, snap.Name, torus.ErrInvalid, v.Size, src.Size)
	}
	v.Parent = &torus.VolumeParent{Volume: src.Name, ID: src.ID, Snapshot: snap.Name}
	v.Shares = append([]uint64{src.ID}, src.Shares...)
	h := snap.Head.Clone()
	h.Epoch, h.Open, h.OpenReplicas, h.Checkpointing = 0, nil, nil, nil
	return v, h, nil
}

// Restore returns the head RestoreSnapshot stores: the snapshot's
// checkpoint and sealed segments at epoch, NextSeq not lowered.
func Restore(cur torus.Head, snap torus.Snapshot, epoch uint64) torus.Head {
	h := torus.Head{Epoch: epoch, NextSeq: max(cur.NextSeq, snap.Head.NextSeq), Sealed: slices.Clone(snap.Head.Sealed)}
	if ck := snap.Head.Checkpoint; ck != nil {
		c := *ck
		h.Checkpoint = &c
	}
	return h
}

// Update checks an UpdateVolume request against the stored record and
// returns the record to store: the stored one with Size and MinReplicas
// taken from upd.
func Update(old, upd torus.VolumeInfo) (torus.VolumeInfo, error) {
	if err := Size(upd.Size); err != nil {
		return old, fmt.Errorf("metadata: volume %q: %w", old.Name, err)
	}
	if upd.Size < old.Size {
		return old, fmt.Errorf("metadata: volume %q: %w: size may only grow (%d < %d)",
			old.Name, torus.ErrInvalid, upd.Size, old.Size)
	}
	if err := MinReplicas(upd); err != nil {
		return old, err
	}
	old.Size = upd.Size
	if old.Replication > 0 && upd.MinReplicas > old.Replication {
		return old, fmt.Errorf("metadata: volume %q: %w: min-replicas %d exceeds the volume's replication %d",
			old.Name, torus.ErrInvalid, upd.MinReplicas, old.Replication)
	}
	old.MinReplicas = upd.MinReplicas
	return old, nil
}

// Snapshot checks a snapshot given to CreateSnapshot.
func Snapshot(s torus.Snapshot) error {
	if err := torus.ValidName(s.Volume); err != nil {
		return fmt.Errorf("metadata: snapshot volume: %w", err)
	}
	if err := torus.ValidName(s.Name); err != nil {
		return fmt.Errorf("metadata: snapshot of %q: %w", s.Volume, err)
	}
	if s.Head.Open != nil {
		return fmt.Errorf("metadata: snapshot %s@%s: %w: head has an open segment", s.Volume, s.Name, torus.ErrInvalid)
	}
	return nil
}

// SnapshotName checks a volume and snapshot name pair.
func SnapshotName(volume, name string) error {
	if err := torus.ValidName(volume); err != nil {
		return fmt.Errorf("metadata: snapshot volume: %w", err)
	}
	if err := torus.ValidName(name); err != nil {
		return fmt.Errorf("metadata: snapshot of %q: %w", volume, err)
	}
	return nil
}

// PeerID checks a peer ID: 1..128 printable characters without '/' or
// spaces (it becomes part of a key).
func PeerID(id string) error {
	if id == "" || len(id) > 128 || strings.ContainsRune(id, '/') ||
		strings.IndexFunc(id, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }) >= 0 {
		return fmt.Errorf("%w: peer id %q", torus.ErrInvalid, id)
	}
	return nil
}

// Ring checks a ring spec's shape (not its version).
func Ring(spec torus.RingSpec) error {
	if spec.Replication < 1 || spec.Replication > 16 {
		return fmt.Errorf("metadata: ring: %w: replication %d must be 1..16", torus.ErrInvalid, spec.Replication)
	}
	if spec.VirtualNodes < 1 || spec.VirtualNodes > 4096 {
		return fmt.Errorf("metadata: ring: %w: virtual nodes %d must be 1..4096", torus.ErrInvalid, spec.VirtualNodes)
	}
	seen := make(map[string]bool, len(spec.Members))
	for _, m := range spec.Members {
		if err := PeerID(m.ID); err != nil {
			return fmt.Errorf("metadata: ring: %w", err)
		}
		if seen[m.ID] {
			return fmt.Errorf("metadata: ring: %w: member %q listed twice", torus.ErrInvalid, m.ID)
		}
		seen[m.ID] = true
		if m.Weight < 0 {
			return fmt.Errorf("metadata: ring: %w: member %q has negative weight", torus.ErrInvalid, m.ID)
		}
	}
	return nil
}

// JoinRing checks a JoinRing request: spec's shape (Ring) and joined, 1
// to torus.MaxJoinBatch distinct peer IDs, each a member of spec.
func JoinRing(spec torus.RingSpec, joined []string) error {
	if err := Ring(spec); err != nil {
		return err
	}
	if len(joined) == 0 || len(joined) > torus.MaxJoinBatch {
		return fmt.Errorf("metadata: join ring: %w: %d peers joining, want 1..%d", torus.ErrInvalid, len(joined), torus.MaxJoinBatch)
	}
	members := Members(spec)
	seen := make(map[string]bool, len(joined))
	for _, id := range joined {
		if !members[id] || seen[id] {
			return fmt.Errorf("metadata: join ring: %w: joining peer %q is not a member of the new ring, or is listed twice", torus.ErrInvalid, id)
		}
		seen[id] = true
	}
	return nil
}

// PeerState derives a peer's state: a ring member is draining when marked
// so, else up while its liveness key exists, else down; a non-member is
// removed when a ring change dropped it, else new.
func PeerState(member, draining, removed, alive bool) torus.PeerState {
	switch {
	case member && draining:
		return torus.PeerDraining
	case member && alive:
		return torus.PeerUp
	case member:
		return torus.PeerDown
	case removed:
		return torus.PeerRemoved
	default:
		return torus.PeerNew
	}
}

// Members returns the set of member IDs of spec.
func Members(spec torus.RingSpec) map[string]bool {
	m := make(map[string]bool, len(spec.Members))
	for _, x := range spec.Members {
		m[x.ID] = true
	}
	return m
}

// VolumeStatuses checks a PutVolumeStatuses request: every status names a
// valid volume at most once, has a known health and no negative counts.
func VolumeStatuses(st []torus.VolumeStatus) error {
	seen := make(map[string]bool, len(st))
	for _, s := range st {
		if err := torus.ValidName(s.Volume); err != nil {
			return fmt.Errorf("metadata: volume status: %w", err)
		}
		if seen[s.Volume] {
			return fmt.Errorf("metadata: volume status: %w: volume %q listed twice", torus.ErrInvalid, s.Volume)
		}
		seen[s.Volume] = true
		switch s.Health {
		case torus.VolumeHealthy, torus.VolumeDegraded, torus.VolumeUnavailable:
		default:
			return fmt.Errorf("metadata: volume status %q: %w: health %q", s.Volume, torus.ErrInvalid, s.Health)
		}
		if s.Used < 0 || s.Stored < 0 || s.UnderReplicated < 0 || s.Unavailable < 0 || s.PendingBytes < 0 {
			return fmt.Errorf("metadata: volume status %q: %w: negative count", s.Volume, torus.ErrInvalid)
		}
	}
	return nil
}

// StatusMatches reports whether a status may be stored for volume v: it
// names v and, when it carries an ID, v's ID (a status computed for a
// deleted volume must not attach to a new volume of the same name).
func StatusMatches(s torus.VolumeStatus, v torus.VolumeInfo) bool {
	return s.Volume == v.Name && (s.ID == 0 || s.ID == v.ID)
}

// BeatBlocks is what a heartbeat stores of a daemon's scrub findings: a
// copy, each volume's blocks sorted, without repeats, at most
// torus.MaxBeatBlocks; nil when there are none.
func BeatBlocks(in map[uint64][]uint64) map[uint64][]uint64 {
	var out map[uint64][]uint64
	for vol, blocks := range in {
		if len(blocks) == 0 {
			continue
		}
		b := slices.Clone(blocks)
		slices.Sort(b)
		b = slices.Compact(b)
		if len(b) > torus.MaxBeatBlocks {
			b = b[:torus.MaxBeatBlocks]
		}
		if out == nil {
			out = make(map[uint64][]uint64)
		}
		out[vol] = b
	}
	return out
}
