package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/scrub"
	"github.com/torus-storage/torus/storage"
)

// eventTimeout bounds recording one event: events are a report, so a slow
// or unreachable etcd costs a daemon at most this much per event.
const eventTimeout = 2 * time.Second

// eventState is what the daemon remembers to record events on changes
// only (docs/operations.md, "Events").
type eventState struct {
	mu sync.Mutex
	// down holds the ring members this daemon, as the status publisher,
	// last saw down. Members start as up, so a new publisher records the
	// peers that are down when it takes over (the old publisher may be
	// one of them).
	down map[string]bool
	// healing is true while this daemon has copies to make.
	healing bool
}

// recordEvent records e with this daemon as reporter, within
// eventTimeout; a failure is logged and otherwise ignored.
func (s *Server) recordEvent(ctx context.Context, e torus.Event) {
	e.Reporter = s.id
	ctx, cancel := context.WithTimeout(ctx, eventTimeout)
	defer cancel()
	if _, err := s.meta.RecordEvent(ctx, e); err != nil {
		s.log.Debug("recording an event", "kind", e.Kind, "err", err)
	}
}

// notePeers records peer-down for ring members that went down since the
// last pass, when this daemon publishes status (the lowest up peer ID).
// A daemon records its own peer-up when it starts (Start).
func (s *Server) notePeers(ctx context.Context, spec torus.RingSpec, reallyUp map[string]bool) {
	for id := range reallyUp {
		if id < s.id {
			return
		}
	}
	var went []string
	s.events.mu.Lock()
	if s.events.down == nil {
		s.events.down = make(map[string]bool)
	}
	for _, m := range spec.Members {
		down := !reallyUp[m.ID]
		if down && !s.events.down[m.ID] {
			went = append(went, m.ID)
		}
		s.events.down[m.ID] = down
	}
	s.events.mu.Unlock()
	for _, id := range went {
		s.recordEvent(ctx, torus.Event{Kind: torus.EventPeerDown, Severity: torus.SeverityWarning, Peer: id,
			Message: fmt.Sprintf("peer %s is down: no heartbeat", id)})
	}
}

// noteHealth records the volumes whose published health changed.
func (s *Server) noteHealth(ctx context.Context, changed []torus.VolumeStatus) {
	for _, v := range changed {
		e := torus.Event{Volume: v.Volume}
		switch v.Health {
		case torus.VolumeHealthy:
			e.Kind, e.Severity, e.Message = torus.EventVolumeHealthy, torus.SeverityInfo,
				fmt.Sprintf("volume %s is healthy: every segment has its copies", v.Volume)
		case torus.VolumeUnavailable:
			e.Kind, e.Severity, e.Message = torus.EventVolumeUnavailable, torus.SeverityError,
				fmt.Sprintf("volume %s is unavailable: %d segments have no copy on an up peer", v.Volume, v.Unavailable)
		default:
			e.Kind, e.Severity, e.Message = torus.EventVolumeDegraded, torus.SeverityWarning,
				fmt.Sprintf("volume %s is %s: %d segments under-replicated, %s to copy", v.Volume, v.Health,
					v.UnderReplicated, storage.FormatSize(v.PendingBytes))
		}
		s.recordEvent(ctx, e)
	}
}

// seedHealth returns the health last published for every volume, so that a
// daemon that becomes the status publisher records changes only, not the
// state it finds. It reads etcd only when lastHealth is not known yet.
func (s *Server) seedHealth(ctx context.Context) map[string]torus.VolumeHealth {
	s.downMu.Lock()
	known := s.lastHealth != nil
	s.downMu.Unlock()
	if known {
		return nil
	}
	seed := make(map[string]torus.VolumeHealth)
	st, err := s.meta.VolumeStatuses(ctx)
	if err != nil {
		return seed
	}
	for name, v := range st {
		seed[name] = v.Health
	}
	return seed
}

// noteHealing records heal-started when this daemon gets copies to make
// and heal-finished when it has none left.
func (s *Server) noteHealing(ctx context.Context, left int64, copies int) {
	s.events.mu.Lock()
	was := s.events.healing
	s.events.healing = copies > 0
	s.events.mu.Unlock()
	switch {
	case copies > 0 && !was:
		s.recordEvent(ctx, torus.Event{Kind: torus.EventHealStarted, Severity: torus.SeverityInfo, Peer: s.id,
			Message: fmt.Sprintf("peer %s started healing or rebalancing: %d copies, %s", s.id, copies, storage.FormatSize(left))})
	case copies == 0 && was:
		s.recordEvent(ctx, torus.Event{Kind: torus.EventHealFinished, Severity: torus.SeverityInfo, Peer: s.id,
			Message: fmt.Sprintf("peer %s finished healing or rebalancing", s.id)})
	}
}

// noteScrub records what a scrub or a heal's check found on a copy.
func (s *Server) noteScrub(ctx context.Context, fs []scrub.Finding) {
	for _, f := range fs {
		sev := torus.SeverityWarning
		if f.Action == scrub.ActionUnrepairable || f.Action == scrub.ActionFailed {
			sev = torus.SeverityError
		}
		msg := fmt.Sprintf("segment %s on peer %s: %s", f.Segment, f.Peer, f.Problem)
		if f.Action != scrub.ActionNone {
			msg += " (" + string(f.Action) + ")"
		}
		s.recordEvent(ctx, torus.Event{Kind: torus.EventScrubFinding, Severity: sev, Peer: f.Peer, Message: msg})
	}
}
