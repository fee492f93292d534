// Package testutil holds small helpers shared by tests.
package testutil

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"testing"
)

// RequireBinary returns the path of an external program a test needs (nbdinfo,
// qemu-img, fio, etcd, ...). When it is missing the test is skipped, unless
// TORUS_REQUIRE_TOOLS=1 (set by .ci/run, which installs them), where a missing
// program fails the test: CI never passes by skipping.
func RequireBinary(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("TORUS_REQUIRE_TOOLS") == "1" {
			t.Fatalf("required program %s not found: %v", name, err)
		}
		t.Skipf("program %s not found (run the README's test command, which installs it)", name)
	}
	return p
}

// Logger returns a logger that writes through t.Log when -v is given and
// discards otherwise, so failing tests show what happened.
func Logger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

// Require skips the test when a capability it needs is missing (err is
// why: no root, no /dev/fuse, no network namespaces), unless
// TORUS_REQUIRE_TOOLS=1, where it fails: CI never passes by skipping.
func Require(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("TORUS_REQUIRE_TOOLS") == "1" {
		t.Fatalf("required %s unavailable (TORUS_REQUIRE_TOOLS=1): %v", what, err)
	}
	t.Skipf("%s unavailable: %v", what, err)
}

// Root is nil when the process runs as root, an error otherwise (for
// Require).
func Root() error {
	if os.Geteuid() != 0 {
		return errors.New("not running as root")
	}
	return nil
}

// SkipShort skips a long test (a process-level cluster, a measurement)
// under go test -short, the quick local loop of `make unit`, saying why.
// Under TORUS_REQUIRE_TOOLS=1 it fails instead: CI runs everything, and
// -short there would pass by skipping.
func SkipShort(t testing.TB, why string) {
	t.Helper()
	if !testing.Short() {
		return
	}
	if os.Getenv("TORUS_REQUIRE_TOOLS") == "1" {
		t.Fatalf("-short with TORUS_REQUIRE_TOOLS=1: %s must run", why)
	}
	t.Skipf("-short: %s", why)
}
