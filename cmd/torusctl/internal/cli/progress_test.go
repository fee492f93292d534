package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestProgress: plain lines only every interval, with percentage, rate and
// time left; on a terminal a bar redrawn in place; a final summary.
func TestProgress(t *testing.T) {
	now := time.Unix(0, 0)
	clock := func() time.Time { return now }
	var out bytes.Buffer
	p := newProgress(&out, false, clock, 5*time.Second, "import v", 0, 100<<20)
	now = now.Add(time.Second)
	p.update(10 << 20)
	if out.Len() != 0 {
		t.Fatalf("printed before the interval: %q", out.String())
	}
	now = now.Add(4 * time.Second)
	p.update(50 << 20)
	if got, want := out.String(), "import v: 50MiB of 100MiB, 50%, 10MiB/s, 5s left\n"; got != want {
		t.Fatalf("plain line %q, want %q", got, want)
	}
	now = now.Add(5 * time.Second)
	p.update(100 << 20)
	p.finish()
	if !strings.HasSuffix(out.String(), "import v: 100MiB of 100MiB done in 10s (10MiB/s)\n") {
		t.Fatalf("final line: %q", out.String())
	}

	out.Reset()
	p = newProgress(&out, true, clock, 5*time.Second, "export v", 0, 100<<20)
	now = now.Add(time.Second)
	p.update(50 << 20)
	p.finish()
	if s := out.String(); !strings.HasPrefix(s, "\r\033[Kexport v: [===============               ] 50% 50MiB of 100MiB  50MiB/s  1s left") || !strings.HasSuffix(s, "\n") {
		t.Fatalf("bar %q", s)
	}
}
