package main

import "fmt"

// AimStatus is the outcome of checking one aim.
type AimStatus string

const (
	// AimPass: measured and met.
	AimPass AimStatus = "pass"
	// AimFail: measured and missed.
	AimFail AimStatus = "fail"
	// AimNA: not measured in this run (target skipped or failed).
	AimNA AimStatus = "n/a"
)

// AimResult is one aim of the benchmark issue, checked against a run.
type AimResult struct {
	Aim    string    `json:"aim"`
	Got    string    `json:"got"`
	Status AimStatus `json:"status"`
}

// CheckAims evaluates the performance aims (docs/benchmarks.md) against the
// results of a run. It is pure: results must already carry their ratios.
func CheckAims(jobs []Job, results []Result, heal *HealResult, procs []ProcResources) []AimResult {
	get := func(target, job string) (Result, bool) {
		for _, r := range results {
			if r.Target == target && r.Job == job && r.Error == "" {
				return r, true
			}
		}
		return Result{}, false
	}
	var out []AimResult
	add := func(aim string, ok bool, measured bool, got string) {
		st := AimNA
		if measured {
			st = AimFail
			if ok {
				st = AimPass
			}
		} else {
			got = "not measured"
		}
		out = append(out, AimResult{Aim: aim, Got: got, Status: st})
	}
	ratioAim := func(target, job string, min float64, disk bool) {
		r, ok := get(target, job)
		v, ref := r.Ratio, "nbdkit"
		if disk {
			v, ref = r.RatioDisk, "disk"
		}
		add(fmt.Sprintf("%s %s ≥ %.2f × %s", target, job, min, ref), v >= min, ok && v > 0, fmt.Sprintf("%.2f", v))
	}

	for _, j := range jobs {
		ratioAim(TargetTorus1, j.Name, 0.9, false)
	}
	ratioAim(TargetTorus2, JobSeqWrite, 0.45, true)
	ratioAim(TargetTorus2, JobRandWrite, 1.0, false)
	{
		r, ok := get(TargetTorus2, JobDurable)
		add(fmt.Sprintf("%s %s p50 ≤ 1.5 × nbdkit", TargetTorus2, JobDurable),
			r.LatencyRatio <= 1.5, ok && r.LatencyRatio > 0, fmt.Sprintf("%.2f", r.LatencyRatio))
	}
	ratioAim(TargetTorus2, JobSeqRead, 0.9, false)
	ratioAim(TargetTorus2, JobRandRead, 0.8, false)
	{
		d, okd := get(TargetDisk, JobSeqWrite)
		measured := okd && heal != nil && heal.Status == "ok" && heal.MiBps > 0
		var got string
		if measured {
			got = fmt.Sprintf("%.0f MiB/s (disk %.0f MiB/s)", heal.MiBps, d.Value)
		}
		add("healing ≥ 0.5 × disk sequential write", measured && heal.MiBps >= d.Value/2, measured, got)
	}
	for _, p := range procs {
		if p.IdleCPUPercent >= 0 {
			add(fmt.Sprintf("%s %s idle CPU < 1%%", p.Target, p.Name), p.IdleCPUPercent < 1, true,
				fmt.Sprintf("%.2f%%", p.IdleCPUPercent))
		}
		add(fmt.Sprintf("%s %s peak RSS < 256 MiB", p.Target, p.Name), p.PeakRSSBytes < 256<<20, p.PeakRSSBytes > 0,
			fmt.Sprintf("%.0f MiB", float64(p.PeakRSSBytes)/(1<<20)))
	}
	if len(procs) == 0 {
		add("torusd idle CPU < 1%", false, false, "")
		add("torusd peak RSS < 256 MiB", false, false, "")
	}
	return out
}
