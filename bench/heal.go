package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Health is what the benchmark reads from `torusctl status -o json` (or
// `volume list -o json`) about redundancy.
//
// The expected fields, found at any depth of the JSON document and summed
// over all objects that carry them (volumes, segments, the cluster):
//
//	"under_replicated_bytes":    integer, bytes that lack a replica
//	"under_replicated_segments": integer, segments that lack a replica
//	"healthy":                   boolean, false while anything is degraded
//	"health":                    string, "ok" or "healthy" when nothing is
//	                             degraded (null: unknown, ignored)
//
// A document with none of them is an error (ErrHealthFormat), so a changed
// format shows up instead of reading as healthy.
type Health struct {
	UnderReplicatedBytes    int64
	UnderReplicatedSegments int64
	// Unhealthy is true when some "healthy": false was seen.
	Unhealthy bool
}

// Degraded reports whether anything lacks redundancy.
func (h Health) Degraded() bool {
	return h.Unhealthy || h.UnderReplicatedBytes > 0 || h.UnderReplicatedSegments > 0
}

// ErrHealthFormat is returned when torusctl's JSON has no health fields.
var ErrHealthFormat = errors.New("bench: no health fields in torusctl output")

// ParseHealth reads redundancy fields from torusctl's JSON output.
func ParseHealth(data []byte) (Health, error) {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return Health{}, fmt.Errorf("%w: %v", ErrHealthFormat, err)
	}
	var h Health
	found := false
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, e := range x {
				switch k {
				case "under_replicated_bytes", "under_replicated_segments":
					if n, ok := e.(float64); ok {
						found = true
						if k == "under_replicated_bytes" {
							h.UnderReplicatedBytes += int64(n)
						} else {
							h.UnderReplicatedSegments += int64(n)
						}
						continue
					}
				case "healthy":
					if b, ok := e.(bool); ok {
						found = true
						h.Unhealthy = h.Unhealthy || !b
						continue
					}
				case "health":
					// volume list prints null until torusctl can tell.
					if str, ok := e.(string); ok {
						found = true
						h.Unhealthy = h.Unhealthy || (str != "ok" && str != "healthy")
						continue
					}
				}
				walk(e)
			}
		case []any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(v)
	if !found {
		return Health{}, ErrHealthFormat
	}
	return h, nil
}

// HealCopiedMetrics are the Prometheus counters, in a daemon's /metrics,
// of bytes copied by healing; the first one present is used. torusd
// exports torus_heal_copied_bytes_total.
var HealCopiedMetrics = []string{"torus_heal_copied_bytes_total", "torus_heal_bytes_total"}

// HealPendingMetric is torusd's gauge of bytes it still has to copy to heal
// or rebalance.
const HealPendingMetric = "torus_rebalance_pending_bytes"

// SumMetric sums every sample of the metric name (any labels) in a
// Prometheus text exposition. ok is false when there is none.
func SumMetric(r io.Reader, name string) (sum float64, ok bool, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		rest, found := strings.CutPrefix(line, name)
		if !found || rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		if rest[0] == '{' {
			i := strings.LastIndexByte(rest, '}')
			if i < 0 {
				return 0, false, fmt.Errorf("bench: metric line %q", line)
			}
			rest = rest[i+1:]
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0, false, fmt.Errorf("bench: metric line %q", line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return 0, false, fmt.Errorf("bench: metric line %q: %w", line, err)
		}
		sum += v
		ok = true
	}
	return sum, ok, sc.Err()
}

// HealObs is one poll of the cluster during healing. Unknown values are
// negative (counts) or nil.
type HealObs struct {
	// VictimDown: the cluster marks the killed daemon down.
	VictimDown bool
	// Pending is the survivors' summed HealPendingMetric (-1: unknown).
	Pending int64
	// Copied is the survivors' summed heal counter (-1: unknown).
	Copied int64
	// Health is torusctl's redundancy report (nil: it has none).
	Health *Health
}

// HealTracker decides, from successive observations, when the kill was
// noticed, when copying started and when healing finished. It is pure: the
// caller polls and feeds it.
//
//   - Noticed: the first observation where the victim is down, something is
//     pending, the heal counter grew, or torusctl reports the volume
//     degraded.
//   - Copying started: the first observation where something is pending or
//     the heal counter grew (the daemons may wait a grace period after
//     "down" before they copy; that wait is not copy time). When neither
//     signal exists, copying is taken to start when the kill was noticed.
//   - Finished: after noticing, two observations in a row show nothing
//     pending (or pending unknown), no degraded report, and proof that
//     healing happened: the heal counter grew, or torusctl had reported the
//     volume degraded. Without such proof it never finishes (the caller
//     times out), so a cluster that does not heal cannot read as healed.
//     Healing counts as finished at the first of the two (the second only
//     confirms it): like the copy start, at most one poll after the fact.
type HealTracker struct {
	copied0    int64 // counter before the kill (-1: unknown)
	noticed    time.Duration
	isNoticed  bool
	copyStart  time.Duration
	isCopying  bool
	sawReport  bool // torusctl reported degraded at some point
	maxPending int64
	maxUnder   int64
	lastCopied int64
	calm       int           // consecutive observations that look finished
	calmSince  time.Duration // when the first of them was made
	done       time.Duration
	isDone     bool
}

// NewHealTracker starts tracking; copied0 is the heal counter before the
// kill (-1: unknown).
func NewHealTracker(copied0 int64) *HealTracker {
	return &HealTracker{copied0: copied0, lastCopied: -1}
}

// Observe feeds one observation made at elapsed time since the kill and
// reports whether healing has finished.
func (h *HealTracker) Observe(elapsed time.Duration, o HealObs) bool {
	if h.isDone {
		return true
	}
	degradedReport := o.Health != nil && o.Health.Degraded()
	if degradedReport {
		h.sawReport = true
		h.maxUnder = max(h.maxUnder, o.Health.UnderReplicatedBytes)
	}
	h.maxPending = max(h.maxPending, o.Pending)
	if o.Copied >= 0 {
		h.lastCopied = o.Copied
	}
	grew := h.copied0 >= 0 && h.lastCopied > h.copied0
	if !h.isCopying && (o.Pending > 0 || grew) {
		h.isCopying, h.copyStart = true, elapsed
	}
	if !h.isNoticed && (o.VictimDown || degradedReport || h.isCopying) {
		h.isNoticed, h.noticed = true, elapsed
	}
	if !h.isNoticed {
		return false
	}
	if o.Pending <= 0 && !degradedReport && (h.sawReport || grew) {
		if h.calm++; h.calm == 1 {
			h.calmSince = elapsed
		}
	} else {
		h.calm = 0
	}
	if h.calm >= 2 {
		h.isDone, h.done = true, h.calmSince
		if h.isCopying && h.done <= h.copyStart {
			// The copy was first seen already finished: it ran
			// between two polls. Count one poll for it (the rate is
			// then a lower bound), not zero time.
			h.done = elapsed
		}
		return true
	}
	return false
}

// Done returns when healing finished: the first of the two observations
// that showed it (ok is false until Observe reported it finished).
func (h *HealTracker) Done() (time.Duration, bool) { return h.done, h.isDone }

// Noticed returns when the kill was first noticed.
func (h *HealTracker) Noticed() (time.Duration, bool) { return h.noticed, h.isNoticed }

// CopyStart returns when copying started (when the kill was noticed if no
// signal showed copying itself).
func (h *HealTracker) CopyStart() time.Duration {
	if h.isCopying {
		return h.copyStart
	}
	return h.noticed
}

// Bytes returns the bytes re-replicated and where the number comes from:
// the heal counter's growth, else the largest pending or under-replicated
// count seen.
func (h *HealTracker) Bytes() (int64, string) {
	switch {
	case h.copied0 >= 0 && h.lastCopied > h.copied0:
		return h.lastCopied - h.copied0, "metrics " + HealCopiedMetrics[0]
	case h.maxPending > 0:
		return h.maxPending, "metrics " + HealPendingMetric + " (peak)"
	case h.maxUnder > 0:
		return h.maxUnder, "torusctl under_replicated_bytes (peak)"
	}
	return 0, ""
}

// Result fills the timing, byte and rate fields of r from a finished
// tracker, total being the time from the kill to the end.
func (h *HealTracker) Result(r *HealResult, total time.Duration) {
	r.TotalSeconds = total.Seconds()
	r.DetectSeconds = h.noticed.Seconds()
	r.CopyStartSeconds = h.CopyStart().Seconds()
	r.Bytes, r.Source = h.Bytes()
	mib := float64(r.Bytes) / (1 << 20)
	if d := r.TotalSeconds - r.CopyStartSeconds; d > 0 {
		r.MiBps = mib / d
	}
	if r.TotalSeconds > 0 {
		r.TotalMiBps = mib / r.TotalSeconds
	}
}

// scrape sums metrics over the daemons' /metrics: the first of
// HealCopiedMetrics present, and HealPendingMetric (-1 when absent).
func scrape(ctx context.Context, daemons []*Daemon) (copied, pending int64) {
	copied, pending = -1, -1
	for _, d := range daemons {
		body, err := fetchMetrics(ctx, d)
		if err != nil {
			continue
		}
		for _, name := range HealCopiedMetrics {
			if v, ok, err := SumMetric(bytes.NewReader(body), name); err == nil && ok {
				copied = max(copied, 0) + int64(v)
				break
			}
		}
		if v, ok, err := SumMetric(bytes.NewReader(body), HealPendingMetric); err == nil && ok {
			pending = max(pending, 0) + int64(v)
		}
	}
	return copied, pending
}

// fetchMetrics returns the body of a daemon's /metrics.
func fetchMetrics(ctx context.Context, d *Daemon) ([]byte, error) {
	client := &http.Client{Timeout: 2 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.HTTP+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("bench: %s/metrics: %s", d.HTTP, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 16<<20))
}

// scrapeMetric sums the metric name in a daemon's /metrics; ok is false
// when the daemon did not answer or has no such metric.
func scrapeMetric(ctx context.Context, d *Daemon, name string) (float64, bool) {
	body, err := fetchMetrics(ctx, d)
	if err != nil {
		return 0, false
	}
	v, ok, err := SumMetric(bytes.NewReader(body), name)
	return v, ok && err == nil
}

// peerEntry is what the benchmark reads of `torusctl peer list -o json`
// (torus.PeerInfo).
type peerEntry struct {
	Address string `json:"address"`
	State   string `json:"state"`
}

// PeerDown reports whether `peer list -o json` output shows the peer at
// addr down; when no peer has that address, whether any peer is down.
func PeerDown(data []byte, addr string) (bool, error) {
	var peers []peerEntry
	if err := json.Unmarshal(data, &peers); err != nil {
		return false, fmt.Errorf("bench: peer list: %w", err)
	}
	anyDown, matched := false, false
	for _, p := range peers {
		down := p.State == "down"
		anyDown = anyDown || down
		if p.Address == addr {
			matched = true
			if down {
				return true, nil
			}
		}
	}
	return !matched && anyDown, nil
}

// observe polls the cluster once.
func (c *TorusCluster) observe(ctx context.Context, victim *Daemon, survivors []*Daemon) (HealObs, error) {
	var o HealObs
	var errs []error
	o.Copied, o.Pending = scrape(ctx, survivors)
	peersOK := false
	if out, err := c.Ctl(ctx, "peer", "list", "-o", "json"); err != nil {
		errs = append(errs, err)
	} else if o.VictimDown, err = PeerDown(out, victim.PeerAddr); err != nil {
		errs = append(errs, err)
	} else {
		peersOK = true
	}
	for _, args := range [][]string{{"status", "-o", "json"}, {"volume", "list", "-o", "json"}} {
		out, err := c.Ctl(ctx, args...)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if h, err := ParseHealth(out); err == nil {
			o.Health = &h
			break
		}
	}
	if !peersOK && o.Copied < 0 && o.Pending < 0 && o.Health == nil {
		// Nothing learned: report why.
		return o, errors.Join(errs...)
	}
	return o, nil
}

// MeasureHealing stops torusblk (a clean close), SIGKILLs the cluster's last
// daemon and polls every half second (HealTracker) until healing has been
// detected and finished, or timeout passes.
func MeasureHealing(ctx context.Context, logger *slog.Logger, c *TorusCluster, timeout time.Duration) HealResult {
	res := HealResult{Target: c.Spec.Name}
	if len(c.Daemons) < 2 || c.Spec.Replication < 2 {
		res.Status = "skipped: needs 2+ daemons and replication 2+"
		return res
	}
	if c.Blk != nil {
		if err := c.Blk.Stop(30 * time.Second); err != nil {
			logger.Warn("torusblk exited with error before healing", "err", err)
		}
	}
	victim := c.Daemons[len(c.Daemons)-1]
	survivors := c.Daemons[:len(c.Daemons)-1]
	copied0, _ := scrape(ctx, survivors)
	tr := NewHealTracker(copied0)

	res.Killed = victim.Name
	start := time.Now()
	victim.Proc.Kill()
	logger.Info("healing: killed daemon", "daemon", victim.Name)

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		o, err := c.observe(ctx, victim, survivors)
		now := time.Since(start)
		if err != nil {
			lastErr = err
		} else {
			_, was := tr.Noticed()
			finished := tr.Observe(now, o)
			if d, is := tr.Noticed(); is && !was {
				logger.Info("healing: kill noticed", "after", d.Round(time.Millisecond), "pending", o.Pending)
			}
			if finished {
				res.Status = "ok"
				done, _ := tr.Done()
				tr.Result(&res, done)
				return res
			}
		}
		select {
		case <-ctx.Done():
			_, detected := tr.Noticed()
			switch {
			case !detected && lastErr != nil:
				res.Status = "error: " + oneLine(lastErr.Error(), 300)
			case !detected:
				res.Status = fmt.Sprintf("timeout: the kill was not noticed within %v", timeout)
			default:
				res.Status = fmt.Sprintf("timeout: healing not finished within %v", timeout)
			}
			tr.Result(&res, time.Since(start))
			res.MiBps, res.TotalMiBps = 0, 0
			return res
		case <-tick.C:
		}
	}
}
