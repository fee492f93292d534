package torus

import (
	"errors"
	"fmt"
	"testing"
)

// TestErrorKind: every sentinel has its own kind, found through wrapping;
// nil is "" and an unclassified error "other".
func TestErrorKind(t *testing.T) {
	seen := map[string]bool{}
	for _, k := range errorKinds {
		got := ErrorKind(fmt.Errorf("ctx: %w", k.err))
		if got != k.name || seen[got] {
			t.Errorf("ErrorKind(wrapped %v) = %q (seen before: %v)", k.err, got, seen[got])
		}
		seen[got] = true
	}
	if got := ErrorKind(&LockedError{Volume: "v", InUse: true}); got != "in-use" {
		t.Errorf("ErrorKind(LockedError in use) = %q", got)
	}
	if ErrorKind(nil) != "" || ErrorKind(errors.New("x")) != "other" {
		t.Errorf("nil: %q, plain: %q", ErrorKind(nil), ErrorKind(errors.New("x")))
	}
}
