package metadatatest

import (
	"fmt"
	"testing"
	"time"

	"github.com/torus-storage/torus"
)

// testEvents: RecordEvent assigns increasing Seqs and a time; Events
// returns them oldest first, after a Seq, up to a limit.
func testEvents(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	if evs, err := m.Events(ctx, 0, 0); err != nil || len(evs) != 0 {
		t.Fatalf("Events of a new cluster = %v, %v", evs, err)
	}
	before := time.Now().Add(-time.Second)
	var rec []torus.Event
	for i, k := range []torus.EventKind{torus.EventPeerDown, torus.EventVolumeDegraded, torus.EventPeerUp} {
		e, err := m.RecordEvent(ctx, torus.Event{Kind: k, Severity: torus.SeverityWarning, Peer: "p1", Volume: "v",
			Reporter: "r", Message: fmt.Sprintf("event %d", i)})
		must(t, err, "RecordEvent")
		if e.Seq == 0 || (i > 0 && e.Seq <= rec[i-1].Seq) || e.Time.Before(before) {
			t.Fatalf("RecordEvent %d = %+v, want a Seq above the last (%v) and a time set", i, e, rec)
		}
		rec = append(rec, e)
	}
	evs, err := m.Events(ctx, 0, 0)
	must(t, err, "Events")
	if len(evs) != 3 {
		t.Fatalf("Events = %d, want 3", len(evs))
	}
	for i, e := range evs {
		if e.Seq != rec[i].Seq || e.Kind != rec[i].Kind || e.Message != rec[i].Message || e.Peer != "p1" ||
			e.Volume != "v" || e.Reporter != "r" || !e.Time.Equal(rec[i].Time) {
			t.Errorf("event %d = %+v, recorded %+v", i, e, rec[i])
		}
	}
	if evs, err := m.Events(ctx, rec[0].Seq, 0); err != nil || len(evs) != 2 || evs[0].Seq != rec[1].Seq {
		t.Errorf("Events after the first = %v, %v", evs, err)
	}
	if evs, err := m.Events(ctx, 0, 1); err != nil || len(evs) != 1 || evs[0].Seq != rec[0].Seq {
		t.Errorf("Events with limit 1 = %v, %v", evs, err)
	}
	if evs, err := m.Events(ctx, rec[2].Seq, 0); err != nil || len(evs) != 0 {
		t.Errorf("Events after the last = %v, %v", evs, err)
	}
}

// testEventBounds: the history keeps the newest torus.MaxEvents, and an
// event older than torus.EventRetention is dropped when the next one is
// recorded.
func testEventBounds(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	_, err := m.RecordEvent(ctx, torus.Event{Kind: torus.EventPeerDown, Time: time.Now().Add(-torus.EventRetention - time.Hour), Message: "old"})
	must(t, err, "RecordEvent of an old event")
	var last torus.Event
	for i := 0; i < torus.MaxEvents+5; i++ {
		last, err = m.RecordEvent(ctx, torus.Event{Kind: torus.EventHealStarted, Message: fmt.Sprint(i)})
		must(t, err, "RecordEvent")
	}
	evs, err := m.Events(ctx, 0, 0)
	must(t, err, "Events")
	if len(evs) != torus.MaxEvents {
		t.Fatalf("%d events kept, want %d", len(evs), torus.MaxEvents)
	}
	if evs[0].Message != "5" || evs[len(evs)-1].Seq != last.Seq {
		t.Errorf("kept from %q to seq %d, want from \"5\" to the last (%d)", evs[0].Message, evs[len(evs)-1].Seq, last.Seq)
	}
}

// testLockIdentity: the writer record keeps the identity Lock was given.
func testLockIdentity(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	createVolume(t, m, "v", 1<<20)
	s, err := m.NewSession(ctx, 10*time.Second)
	must(t, err, "NewSession")
	defer s.Close(ctx)
	e, err := m.Lock(ctx, s, "v", torus.WriterInfo{Owner: "w1", Identity: "blk", Epoch: 99})
	must(t, err, "Lock")
	w, ok, err := m.Writer(ctx, "v")
	if err != nil || !ok || w.Identity != "blk" || w.Owner != "w1" || w.Epoch != e || e == 99 {
		t.Fatalf("Writer after Lock with an identity = %+v %v %v (epoch %d)", w, ok, err, e)
	}
}
