package peer

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// syscalls reports the process's read and write system calls so far, from
// /proc/self/io (syscr, syscw; writev counts once), or ok false where that
// file is missing. Benchmarks report them per op: unlike times, the counts
// do not depend on the machine's load.
func syscalls() (reads, writes int64, ok bool) {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, found := strings.Cut(line, ": ")
		if !found {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "syscr":
			reads = n
		case "syscw":
			writes = n
		}
	}
	return reads, writes, true
}

// reportSyscalls reports the system calls since (r0, w0) per op.
func reportSyscalls(b *testing.B, r0, w0 int64) {
	r1, w1, ok := syscalls()
	if !ok || b.N == 0 {
		return
	}
	b.ReportMetric(float64(r1-r0)/float64(b.N), "reads/op")
	b.ReportMetric(float64(w1-w0)/float64(b.N), "writes/op")
}
