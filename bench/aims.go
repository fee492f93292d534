package main

import (
	"fmt"
	"strings"
)

// AimStatus is the outcome of checking one aim.
type AimStatus string

const (
	// AimPass: measured and met.
	AimPass AimStatus = "met"
	// AimFail: measured and missed.
	AimFail AimStatus = "not met"
	// AimNA: not measured in this run (target skipped, failed, or not
	// asked for).
	AimNA AimStatus = "not measured"
	// AimInfo: a figure the issue asks to report beside a baseline, with
	// no threshold.
	AimInfo AimStatus = "reported"
)

// AimResult is one aim of issue 11 or issue 10, checked against a run.
type AimResult struct {
	// Group is the aim's heading: "R1", "R2", "heal", "cpu", "memory",
	// "ceph" or "write-amp".
	Group string `json:"group"`
	Aim   string `json:"aim"`
	// Got is the measured figure (or why there is none).
	Got    string    `json:"got"`
	Status AimStatus `json:"status"`
}

// Aim thresholds (issue 11 and, for write amplification, issue 10).
const (
	AimR1MinRatio     = 0.9  // every job ≥ 0.9 × nbdkit
	AimR2SeqWriteDisk = 0.45 // seq write ≥ 0.45 × disk
	AimR2RandWrite    = 1.0  // 4K rand write ≥ 1.0 × nbdkit
	AimR2Durable      = 0.5  // 4K write+fsync QD1 IOPS ≥ 0.5 × nbdkit
	AimR2Reads        = 0.8  // reads ≥ 0.8 × nbdkit
	AimR2Mix          = 0.5  // 64K 70/30 mix ≥ 0.5 × nbdkit
	AimR2TailRatio    = 5.0  // p99 ≤ 5 × p50 on every job
	AimHealDisk       = 0.5  // heal copy bandwidth ≥ 0.5 × disk write bandwidth
	AimBlkRSSBytes    = 256 << 20
	AimCephEvery      = 1.5 // Torus R2 ≥ 1.5 × Ceph size 2 on every job
	AimCephDurable    = 3.0 // ... and ≥ 3 × on the durable job
	AimWriteAmplMax   = 1.05
	// AimWriterRSSBytes bounds the writer's (torusblk's) peak RSS after a
	// write-amplification row of at least AimWriterRSSAt of distinct
	// 4 KiB blocks (issue 10).
	AimWriterRSSBytes = 128 << 20
	AimWriterRSSAt    = 16 << 30
)

// AimInputs is everything CheckAims looks at.
type AimInputs struct {
	Jobs    []Job
	Results []Result // with their ratios (ComputeRatios)
	Heal    *HealResult
	Procs   []ProcResources
	CPU     []CPUCost
	WA      []WAResult
	// Ceph says the Ceph targets were asked for (-ceph); without it their
	// aims read "not measured: run with -ceph".
	Ceph bool
}

// CheckAims evaluates the aims of issue 11 (and the write-amplification
// aim of issue 10) against the results of a run, in the order of
// docs/benchmarks.md. It is pure.
func CheckAims(in AimInputs) []AimResult {
	get := func(target, job string) (Result, bool) {
		for _, r := range in.Results {
			if r.Target == target && r.Job == job && r.Error == "" && r.Value > 0 {
				return r, true
			}
		}
		return Result{}, false
	}
	var out []AimResult
	// add records an aim; why is the figure when measured, else the reason
	// it is not.
	add := func(group, aim string, measured, ok bool, why string) {
		st := AimNA
		if measured {
			st = AimFail
			if ok {
				st = AimPass
			}
		} else if why == "" {
			why = "not measured"
		}
		out = append(out, AimResult{Group: group, Aim: aim, Got: why, Status: st})
	}
	// ratioAim checks target's job against ref's same job (ratio ≥ min).
	ratioAim := func(group, target, job, ref string, min float64) {
		aim := fmt.Sprintf("%s %s ≥ %.2f × %s", target, job, min, ref)
		r, ok1 := get(target, job)
		b, ok2 := get(ref, job)
		if !ok1 || !ok2 {
			add(group, aim, false, false, notMeasured(target, ok1, ref, ok2))
			return
		}
		v := r.Value / b.Value
		add(group, aim, true, v >= min, fmt.Sprintf("%.2f (%s vs %s %s)", v, formatValue(r.Value), formatValue(b.Value), r.Metric))
	}

	for _, j := range in.Jobs {
		ratioAim("R1", TargetTorus1, j.Name, TargetNBDKit, AimR1MinRatio)
	}
	for _, j := range in.Jobs {
		switch j.Name {
		case JobSeqWrite:
			ratioAim("R2", TargetTorus2, j.Name, TargetDisk, AimR2SeqWriteDisk)
		case JobRandWrite:
			ratioAim("R2", TargetTorus2, j.Name, TargetNBDKit, AimR2RandWrite)
		case JobDurable:
			ratioAim("R2", TargetTorus2, j.Name, TargetNBDKit, AimR2Durable)
		case JobSeqRead, JobRandRead:
			ratioAim("R2", TargetTorus2, j.Name, TargetNBDKit, AimR2Reads)
		case JobRandRW7030:
			ratioAim("R2", TargetTorus2, j.Name, TargetNBDKit, AimR2Mix)
		}
	}
	for _, j := range in.Jobs {
		aim := fmt.Sprintf("%s %s p99 ≤ %.0f × p50", TargetTorus2, j.Name, AimR2TailRatio)
		r, ok := get(TargetTorus2, j.Name)
		if !ok || r.P50Ns <= 0 || r.P99Ns <= 0 {
			add("R2", aim, false, false, notMeasured(TargetTorus2, false, "", true))
			continue
		}
		v := float64(r.P99Ns) / float64(r.P50Ns)
		add("R2", aim, true, v <= AimR2TailRatio, fmt.Sprintf("%.1f× (p50 %s, p99 %s)", v, FormatLatency(r.P50Ns), FormatLatency(r.P99Ns)))
	}

	// Healing: the copy rate, without detection and the down grace.
	{
		aim := fmt.Sprintf("healing copy ≥ %.1f × %s %s", AimHealDisk, TargetDisk, JobSeqWrite)
		d, okd := get(TargetDisk, JobSeqWrite)
		h := in.Heal
		switch {
		case h == nil:
			add("heal", aim, false, false, "not measured: "+TargetTorus2+" did not run")
		case h.Status != "ok" || h.MiBps <= 0:
			add("heal", aim, false, false, "not measured: "+h.Status)
		case !okd:
			add("heal", aim, false, false, "not measured: "+TargetDisk+" "+JobSeqWrite+" did not run")
		default:
			v := h.MiBps / d.Value
			add("heal", aim, true, v >= AimHealDisk, fmt.Sprintf("%.2f (%.0f MiB/s copying vs %.0f MiB/s; detected after %.1f s, copying from %.1f s, healed at %.1f s)",
				v, h.MiBps, d.Value, h.DetectSeconds, h.CopyStartSeconds, h.TotalSeconds))
		}
	}

	// CPU per GiB, beside nbdkit's: no threshold.
	{
		var ref *CPUCost
		for i := range in.CPU {
			if c := &in.CPU[i]; c.Target == TargetNBDKit && c.Proc == "nbdkit" {
				ref = c
			}
		}
		shown := false
		for _, c := range in.CPU {
			if !strings.HasPrefix(c.Target, "torus-") || (c.Proc != "torusd" && c.Proc != "torusblk") {
				continue
			}
			shown = true
			out = append(out, AimResult{Group: "cpu", Aim: fmt.Sprintf("%s %s CPU s per GiB written / read", c.Target, c.Proc),
				Got: c.String() + " (nbdkit " + ref.String() + ")", Status: AimInfo})
		}
		if !shown {
			add("cpu", "torusd and torusblk CPU s per GiB written / read", false, false, "")
		}
	}

	// torusblk's peak RSS on every Torus target that ran.
	{
		shown := false
		for _, p := range in.Procs {
			if p.Name != "torusblk" || p.PeakRSSBytes <= 0 {
				continue
			}
			shown = true
			add("memory", fmt.Sprintf("%s torusblk peak RSS < %d MiB", p.Target, AimBlkRSSBytes>>20), true,
				p.PeakRSSBytes < AimBlkRSSBytes, fmt.Sprintf("%.0f MiB", float64(p.PeakRSSBytes)/(1<<20)))
		}
		if !shown {
			add("memory", fmt.Sprintf("torusblk peak RSS < %d MiB", AimBlkRSSBytes>>20), false, false, "")
		}
	}

	// Against Ceph size 2 in the same run.
	for _, j := range in.Jobs {
		min := AimCephEvery
		if j.Name == JobDurable {
			min = AimCephDurable
		}
		if !in.Ceph {
			add("ceph", fmt.Sprintf("%s %s ≥ %.2f × %s", TargetTorus2, j.Name, min, TargetCeph2), false, false, "not measured: run with -ceph (make bench CEPH=1)")
			continue
		}
		ratioAim("ceph", TargetTorus2, j.Name, TargetCeph2, min)
	}

	// Write amplification of 4 KiB random writes, at every size measured.
	for _, w := range in.WA {
		aim := fmt.Sprintf("write amplification at %s of 4 KiB random writes ≤ %.2f", FormatSize(w.Size), AimWriteAmplMax)
		if w.Error != "" || w.Ratio <= 0 {
			add("write-amp", aim, false, false, "not measured: "+oneLine(w.Error, 200))
			continue
		}
		add("write-amp", aim, true, w.Ratio <= AimWriteAmplMax, w.Summary())
		if w.Size >= AimWriterRSSAt {
			aim := fmt.Sprintf("writer (torusblk) peak RSS after %s of 4 KiB random writes ≤ %d MiB", FormatSize(w.Size), AimWriterRSSBytes>>20)
			if w.BlkPeakRSSBytes <= 0 {
				add("memory", aim, false, false, "not measured")
			} else {
				add("memory", aim, true, w.BlkPeakRSSBytes <= AimWriterRSSBytes, fmt.Sprintf("%.0f MiB", float64(w.BlkPeakRSSBytes)/(1<<20)))
			}
		}
	}
	if len(in.WA) == 0 {
		add("write-amp", fmt.Sprintf("write amplification of 4 KiB random writes ≤ %.2f", AimWriteAmplMax), false, false, "not measured: -wa-sizes is empty")
	}
	return out
}

// notMeasured says which side of a ratio is missing.
func notMeasured(target string, okTarget bool, ref string, okRef bool) string {
	var miss []string
	if !okTarget {
		miss = append(miss, target)
	}
	if !okRef {
		miss = append(miss, ref)
	}
	return "not measured: no result from " + strings.Join(miss, " and ")
}

// AimCounts counts the aims by status.
func AimCounts(aims []AimResult) (met, missed, na int) {
	for _, a := range aims {
		switch a.Status {
		case AimPass:
			met++
		case AimFail:
			missed++
		case AimNA:
			na++
		}
	}
	return met, missed, na
}
