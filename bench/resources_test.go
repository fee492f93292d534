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
