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

// Sample reads the process's counters if it is still alive.
func (w *Watched) Sample() {
	if !w.Proc.Alive() {
		return
	}
	if s, err := ReadProc(w.Proc.PID()); err == nil {
		w.Last = s
	}
}

// IdleCPUPercent returns CPU use between two samples over seconds, in
// percent of one core.
func IdleCPUPercent(before, after ProcSample, seconds float64) float64 {
	if seconds <= 0 {
		return -1
	}
	return 100 * (after.CPUSeconds - before.CPUSeconds) / seconds
}
