package main

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestJobs(t *testing.T) {
	jobs := Jobs()
	if len(jobs) != 6 {
		t.Fatalf("%d jobs, want 6", len(jobs))
	}
	seen := map[string]bool{}
	for _, j := range jobs {
		if seen[j.Name] {
			t.Errorf("duplicate job %s", j.Name)
		}
		seen[j.Name] = true
		// The issue: every write job ends with a flush the server must
		// honour.
		if j.Writes() && !j.EndFsync && j.Fsync == 0 {
			t.Errorf("%s writes without a flush", j.Name)
		}
		if !j.Writes() && !j.Reads() {
			t.Errorf("%s neither reads nor writes (rw=%s)", j.Name, j.RW)
		}
		if j.Desc == "" || j.BlockSize <= 0 || j.IODepth <= 0 {
			t.Errorf("%s incomplete: %+v", j.Name, j)
		}
	}
	for _, name := range []string{JobSeqWrite, JobSeqRead, JobRandWrite, JobDurable, JobRandRead, JobRandRW7030} {
		if _, ok := FindJob(jobs, name); !ok {
			t.Errorf("job %s missing", name)
		}
	}
	d, _ := FindJob(jobs, JobDurable)
	if d.Fsync != 1 || d.IODepth != 1 || d.BlockSize != 4096 {
		t.Errorf("durable job %+v", d)
	}
	m, _ := FindJob(jobs, JobRandRW7030)
	if m.ReadMix != 70 || !m.Reads() || !m.Writes() {
		t.Errorf("mixed job %+v", m)
	}
}

func TestFioArgs(t *testing.T) {
	s := Settings{Runtime: 20 * time.Second, Ramp: 2 * time.Second, Size: 4 << 30}
	d, _ := FindJob(Jobs(), JobDurable)
	args := FioArgs(d, Endpoint{NBD: "nbd://127.0.0.1:1234/bench"}, s, "/tmp/o.json")
	for _, want := range []string{"--ioengine=nbd", "--uri=nbd://127.0.0.1:1234/bench", "--fsync=1", "--iodepth=1",
		"--bs=4096", "--rw=randwrite", "--runtime=20", "--ramp_time=2", "--time_based=1", "--size=4294967296",
		"--output-format=json", "--output=/tmp/o.json", "--percentile_list=50:99"} {
		if !slices.Contains(args, want) {
			t.Errorf("args lack %s: %v", want, args)
		}
	}
	for _, a := range args {
		if strings.HasPrefix(a, "--filename") || strings.HasPrefix(a, "--direct") || a == "--end_fsync=1" {
			t.Errorf("unexpected %s for an nbd durable job", a)
		}
	}

	w, _ := FindJob(Jobs(), JobSeqWrite)
	args = FioArgs(w, Endpoint{File: "/d/disk.img"}, Settings{Runtime: 3 * time.Second, Size: 1 << 20}, "o")
	for _, want := range []string{"--ioengine=libaio", "--direct=1", "--filename=/d/disk.img", "--end_fsync=1", "--bs=1048576", "--iodepth=8"} {
		if !slices.Contains(args, want) {
			t.Errorf("args lack %s: %v", want, args)
		}
	}
	if slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--ramp_time") || strings.HasPrefix(a, "--uri") }) {
		t.Errorf("unexpected ramp or uri: %v", args)
	}

	p := PrefillArgs(Endpoint{NBD: "nbd://x/bench"}, 1<<30, "p.json")
	for _, want := range []string{"--rw=write", "--size=1073741824", "--end_fsync=1", "--uri=nbd://x/bench"} {
		if !slices.Contains(p, want) {
			t.Errorf("prefill lacks %s: %v", want, p)
		}
	}
	if slices.Contains(p, "--time_based=1") {
		t.Error("prefill must write the data set once, not for a time")
	}
}

func TestSettingsValidate(t *testing.T) {
	ok := Settings{Runtime: time.Second, Size: 1 << 20}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Settings{
		{Runtime: 500 * time.Millisecond, Size: 1 << 20},
		{Runtime: time.Second, Size: 0},
		{Runtime: time.Second, Size: 1<<20 + 1},
		{Runtime: time.Second, Ramp: -1, Size: 1 << 20},
		{Runtime: 1500 * time.Millisecond, Size: 1 << 20},
		{Runtime: time.Second, Ramp: 10 * time.Millisecond, Size: 1 << 20},
	} {
		if bad.Validate() == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestSizes(t *testing.T) {
	for in, want := range map[string]int64{"4GiB": 4 << 30, "256MiB": 256 << 20, "1M": 1 << 20, "4096": 4096, "2T": 2 << 40, "8KiB": 8 << 10} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "GiB", "-1GiB", "0", "1.5GiB", "1PiB", "99999999999TiB"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
	for n, want := range map[int64]string{4 << 30: "4GiB", 256 << 20: "256MiB", 1536 << 20: "1536MiB", 20 << 30: "20GiB"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %s, want %s", n, got, want)
		}
		if back, err := ParseSize(FormatSize(n)); err != nil || back != n {
			t.Errorf("round trip of %d: %d, %v", n, back, err)
		}
	}
}
