package main

import (
	"errors"
	"os"
	"testing"
)

func TestParseVmHWM(t *testing.T) {
	status := "Name:\ttorusd\nVmPeak:\t  900000 kB\nVmHWM:\t   12345 kB\nVmRSS:\t    9000 kB\n"
	n, err := ParseVmHWM([]byte(status))
	if err != nil || n != 12345<<10 {
		t.Errorf("got %d, %v", n, err)
	}
	for _, bad := range []string{"Name:\tx\n", "VmHWM:\t12 MB\n", "VmHWM:\tx kB\n"} {
		if _, err := ParseVmHWM([]byte(bad)); !errors.Is(err, ErrProcFormat) {
			t.Errorf("%q: err %v", bad, err)
		}
	}
}

func TestParseCPUSeconds(t *testing.T) {
	// A command name with spaces and ')' must not shift the fields.
	stat := "4242 (tor) us d) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 130 0 0 20 0 9 0 100 1000 50 18446744073709551615\n"
	s, err := ParseCPUSeconds([]byte(stat))
	if err != nil || s != 3.8 {
		t.Errorf("got %v, %v; want 3.8", s, err)
	}
	for _, bad := range []string{"", "1 (x S 1 2", "1 (x) S 1 2 3", "1 (x) S 1 2 3 4 5 6 7 8 9 10 a b"} {
		if _, err := ParseCPUSeconds([]byte(bad)); !errors.Is(err, ErrProcFormat) {
			t.Errorf("%q: err %v", bad, err)
		}
	}
}

func TestReadProcSelf(t *testing.T) {
	s, err := ReadProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.PeakRSSBytes < 1<<20 || s.CPUSeconds < 0 {
		t.Errorf("implausible sample %+v", s)
	}
	if got := IdleCPUPercent(ProcSample{CPUSeconds: 1}, ProcSample{CPUSeconds: 1.3}, 30); got < 0.99 || got > 1.01 {
		t.Errorf("idle 0.3 s over 30 s = %v%%, want 1%%", got)
	}
	if got := IdleCPUPercent(ProcSample{}, ProcSample{}, 0); got != -1 {
		t.Errorf("zero window: %v", got)
	}
}

func TestProcKind(t *testing.T) {
	for in, want := range map[string]string{"torusd-2": "torusd", "torusblk": "torusblk", "ceph-osd-1": "ceph-osd",
		"ceph-mon": "ceph-mon", "nbdkit": "nbdkit", "qemu-nbd": "qemu-nbd", "x-": "x-", "osd.3": "osd"} {
		if got := ProcKind(in); got != want {
			t.Errorf("%s: %s, want %s", in, got, want)
		}
	}
}

func TestCPUCosts(t *testing.T) {
	jobs := Jobs()
	res := func(target, job string, w, r int64) Result {
		return Result{Target: target, Job: job, Value: 1, Fio: &FioResult{Write: Stats{Bytes: w}, Read: Stats{Bytes: r}}}
	}
	results := []Result{
		res(TargetTorus2, JobSeqWrite, 1<<30, 0),
		res(TargetTorus2, JobRandWrite, 1<<30, 0),
		res(TargetTorus2, JobSeqRead, 0, 2<<30),
		res(TargetTorus2, JobRandRW7030, 1<<30, 1<<30),
		{Target: TargetTorus2, Job: JobRandRead, Error: "died"},
		res(TargetNBDKit, JobSeqWrite, 4<<30, 0),
	}
	cpu := []JobCPU{
		{TargetTorus2, JobSeqWrite, "torusd-0", 1}, {TargetTorus2, JobSeqWrite, "torusd-1", 1},
		{TargetTorus2, JobSeqWrite, "torusblk", 0.5},
		{TargetTorus2, JobRandWrite, "torusd-0", 2}, {TargetTorus2, JobRandWrite, "torusd-1", 2},
		{TargetTorus2, JobRandWrite, "torusblk", 1.5},
		{TargetTorus2, JobSeqRead, "torusd-0", 1}, {TargetTorus2, JobSeqRead, "torusblk", 1},
		{TargetTorus2, JobRandRW7030, "torusd-0", 100}, // mixed: left out
		{TargetTorus2, JobRandRead, "torusd-0", 100},   // failed: left out
		{TargetNBDKit, JobSeqWrite, "nbdkit", 2},
	}
	got := CPUCosts(jobs, results, cpu)
	want := []CPUCost{
		{Target: TargetTorus2, Proc: "torusd", WriteSeconds: 6, WriteBytes: 2 << 30, ReadSeconds: 1, ReadBytes: 2 << 30, PerGiBWritten: 3, PerGiBRead: 0.5},
		{Target: TargetTorus2, Proc: "torusblk", WriteSeconds: 2, WriteBytes: 2 << 30, ReadSeconds: 1, ReadBytes: 2 << 30, PerGiBWritten: 1, PerGiBRead: 0.5},
		{Target: TargetNBDKit, Proc: "nbdkit", WriteSeconds: 2, WriteBytes: 4 << 30, PerGiBWritten: 0.5},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("%d: got %+v\nwant %+v", i, got[i], want[i])
		}
	}
	if s := got[2].String(); s != "0.50 s/GiB written, - s/GiB read" {
		t.Errorf("String %q", s)
	}
	// A process that used no CPU while bytes moved costs 0, not "-".
	idle := CPUCost{WriteBytes: 1 << 30, ReadBytes: 1 << 30}
	if s := idle.String(); s != "0.00 s/GiB written, 0.00 s/GiB read" {
		t.Errorf("String %q", s)
	}
}
