package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unicode/utf8"
)

// Target names. The baselines come first; ratios are to TargetNBDKit.
const (
	TargetDisk    = "disk"
	TargetNBDKit  = "nbdkit"
	TargetQemuNBD = "qemu-nbd"
	TargetTorus1  = "torus-1d-r1"
	TargetTorus2  = "torus-3d-r2"
	// TargetTorus2TLS is TargetTorus2 with mutual TLS on the peer
	// protocol (every torusd and torusblk with certificates): the pair
	// gives the cost of TLS in the same run (TLSCosts).
	TargetTorus2TLS = "torus-3d-r2-tls"
	TargetTorus3    = "torus-3d-r3"
	// TargetCeph1 and TargetCeph2 are Ceph RBD images in pools of size 1
	// and 2 on one monitor and three BlueStore OSDs (-ceph; ceph.go).
	TargetCeph1 = "ceph-rbd-size1"
	TargetCeph2 = "ceph-rbd-size2"
)

// TargetStatus says what became of one target in a run.
type TargetStatus struct {
	Name string `json:"name"`
	// Desc says what the target is.
	Desc string `json:"desc"`
	// Baseline targets make the run fail when they cannot run.
	Baseline bool `json:"baseline"`
	// Skipped is set when the target did not run for a known reason
	// ("skipped: bin/torusd not built").
	Skipped string `json:"skipped,omitempty"`
	// Error is set when the target was meant to run and failed.
	Error string `json:"error,omitempty"`
}

// Result is one job on one target.
type Result struct {
	Target string `json:"target"`
	Job    string `json:"job"`
	Metric Metric `json:"metric"`
	// Value is the headline number in Metric units.
	Value float64 `json:"value"`
	// P50Ns and P99Ns are the headline latencies: reads for jobs that
	// read, writes otherwise; for a job with fsync=N, write latency plus
	// flush latency (the sum of the two percentiles, an upper bound of the
	// durable-write percentile).
	P50Ns int64 `json:"p50_ns"`
	P99Ns int64 `json:"p99_ns"`
	// Ratio is Value / nbdkit's Value for the same job (0: not available).
	Ratio float64 `json:"ratio_to_nbdkit,omitempty"`
	// RatioDisk is Value / the plain file's Value (0: not available).
	RatioDisk float64 `json:"ratio_to_disk,omitempty"`
	// LatencyRatio is P50Ns / nbdkit's P50Ns (0: not available).
	LatencyRatio float64 `json:"p50_ratio_to_nbdkit,omitempty"`
	// Fio holds the parsed fio numbers (nil when the job failed).
	Fio *FioResult `json:"fio,omitempty"`
	// Error is set when the job failed.
	Error string `json:"error,omitempty"`
}

// HeadlineResult turns fio's numbers for job on target into a Result.
func HeadlineResult(target string, job Job, f FioResult) Result {
	r := Result{Target: target, Job: job.Name, Metric: job.Metric, Fio: &f}
	switch job.Metric {
	case MetricBandwidth:
		r.Value = (f.Read.BytesPerSec + f.Write.BytesPerSec) / (1 << 20)
	default:
		r.Value = f.Read.IOPS + f.Write.IOPS
	}
	lat := f.Write
	if job.Reads() {
		lat = f.Read
	}
	r.P50Ns, r.P99Ns = lat.P50Ns, lat.P99Ns
	if job.Fsync > 0 && !job.Reads() {
		r.P50Ns += f.Sync.P50Ns
		r.P99Ns += f.Sync.P99Ns
	}
	return r
}

// ComputeRatios fills Ratio, RatioDisk and LatencyRatio of every result
// from the nbdkit and plain-file results of the same job. Failed results,
// and results whose reference failed, get no ratio.
func ComputeRatios(results []Result) {
	ref := func(target, job string) (Result, bool) {
		for _, r := range results {
			if r.Target == target && r.Job == job && r.Error == "" && r.Value > 0 {
				return r, true
			}
		}
		return Result{}, false
	}
	for i := range results {
		r := &results[i]
		r.Ratio, r.RatioDisk, r.LatencyRatio = 0, 0, 0
		if r.Error != "" {
			continue
		}
		if n, ok := ref(TargetNBDKit, r.Job); ok {
			r.Ratio = r.Value / n.Value
			if n.P50Ns > 0 {
				r.LatencyRatio = float64(r.P50Ns) / float64(n.P50Ns)
			}
		}
		if d, ok := ref(TargetDisk, r.Job); ok {
			r.RatioDisk = r.Value / d.Value
		}
	}
}

// FormatLatency prints nanoseconds with a unit that keeps 3 digits.
func FormatLatency(ns int64) string {
	switch {
	case ns <= 0:
		return "-"
	case ns < 10_000:
		return fmt.Sprintf("%.1fµs", float64(ns)/1e3)
	case ns < 1_000_000:
		return fmt.Sprintf("%.0fµs", float64(ns)/1e3)
	case ns < 10_000_000:
		return fmt.Sprintf("%.2fms", float64(ns)/1e6)
	case ns < 1_000_000_000:
		return fmt.Sprintf("%.1fms", float64(ns)/1e6)
	}
	return fmt.Sprintf("%.2fs", float64(ns)/1e9)
}

func formatRatio(r float64) string {
	if r <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", r)
}

func formatValue(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

// WriteTable writes the results as an aligned text table: one row per job of
// each target that ran, one row per skipped or failed target.
func WriteTable(w io.Writer, targets []TargetStatus, results []Result) error {
	rows := [][]string{{"target", "job", "value", "unit", "p50", "p99", "x nbdkit", "x disk"}}
	for _, t := range targets {
		n := 0
		for _, r := range results {
			if r.Target != t.Name {
				continue
			}
			n++
			if r.Error != "" {
				rows = append(rows, []string{r.Target, r.Job, "FAILED: " + oneLine(r.Error, 100)})
				continue
			}
			rows = append(rows, []string{r.Target, r.Job, formatValue(r.Value), string(r.Metric),
				FormatLatency(r.P50Ns), FormatLatency(r.P99Ns), formatRatio(r.Ratio), formatRatio(r.RatioDisk)})
		}
		switch {
		case t.Skipped != "":
			rows = append(rows, []string{t.Name, t.Skipped})
		case t.Error != "" && n == 0:
			rows = append(rows, []string{t.Name, "FAILED: " + oneLine(t.Error, 120)})
		case t.Error != "":
			rows = append(rows, []string{t.Name, "target FAILED: " + oneLine(t.Error, 120)})
		}
	}
	return writeColumns(w, rows, []bool{false, false, true, false, true, true, true, true})
}

// writeColumns pads cells to their column's width, right-aligned where
// right says so. A row's last cell is never padded, so a long message in a
// short row (a skipped target) does not widen the column.
func writeColumns(w io.Writer, rows [][]string, right []bool) error {
	width := make([]int, len(right))
	for _, row := range rows {
		for i, c := range row {
			if i < len(row)-1 || len(row) == len(right) {
				width[i] = max(width[i], utf8.RuneCountInString(c))
			}
		}
	}
	var b strings.Builder
	for _, row := range rows {
		for i, c := range row {
			if i > 0 {
				b.WriteString("  ")
			}
			pad := strings.Repeat(" ", max(0, width[i]-utf8.RuneCountInString(c)))
			switch {
			case i == len(row)-1 && len(row) < len(right):
				b.WriteString(c)
			case right[i]:
				b.WriteString(pad + c)
			default:
				b.WriteString(c + pad)
			}
		}
		b.WriteString("\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// oneLine shortens s to n runes on a single line, for table cells.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}

// ProcResources are one Torus process's resource use during a target's run.
type ProcResources struct {
	Target string `json:"target"`
	// Name is torusd-0, torusd-1, ... or torusblk.
	Name string `json:"name"`
	PID  int    `json:"pid"`
	// PeakRSSBytes is VmHWM, the peak resident set size.
	PeakRSSBytes int64 `json:"peak_rss_bytes"`
	// CPUSeconds is user + system CPU time used from start to the end of
	// the jobs.
	CPUSeconds float64 `json:"cpu_seconds"`
	// IdleCPUPercent is CPU use over the idle window, in percent of one
	// core (-1: not measured).
	IdleCPUPercent float64 `json:"idle_cpu_percent"`
}

// HealResult is the healing measurement.
type HealResult struct {
	Target string `json:"target"`
	// Status is "ok", "timeout", "skipped: ..." or "error: ...".
	Status string `json:"status"`
	// Killed names the daemon that got SIGKILL.
	Killed string `json:"killed,omitempty"`
	// Bytes re-replicated.
	Bytes int64 `json:"bytes"`
	// DetectSeconds is the time from the kill until the cluster noticed it
	// (peer down, volume degraded, or copying).
	DetectSeconds float64 `json:"detect_seconds"`
	// CopyStartSeconds is the time from the kill until copying started
	// (after the daemons' grace period for a down peer).
	CopyStartSeconds float64 `json:"copy_start_seconds"`
	// TotalSeconds is the time from the kill until healing finished.
	TotalSeconds float64 `json:"total_seconds"`
	// MiBps is Bytes / (TotalSeconds - CopyStartSeconds): the copy rate.
	// TotalMiBps is Bytes / TotalSeconds, detection and grace included.
	MiBps      float64 `json:"mib_per_sec"`
	TotalMiBps float64 `json:"total_mib_per_sec"`
	// Source says where the byte count came from (status or metrics).
	Source string `json:"source,omitempty"`
}

// Report is the whole run, as written to bench/results/*.json.
type Report struct {
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// Mode is "quick" or "full".
	Mode     string          `json:"mode"`
	Host     HostInfo        `json:"host"`
	Settings ReportSettings  `json:"settings"`
	Jobs     []Job           `json:"jobs"`
	Targets  []TargetStatus  `json:"targets"`
	Results  []Result        `json:"results"`
	Heal     *HealResult     `json:"heal,omitempty"`
	Procs    []ProcResources `json:"resources,omitempty"`
	Aims     []AimResult     `json:"aims"`
	// JobCPU is the CPU each watched process used during each job;
	// CPUCost sums it per GiB (CPUCosts).
	JobCPU  []JobCPU  `json:"job_cpu,omitempty"`
	CPUCost []CPUCost `json:"cpu_cost,omitempty"`
	// WA holds the write-amplification rows (issue 10), one per -wa-sizes
	// entry.
	WA []WAResult `json:"write_amplification,omitempty"`
	// Ceph compares Torus with Ceph RBD job by job (-ceph).
	Ceph []CephRow `json:"ceph,omitempty"`
	// TLSCost compares TargetTorus2TLS with TargetTorus2, job by job.
	TLSCost []TLSCost `json:"tls_cost,omitempty"`
}

// TLSCost is what mutual TLS on the peer protocol costs one job:
// TargetTorus2TLS against TargetTorus2 in the same run.
type TLSCost struct {
	Job    string `json:"job"`
	Metric Metric `json:"metric"`
	// Plain and TLS are the headline values of the two targets.
	Plain float64 `json:"plain"`
	TLS   float64 `json:"tls"`
	// Ratio is TLS / Plain: 1 costs nothing, 0.8 is 20% slower.
	Ratio float64 `json:"ratio"`
	// P50Ratio is the TLS target's p50 latency over the plain one's (0:
	// not available).
	P50Ratio float64 `json:"p50_ratio,omitempty"`
}

// TLSCosts pairs the TargetTorus2TLS and TargetTorus2 results of each job,
// in the order of jobs; a job that failed or did not run on either target
// has no entry.
func TLSCosts(jobs []Job, results []Result) []TLSCost {
	get := func(target, job string) (Result, bool) {
		for _, r := range results {
			if r.Target == target && r.Job == job && r.Error == "" && r.Value > 0 {
				return r, true
			}
		}
		return Result{}, false
	}
	var out []TLSCost
	for _, j := range jobs {
		p, ok1 := get(TargetTorus2, j.Name)
		t, ok2 := get(TargetTorus2TLS, j.Name)
		if !ok1 || !ok2 {
			continue
		}
		c := TLSCost{Job: j.Name, Metric: j.Metric, Plain: p.Value, TLS: t.Value, Ratio: t.Value / p.Value}
		if p.P50Ns > 0 && t.P50Ns > 0 {
			c.P50Ratio = float64(t.P50Ns) / float64(p.P50Ns)
		}
		out = append(out, c)
	}
	return out
}

// ReportSettings records the run's settings in plain units.
type ReportSettings struct {
	RuntimeSeconds  int   `json:"runtime_seconds"`
	RampSeconds     int   `json:"ramp_seconds"`
	DataSetBytes    int64 `json:"data_set_bytes"`
	HealBytes       int64 `json:"heal_bytes"`
	IdleSeconds     int   `json:"idle_seconds"`
	DropCacheBefore bool  `json:"evict_page_cache_before_each_job"`
	// WASizes are the write-amplification sizes asked for (-wa-sizes).
	WASizes []int64 `json:"wa_sizes,omitempty"`
	Ceph    bool    `json:"ceph,omitempty"`
}

// HostInfo describes the machine and tools.
type HostInfo struct {
	Hostname string `json:"hostname"`
	CPUs     int    `json:"cpus"`
	Kernel   string `json:"kernel,omitempty"`
	Fio      string `json:"fio,omitempty"`
	NBDKit   string `json:"nbdkit,omitempty"`
	QemuNBD  string `json:"qemu_nbd,omitempty"`
	Etcd     string `json:"etcd,omitempty"`
	Commit   string `json:"commit,omitempty"`
	// LoadStart and LoadEnd are /proc/loadavg at the start and end of the
	// run: a busy machine makes every number noisy.
	LoadStart string `json:"loadavg_start,omitempty"`
	LoadEnd   string `json:"loadavg_end,omitempty"`
}

// loadAvg returns the first three fields of /proc/loadavg ("" on error).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// CephRow is one job against Ceph RBD: Torus R2 over Ceph size 2 and
// Torus R1 over Ceph size 1 (0: not available), as in issue 11's table.
type CephRow struct {
	Job    string  `json:"job"`
	Metric Metric  `json:"metric"`
	Ceph2  float64 `json:"ceph_size2"`
	Torus2 float64 `json:"torus_r2"`
	Ratio2 float64 `json:"ratio_r2"`
	Ceph1  float64 `json:"ceph_size1"`
	Torus1 float64 `json:"torus_r1"`
	Ratio1 float64 `json:"ratio_r1"`
	// P99Ceph2 and P99Torus2 are the two p99 latencies of the size-2 pair.
	P99Ceph2  int64 `json:"p99_ns_ceph_size2,omitempty"`
	P99Torus2 int64 `json:"p99_ns_torus_r2,omitempty"`
}

// CephRows pairs the Torus and Ceph results of each job, in the order of
// jobs; a job none of the Ceph targets ran is left out.
func CephRows(jobs []Job, results []Result) []CephRow {
	get := func(target, job string) (Result, bool) {
		for _, r := range results {
			if r.Target == target && r.Job == job && r.Error == "" && r.Value > 0 {
				return r, true
			}
		}
		return Result{}, false
	}
	ratio := func(a, b float64) float64 {
		if a <= 0 || b <= 0 {
			return 0
		}
		return a / b
	}
	var out []CephRow
	for _, j := range jobs {
		c2, ok2 := get(TargetCeph2, j.Name)
		c1, ok1 := get(TargetCeph1, j.Name)
		if !ok1 && !ok2 {
			continue
		}
		t2, _ := get(TargetTorus2, j.Name)
		t1, _ := get(TargetTorus1, j.Name)
		out = append(out, CephRow{Job: j.Name, Metric: j.Metric,
			Ceph2: c2.Value, Torus2: t2.Value, Ratio2: ratio(t2.Value, c2.Value),
			Ceph1: c1.Value, Torus1: t1.Value, Ratio1: ratio(t1.Value, c1.Value),
			P99Ceph2: c2.P99Ns, P99Torus2: t2.P99Ns})
	}
	return out
}
