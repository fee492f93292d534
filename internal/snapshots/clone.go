package snapshots

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/torus-storage/torus"
)

// CloneSnapshotPrefix starts the name of the snapshot Clone takes of a
// volume cloned without naming a snapshot; the clone's name follows.
const CloneSnapshotPrefix = "clone-"

// Clone creates volume v (its Name, Size, labels, MinReplicas, Replication)
// as a clone of volume@snapshot (Metadata.CloneVolume): it shares the
// snapshot's segments, so it costs one etcd transaction whatever the size.
// v.Size 0 means the source's size. With snapshot "" it first takes a
// snapshot of the live volume with Take (the source may be attached:
// its writer is asked, as `torusctl snapshot create` does; closed snapshots
// it otherwise), named CloneSnapshotPrefix+v.Name, clones that and deletes
// it again; the clone keeps the shared segments alive without it. Errors
// classify as Metadata.CloneVolume's (ErrExist, ErrNotExist, ErrInvalid)
// and Take's.
func Clone(ctx context.Context, md torus.Metadata, volume, snapshot string, v torus.VolumeInfo, timeout time.Duration,
	closed func(ctx context.Context, md torus.Metadata, volume, name string) error) (torus.VolumeInfo, error) {
	src, err := md.Volume(ctx, volume)
	if err != nil {
		return torus.VolumeInfo{}, err
	}
	if v.Size == 0 {
		v.Size = src.Size
	}
	if err := torus.ValidName(v.Name); err != nil {
		return torus.VolumeInfo{}, err
	}
	if _, err := md.Volume(ctx, v.Name); err == nil {
		return torus.VolumeInfo{}, fmt.Errorf("clone %s: volume %s: %w", v.Name, v.Name, torus.ErrExist)
	}
	implicit := snapshot == ""
	if implicit {
		snapshot = CloneSnapshotPrefix + v.Name
		if len(snapshot) > 63 {
			snapshot = snapshot[:63]
		}
		if err := Take(ctx, md, volume, snapshot, timeout, closed); err != nil {
			return torus.VolumeInfo{}, fmt.Errorf("clone %s: snapshot of %s: %w", v.Name, volume, err)
		}
	}
	out, err := md.CloneVolume(ctx, v, volume, snapshot)
	if implicit {
		if derr := md.DeleteSnapshot(context.WithoutCancel(ctx), volume, snapshot); derr != nil && !errors.Is(derr, torus.ErrNotExist) {
			err = errors.Join(err, fmt.Errorf("clone %s: deleting the implicit snapshot %s@%s: %w", v.Name, volume, snapshot, derr))
		}
	}
	if err != nil {
		return out, err
	}
	return out, nil
}

// Restore makes volume's content that of its snapshot name
// (Metadata.RestoreSnapshot): the head then names the snapshot's
// checkpoint, so it costs one etcd transaction whatever the size, and
// every write since the snapshot is dropped (GC reclaims its segments).
// The volume must not be attached: with a writer it fails with a
// *torus.LockedError (matching ErrLocked) naming the writer. It takes the
// writer lock itself for the one transaction, which raises the volume's
// epoch, so a writer that lost its lock earlier can no longer store
// anything. ErrNotExist for a missing volume or snapshot.
func Restore(ctx context.Context, md torus.Metadata, volume, name string) (torus.Head, error) {
	if _, err := md.Snapshot(ctx, volume, name); err != nil {
		return torus.Head{}, err
	}
	ses, err := md.NewSession(ctx, 10*time.Second)
	if err != nil {
		return torus.Head{}, err
	}
	defer ses.Close(context.WithoutCancel(ctx))
	epoch, err := md.Lock(ctx, ses, volume, torus.WriterInfo{Owner: "snapshot restore " + name})
	if err != nil {
		return torus.Head{}, fmt.Errorf("restore %s@%s: the volume must not be attached: %w", volume, name, err)
	}
	h, err := md.RestoreSnapshot(ctx, epoch, volume, name)
	if uerr := md.Unlock(context.WithoutCancel(ctx), volume, epoch); err == nil && uerr != nil {
		err = uerr
	}
	if err != nil {
		return torus.Head{}, fmt.Errorf("restore %s@%s: %w", volume, name, err)
	}
	return h, nil
}
