package main

import (
	"strings"
	"testing"
)

func mustJob(t *testing.T, name string) Job {
	t.Helper()
	j, ok := FindJob(Jobs(), name)
	if !ok {
		t.Fatalf("no job %s", name)
	}
	return j
}

func TestHeadlineResult(t *testing.T) {
	f := FioResult{
		Read:  Stats{BytesPerSec: 3 << 20, IOPS: 700, P50Ns: 100, P99Ns: 900},
		Write: Stats{BytesPerSec: 1 << 20, IOPS: 300, P50Ns: 200, P99Ns: 2000},
		Sync:  Stats{P50Ns: 50, P99Ns: 500},
	}
	mixed := HeadlineResult("t", mustJob(t, JobRandRW7030), f)
	if mixed.Value != 1000 || mixed.Metric != MetricIOPS || mixed.P50Ns != 100 || mixed.P99Ns != 900 {
		t.Errorf("mixed: %+v (want 1000 IOPS, read latencies)", mixed)
	}
	f2 := f
	f2.Read = Stats{}
	durable := HeadlineResult("t", mustJob(t, JobDurable), f2)
	if durable.Value != 300 || durable.P50Ns != 250 || durable.P99Ns != 2500 {
		t.Errorf("durable: %+v (want 300 IOPS, write+sync latencies 250/2500)", durable)
	}
	seq := HeadlineResult("t", mustJob(t, JobSeqWrite), f2)
	if seq.Value != 1 || seq.Metric != MetricBandwidth || seq.P50Ns != 200 {
		t.Errorf("seq write: %+v (want 1 MiB/s, write latency without sync)", seq)
	}
	if seq.Fio == nil || seq.Target != "t" || seq.Job != JobSeqWrite {
		t.Errorf("seq write: %+v", seq)
	}
}

func TestComputeRatios(t *testing.T) {
	rs := []Result{
		{Target: TargetDisk, Job: "a", Value: 400, P50Ns: 50},
		{Target: TargetNBDKit, Job: "a", Value: 200, P50Ns: 100},
		{Target: TargetTorus2, Job: "a", Value: 100, P50Ns: 150},
		{Target: TargetTorus2, Job: "b", Value: 100},
		{Target: TargetNBDKit, Job: "c", Error: "boom"},
		{Target: TargetTorus2, Job: "c", Value: 5},
		{Target: TargetTorus1, Job: "a", Error: "failed", Ratio: 7},
	}
	ComputeRatios(rs)
	check := func(i int, ratio, disk, lat float64) {
		t.Helper()
		r := rs[i]
		if r.Ratio != ratio || r.RatioDisk != disk || r.LatencyRatio != lat {
			t.Errorf("%s/%s: ratio %v disk %v lat %v; want %v %v %v", r.Target, r.Job, r.Ratio, r.RatioDisk, r.LatencyRatio, ratio, disk, lat)
		}
	}
	check(0, 2, 1, 0.5)
	check(1, 1, 0.5, 1)
	check(2, 0.5, 0.25, 1.5)
	check(3, 0, 0, 0) // no reference for job b
	check(5, 0, 0, 0) // reference failed
	check(6, 0, 0, 0) // failed result loses stale ratio
}

func TestFormatLatency(t *testing.T) {
	for ns, want := range map[int64]string{0: "-", -5: "-", 1500: "1.5µs", 87552: "88µs", 1_449_984: "1.45ms",
		25_034_752: "25.0ms", 2_500_000_000: "2.50s"} {
		if got := FormatLatency(ns); got != want {
			t.Errorf("FormatLatency(%d) = %q, want %q", ns, got, want)
		}
	}
}

func TestWriteTable(t *testing.T) {
	targets := []TargetStatus{
		{Name: TargetDisk, Baseline: true},
		{Name: TargetNBDKit, Baseline: true},
		{Name: TargetTorus1, Skipped: "skipped: bin/torusd not built"},
		{Name: TargetTorus2, Error: "torusd-1 exited"},
	}
	rs := []Result{
		{Target: TargetDisk, Job: JobSeqWrite, Metric: MetricBandwidth, Value: 444, P50Ns: 11_500_000, P99Ns: 44_800_000},
		{Target: TargetNBDKit, Job: JobSeqWrite, Metric: MetricBandwidth, Value: 560, P50Ns: 8_720_000, P99Ns: 45_400_000},
		{Target: TargetNBDKit, Job: JobRandRead, Metric: MetricIOPS, Error: "fio: connection refused\nmore"},
	}
	ComputeRatios(rs)
	var b strings.Builder
	if err := WriteTable(&b, targets, rs); err != nil {
		t.Fatal(err)
	}
	want := `target       job                value  unit      p50     p99  x nbdkit  x disk
disk         seq-write-1M-qd8     444  MiB/s  11.5ms  44.8ms      0.79    1.00
nbdkit       seq-write-1M-qd8     560  MiB/s  8.72ms  45.4ms      1.00    1.26
nbdkit       rand-read-4K-qd16  FAILED: fio: connection refused more
torus-1d-r1  skipped: bin/torusd not built
torus-2d-r2  FAILED: torusd-1 exited
`
	want = strings.Replace(want, "torus-2d-r2", TargetTorus2, 1)
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestExitCode(t *testing.T) {
	base := []TargetStatus{{Name: TargetDisk, Baseline: true}, {Name: TargetNBDKit, Baseline: true},
		{Name: TargetTorus1, Skipped: "skipped: bin/torusd not built"}}
	ok := []Result{{Target: TargetDisk, Job: "a", Value: 1}, {Target: TargetNBDKit, Job: "a", Value: 1}}
	if c := ExitCode(base, ok, true); c != 0 {
		t.Errorf("all baselines ran, Torus skipped: exit %d", c)
	}
	failedJob := append(ok, Result{Target: TargetNBDKit, Job: "b", Error: "x"})
	if c := ExitCode(base, failedJob, false); c != 1 {
		t.Errorf("baseline job failed: exit %d", c)
	}
	failedTarget := append([]TargetStatus{}, base...)
	failedTarget[0].Error = "prefill failed"
	if c := ExitCode(failedTarget, nil, false); c != 1 {
		t.Errorf("baseline target failed: exit %d", c)
	}
	torusFailed := append(append([]TargetStatus{}, base...), TargetStatus{Name: TargetTorus2, Error: "boom"})
	if c := ExitCode(torusFailed, ok, false); c != 0 {
		t.Errorf("Torus failure without -strict: exit %d", c)
	}
	if c := ExitCode(torusFailed, ok, true); c != 1 {
		t.Errorf("Torus failure with -strict: exit %d", c)
	}
}

// TestTLSCosts: the TLS target's value over the plain R2 one per job, in
// job order; a job failed on either side has no entry.
func TestTLSCosts(t *testing.T) {
	jobs := Jobs()
	rs := []Result{
		{Target: TargetTorus2, Job: JobSeqWrite, Value: 200, P50Ns: 1000},
		{Target: TargetTorus2TLS, Job: JobSeqWrite, Value: 150, P50Ns: 1500},
		{Target: TargetTorus2, Job: JobRandRead, Value: 1000},
		{Target: TargetTorus2TLS, Job: JobRandRead, Value: 900},
		{Target: TargetTorus2, Job: JobRandWrite, Value: 100},
		{Target: TargetTorus2TLS, Job: JobRandWrite, Error: "died"},
		{Target: TargetTorus3, Job: JobDurable, Value: 10},
	}
	got := TLSCosts(jobs, rs)
	if len(got) != 2 || got[0].Job != JobSeqWrite || got[1].Job != JobRandRead {
		t.Fatalf("TLSCosts = %+v", got)
	}
	if got[0].Ratio != 0.75 || got[0].P50Ratio != 1.5 || got[1].Ratio != 0.9 || got[1].P50Ratio != 0 {
		t.Fatalf("ratios: %+v", got)
	}
	var b strings.Builder
	writeTLSCost(&b, got)
	if !strings.Contains(b.String(), "ratio 0.75") || !strings.Contains(b.String(), TargetTorus2TLS) {
		t.Fatalf("printed:\n%s", b.String())
	}
}
