package main

import (
	"strings"
	"testing"
)

func aimStatus(t *testing.T, aims []AimResult, substr string) AimStatus {
	t.Helper()
	var found []AimResult
	for _, a := range aims {
		if strings.Contains(a.Aim, substr) {
			found = append(found, a)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d aims match %q: %+v", len(found), substr, found)
	}
	return found[0].Status
}

func TestCheckAims(t *testing.T) {
	jobs := Jobs()
	var rs []Result
	add := func(target, job string, v float64, p50 int64) {
		rs = append(rs, Result{Target: target, Job: job, Value: v, P50Ns: p50})
	}
	for _, j := range jobs {
		add(TargetDisk, j.Name, 1000, 100)
		add(TargetNBDKit, j.Name, 500, 200)
		add(TargetTorus1, j.Name, 460, 200) // 0.92 everywhere
	}
	add(TargetTorus2, JobSeqWrite, 400, 0)  // 0.40 of disk: miss
	add(TargetTorus2, JobRandWrite, 500, 0) // 1.0 of nbdkit: pass
	add(TargetTorus2, JobDurable, 100, 301) // p50 1.505×: miss
	add(TargetTorus2, JobSeqRead, 450, 0)   // 0.9: pass
	rs = append(rs, Result{Target: TargetTorus2, Job: JobRandRead, Error: "died"})
	ComputeRatios(rs)
	heal := &HealResult{Status: "ok", MiBps: 600}
	procs := []ProcResources{
		{Target: TargetTorus2, Name: "torusd-0", PeakRSSBytes: 100 << 20, IdleCPUPercent: 0.4},
		{Target: TargetTorus2, Name: "torusd-1", PeakRSSBytes: 300 << 20, IdleCPUPercent: 1.2},
		{Target: TargetTorus2, Name: "torusd-2", PeakRSSBytes: 50 << 20, IdleCPUPercent: -1},
	}
	aims := CheckAims(jobs, rs, heal, procs)

	for _, j := range jobs {
		if s := aimStatus(t, aims, TargetTorus1+" "+j.Name+" "); s != AimPass {
			t.Errorf("%s on r1: %s", j.Name, s)
		}
	}
	for substr, want := range map[string]AimStatus{
		TargetTorus2 + " " + JobSeqWrite:  AimFail,
		TargetTorus2 + " " + JobRandWrite: AimPass,
		TargetTorus2 + " " + JobDurable:   AimFail,
		TargetTorus2 + " " + JobSeqRead:   AimPass,
		TargetTorus2 + " " + JobRandRead:  AimNA,
		"healing":                         AimPass,
		"torusd-0 idle":                   AimPass,
		"torusd-1 idle":                   AimFail,
		"torusd-0 peak RSS":               AimPass,
		"torusd-1 peak RSS":               AimFail,
		"torusd-2 peak RSS":               AimPass,
	} {
		if s := aimStatus(t, aims, substr); s != want {
			t.Errorf("%s: %s, want %s", substr, s, want)
		}
	}
	for _, a := range aims {
		if strings.Contains(a.Aim, "torusd-2 idle") {
			t.Error("unmeasured idle CPU (killed daemon) became an aim")
		}
	}

	// A slow heal misses; no run at all leaves everything unmeasured.
	aims = CheckAims(jobs, rs, &HealResult{Status: "ok", MiBps: 400}, nil)
	if s := aimStatus(t, aims, "healing"); s != AimFail {
		t.Errorf("heal at 400 MiB/s vs disk 1000: %s", s)
	}
	for _, a := range CheckAims(jobs, nil, nil, nil) {
		if a.Status != AimNA {
			t.Errorf("empty run: %+v", a)
		}
	}
}
