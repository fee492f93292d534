package torus

import (
	"context"
	"time"
)

// Session is a liveness lease held by one process (a daemon, a writer).
// Keys written under it vanish when it ends, which is how a dead daemon is
// noticed and how a crashed writer's lock is released.
type Session interface {
	// ID is the lease ID, unique within the metadata store.
	ID() int64
	// Done is closed when the session is lost: expired, revoked, or its
	// keepalives failed for longer than its TTL. A writer whose session is
	// done must stop writing: it is fenced.
	Done() <-chan struct{}
	// Close revokes the lease at once. Idempotent.
	Close(ctx context.Context) error
}

// Metadata is the cluster's source of truth: etcd in production
// (metadata/etcd), an in-memory fake for unit tests (metadata.Memory). Both
// pass metadata/metadatatest.
//
// Every method takes ctx first and fails within ctx's deadline when the
// store is unreachable, with an error that wraps ErrUnavailable and names the
// endpoints.
type Metadata interface {
	// Attachments records which node a volume is published to (CSI).
	Attachments
	// EventLog keeps the cluster's bounded event history.
	EventLog

	// NewSession grants a lease of the given TTL and keeps it alive until
	// Close or until ctx ends.
	NewSession(ctx context.Context, ttl time.Duration) (Session, error)

	// InitCluster writes the cluster config. ErrExist if initialized.
	InitCluster(ctx context.Context, cfg ClusterConfig) error
	// ClusterConfig reads it. ErrNotInitialized before InitCluster.
	ClusterConfig(ctx context.Context) (ClusterConfig, error)

	// PutPeer creates or updates a peer's static record (address, zone,
	// capacity). It does not add the peer to the ring.
	PutPeer(ctx context.Context, p PeerInfo) error
	// Heartbeat writes the peer's liveness key under s with what the beat
	// reports (usage, rebalance backlog, scrub findings). The peer counts
	// as up while the key exists. A heartbeat that changes neither the
	// peer's liveness (the key existed under a live session) nor its
	// findings is not reported by WatchChanges: usage, backlog and
	// last-seen time are read with Peers.
	Heartbeat(ctx context.Context, s Session, id string, b Beat) error
	// Peers lists every known peer with State computed from the ring
	// (member or not, draining) and liveness.
	Peers(ctx context.Context) ([]PeerInfo, error)
	// DeletePeer forgets a peer's record (after it left the ring).
	DeletePeer(ctx context.Context, id string) error
	// SetDraining marks a ring member as draining (graceful removal).
	SetDraining(ctx context.Context, id string, draining bool) error

	// Ring reads the current ring spec. ErrNotInitialized before init.
	Ring(ctx context.Context) (RingSpec, error)
	// SetRing stores spec if spec.Version is the stored version + 1;
	// ErrConflict otherwise.
	SetRing(ctx context.Context, spec RingSpec) error
	// JoinRing is SetRing for auto-joins: it stores spec on the same
	// condition (spec.Version is the stored version + 1, else
	// ErrConflict) and, in the same atomic step, only if every peer in
	// joined still has its record (PutPeer; ErrConflict otherwise: an
	// operator forgot it meanwhile). joined lists the members spec adds:
	// 1..MaxJoinBatch distinct IDs, each a member of spec (ErrInvalid).
	JoinRing(ctx context.Context, spec RingSpec, joined []string) error

	// Watch sends a value whenever anything under the cluster's keys
	// changes (peers, ring, volumes, locks, heads). Coalesced: one signal
	// may stand for many changes. The channel closes when ctx ends.
	Watch(ctx context.Context) <-chan struct{}

	// Revision reports the store's current revision. Every change to the
	// cluster's keys gets a revision larger than every earlier one; a read
	// made after Revision returns sees the store at that revision or later.
	Revision(ctx context.Context) (int64, error)
	// WatchChanges delivers, in revision order, every change made after
	// revision from (from is what the caller's state reflects: a value of
	// Revision taken before its reads), each with its revision. Changes of
	// one atomic step share a revision. When changes after from can no
	// longer be delivered (history compacted)
	// the first event is a ChangeResync carrying the revision the watch
	// continues from: the caller must re-read what it caches. Events are
	// never dropped silently: a watch that cannot continue closes. The
	// channel closes when ctx ends or the store is closed. Published
	// volume statuses (PutVolumeStatuses) are not reported, nor are
	// heartbeats that change neither liveness nor findings (Heartbeat):
	// an idle cluster's watches carry nothing, whatever its size.
	WatchChanges(ctx context.Context, from int64) <-chan Change
	// VolumesChangedSince reports whether any volume record, epoch, writer
	// record, head or snapshot was created or updated after revision rev,
	// in one request. Deletions are not reported: they only shrink what is
	// live. GC uses it to re-check a plan made from a cached view.
	VolumesChangedSince(ctx context.Context, rev int64) (bool, error)

	// CreateVolume assigns an ID and stores the volume with an empty head
	// and its labels. ErrExist if the name is taken; ErrInvalid for a bad
	// name, size or label (torus.ValidLabels).
	CreateVolume(ctx context.Context, v VolumeInfo) (VolumeInfo, error)
	// CloneVolume creates v (as CreateVolume: new ID, labels; ErrExist,
	// ErrInvalid) as a clone of snapshot volume@snapshot, in one atomic
	// step with reading that snapshot: the new volume's head is the
	// snapshot's head with epoch 0, its Parent names the snapshot and its
	// Shares are the source's ID plus the source's Shares (the volumes
	// whose segments the head names). v.Size must be at least the
	// source's size (ErrInvalid). ErrNotExist when the snapshot does not
	// exist (checked in the same step, so a clone never names the
	// segments of a snapshot deleted before it was made).
	CloneVolume(ctx context.Context, v VolumeInfo, volume, snapshot string) (VolumeInfo, error)
	// Volume reads one volume. ErrNotExist.
	Volume(ctx context.Context, name string) (VolumeInfo, error)
	// Volumes lists all volumes sorted by name.
	Volumes(ctx context.Context) ([]VolumeInfo, error)
	// UpdateVolume stores changed Size or MinReplicas of an existing
	// volume (matched by name). Size may only grow (ErrInvalid). Labels
	// are not changed (SetVolumeLabels changes them).
	UpdateVolume(ctx context.Context, v VolumeInfo) error
	// SetVolumeLabels changes a volume's labels in one atomic step: every
	// key of set is added or replaced, then every key of remove is deleted
	// (a key that is absent is ignored). It returns the volume as stored
	// afterwards. ErrNotExist for a missing volume; ErrInvalid, with
	// nothing changed, when a key or value of set is invalid or the result
	// would exceed the bounds of torus.ValidLabels.
	SetVolumeLabels(ctx context.Context, volume string, set map[string]string, remove []string) (VolumeInfo, error)
	// DeleteVolume deletes a volume with its head and snapshots. It fails
	// with a *LockedError matching ErrInUse when the volume has a writer.
	DeleteVolume(ctx context.Context, name string) error

	// Lock makes the caller the volume's single writer under session s:
	// it stores the writer record under s's lease and increments the
	// volume's epoch, returning the new epoch. It fails with a
	// *LockedError (ErrLocked) naming the holder if another writer holds
	// the volume.
	// w gives the writer's Owner (required) and Identity; the store sets
	// Epoch and Since.
	Lock(ctx context.Context, s Session, volume string, w WriterInfo) (epoch uint64, err error)
	// Unlock releases the lock if epoch still holds it; otherwise no-op.
	Unlock(ctx context.Context, volume string, epoch uint64) error
	// ForceUnlock removes any writer record. The old writer is fenced by
	// the epoch increment of the next Lock. Dangerous only without fencing.
	ForceUnlock(ctx context.Context, volume string) error
	// Writer reports the current writer, ok=false when there is none.
	Writer(ctx context.Context, volume string) (w WriterInfo, ok bool, err error)
	// Epochs reports every volume's current epoch, keyed by volume ID.
	// Daemons use it to fence stale writers.
	Epochs(ctx context.Context) (map[uint64]uint64, error)

	// Head reads a volume's head.
	Head(ctx context.Context, volume string) (Head, error)
	// CommitHead stores h if epoch is still the volume's epoch and its
	// writer record is present; ErrFenced otherwise. One small request.
	CommitHead(ctx context.Context, volume string, epoch uint64, h Head) error

	// RestoreSnapshot makes the volume's head the head of its snapshot
	// name (with Epoch epoch, no open segment, NextSeq not lowered), if
	// epoch is still the volume's epoch and its writer record is present
	// (ErrFenced otherwise, as CommitHead) and the snapshot exists
	// (ErrNotExist), all in one atomic step. It returns the new head.
	RestoreSnapshot(ctx context.Context, epoch uint64, volume, name string) (Head, error)

	// CreateSnapshot stores a snapshot. When epoch is non-zero it is
	// fenced like CommitHead. ErrExist if the name is taken.
	CreateSnapshot(ctx context.Context, epoch uint64, s Snapshot) error
	// Snapshots lists a volume's snapshots sorted by name.
	Snapshots(ctx context.Context, volume string) ([]Snapshot, error)
	// Snapshot reads one. ErrNotExist.
	Snapshot(ctx context.Context, volume, name string) (Snapshot, error)
	// DeleteSnapshot deletes one. ErrNotExist.
	DeleteSnapshot(ctx context.Context, volume, name string) error
	// RequestSnapshot asks the volume's writer to take a snapshot (used
	// when the volume is open elsewhere); the writer sees it in
	// SnapshotRequests and answers with CreateSnapshot.
	RequestSnapshot(ctx context.Context, volume, name string) error
	// SnapshotRequests lists pending requests for a volume.
	SnapshotRequests(ctx context.Context, volume string) ([]string, error)
	// DoneSnapshotRequest removes a request, with a failure message
	// (empty on success) that RequestSnapshot's caller can read via
	// SnapshotRequestResult.
	DoneSnapshotRequest(ctx context.Context, volume, name, failure string) error
	// SnapshotRequestResult reports done=true with failure text once the
	// writer has answered a request.
	SnapshotRequestResult(ctx context.Context, volume, name string) (done bool, failure string, err error)

	// DefaultExport names the volume served for the empty NBD export
	// name ("" when unset); SetDefaultExport sets it.
	DefaultExport(ctx context.Context) (string, error)
	SetDefaultExport(ctx context.Context, volume string) error

	// PutVolumeStatuses replaces the published health of every volume
	// (written by the maintenance of one daemon). StatusesOf volumes that
	// no longer exist are dropped.
	PutVolumeStatuses(ctx context.Context, st []VolumeStatus) error
	// VolumeStatuses reads what was last published, keyed by volume name;
	// a volume never reported is absent.
	VolumeStatuses(ctx context.Context) (map[string]VolumeStatus, error)

	// Close releases the client. Idempotent.
	Close() error
}

// ChangeKind says what a Change is about.
type ChangeKind int

const (
	// ChangeResync: changes were lost (compaction); re-read everything.
	// Revision is the revision the watch continues after.
	ChangeResync ChangeKind = iota + 1
	// ChangeCluster: the cluster config or the default export.
	ChangeCluster
	// ChangeRing: the ring spec (Ring holds it unless Deleted).
	ChangeRing
	// ChangePeer: peer Name's record, liveness, draining or removed mark.
	// Beat is set when it is only a heartbeat of a peer already up with
	// the same scrub findings (its state and findings did not change):
	// a store reports those only when its liveness record was rewritten
	// anyway (a new session, or a daemon of an older version that
	// rewrote it at every beat).
	ChangePeer
	// ChangeVolume: volume Name's record was created, updated or deleted.
	ChangeVolume
	// ChangeEpoch: volume Name's epoch (Epoch holds it).
	ChangeEpoch
	// ChangeWriter: volume Name's writer record (Deleted: no writer).
	ChangeWriter
	// ChangeHead: volume Name's head (Head holds it unless Deleted).
	ChangeHead
	// ChangeSnapshot: snapshot Snapshot of volume Name, or a snapshot
	// request or its result.
	ChangeSnapshot
	// ChangeAttachment: volume Name's attachment, or a CSI node record
	// (Name is then the node ID and Node is set).
	ChangeAttachment
)

var changeKindNames = map[ChangeKind]string{ChangeResync: "resync", ChangeCluster: "cluster", ChangeRing: "ring",
	ChangePeer: "peer", ChangeVolume: "volume", ChangeEpoch: "epoch", ChangeWriter: "writer", ChangeHead: "head",
	ChangeSnapshot: "snapshot", ChangeAttachment: "attachment"}

func (k ChangeKind) String() string {
	if n, ok := changeKindNames[k]; ok {
		return n
	}
	return "unknown"
}

// Change is one event of Metadata.WatchChanges.
type Change struct {
	Kind     ChangeKind
	Revision int64
	// Name is the volume's name, or the peer's ID for ChangePeer.
	Name string
	// Snapshot names the snapshot (or request) of a ChangeSnapshot.
	Snapshot string
	// Deleted: the key was removed (volume deleted, writer gone, peer
	// forgotten or its liveness key expired, snapshot deleted).
	Deleted bool
	// Beat: a ChangePeer that is only a heartbeat of a live peer whose
	// scrub findings (Beat.Unrepairable) did not change.
	Beat bool
	// Node: a ChangeAttachment about a CSI node record.
	Node bool
	// Epoch is the new epoch of a ChangeEpoch.
	Epoch uint64
	// Head is the new head of a ChangeHead; Ring the new spec of a
	// ChangeRing. Nil when Deleted. Owned by the receiver.
	Head *Head
	Ring *RingSpec
}
