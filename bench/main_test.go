package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/testutil"
)

func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"-quick"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.runtime != 3*time.Second || c.ramp != 0 || c.size != 256<<20 || c.idle != 5*time.Second {
		t.Errorf("quick defaults: %+v", c)
	}
	c, err = parseFlags([]string{"-size", "8GiB", "-ramp", "0", "-targets", "disk, nbdkit"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.runtime != 20*time.Second || c.ramp != 0 || c.size != 8<<30 || c.idle != 30*time.Second || c.healTimeout != 10*time.Minute {
		t.Errorf("full mode: %+v", c)
	}
	if !slices.Equal(c.waSizes, []int64{1 << 30}) || c.ceph {
		t.Errorf("full mode write amplification and ceph: %v %v", c.waSizes, c.ceph)
	}
	c, err = parseFlags([]string{"-quick", "-ceph", "-wa-sizes", "1GiB,16GiB,64GiB"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.waSizes, []int64{1 << 30, 16 << 30, 64 << 30}) || !c.ceph {
		t.Errorf("-ceph -wa-sizes: %v %v", c.waSizes, c.ceph)
	}
	for mode, want := range map[string][]int64{"-quick": {32 << 20}, "-v": {1 << 30}} {
		if c, err := parseFlags([]string{mode}, io.Discard); err != nil || !slices.Equal(c.waSizes, want) {
			t.Errorf("%s: wa sizes %v %v", mode, c.waSizes, err)
		}
	}
	if c, err := parseFlags([]string{"-wa-sizes", "none"}, io.Discard); err != nil || len(c.waSizes) != 0 {
		t.Errorf("-wa-sizes none: %v %v", c.waSizes, err)
	}
	for _, bad := range [][]string{{"-targets", "disk,ceph"}, {"-wa-sizes", "1GiB,4KiB"}, {"-size", "lots"}, {"extra"}, {"-nope"}} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	var out bytes.Buffer
	if code := run([]string{"-targets", "nope"}, &out, &out); code != 2 {
		t.Errorf("bad flag: exit %d", code)
	}
}

func TestMissingTorus(t *testing.T) {
	dir := t.TempDir()
	if got := MissingTorus(dir); got != "skipped: "+filepath.Base(dir)+"/torusd not built" {
		t.Errorf("empty bin: %q", got)
	}
	for _, b := range TorusBinaries[:2] {
		if err := os.WriteFile(filepath.Join(dir, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if got := MissingTorus(dir); !strings.Contains(got, "torusblk not built") {
		t.Errorf("without torusblk: %q", got)
	}
}

// TestRunEndToEnd runs the real harness: fio through nbdkit, and a Torus
// target made of etcd and the fake binaries of fake_test.go,
// including the healing measurement.
func TestRunEndToEnd(t *testing.T) {
	testutil.SkipShort(t, "runs fio for ~20 s")
	for _, b := range []string{"fio", "nbdkit", "etcd"} {
		testutil.RequireBinary(t, b)
	}
	tmp := t.TempDir()
	bin := writeFakeBin(t, filepath.Join(tmp, "state"))
	out := filepath.Join(tmp, "results")
	var stdout, stderr bytes.Buffer
	code := run([]string{"-quick", "-runtime", "1s", "-size", "16MiB", "-idle", "1s", "-heal-timeout", "30s",
		"-targets", "nbdkit,torus-3d-r2,torus-3d-r2-wa", "-wa-sizes", "16MiB", "-bin", bin, "-out", out, "-dir", tmp, "-strict"}, &stdout, &stderr)
	t.Log(stdout.String())
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr.String())
	}
	var rep Report
	b, err := os.ReadFile(filepath.Join(out, "latest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 2*len(Jobs()) {
		t.Errorf("%d results, want %d", len(rep.Results), 2*len(Jobs()))
	}
	for _, r := range rep.Results {
		if r.Error != "" || r.Value <= 0 || r.P50Ns <= 0 || r.Ratio <= 0 || r.RatioDisk != 0 {
			t.Errorf("result %+v", r)
		}
	}
	if h := rep.Heal; h == nil || h.Status != "ok" || h.Bytes != fakeHealBytes || h.Source != "metrics torus_heal_copied_bytes_total" ||
		h.TotalSeconds < 1 || h.MiBps <= 0 || h.Killed != "torusd-2" {
		t.Errorf("heal %+v", rep.Heal)
	}
	if len(rep.Procs) != 4 {
		t.Errorf("resources for %d processes, want 3 torusd + torusblk", len(rep.Procs))
	}
	for _, p := range rep.Procs {
		if p.PeakRSSBytes <= 0 || p.IdleCPUPercent < 0 || p.PID <= 0 {
			t.Errorf("resources %+v", p)
		}
	}
	if len(rep.Aims) == 0 {
		t.Error("no aims checked")
	}
	// CPU per job for nbdkit and every Torus process, summed per GiB.
	procs := map[string]int{}
	for _, c := range rep.JobCPU {
		procs[c.Target+"/"+ProcKind(c.Proc)]++
	}
	for _, want := range []string{"nbdkit/nbdkit", "torus-3d-r2/torusd", "torus-3d-r2/torusblk"} {
		if procs[want] == 0 {
			t.Errorf("no job CPU for %s: %v", want, procs)
		}
	}
	if len(rep.CPUCost) != 3 {
		t.Errorf("cpu cost %+v", rep.CPUCost)
	}
	// The fake torusblk keeps its data in memory; the data dirs hold each
	// fake torusd's one file, which is what the row must count.
	want := WriteAmplification(3*fakeSegmentBytes, 16<<20, 2)
	if len(rep.WA) != 1 || rep.WA[0].Size != 16<<20 || rep.WA[0].Error != "" || rep.WA[0].WrittenBytes != 16<<20 ||
		rep.WA[0].StoredBytes != 3*fakeSegmentBytes || rep.WA[0].Ratio != want || rep.WA[0].UsedRatio != want {
		t.Errorf("write amplification %+v", rep.WA)
	}
	for _, f := range []string{"latest.png", resultName(rep.Started)} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	// Every process was reaped and the scratch directory removed.
	left, _ := filepath.Glob(filepath.Join(tmp, "torus-bench-*"))
	if len(left) != 0 {
		t.Errorf("scratch left behind: %v", left)
	}
	if !strings.Contains(stdout.String(), "torus-3d-r2  seq-write-1M-qd8") {
		t.Errorf("table lacks the Torus rows:\n%s", stdout.String())
	}
}

func TestRunBaselineFailureExits1(t *testing.T) {
	testutil.RequireBinary(t, "fio")
	tmp := t.TempDir()
	// A -dir that is a file: the scratch directory cannot be made.
	file := filepath.Join(tmp, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if code := run([]string{"-quick", "-dir", file, "-out", filepath.Join(tmp, "r")}, &out, &out); code != 1 {
		t.Errorf("exit %d, want 1\n%s", code, out.String())
	}
}

func TestRingMembers(t *testing.T) {
	if n, ok := RingMembers([]byte(`{"ring_version":1,"ring_members":3,"peers":{}}`)); !ok || n != 3 {
		t.Errorf("got %d %v", n, ok)
	}
	for _, bad := range []string{`{"ring_version":1}`, `[]`, `nope`} {
		if _, ok := RingMembers([]byte(bad)); ok {
			t.Errorf("%q: ok", bad)
		}
	}
}

func TestDaemonExtraArgs(t *testing.T) {
	help := "Flags:\n  --down-grace duration  wait before healing\n"
	for _, c := range []struct {
		help  string
		grace time.Duration
		user  string
		want  string
	}{
		{help, 5 * time.Second, "", "--down-grace 5s"},
		{"Flags:\n  --size", 5 * time.Second, "", ""},
		{help, 0, "", ""},
		{help, 5 * time.Second, "--zone a  --rebalance-rate 0", "--zone a --rebalance-rate 0 --down-grace 5s"},
		{help, 5 * time.Second, "--down-grace=1s", "--down-grace=1s"},
	} {
		if got := strings.Join(DaemonExtraArgs(c.help, c.grace, c.user), " "); got != c.want {
			t.Errorf("%q %v %q: %q, want %q", c.help, c.grace, c.user, got, c.want)
		}
	}
}
