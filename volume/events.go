package volume

import (
	"context"
	"fmt"
	"time"

	"github.com/torus-storage/torus"
)

// eventTimeout bounds recording one event (a report: failures are logged
// at debug level and ignored).
const eventTimeout = 2 * time.Second

// recordEvent records e about this volume, with the writer's owner as
// reporter.
func (v *Volume) recordEvent(ctx context.Context, e torus.Event) {
	e.Volume, e.Reporter = v.name, v.owner
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), eventTimeout)
	defer cancel()
	if _, err := v.meta.RecordEvent(ctx, e); err != nil {
		v.log.Debug("recording an event", "kind", e.Kind, "err", err)
	}
}

// noteOpened records that this writer attached: a takeover when the
// previous writer left an open segment (it did not close: it crashed, was
// cut off, or its lock was removed), an attach otherwise.
func (v *Volume) noteOpened(ctx context.Context, prev torus.Head, recovered int64) {
	if prev.Open != nil {
		v.recordEvent(ctx, torus.Event{Kind: torus.EventWriterTakeover, Severity: torus.SeverityWarning,
			Message: fmt.Sprintf("%s took volume %s over at epoch %d; the writer of epoch %d did not close (its open segment recovered to %d bytes)",
				v.owner, v.name, v.epoch, prev.Epoch, recovered)})
		return
	}
	v.recordEvent(ctx, torus.Event{Kind: torus.EventWriterAttached, Severity: torus.SeverityInfo,
		Message: fmt.Sprintf("%s attached volume %s for writing at epoch %d", v.owner, v.name, v.epoch)})
}

// noteFenced records, in a goroutine Close waits for, that this writer
// was fenced: the I/O that found out is not held up by etcd. v.mu is
// held and the volume is not closed yet, so the Add comes before Close's
// Wait.
func (v *Volume) noteFenced(cause error) {
	v.wg.Add(1)
	go func() {
		defer v.wg.Done()
		v.recordEvent(v.ctx, torus.Event{Kind: torus.EventWriterFenced, Severity: torus.SeverityError,
			Message: fmt.Sprintf("%s (epoch %d) was fenced from volume %s: %v", v.owner, v.epoch, v.name, cause)})
	}()
}
