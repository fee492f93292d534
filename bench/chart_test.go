package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestChart(t *testing.T) {
	jobs := Jobs()[:3]
	targets := []TargetStatus{{Name: TargetDisk}, {Name: TargetNBDKit}, {Name: TargetQemuNBD}, {Name: TargetTorus1, Skipped: "skipped"}}
	rs := []Result{
		{Target: TargetDisk, Job: jobs[0].Name, Ratio: 0.8},
		{Target: TargetDisk, Job: jobs[2].Name, Ratio: 1.9},
		{Target: TargetNBDKit, Job: jobs[0].Name, Ratio: 1},
		{Target: TargetQemuNBD, Job: jobs[1].Name, Ratio: 0.3},
	}
	names, series := ChartSeries(jobs, targets, rs)
	if len(names) != 2 || names[0] != TargetDisk || names[1] != TargetQemuNBD {
		t.Fatalf("names %v", names)
	}
	if series[0][0] != 0.8 || series[0][1] != 0 || series[0][2] != 1.9 || series[1][1] != 0.3 {
		t.Errorf("series %v", series)
	}
	path := filepath.Join(t.TempDir(), "c.png")
	if err := WriteChart(path, "test", jobs, targets, rs); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) || len(b) < 1000 {
		t.Errorf("not a PNG (%d bytes, %v)", len(b), err)
	}
	if err := WriteChart(filepath.Join(t.TempDir(), "e.png"), "empty", jobs, targets[:2], rs[2:3]); err == nil {
		t.Error("chart with no ratios written")
	}
}
