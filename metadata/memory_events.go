package metadata

import (
	"context"
	"slices"
	"time"

	"github.com/torus-storage/torus"
)

// RecordEvent implements torus.EventLog.
func (m *Memory) RecordEvent(ctx context.Context, e torus.Event) (torus.Event, error) {
	if err := m.enter(ctx); err != nil {
		return torus.Event{}, err
	}
	defer m.mu.Unlock()
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = e.Time.UTC()
	m.eventSeq++
	e.Seq = m.eventSeq
	m.events = append(m.events, e)
	cut := time.Now().Add(-torus.EventRetention)
	m.events = slices.DeleteFunc(m.events, func(e torus.Event) bool { return e.Time.Before(cut) })
	if n := len(m.events) - torus.MaxEvents; n > 0 {
		m.events = append(m.events[:0:0], m.events[n:]...)
	}
	return e, nil
}

// Events implements torus.EventLog.
func (m *Memory) Events(ctx context.Context, after uint64, limit int) ([]torus.Event, error) {
	if err := m.enter(ctx); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	var out []torus.Event
	for _, e := range m.events {
		if e.Seq > after && (limit <= 0 || len(out) < limit) {
			out = append(out, e)
		}
	}
	return out, nil
}
