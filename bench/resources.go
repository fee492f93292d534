package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ErrProcFormat is returned for /proc files that cannot be parsed.
var ErrProcFormat = errors.New("bench: bad /proc format")

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

// ParseVmHWM returns the peak resident set size (VmHWM) in bytes from the
// contents of /proc/PID/status.
func ParseVmHWM(status []byte) (int64, error) {
	for line := range strings.Lines(string(status)) {
		rest, ok := strings.CutPrefix(line, "VmHWM:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("%w: VmHWM line %q", ErrProcFormat, strings.TrimSpace(line))
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%w: VmHWM %q", ErrProcFormat, f[0])
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("%w: no VmHWM", ErrProcFormat)
}

// ParseCPUSeconds returns utime + stime in seconds from the contents of
// /proc/PID/stat. The command name (field 2) may hold spaces and
// parentheses, so fields are counted after its last ')'.
func ParseCPUSeconds(stat []byte) (float64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("%w: stat has no ')'", ErrProcFormat)
	}
	f := strings.Fields(string(stat[i+1:]))
	// After ')' come field 3 (state) onwards; utime is field 14, stime 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("%w: stat has %d fields after the name", ErrProcFormat, len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("%w: utime/stime: %v", ErrProcFormat, err)
	}
	return float64(ut+st) / clockTicks, nil
}

// ProcSample is one reading of a process's resource counters.
type ProcSample struct {
	PeakRSSBytes int64
	CPUSeconds   float64
}

// ReadProc reads pid's counters from /proc.
func ReadProc(pid int) (ProcSample, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ProcSample{}, err
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcSample{}, err
	}
	var s ProcSample
	if s.PeakRSSBytes, err = ParseVmHWM(status); err != nil {
		return ProcSample{}, err
	}
	if s.CPUSeconds, err = ParseCPUSeconds(stat); err != nil {
		return ProcSample{}, err
	}
	return s, nil
}

// Watched is a process whose resources are tracked. Sample keeps the last
// successful reading, so the numbers survive the process's death.
type Watched struct {
	Name string
	Proc *Proc
	Last ProcSample
}

// Sample reads the process's counters if it is still alive, and reports
// whether it could.
func (w *Watched) Sample() bool {
	if !w.Proc.Alive() {
		return false
	}
	s, err := ReadProc(w.Proc.PID())
	if err != nil {
		return false
	}
	w.Last = s
	return true
}

// IdleCPUPercent returns CPU use between two samples over seconds, in
// percent of one core.
func IdleCPUPercent(before, after ProcSample, seconds float64) float64 {
	if seconds <= 0 {
		return -1
	}
	return 100 * (after.CPUSeconds - before.CPUSeconds) / seconds
}

// JobCPU is the CPU time one process used during one job (from just
// before fio started to just after it ended: ramp and final flush
// included).
type JobCPU struct {
	Target string `json:"target"`
	Job    string `json:"job"`
	// Proc is the process's name: torusd-0, torusblk, nbdkit, ceph-osd.1 ...
	Proc       string  `json:"proc"`
	CPUSeconds float64 `json:"cpu_seconds"`
}

// CPUCost is the CPU cost per byte of one kind of process on one target:
// the CPU seconds all processes of that kind (torusd = every torusd-N)
// used during the write-only jobs per GiB those jobs wrote, and the same
// for the read-only jobs. The mixed job is left out.
type CPUCost struct {
	Target string `json:"target"`
	// Proc is the kind: the process name without its "-N" or ".N" suffix.
	Proc          string  `json:"proc"`
	WriteSeconds  float64 `json:"write_cpu_seconds"`
	WriteBytes    int64   `json:"write_bytes"`
	ReadSeconds   float64 `json:"read_cpu_seconds"`
	ReadBytes     int64   `json:"read_bytes"`
	PerGiBWritten float64 `json:"cpu_seconds_per_gib_written"`
	PerGiBRead    float64 `json:"cpu_seconds_per_gib_read"`
}

// String prints "W s/GiB written, R s/GiB read" ("-" where unknown).
func (c *CPUCost) String() string {
	if c == nil {
		return "not measured"
	}
	f := func(v float64, bytes int64) string {
		if bytes <= 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", v)
	}
	return f(c.PerGiBWritten, c.WriteBytes) + " s/GiB written, " + f(c.PerGiBRead, c.ReadBytes) + " s/GiB read"
}

// ProcKind strips a trailing "-N" or ".N" (N digits) from a process name:
// torusd-2 → torusd, ceph-osd.1 → ceph-osd.
func ProcKind(name string) string {
	i := strings.LastIndexAny(name, "-.")
	if i <= 0 || i == len(name)-1 {
		return name
	}
	if _, err := strconv.Atoi(name[i+1:]); err != nil {
		return name
	}
	return name[:i]
}

// CPUCosts sums per-job CPU by target and process kind over the
// write-only and read-only jobs, and divides by the bytes fio moved in the
// same jobs (results without fio numbers count no bytes). The order is
// that of first appearance in cpu.
func CPUCosts(jobs []Job, results []Result, cpu []JobCPU) []CPUCost {
	type key struct{ target, proc string }
	var order []key
	sums := map[key]*CPUCost{}
	counted := map[[2]string]bool{} // target, job whose bytes are in
	bytesOf := func(target, job string) (w, r int64, ok bool) {
		for _, res := range results {
			if res.Target == target && res.Job == job && res.Error == "" && res.Fio != nil {
				return res.Fio.Write.Bytes, res.Fio.Read.Bytes, true
			}
		}
		return 0, 0, false
	}
	for _, c := range cpu {
		j, ok := FindJob(jobs, c.Job)
		if !ok || j.Writes() == j.Reads() {
			continue
		}
		wb, rb, ok := bytesOf(c.Target, c.Job)
		if !ok {
			continue
		}
		k := key{c.Target, ProcKind(c.Proc)}
		s := sums[k]
		if s == nil {
			s = &CPUCost{Target: k.target, Proc: k.proc}
			sums[k] = s
			order = append(order, k)
		}
		if j.Writes() {
			s.WriteSeconds += c.CPUSeconds
		} else {
			s.ReadSeconds += c.CPUSeconds
		}
		// Bytes once per (target, kind, job).
		ck := [2]string{c.Target + "\x00" + k.proc, c.Job}
		if !counted[ck] {
			counted[ck] = true
			s.WriteBytes += wb
			s.ReadBytes += rb
		}
	}
	out := make([]CPUCost, 0, len(order))
	for _, k := range order {
		s := sums[k]
		if s.WriteBytes > 0 {
			s.PerGiBWritten = s.WriteSeconds / (float64(s.WriteBytes) / (1 << 30))
		}
		if s.ReadBytes > 0 {
			s.PerGiBRead = s.ReadSeconds / (float64(s.ReadBytes) / (1 << 30))
		}
		out = append(out, *s)
	}
	return out
}
