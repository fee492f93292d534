package main

import (
	"bufio"
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

// HealMetrics are the Prometheus counters, in any daemon's /metrics, that
// count bytes copied by healing. The first one present is used.
var HealMetrics = []string{"torus_heal_bytes_total", "torus_healed_bytes_total", "torus_repair_bytes_total"}

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

// healedBytes sums the heal counter over the given daemons' /metrics.
func healedBytes(ctx context.Context, daemons []*Daemon) (int64, bool) {
	client := &http.Client{Timeout: 2 * time.Second}
	for _, name := range HealMetrics {
		var total float64
		any := false
		for _, d := range daemons {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.HTTP+"/metrics", nil)
			if err != nil {
				continue
			}
			resp, err := client.Do(req)
			if err != nil {
				continue
			}
			v, ok, err := SumMetric(resp.Body, name)
			resp.Body.Close()
			if err == nil && ok {
				total += v
				any = true
			}
		}
		if any {
			return int64(total), true
		}
	}
	return 0, false
}

// health asks torusctl for the cluster's redundancy.
func (c *TorusCluster) health(ctx context.Context) (Health, error) {
	var errs []error
	for _, args := range [][]string{{"status", "-o", "json"}, {"volume", "list", "-o", "json"}} {
		out, err := c.Ctl(ctx, args...)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		h, err := ParseHealth(out)
		if err != nil {
			errs = append(errs, fmt.Errorf("torusctl %s: %w", strings.Join(args, " "), err))
			continue
		}
		return h, nil
	}
	return Health{}, errors.Join(errs...)
}

// MeasureHealing stops torusblk (a clean close), SIGKILLs the cluster's last
// daemon and polls until the cluster has reported the volume degraded and
// then healthy again, or timeout passes. The byte count is the survivors'
// heal counter delta when they export one, else the largest
// under-replicated byte count seen.
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
	metric0, haveMetric := healedBytes(ctx, survivors)

	res.Killed = victim.Name
	start := time.Now()
	victim.Proc.Kill()
	logger.Info("healing: killed daemon", "daemon", victim.Name)

	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var maxUnder int64
	var detected time.Duration
	var lastErr error
	for {
		h, err := c.health(ctx)
		now := time.Since(start)
		switch {
		case err != nil:
			lastErr = err
		case h.Degraded():
			if detected == 0 {
				detected = now
				logger.Info("healing: volume degraded", "after", now.Round(time.Millisecond), "under_replicated_bytes", h.UnderReplicatedBytes)
			}
			maxUnder = max(maxUnder, h.UnderReplicatedBytes)
		case detected != 0:
			res.TotalSeconds = now.Seconds()
			res.DetectSeconds = detected.Seconds()
			res.Bytes, res.Source = maxUnder, "status under_replicated_bytes"
			if m1, ok := healedBytes(ctx, survivors); ok && haveMetric && m1 > metric0 {
				res.Bytes, res.Source = m1-metric0, "metrics heal counter"
			}
			res.Status = "ok"
			mib := float64(res.Bytes) / (1 << 20)
			if d := res.TotalSeconds - res.DetectSeconds; d > 0 {
				res.MiBps = mib / d
			}
			res.TotalMiBps = mib / res.TotalSeconds
			return res
		}
		select {
		case <-ctx.Done():
			switch {
			case detected == 0 && lastErr != nil:
				res.Status = "error: " + oneLine(lastErr.Error(), 300)
			case detected == 0:
				res.Status = fmt.Sprintf("timeout: volume never reported degraded within %v", timeout)
			default:
				res.Status = fmt.Sprintf("timeout: still degraded after %v", timeout)
			}
			res.TotalSeconds = time.Since(start).Seconds()
			return res
		case <-tick.C:
		}
	}
}
