package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/volume"
)

// maintenanceLoop periodically collects garbage, heals and rebalances.
func (s *Server) maintenanceLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.MaintenanceInterval)
	defer t.Stop()
	var lastGC time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		gc := time.Since(lastGC) >= s.cfg.GCInterval
		if gc {
			lastGC = time.Now()
		}
		if err := s.maintain(ctx, gc); err != nil && ctx.Err() == nil {
			s.metrics.maintenanceErr.Inc()
			s.log.Warn("maintenance pass failed", "err", err)
		}
	}
}

// clusterView is what one maintenance pass knows about the cluster.
type clusterView struct {
	volumes map[uint64]torus.VolumeInfo
	// lengths holds, for every live segment of every volume, the
	// authoritative length, or -1 when it is not known (an open segment,
	// or a segment named only through a checkpoint).
	live map[uint64]map[torus.SegmentID]int64
	// recent holds the segments sealed since the last checkpoint of
	// volumes that have a writer: the writer may still have to sync them
	// on the replicas it wrote, so their surplus copies are kept until a
	// checkpoint absorbs them (or the writer detaches).
	recent map[torus.SegmentID]bool
}

// maintain runs one pass: GC of local segments that no head or snapshot
// names, then healing and rebalancing moves planned for this daemon.
func (s *Server) maintain(ctx context.Context, gc bool) error {
	// List first, then read heads: a segment created after the listing
	// cannot be deleted by this pass, and one listed that no head names
	// is garbage (docs/design/data-path.md, Garbage collection).
	local, err := s.store.List(ctx, 0)
	if err != nil {
		return fmt.Errorf("listing local segments: %w", err)
	}
	view, err := s.readView(ctx)
	if err != nil {
		return err
	}
	if gc {
		s.collectGarbage(ctx, local, view)
	}
	return s.heal(ctx, view)
}

func (s *Server) readView(ctx context.Context) (*clusterView, error) {
	vols, err := s.meta.Volumes(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing volumes: %w", err)
	}
	view := &clusterView{volumes: make(map[uint64]torus.VolumeInfo), live: make(map[uint64]map[torus.SegmentID]int64),
		recent: make(map[torus.SegmentID]bool)}
	for _, v := range vols {
		view.volumes[v.ID] = v
		live, err := volume.LiveSegmentLengths(ctx, s.meta, s.pool, v.Name, &s.tables)
		if err != nil {
			if errors.Is(err, torus.ErrNotExist) {
				continue // deleted meanwhile: its segments are kept this pass
			}
			return nil, fmt.Errorf("live segments of %s: %w", v.Name, err)
		}
		view.live[v.ID] = live
		if _, writing, err := s.meta.Writer(ctx, v.Name); err == nil && writing {
			if head, err := s.meta.Head(ctx, v.Name); err == nil {
				for _, r := range head.Sealed {
					view.recent[r.ID] = true
				}
			}
		}
	}
	return view, nil
}

// collectGarbage deletes local segments of deleted volumes and segments no
// head or snapshot names.
func (s *Server) collectGarbage(ctx context.Context, local []torus.SegmentInfo, view *clusterView) {
	for _, si := range local {
		id := si.ID
		if _, ok := view.volumes[id.Volume]; ok {
			live, known := view.live[id.Volume]
			if _, isLive := live[id]; !known || isLive {
				continue
			}
		}
		if err := s.store.Delete(ctx, id); err != nil {
			s.log.Warn("gc: deleting segment", "segment", id, "err", err)
			continue
		}
		s.metrics.gcDeleted.Inc()
		s.log.Debug("gc: deleted segment", "segment", id, "bytes", si.Length)
	}
}

// copySegment copies local segment seg, up to length bytes, to peer to. It
// resumes where the target's copy ends, so an interrupted copy continues
// rather than restarting. The copy is written with torus.RepairEpoch and
// synced before it counts.
func (s *Server) copySegment(ctx context.Context, seg torus.SegmentID, to string, length int64) error {
	dst, err := s.pool.Peer(ctx, to)
	if err != nil {
		return err
	}
	var start int64
	info, err := dst.Stat(ctx, seg)
	switch {
	case errors.Is(err, torus.ErrNotExist):
	case err != nil:
		return fmt.Errorf("stat %s on %s: %w", seg, to, err)
	default:
		start = info.Length
	}
	if start > 0 && start < length {
		// Check that the target's copy is a prefix of ours (a torn tail
		// after a crash is not): compare its last chunk.
		n := min(start, 64<<10)
		a, b := make([]byte, n), make([]byte, n)
		if _, err := dst.ReadAt(ctx, seg, a, start-n); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if _, err := s.store.ReadAt(ctx, seg, b, start-n); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if string(a) != string(b) {
			s.log.Warn("heal: target copy diverges; replacing it", "segment", seg, "peer", to)
			if err := dst.Delete(ctx, seg); err != nil {
				return err
			}
			start = 0
		}
	}
	buf := make([]byte, 1<<20)
	for off := start; off < length; {
		n := min(int64(len(buf)), length-off)
		m, err := s.store.ReadAt(ctx, seg, buf[:n], off)
		if err != nil && !(errors.Is(err, io.EOF) && int64(m) == n) {
			return fmt.Errorf("reading %s at %d: %w", seg, off, err)
		}
		if err := dst.Append(ctx, torus.RepairEpoch, seg, off, buf[:n]); err != nil {
			return fmt.Errorf("copying %s to %s at %d: %w", seg, to, off, err)
		}
		off += n
		s.metrics.healCopied.Add(float64(n))
		if err := s.throttle(ctx, n); err != nil {
			return err
		}
	}
	synced, err := dst.Sync(ctx, torus.RepairEpoch, seg)
	if err != nil {
		return fmt.Errorf("syncing %s on %s: %w", seg, to, err)
	}
	if synced < length {
		return fmt.Errorf("syncing %s on %s: durable length %d below %d: %w", seg, to, synced, length, torus.ErrUnavailable)
	}
	return nil
}

// throttle sleeps so copies stay under RebalanceRate bytes per second.
func (s *Server) throttle(ctx context.Context, n int64) error {
	if s.cfg.RebalanceRate <= 0 {
		return nil
	}
	d := time.Duration(float64(n) / float64(s.cfg.RebalanceRate) * float64(time.Second))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
