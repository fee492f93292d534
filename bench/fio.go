package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
)

// ErrFioOutput is returned for fio output that cannot be understood.
var ErrFioOutput = errors.New("bench: bad fio output")

// Stats are one direction (read, write or sync) of one fio job.
type Stats struct {
	// Bytes moved in the measured period.
	Bytes int64 `json:"bytes"`
	// BytesPerSec is fio's bw_bytes.
	BytesPerSec float64 `json:"bytes_per_sec"`
	// IOPS is fio's iops.
	IOPS float64 `json:"iops"`
	// Ops is the number of completed operations.
	Ops int64 `json:"ops"`
	// P50Ns and P99Ns are completion-latency percentiles in nanoseconds
	// (clat; for flushes, the total latency).
	P50Ns int64 `json:"p50_ns"`
	P99Ns int64 `json:"p99_ns"`
	// MeanNs is the mean completion latency.
	MeanNs float64 `json:"mean_ns"`
}

// FioResult is what the benchmark keeps of one fio job.
type FioResult struct {
	Read  Stats `json:"read"`
	Write Stats `json:"write"`
	// Sync holds the flushes issued by fsync=N (zero otherwise).
	Sync Stats `json:"sync"`
	// RuntimeMs is fio's job runtime.
	RuntimeMs int64 `json:"runtime_ms"`
}

type fioLat struct {
	N          int64              `json:"N"`
	Mean       float64            `json:"mean"`
	Percentile map[string]float64 `json:"percentile"`
}

type fioDir struct {
	IOBytes  int64   `json:"io_bytes"`
	BWBytes  float64 `json:"bw_bytes"`
	IOPS     float64 `json:"iops"`
	TotalIOs int64   `json:"total_ios"`
	Clat     fioLat  `json:"clat_ns"`
	Lat      fioLat  `json:"lat_ns"`
}

type fioJob struct {
	Name       string `json:"jobname"`
	Error      int    `json:"error"`
	JobRuntime int64  `json:"job_runtime"`
	Read       fioDir `json:"read"`
	Write      fioDir `json:"write"`
	Sync       fioDir `json:"sync"`
}

type fioOutput struct {
	Version string   `json:"fio version"`
	Jobs    []fioJob `json:"jobs"`
}

// ParseFio parses fio's --output-format=json output. Text before the first
// '{' (fio's nbd engine prints "fio: connected to NBD server" there) is
// skipped. It expects exactly one job (group_reporting) and fails with
// ErrFioOutput when the job reported an error or the output is malformed.
func ParseFio(data []byte) (FioResult, error) {
	i := bytes.IndexByte(data, '{')
	if i < 0 {
		return FioResult{}, fmt.Errorf("%w: no JSON object", ErrFioOutput)
	}
	var out fioOutput
	if err := json.Unmarshal(data[i:], &out); err != nil {
		return FioResult{}, fmt.Errorf("%w: %v", ErrFioOutput, err)
	}
	if len(out.Jobs) != 1 {
		return FioResult{}, fmt.Errorf("%w: %d jobs, want 1", ErrFioOutput, len(out.Jobs))
	}
	j := out.Jobs[0]
	if j.Error != 0 {
		return FioResult{}, fmt.Errorf("%w: job %q ended with error %d", ErrFioOutput, j.Name, j.Error)
	}
	r := FioResult{RuntimeMs: j.JobRuntime}
	var err error
	if r.Read, err = dirStats(j.Read, false); err != nil {
		return FioResult{}, fmt.Errorf("read: %w", err)
	}
	if r.Write, err = dirStats(j.Write, false); err != nil {
		return FioResult{}, fmt.Errorf("write: %w", err)
	}
	if r.Sync, err = dirStats(j.Sync, true); err != nil {
		return FioResult{}, fmt.Errorf("sync: %w", err)
	}
	if r.Read.Ops == 0 && r.Write.Ops == 0 {
		return FioResult{}, fmt.Errorf("%w: job %q did no I/O", ErrFioOutput, j.Name)
	}
	return r, nil
}

// ParseFioFile reads and parses fio's JSON output file.
func ParseFioFile(path string) (FioResult, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return FioResult{}, err
	}
	return ParseFio(data)
}

func dirStats(d fioDir, sync bool) (Stats, error) {
	lat := d.Clat
	ops := d.TotalIOs
	if sync {
		// fio reports flushes with total latency only, and no bandwidth.
		lat = d.Lat
	}
	if sync && ops == 0 {
		ops = lat.N
	}
	s := Stats{Bytes: d.IOBytes, BytesPerSec: d.BWBytes, IOPS: d.IOPS, Ops: ops, MeanNs: lat.Mean}
	if lat.N == 0 {
		return s, nil
	}
	var err error
	if s.P50Ns, err = percentile(lat.Percentile, 50); err != nil {
		return Stats{}, err
	}
	if s.P99Ns, err = percentile(lat.Percentile, 99); err != nil {
		return Stats{}, err
	}
	return s, nil
}

// percentile finds p in fio's percentile map, whose keys are formatted
// like "99.000000".
func percentile(m map[string]float64, p float64) (int64, error) {
	for k, v := range m {
		f, err := strconv.ParseFloat(k, 64)
		if err != nil {
			return 0, fmt.Errorf("%w: percentile key %q", ErrFioOutput, k)
		}
		if f == p {
			return int64(v), nil
		}
	}
	return 0, fmt.Errorf("%w: no p%g latency", ErrFioOutput, p)
}
