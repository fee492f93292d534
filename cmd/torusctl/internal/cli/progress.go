package cli

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// progress reports a long copy on stderr: on a terminal, a bar redrawn in
// place with the rate and the time left; otherwise one plain line every
// interval, so logs of scripts stay readable.
type progress struct {
	w        io.Writer
	tty      bool
	now      func() time.Time
	interval time.Duration // between plain lines
	what     string        // "import vol"
	total    int64         // bytes expected; 0: unknown (a pipe)

	start, last time.Time
	base        int64 // bytes done before this run (a resumed import)
	done        int64
	drawn       bool
}

// ttyRedraw is the least time between two redraws of the bar.
const ttyRedraw = 200 * time.Millisecond

func newProgress(w io.Writer, tty bool, now func() time.Time, interval time.Duration, what string, base, total int64) *progress {
	t := now()
	return &progress{w: w, tty: tty, now: now, interval: interval, what: what, total: total, start: t, last: t, base: base, done: base}
}

// update records that done bytes (from the start of the source) are copied
// and prints when it is time.
func (p *progress) update(done int64) {
	p.done = done
	t := p.now()
	every := p.interval
	if p.tty {
		every = ttyRedraw
	}
	if t.Sub(p.last) < every {
		return
	}
	p.last = t
	p.print(t, false)
}

// finish prints the final state (on a terminal, ends the bar's line).
func (p *progress) finish() {
	p.print(p.now(), true)
}

func (p *progress) print(t time.Time, final bool) {
	elapsed := t.Sub(p.start)
	rate := 0.0
	if s := elapsed.Seconds(); s > 0 {
		rate = float64(p.done-p.base) / s
	}
	left := ""
	if p.total > 0 && rate > 0 && p.done < p.total {
		left = fmtDuration(time.Duration(float64(p.total-p.done)/rate*float64(time.Second))) + " left"
	}
	amount := HumanSize(p.done)
	pct := ""
	if p.total > 0 {
		amount += " of " + HumanSize(p.total)
		pct = fmt.Sprintf("%d%%", p.done*100/p.total)
	}
	rateStr := HumanSize(int64(rate)) + "/s"
	if p.tty {
		bar := ""
		if p.total > 0 {
			const width = 30
			n := int(p.done * width / p.total)
			bar = "[" + strings.Repeat("=", n) + strings.Repeat(" ", width-n) + "] " + pct + " "
		}
		fmt.Fprintf(p.w, "\r\033[K%s: %s%s  %s  %s", p.what, bar, amount, rateStr, left)
		p.drawn = true
		if final {
			fmt.Fprintln(p.w)
		}
		return
	}
	if final {
		fmt.Fprintf(p.w, "%s: %s done in %s (%s)\n", p.what, amount, fmtDuration(elapsed), rateStr)
		return
	}
	parts := []string{amount}
	if pct != "" {
		parts = append(parts, pct)
	}
	parts = append(parts, rateStr)
	if left != "" {
		parts = append(parts, left)
	}
	fmt.Fprintf(p.w, "%s: %s\n", p.what, strings.Join(parts, ", "))
}

// fmtDuration prints d rounded to seconds as 1h02m03s, 2m03s or 3s.
func fmtDuration(d time.Duration) string {
	d = d.Round(time.Second)
	h, m, s := int(d.Hours()), int(d.Minutes())%60, int(d.Seconds())%60
	switch {
	case h > 0:
		return fmt.Sprintf("%dh%02dm%02ds", h, m, s)
	case m > 0:
		return fmt.Sprintf("%dm%02ds", m, s)
	}
	return fmt.Sprintf("%ds", s)
}
