package server

import (
	"testing"
	"time"
)

// TestGraceLeft: the loop wakes when the first down member's grace ends;
// members past their grace (healed already) or none down do not wake it.
func TestGraceLeft(t *testing.T) {
	now := time.Unix(1000, 0)
	s := &Server{cfg: Config{DownGrace: 10 * time.Second}}
	if d := s.graceLeft(now); d != 0 {
		t.Fatalf("nobody down: %v left, want 0", d)
	}
	s.downSince = map[string]time.Time{
		"a": now.Add(-4 * time.Second),
		"b": now.Add(-8 * time.Second),
		"c": now.Add(-time.Minute), // past its grace
	}
	if d := s.graceLeft(now); d != 2*time.Second {
		t.Fatalf("%v left, want 2s (b's grace)", d)
	}
	delete(s.downSince, "a")
	delete(s.downSince, "b")
	if d := s.graceLeft(now); d != 0 {
		t.Fatalf("only a member past its grace: %v left, want 0", d)
	}
}

// TestHealAgainOrder: a larger healAgain is sooner, so that max combines
// what several steps of a pass leave.
func TestHealAgainOrder(t *testing.T) {
	if !(againOnChange < againNextTick && againNextTick < againSoon && againSoon < againNow) {
		t.Fatal("healAgain values out of order")
	}
	for _, tc := range []struct {
		interval time.Duration
		peers    int
		want     time.Duration
	}{
		{2 * time.Second, 3, 250 * time.Millisecond}, // an eighth of the tick
		{2 * time.Second, 100, time.Second},          // 10 ms per peer listed
		{2 * time.Second, 1000, 2 * time.Second},     // never longer than the tick
		{time.Millisecond, 0, 10 * time.Millisecond}, // the floor
	} {
		if got := (Config{MaintenanceInterval: tc.interval}).healRecheck(tc.peers); got != tc.want {
			t.Errorf("healRecheck(interval %v, %d peers) = %v, want %v", tc.interval, tc.peers, got, tc.want)
		}
	}
}
