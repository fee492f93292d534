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
	if c := (Config{MaintenanceInterval: 2 * time.Second}); c.healRecheck() != 250*time.Millisecond {
		t.Fatalf("healRecheck %v, want 250ms", c.healRecheck())
	}
	if c := (Config{MaintenanceInterval: time.Millisecond}); c.healRecheck() != 10*time.Millisecond {
		t.Fatalf("healRecheck %v, want the 10ms floor", c.healRecheck())
	}
}
