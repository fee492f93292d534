package torus

import (
	"context"
	"time"
)

// Event is one entry of the cluster's event history: something an
// operator wants to know happened, kept in etcd with a bounded history
// (MaxEvents, EventRetention) and shown by `torusctl events` and the
// dashboard. docs/operations.md lists who records each kind.
type Event struct {
	// Seq orders events cluster-wide: assigned by the store when the
	// event is recorded (the etcd revision), increasing.
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Kind EventKind `json:"kind"`
	// Severity is SeverityInfo, SeverityWarning or SeverityError.
	Severity string `json:"severity"`
	// Peer and Volume name what the event is about, when it is about one.
	Peer   string `json:"peer,omitempty"`
	Volume string `json:"volume,omitempty"`
	// Reporter is who recorded it: a daemon's peer ID, or a writer's owner.
	Reporter string `json:"reporter,omitempty"`
	Message  string `json:"message"`
}

// EventKind says what happened.
type EventKind string

// Event kinds.
const (
	EventPeerDown          EventKind = "peer-down"
	EventPeerUp            EventKind = "peer-up"
	EventVolumeDegraded    EventKind = "volume-degraded"
	EventVolumeUnavailable EventKind = "volume-unavailable"
	EventVolumeHealthy     EventKind = "volume-healthy"
	EventHealStarted       EventKind = "heal-started"
	EventHealFinished      EventKind = "heal-finished"
	EventScrubFinding      EventKind = "scrub-finding"
	EventWriterAttached    EventKind = "writer-attached"
	EventWriterTakeover    EventKind = "writer-takeover"
	EventWriterFenced      EventKind = "writer-fenced"
)

// Event severities.
const (
	SeverityInfo    = "info"
	SeverityWarning = "warning"
	SeverityError   = "error"
)

// Bounds of the event history: recording an event drops the oldest beyond
// MaxEvents and those older than EventRetention.
const (
	MaxEvents      = 1000
	EventRetention = 7 * 24 * time.Hour
)

// EventLog is the role of Metadata that keeps the event history.
type EventLog interface {
	// RecordEvent stores e and returns it with Seq set, and Time set to
	// now when zero; it trims the history to its bounds. Events are a
	// report, not a record: callers log a failure and go on.
	RecordEvent(ctx context.Context, e Event) (Event, error)
	// Events returns up to limit events with Seq > after, oldest first
	// (limit <= 0: all kept). Follow a log by passing the last Seq seen.
	Events(ctx context.Context, after uint64, limit int) ([]Event, error)
}
