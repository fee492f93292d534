package volume

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/torus-storage/torus"
)

// Snapshot creates snapshot name of the volume: it flushes, seals the open
// segment, writes a checkpoint of the index, and stores the frozen head
// with an epoch-fenced CreateSnapshot. ErrExist if the name is taken;
// ErrReadOnly on a read-only open.
func (v *Volume) Snapshot(ctx context.Context, name string) error {
	if err := torus.ValidName(name); err != nil {
		return err
	}
	if err := v.begin(true); err != nil {
		return err
	}
	defer v.end()
	return v.control(ctx, func(_ context.Context) error {
		if err := v.roll(ctx, ckptForce, true); err != nil && !errors.Is(err, errNoOpen) {
			return err
		}
		v.mu.Lock()
		h := torus.Head{Epoch: v.epoch, NextSeq: v.head.NextSeq}
		if ck := v.head.Checkpoint; ck != nil {
			c := *ck
			h.Checkpoint = &c
		}
		v.stats.EtcdCommits++
		v.mu.Unlock()
		err := v.meta.CreateSnapshot(ctx, v.epoch, torus.Snapshot{Volume: v.name, Name: name, Created: time.Now().UTC(), Head: h})
		if errors.Is(err, torus.ErrFenced) {
			return v.fence(err)
		}
		if err != nil {
			return fmt.Errorf("volume %s: snapshot %s: %w", v.name, name, err)
		}
		v.log.Info("snapshot created", "snapshot", name, "checkpoint", h.Checkpoint)
		return nil
	})
}

// answerSnapshotRequests takes the snapshots other processes asked for
// (torusctl snapshot create while the volume is open here).
func (v *Volume) answerSnapshotRequests(ctx context.Context) {
	names, err := v.meta.SnapshotRequests(ctx, v.name)
	if err != nil {
		v.log.Warn("snapshot requests", "err", err)
		return
	}
	for _, n := range names {
		failure := ""
		if err := v.Snapshot(ctx, n); err != nil {
			failure = err.Error()
		}
		if err := v.meta.DoneSnapshotRequest(ctx, v.name, n, failure); err != nil {
			v.log.Warn("answer snapshot request", "snapshot", n, "err", err)
		}
	}
}

// SnapshotClosed snapshots a volume that has no writer by opening it as
// writer briefly (torusctl snapshot create). It fails with a
// *torus.LockedError when a writer holds the volume: file a request with
// Metadata.RequestSnapshot instead.
func SnapshotClosed(ctx context.Context, deps Deps, volume, name string) error {
	if err := torus.ValidName(name); err != nil {
		return err
	}
	v, err := Open(ctx, deps, volume, Options{Owner: "snapshot " + name})
	if err != nil {
		return err
	}
	err = v.Snapshot(ctx, name)
	if cerr := v.Close(ctx); err == nil {
		err = cerr
	}
	return err
}

// LiveSegments reports the segments of a volume that must be kept: those
// named by its head or a snapshot, directly or through their checkpoint's
// segment table, plus the two segments the current writer may be creating
// before its head names them ({head epoch, NextSeq} of both kinds: a
// checkpoint is written before the head that names it). A clone's map
// also names segments of the volumes it shares (torus.VolumeInfo.Shares).
// A GC sweep lists its local segments first, then calls LiveSegments for
// every volume, and deletes listed segments that no volume's map names
// (server/maintenance.go). It fails (and the sweep
// must delete nothing) when a checkpoint cannot be read.
func LiveSegments(ctx context.Context, meta torus.Metadata, peers torus.PeerPool, volumeName string) (map[torus.SegmentID]bool, error) {
	lens, err := LiveSegmentLengths(ctx, meta, peers, volumeName, nil)
	if err != nil {
		return nil, err
	}
	live := make(map[torus.SegmentID]bool, len(lens))
	for id := range lens {
		live[id] = true
	}
	return live, nil
}

// checkpointTable reads a checkpoint and returns its segment table.
func (v *Volume) checkpointTable(ctx context.Context, ck torus.SegmentRef) ([]torus.SegmentRef, error) {
	c, err := v.readCheckpoint(ctx, ck)
	if err != nil {
		return nil, fmt.Errorf("volume %s: checkpoint %v: %w", v.name, ck.ID, err)
	}
	if c.Runs == nil {
		return c.Segments, nil
	}
	// A version 3 checkpoint: the runs below it are live too.
	table := slices.Clone(c.Segments)
	for _, r := range c.Runs.Stack {
		table = append(table, r.Ref)
	}
	return table, nil
}
