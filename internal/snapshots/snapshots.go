// Package snapshots takes a snapshot of a volume whether or not it has a
// writer: the one procedure shared by torusctl and the CSI driver.
package snapshots

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/torus-storage/torus"
)

// ErrTimeout is returned by Take when the writer did not
// answer in time. The request stays pending; the writer may still take the
// snapshot later.
var ErrTimeout = errors.New("the volume's writer did not answer the snapshot request in time")

// Take takes snapshot volume@name. If the volume has a writer it
// files a request and waits up to timeout for the writer's answer (woken
// by Watch, polling once a second as a fallback); a failure reported by
// the writer is returned as an error. A request of that name already
// pending (a retry after ErrTimeout) is waited for, not filed again. If the
// volume has no writer it calls closed. ErrExist if the snapshot exists.
func Take(ctx context.Context, md torus.Metadata, volume, name string, timeout time.Duration,
	closed func(ctx context.Context, md torus.Metadata, volume, name string) error) error {
	if _, err := md.Snapshot(ctx, volume, name); err == nil {
		return fmt.Errorf("snapshot %s@%s: %w", volume, name, torus.ErrExist)
	}
	w, ok, err := md.Writer(ctx, volume)
	if err != nil {
		return err
	}
	if !ok {
		return closed(ctx, md, volume, name)
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	changes := md.Watch(wctx)
	if err := md.RequestSnapshot(ctx, volume, name); errors.Is(err, torus.ErrExist) {
		// Either the snapshot was taken meanwhile or a request of that
		// name is pending (an earlier call timed out): wait for it.
		if _, serr := md.Snapshot(ctx, volume, name); serr == nil {
			return err
		}
		pending, lerr := md.SnapshotRequests(ctx, volume)
		if lerr != nil {
			return lerr
		}
		if !slices.Contains(pending, name) {
			return err
		}
	} else if err != nil {
		return err
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		done, failure, err := md.SnapshotRequestResult(ctx, volume, name)
		if err != nil {
			return err
		}
		if done {
			if failure != "" {
				return fmt.Errorf("writer %s failed to take snapshot %s@%s: %s", w.Owner, volume, name, failure)
			}
			return nil
		}
		select {
		case <-changes:
		case <-tick.C:
		case <-wctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("snapshot %s@%s: %w (writer %s, waited %v); the request stays pending",
				volume, name, ErrTimeout, w.Owner, timeout)
		}
	}
}
