package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Metric says which number is a job's headline.
type Metric string

const (
	// MetricBandwidth is MiB/s (read + write for a mixed job).
	MetricBandwidth Metric = "MiB/s"
	// MetricIOPS is I/O operations per second (read + write for a mixed job).
	MetricIOPS Metric = "IOPS"
)

// Job is one fio workload, identical for every target.
type Job struct {
	// Name is the short label used in tables, JSON and charts.
	Name string `json:"name"`
	// Desc says in words what the job measures.
	Desc string `json:"desc"`
	// RW is fio's rw= (write, read, randwrite, randread, randrw).
	RW string `json:"rw"`
	// BlockSize is fio's bs= in bytes.
	BlockSize int64 `json:"bs"`
	// IODepth is fio's iodepth=.
	IODepth int `json:"iodepth"`
	// ReadMix is fio's rwmixread= percentage for randrw (0 otherwise).
	ReadMix int `json:"rwmixread,omitempty"`
	// Fsync is fio's fsync=: a flush after every N writes (0: none).
	Fsync int `json:"fsync,omitempty"`
	// EndFsync adds end_fsync=1: one flush the server must honour before
	// the job counts as done.
	EndFsync bool `json:"end_fsync,omitempty"`
	// Metric is the headline number.
	Metric Metric `json:"metric"`
}

// Writes reports whether the job writes.
func (j Job) Writes() bool {
	switch j.RW {
	case "write", "randwrite", "randrw", "rw", "readwrite", "trimwrite":
		return true
	}
	return false
}

// Reads reports whether the job reads.
func (j Job) Reads() bool {
	switch j.RW {
	case "read", "randread", "randrw", "rw", "readwrite":
		return true
	}
	return false
}

// Job names, used by the aims in aims.go.
const (
	JobSeqWrite   = "seq-write-1M-qd8"
	JobSeqRead    = "seq-read-1M-qd8"
	JobRandWrite  = "rand-write-4K-qd16"
	JobDurable    = "durable-write-4K-qd1"
	JobRandRead   = "rand-read-4K-qd16"
	JobRandRW7030 = "rand-rw70-64K-qd16"
)

// Jobs returns the benchmark's workloads in the order they run. Writes
// come before the reads of the same kind so that reads find data written
// by the target itself (the target is also prefilled before the first job).
func Jobs() []Job {
	return []Job{
		{Name: JobSeqWrite, Desc: "sequential write, 1 MiB blocks, queue depth 8, ends with a flush",
			RW: "write", BlockSize: 1 << 20, IODepth: 8, EndFsync: true, Metric: MetricBandwidth},
		{Name: JobSeqRead, Desc: "sequential read, 1 MiB blocks, queue depth 8",
			RW: "read", BlockSize: 1 << 20, IODepth: 8, Metric: MetricBandwidth},
		{Name: JobRandWrite, Desc: "random write, 4 KiB blocks, queue depth 16, ends with a flush",
			RW: "randwrite", BlockSize: 4 << 10, IODepth: 16, EndFsync: true, Metric: MetricIOPS},
		{Name: JobDurable, Desc: "random write, 4 KiB, queue depth 1, flush after every write (durable-write latency)",
			RW: "randwrite", BlockSize: 4 << 10, IODepth: 1, Fsync: 1, Metric: MetricIOPS},
		{Name: JobRandRead, Desc: "random read, 4 KiB blocks, queue depth 16",
			RW: "randread", BlockSize: 4 << 10, IODepth: 16, Metric: MetricIOPS},
		{Name: JobRandRW7030, Desc: "random 70% read / 30% write, 64 KiB blocks, queue depth 16, ends with a flush",
			RW: "randrw", BlockSize: 64 << 10, IODepth: 16, ReadMix: 70, EndFsync: true, Metric: MetricIOPS},
	}
}

// FindJob returns the job named name from jobs.
func FindJob(jobs []Job, name string) (Job, bool) {
	for _, j := range jobs {
		if j.Name == name {
			return j, true
		}
	}
	return Job{}, false
}

// Endpoint is where fio sends I/O: a plain file (with O_DIRECT), an NBD
// URI, or a Ceph RBD image.
type Endpoint struct {
	// File is the path of a plain file; empty otherwise.
	File string
	// NBD is an nbd:// URI served by the target; empty otherwise.
	NBD string
	// RBD is the RBD image "pool/image" of the Ceph cluster configured in
	// CephConf (fio's rbd engine, client.admin); empty otherwise.
	RBD      string
	CephConf string
}

// Env returns the environment fio needs for the endpoint, added to the
// benchmark's own: CEPH_CONF for an RBD image, nothing otherwise.
func (ep Endpoint) Env() []string {
	if ep.RBD != "" {
		return []string{"CEPH_CONF=" + ep.CephConf}
	}
	return nil
}

// Settings are the knobs shared by every job of a run.
type Settings struct {
	// Runtime of each time-based job.
	Runtime time.Duration
	// Ramp is fio's ramp_time: I/O before measurement starts.
	Ramp time.Duration
	// Size is the data set: the span of the file or volume the jobs touch.
	Size int64
}

// Validate checks the settings.
func (s Settings) Validate() error {
	switch {
	case s.Runtime < time.Second || s.Runtime%time.Second != 0:
		return fmt.Errorf("bench: runtime %v must be a whole number of seconds, at least 1", s.Runtime)
	case s.Ramp < 0 || s.Ramp%time.Second != 0:
		return fmt.Errorf("bench: ramp %v must be a whole number of seconds", s.Ramp)
	case s.Size < 1<<20 || s.Size%(1<<20) != 0:
		return fmt.Errorf("bench: data set size %d must be a positive multiple of 1 MiB", s.Size)
	}
	return nil
}

// endpointArgs are the fio arguments that select the target.
func endpointArgs(ep Endpoint) []string {
	if ep.NBD != "" {
		return []string{"--ioengine=nbd", "--uri=" + ep.NBD}
	}
	if ep.RBD != "" {
		pool, image, _ := strings.Cut(ep.RBD, "/")
		return []string{"--ioengine=rbd", "--clientname=admin", "--pool=" + pool, "--rbdname=" + image}
	}
	// libaio with O_DIRECT: the page cache is out of the way, so this is the
	// disk's own ceiling.
	return []string{"--ioengine=libaio", "--direct=1", "--filename=" + ep.File}
}

// FioArgs returns fio's command line (without the program name) for one job
// against one endpoint. The output is fio's JSON, written to outPath.
func FioArgs(job Job, ep Endpoint, s Settings, outPath string) []string {
	args := []string{
		"--name=" + job.Name,
		"--output-format=json",
		"--output=" + outPath,
		"--rw=" + job.RW,
		"--bs=" + strconv.FormatInt(job.BlockSize, 10),
		"--iodepth=" + strconv.Itoa(job.IODepth),
		"--size=" + strconv.FormatInt(s.Size, 10),
		"--time_based=1",
		"--runtime=" + strconv.Itoa(int(s.Runtime/time.Second)),
		"--numjobs=1",
		"--group_reporting=1",
		// Random offsets: fresh each run, uniform, repeated blocks allowed
		// (no random map, so fio's own bookkeeping stays cheap).
		"--randrepeat=0",
		"--norandommap=1",
		"--percentile_list=50:99",
	}
	if s.Ramp > 0 {
		args = append(args, "--ramp_time="+strconv.Itoa(int(s.Ramp/time.Second)))
	}
	if job.ReadMix > 0 {
		args = append(args, "--rwmixread="+strconv.Itoa(job.ReadMix))
	}
	if job.Fsync > 0 {
		args = append(args, "--fsync="+strconv.Itoa(job.Fsync))
	}
	if job.EndFsync {
		args = append(args, "--end_fsync=1")
	}
	return append(args, endpointArgs(ep)...)
}

// PrefillArgs returns fio's command line that writes the whole data set
// once, sequentially, and flushes, so that read jobs read real data and the
// target's allocation is done before measuring.
func PrefillArgs(ep Endpoint, size int64, outPath string) []string {
	args := []string{
		"--name=prefill",
		"--output-format=json",
		"--output=" + outPath,
		"--rw=write",
		"--bs=1M",
		"--iodepth=8",
		"--size=" + strconv.FormatInt(size, 10),
		"--end_fsync=1",
	}
	return append(args, endpointArgs(ep)...)
}

// ParseSize parses a size with an optional binary unit suffix (KiB, MiB,
// GiB, TiB; K, M, G, T are taken as the same) or a plain byte count.
func ParseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		shift  uint
	}{{"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"TiB", 40}, {"K", 10}, {"M", 20}, {"G", 30}, {"T", 40}}
	num, shift := s, uint(0)
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, shift = n, u.shift
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || n <= 0 || n > (1<<62)>>shift {
		return 0, fmt.Errorf("bench: bad size %q", s)
	}
	return n << shift, nil
}
