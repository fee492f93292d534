package main

// Write amplification of 4 KiB random writes (issue 10): a fresh
// TargetWA cluster per size S, a volume of S written once in full at random
// in 4 KiB blocks (fio's random map: every block exactly once, so S bytes of
// distinct blocks), flushed; then the bytes the daemons store ÷ S ÷ the
// replication.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrWANothing is the error of a write-amplification row whose writes
// left nothing to measure (fio wrote nothing, or the data dirs are empty).
var ErrWANothing = errors.New("bench: nothing to measure write amplification on")

// TargetWA is the cluster shape of the write-amplification rows.
const TargetWA = "torus-3d-r2-wa"

// WASpec is the Torus cluster the write-amplification rows run on.
func WASpec() TorusSpec {
	return TorusSpec{Name: TargetWA, Daemons: 3, Replication: 2}
}

// WAResult is one write-amplification row.
type WAResult struct {
	Target      string `json:"target"`
	Size        int64  `json:"size"`
	Replication int    `json:"replication"`
	// WrittenBytes is what fio wrote (S, every 4 KiB block once).
	WrittenBytes int64 `json:"written_bytes"`
	// StoredBytes is the sum of the sizes of every regular file in the
	// daemons' data directories after the flush, once it stopped changing.
	StoredBytes int64 `json:"stored_bytes"`
	// UsedBytes is the daemons' summed torus_store_used_bytes (-1: not
	// reported).
	UsedBytes int64 `json:"used_bytes"`
	// Ratio is StoredBytes / WrittenBytes / Replication; UsedRatio the
	// same from UsedBytes (0: unknown).
	Ratio     float64 `json:"ratio"`
	UsedRatio float64 `json:"used_ratio,omitempty"`
	// WriteSeconds is fio's run, flush included; IOPS its write rate.
	WriteSeconds float64 `json:"write_seconds"`
	IOPS         float64 `json:"iops"`
	// BlkPeakRSSBytes is the writer's (torusblk's) peak RSS after the
	// writes (0: not read).
	BlkPeakRSSBytes int64  `json:"blk_peak_rss_bytes,omitempty"`
	Error           string `json:"error,omitempty"`
}

// WriteAmplification is stored ÷ written ÷ replication (0 when written or
// replication is not positive).
func WriteAmplification(stored, written int64, replication int) float64 {
	if written <= 0 || replication <= 0 || stored < 0 {
		return 0
	}
	return float64(stored) / float64(written) / float64(replication)
}

// Summary prints the row's figures.
func (w WAResult) Summary() string {
	s := fmt.Sprintf("%.3f (%s stored for %s written × %d", w.Ratio, formatBytes(w.StoredBytes), formatBytes(w.WrittenBytes), w.Replication)
	if w.UsedRatio > 0 {
		s += fmt.Sprintf("; torus_store_used_bytes gives %.3f", w.UsedRatio)
	}
	s += fmt.Sprintf("; written in %.0f s at %.0f IOPS", w.WriteSeconds, w.IOPS)
	if w.BlkPeakRSSBytes > 0 {
		s += fmt.Sprintf("; torusblk peak RSS %.0f MiB", float64(w.BlkPeakRSSBytes)/(1<<20))
	}
	return s + ")"
}

// formatBytes prints bytes in MiB or GiB with 2 decimals.
func formatBytes(n int64) string {
	if n >= 1<<30 {
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
}

// ParseSizes parses a comma-separated list of sizes (ParseSize), each a
// multiple of 1 MiB; "" is the empty list.
func ParseSizes(s string) ([]int64, error) {
	var out []int64
	for _, f := range splitList(s) {
		n, err := ParseSize(f)
		if err != nil {
			return nil, err
		}
		if n%(1<<20) != 0 {
			return nil, fmt.Errorf("bench: size %q is not a multiple of 1 MiB", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// FormatSizes is the inverse of ParseSizes.
func FormatSizes(sizes []int64) string {
	var f []string
	for _, s := range sizes {
		f = append(f, FormatSize(s))
	}
	return strings.Join(f, ",")
}

// DirBytes sums the sizes (st_size) of the regular files under dirs.
// Files that vanish during the walk are skipped.
func DirBytes(dirs []string) (int64, error) {
	var sum int64
	for _, root := range dirs {
		err := walkFiles(root, func(_ string, d fs.DirEntry) error {
			info, err := d.Info()
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			sum += info.Size()
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	return sum, nil
}

// WAFioArgs returns fio's command line writing every 4 KiB block of the
// first size bytes once, in random order (fio's random map), at queue depth
// 16, then flushing.
func WAFioArgs(ep Endpoint, size int64, outPath string) []string {
	args := []string{
		"--name=write-amplification",
		"--output-format=json",
		"--output=" + outPath,
		"--rw=randwrite",
		"--bs=4096",
		"--iodepth=16",
		"--size=" + strconv.FormatInt(size, 10),
		"--randrepeat=0",
		"--end_fsync=1",
	}
	return append(args, endpointArgs(ep)...)
}

// WADaemonSize is each daemon's --size for a write-amplification run of
// size bytes: the run's -torusd-size, or twice a daemon's even share of
// the replicas when that is more.
func WADaemonSize(spec TorusSpec, size, torusdSize int64) int64 {
	need := 2 * size * int64(spec.Replication) / int64(spec.Daemons)
	need = (need + 1<<30 - 1) &^ (1<<30 - 1)
	return max(torusdSize, need)
}

// freeBytes returns the bytes available to us on dir's filesystem.
func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// measureWA runs one write-amplification row on a fresh cluster.
func (b *bench) measureWA(ctx context.Context, opts TorusOptions, size int64) WAResult {
	spec := WASpec()
	res := WAResult{Target: spec.Name, Size: size, Replication: spec.Replication, UsedBytes: -1}
	fail := func(err error) WAResult {
		res.Error = err.Error()
		b.logger.Error("write amplification failed", "size", FormatSize(size), "err", err)
		return res
	}
	// The replicas and some headroom must fit on the scratch disk.
	if free, err := freeBytes(b.runDir); err == nil && free < size*int64(spec.Replication)*11/10 {
		return fail(fmt.Errorf("needs %s free on %s for %d replicas of %s, has %s", formatBytes(size*int64(spec.Replication)*11/10),
			b.cfg.dir, spec.Replication, FormatSize(size), formatBytes(free)))
	}
	opts.VolumeSize = size
	opts.DaemonSize = WADaemonSize(spec, size, opts.DaemonSize)
	g := NewProcs(b.logger, b.runDir)
	defer g.Close()
	b.logger.Info("write amplification: starting Torus", "size", FormatSize(size))
	c, err := StartTorus(ctx, g, opts, spec)
	if err != nil {
		return fail(err)
	}
	out := filepath.Join(b.runDir, fmt.Sprintf("wa-%s.json", FormatSize(size)))
	// Generous: 4 KiB random writes at 1 MiB/s.
	timeout := time.Duration(size/(1<<20))*time.Second + 2*time.Minute
	t0 := time.Now()
	if _, err := RunCmd(ctx, timeout, append([]string{"fio"}, WAFioArgs(c.Endpoint(), size, out)...)...); err != nil {
		return fail(err)
	}
	res.WriteSeconds = time.Since(t0).Seconds()
	fr, err := ParseFioFile(out)
	if err != nil {
		return fail(err)
	}
	res.WrittenBytes, res.IOPS = fr.Write.Bytes, fr.Write.IOPS
	if ps, err := ReadProc(c.Blk.PID()); err == nil {
		res.BlkPeakRSSBytes = ps.PeakRSSBytes
	}
	// Stored bytes once two readings a second apart agree (background
	// checkpoints may still land after the flush), at most 30 s.
	var last int64 = -1
	for i := 0; i < 30 && ctx.Err() == nil; i++ {
		n, err := DirBytes(c.DataDirs())
		if err != nil {
			return fail(err)
		}
		res.StoredBytes = n
		if n == last {
			break
		}
		last = n
		time.Sleep(time.Second)
	}
	if used, ok := usedBytes(ctx, c.Daemons); ok {
		res.UsedBytes = used
		res.UsedRatio = WriteAmplification(used, res.WrittenBytes, spec.Replication)
	}
	if err := alive(c); err != nil {
		return fail(err)
	}
	if res.StoredBytes == 0 || res.WrittenBytes == 0 {
		return fail(fmt.Errorf("%w: %d bytes written, %d stored in the data dirs", ErrWANothing, res.WrittenBytes, res.StoredBytes))
	}
	res.Ratio = WriteAmplification(res.StoredBytes, res.WrittenBytes, spec.Replication)
	b.logger.Info("write amplification", "size", FormatSize(size), "ratio", fmt.Sprintf("%.3f", res.Ratio),
		"stored", res.StoredBytes, "written", res.WrittenBytes)
	return res
}

// alive returns an error when a process of the cluster exited.
func alive(c *TorusCluster) error {
	for _, d := range c.Daemons {
		if err := exited(d.Proc); err != nil {
			return err
		}
	}
	return exited(c.Blk)
}

// UsedBytesMetric is torusd's gauge of bytes its store holds.
const UsedBytesMetric = "torus_store_used_bytes"

// usedBytes sums UsedBytesMetric over the daemons; ok is false unless
// every daemon reported it.
func usedBytes(ctx context.Context, daemons []*Daemon) (int64, bool) {
	var sum int64
	for _, d := range daemons {
		v, ok := scrapeMetric(ctx, d, UsedBytesMetric)
		if !ok {
			return 0, false
		}
		sum += int64(v)
	}
	return sum, true
}

// writeAmplification runs the write-amplification rows (-wa-sizes), each
// on a fresh cluster, when the Torus binaries are there.
func (b *bench) writeAmplification(ctx context.Context) {
	if len(b.cfg.waSizes) == 0 || !b.wanted(TargetWA) {
		return
	}
	missing := MissingTorus(b.cfg.bin)
	opts := TorusOptions{Bin: b.cfg.bin, DaemonSize: b.cfg.torusdSize}
	if missing == "" {
		help, _ := RunCmd(ctx, 10*time.Second, filepath.Join(b.cfg.bin, "torusd"), "--help")
		opts.DaemonArgs = DaemonExtraArgs(string(help), b.cfg.downGrace, b.cfg.torusdArgs)
	}
	// The target's status carries the first failed row, so that -strict
	// fails the run as for the other Torus targets.
	t := b.addTarget(TargetStatus{Name: TargetWA, Skipped: missing,
		Desc: "write amplification of 4 KiB random writes: a fresh cluster of 3 torusd at replication 2 per size (" + FormatSizes(b.cfg.waSizes) + ")"})
	for _, size := range b.cfg.waSizes {
		switch {
		case missing != "":
			b.rep.WA = append(b.rep.WA, WAResult{Target: TargetWA, Size: size, Replication: WASpec().Replication, UsedBytes: -1, Error: missing})
		case ctx.Err() != nil:
			b.rep.WA = append(b.rep.WA, WAResult{Target: TargetWA, Size: size, Replication: WASpec().Replication, UsedBytes: -1, Error: "skipped: interrupted"})
		default:
			r := b.measureWA(ctx, opts, size)
			if r.Error != "" && t.Error == "" {
				t.Error = FormatSize(size) + ": " + r.Error
			}
			b.rep.WA = append(b.rep.WA, r)
		}
	}
}
