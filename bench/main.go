package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// config is the command line.
type config struct {
	quick       bool
	out         string
	bin         string
	dir         string
	runtime     time.Duration
	ramp        time.Duration
	size        int64
	idle        time.Duration
	healTimeout time.Duration
	torusdSize  int64
	torusdArgs  string
	downGrace   time.Duration
	targets     string
	noEvict     bool
	keep        bool
	strict      bool
	verbose     bool
	ceph        bool
	waSizes     []int64
}

// sizeFlag parses sizes like 4GiB, 256MiB or a plain byte count.
type sizeFlag struct{ n *int64 }

func (s sizeFlag) String() string {
	if s.n == nil || *s.n == 0 {
		return "0"
	}
	return FormatSize(*s.n)
}

func (s sizeFlag) Set(v string) error {
	n, err := ParseSize(v)
	if err != nil {
		return err
	}
	*s.n = n
	return nil
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: go run ./bench [flags]\n\nBenchmarks Torus against fio on the raw disk, nbdkit and qemu-nbd.\nSee docs/benchmarks.md.\n\n")
		fs.PrintDefaults()
	}
	fs.BoolVar(&c.quick, "quick", false, "smoke-test mode: 3 s jobs over a 256 MiB data set (~2 min)")
	fs.StringVar(&c.out, "out", "bench/results", "directory for <timestamp>.json, latest.json and latest.png")
	fs.StringVar(&c.bin, "bin", "bin", "directory holding torusd, torusctl and torusblk")
	fs.StringVar(&c.dir, "dir", os.TempDir(), "parent of the scratch directory (data file, Torus data dirs); choose the disk to measure")
	fs.DurationVar(&c.runtime, "runtime", 0, "length of each job (default 20s, quick 3s)")
	fs.DurationVar(&c.ramp, "ramp", -1, "fio ramp_time before measuring (default 2s, quick 0)")
	fs.Var(sizeFlag{&c.size}, "size", "data set size (default 4GiB, quick 256MiB)")
	fs.DurationVar(&c.idle, "idle", 0, "idle window for Torus CPU use (default 30s, quick 5s)")
	fs.DurationVar(&c.healTimeout, "heal-timeout", 0, "how long to wait for healing (default 10m, quick 90s)")
	c.torusdSize = 20 << 30
	fs.Var(sizeFlag{&c.torusdSize}, "torusd-size", "capacity each torusd offers (--size)")
	fs.StringVar(&c.torusdArgs, "torusd-args", "", "extra arguments for every torusd, space-separated")
	fs.DurationVar(&c.downGrace, "down-grace", 5*time.Second, "passed as torusd --down-grace (when torusd has the flag) so healing starts soon after the kill; 0: don't")
	fs.StringVar(&c.targets, "targets", "", "comma-separated targets to run (default all; the Ceph ones only with -ceph or when named): "+strings.Join(allTargetNames(), ","))
	fs.BoolVar(&c.noEvict, "no-evict", false, "do not drop the targets' files from the page cache before each job")
	fs.BoolVar(&c.keep, "keep", false, "keep the scratch directory (logs, fio output) after the run")
	fs.BoolVar(&c.strict, "strict", false, "exit non-zero when a Torus target that was not skipped fails")
	fs.BoolVar(&c.verbose, "v", false, "debug logging")
	fs.BoolVar(&c.ceph, "ceph", false, "add the Ceph RBD baseline ("+TargetCeph1+", "+TargetCeph2+"; installs Debian's ceph packages when missing)")
	waSizes := fs.String("wa-sizes", "", "comma-separated volume sizes for the write-amplification rows, e.g. 1GiB,16GiB,64GiB (default 1GiB, quick 32MiB; none: no rows)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	switch *waSizes {
	case "":
		c.waSizes = []int64{1 << 30}
		if c.quick {
			c.waSizes = []int64{32 << 20}
		}
	case "none":
	default:
		var err error
		if c.waSizes, err = ParseSizes(*waSizes); err != nil {
			return c, err
		}
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	// def sets *d to the mode's default when it is at or below unset.
	def := func(d *time.Duration, unset, full, quick time.Duration) {
		if *d <= unset {
			*d = full
			if c.quick {
				*d = quick
			}
		}
	}
	def(&c.runtime, 0, 20*time.Second, 3*time.Second)
	def(&c.ramp, -1, 2*time.Second, 0)
	def(&c.idle, 0, 30*time.Second, 5*time.Second)
	def(&c.healTimeout, 0, 10*time.Minute, 90*time.Second)
	if c.size == 0 {
		c.size = 4 << 30
		if c.quick {
			c.size = 256 << 20
		}
	}
	for _, t := range splitList(c.targets) {
		if !contains(allTargetNames(), t) {
			return c, fmt.Errorf("unknown target %q", t)
		}
	}
	return c, nil
}

func allTargetNames() []string {
	names := []string{TargetDisk, TargetNBDKit, TargetQemuNBD}
	for _, s := range TorusSpecs() {
		names = append(names, s.Name)
	}
	return append(names, TargetCeph1, TargetCeph2, TargetWA)
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, e := range list {
		if e == s {
			return true
		}
	}
	return false
}

// run is main without the exit: 0 success, 1 a baseline (or, with -strict,
// a Torus target) failed, 2 usage.
func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 2
	}
	level := slog.LevelInfo
	if cfg.verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	b, err := newBench(cfg, logger)
	if err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	rep := b.Run(ctx)
	if err := b.Close(); err != nil {
		logger.Warn("cleanup", "err", err)
	}
	fmt.Fprintf(stdout, "\nTorus benchmark (%s mode, %ds jobs, data set %s, load average %s → %s on %d CPUs)\n\n", rep.Mode,
		rep.Settings.RuntimeSeconds, FormatSize(rep.Settings.DataSetBytes), rep.Host.LoadStart, rep.Host.LoadEnd, rep.Host.CPUs)
	if err := WriteTable(stdout, rep.Targets, rep.Results); err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	writeExtras(stdout, rep)
	if err := writeOutputs(cfg.out, rep); err != nil {
		fmt.Fprintln(stderr, "bench:", err)
		return 1
	}
	fmt.Fprintf(stdout, "\nwrote %s, %s and %s\n", filepath.Join(cfg.out, resultName(rep.Started)),
		filepath.Join(cfg.out, "latest.json"), filepath.Join(cfg.out, "latest.png"))
	if ctx.Err() != nil {
		fmt.Fprintln(stderr, "bench: interrupted")
		return 1
	}
	return ExitCode(rep.Targets, rep.Results, cfg.strict)
}

// ExitCode is 1 when a baseline target, or a job on one, failed (or, when
// strict, any target that was not skipped), else 0.
func ExitCode(targets []TargetStatus, results []Result, strict bool) int {
	failed := map[string]bool{}
	for _, r := range results {
		if r.Error != "" {
			failed[r.Target] = true
		}
	}
	for _, t := range targets {
		if t.Skipped != "" {
			continue
		}
		if (t.Error != "" || failed[t.Name]) && (t.Baseline || strict) {
			return 1
		}
	}
	return 0
}

func writeExtras(w io.Writer, rep Report) {
	if len(rep.Procs) > 0 {
		fmt.Fprintln(w, "\nProcesses (peak RSS; CPU from start to the end of the jobs; idle CPU after them):")
		for _, p := range rep.Procs {
			idle := "-"
			if p.IdleCPUPercent >= 0 {
				idle = fmt.Sprintf("%.2f%%", p.IdleCPUPercent)
			}
			fmt.Fprintf(w, "  %-12s %-10s peak RSS %5.0f MiB  CPU %7.1f s  idle CPU %s\n", p.Target, p.Name,
				float64(p.PeakRSSBytes)/(1<<20), p.CPUSeconds, idle)
		}
	}
	if h := rep.Heal; h != nil {
		fmt.Fprintf(w, "\nHealing (%s): %s", h.Target, h.Status)
		if h.Killed != "" {
			fmt.Fprintf(w, " (SIGKILL %s)", h.Killed)
		}
		if h.Status == "ok" {
			fmt.Fprintf(w, ": %.0f MiB re-replicated in %.1f s (kill noticed after %.1f s, copying from %.1f s): %.0f MiB/s (%.0f MiB/s from the kill)",
				float64(h.Bytes)/(1<<20), h.TotalSeconds-h.CopyStartSeconds, h.DetectSeconds, h.CopyStartSeconds, h.MiBps, h.TotalMiBps)
		}
		fmt.Fprintln(w)
	}
	writeTLSCost(w, rep.TLSCost)
	writeCPUCost(w, rep.CPUCost)
	writeCeph(w, rep.Ceph)
	writeWA(w, rep.WA)
	WriteAims(w, rep.Aims)
}

// writeTLSCost prints what mutual TLS on the peer protocol costs each job.
func writeTLSCost(w io.Writer, costs []TLSCost) {
	if len(costs) == 0 {
		return
	}
	fmt.Fprintf(w, "\nTLS on the peer protocol (%s / %s, same run):\n", TargetTorus2TLS, TargetTorus2)
	for _, c := range costs {
		fmt.Fprintf(w, "  %-20s %8s → %8s %-5s  ratio %.2f  p50 ratio %s\n", c.Job, formatValue(c.Plain),
			formatValue(c.TLS), c.Metric, c.Ratio, formatRatio(c.P50Ratio))
	}
}

func resultName(t time.Time) string {
	return t.UTC().Format("20060102T150405Z") + ".json"
}

func writeOutputs(dir string, rep Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	for _, name := range []string{resultName(rep.Started), "latest.json"} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	title := fmt.Sprintf("Throughput relative to nbdkit (%s, %s)", rep.Mode, rep.Started.UTC().Format("2006-01-02 15:04Z"))
	if names, _ := ChartSeries(rep.Jobs, rep.Targets, rep.Results); len(names) == 0 {
		// Nothing to compare with nbdkit (it did not run, or only it ran).
		return nil
	}
	return WriteChart(filepath.Join(dir, "latest.png"), title, rep.Jobs, rep.Targets, rep.Results)
}

// bench is one run.
type bench struct {
	cfg      config
	logger   *slog.Logger
	runDir   string
	settings Settings
	jobs     []Job
	rep      Report
}

func newBench(cfg config, logger *slog.Logger) (*bench, error) {
	s := Settings{Runtime: cfg.runtime, Ramp: cfg.ramp, Size: cfg.size}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.dir, 0o755); err != nil {
		return nil, err
	}
	runDir, err := os.MkdirTemp(cfg.dir, "torus-bench-*")
	if err != nil {
		return nil, err
	}
	mode := "full"
	if cfg.quick {
		mode = "quick"
	}
	b := &bench{cfg: cfg, logger: logger, runDir: runDir, settings: s, jobs: Jobs()}
	b.rep = Report{
		Started: time.Now().UTC(),
		Mode:    mode,
		Jobs:    b.jobs,
		Settings: ReportSettings{
			RuntimeSeconds: int(s.Runtime / time.Second), RampSeconds: int(s.Ramp / time.Second),
			DataSetBytes: s.Size, HealBytes: s.Size, IdleSeconds: int(cfg.idle / time.Second),
			DropCacheBefore: !cfg.noEvict, WASizes: cfg.waSizes, Ceph: cfg.ceph,
		},
	}
	return b, nil
}

// Close removes the scratch directory unless -keep.
func (b *bench) Close() error {
	if b.cfg.keep {
		b.logger.Info("kept scratch directory", "dir", b.runDir)
		return nil
	}
	return os.RemoveAll(b.runDir)
}

func (b *bench) wanted(target string) bool {
	list := splitList(b.cfg.targets)
	return len(list) == 0 || contains(list, target)
}

// Run runs every target and returns the report.
func (b *bench) Run(ctx context.Context) Report {
	b.rep.Host = hostInfo(ctx)
	b.baselines(ctx)
	b.ceph(ctx)
	b.torus(ctx)
	b.writeAmplification(ctx)
	ComputeRatios(b.rep.Results)
	b.rep.TLSCost = TLSCosts(b.jobs, b.rep.Results)
	b.rep.CPUCost = CPUCosts(b.jobs, b.rep.Results, b.rep.JobCPU)
	b.rep.Ceph = CephRows(b.jobs, b.rep.Results)
	b.rep.Aims = CheckAims(AimInputs{Jobs: b.jobs, Results: b.rep.Results, Heal: b.rep.Heal, Procs: b.rep.Procs,
		CPU: b.rep.CPUCost, WA: b.rep.WA, Ceph: b.cephWanted(TargetCeph2)})
	b.rep.Finished = time.Now().UTC()
	b.rep.Host.LoadEnd = loadAvg()
	return b.rep
}

func (b *bench) addTarget(t TargetStatus) *TargetStatus {
	b.rep.Targets = append(b.rep.Targets, t)
	return &b.rep.Targets[len(b.rep.Targets)-1]
}

func (b *bench) baselines(ctx context.Context) {
	want := []TargetStatus{
		{Name: TargetDisk, Baseline: true, Desc: "fio on a plain file on the same disk (libaio, O_DIRECT): the disk's ceiling"},
		{Name: TargetNBDKit, Baseline: true, Desc: "the same file served by nbdkit's file plugin (parallel threads, page cache, flush = fdatasync)"},
		{Name: TargetQemuNBD, Baseline: true, Desc: "the same file served by qemu-nbd (raw, --shared=8, cache=writeback, flush = fdatasync)"},
	}
	var idx []int
	for _, t := range want {
		if b.wanted(t.Name) {
			b.addTarget(t)
			idx = append(idx, len(b.rep.Targets)-1)
		}
	}
	if len(idx) == 0 {
		return
	}
	fail := func(err error) {
		for _, i := range idx {
			b.rep.Targets[i].Error = err.Error()
		}
	}
	if _, err := exec.LookPath("fio"); err != nil {
		fail(fmt.Errorf("fio not installed: %w", err))
		return
	}
	g := NewProcs(b.logger, b.runDir)
	defer g.Close()
	dir, err := g.TempDir("baseline-*")
	if err != nil {
		fail(err)
		return
	}
	file := filepath.Join(dir, "disk.img")
	fileEP := Endpoint{File: file}
	b.logger.Info("prefilling the baseline file", "size", FormatSize(b.settings.Size))
	if err := b.prefill(ctx, "baseline", fileEP); err != nil {
		fail(err)
		return
	}
	for _, i := range idx {
		t := &b.rep.Targets[i]
		switch t.Name {
		case TargetDisk:
			b.runJobs(ctx, t.Name, fileEP, []string{file}, nil, nil)
		case TargetNBDKit, TargetQemuNBD:
			start := StartNBDKit
			if t.Name == TargetQemuNBD {
				start = StartQemuNBD
			}
			ep, p, err := start(ctx, g, file)
			if err != nil {
				t.Error = err.Error()
				continue
			}
			b.runJobs(ctx, t.Name, ep, []string{file}, []*Watched{{Name: t.Name, Proc: p}}, func() error { return exited(p) })
			if err := p.Stop(10 * time.Second); err != nil {
				b.logger.Warn("server exited with error", "target", t.Name, "err", err)
			}
		}
	}
}

// exited returns an error when p is no longer running.
func exited(p *Proc) error {
	if p.Alive() {
		return nil
	}
	return fmt.Errorf("%s exited (%v): %s", p.Name, p.err, oneLine(Tail(p, 400), 400))
}

func (b *bench) torus(ctx context.Context) {
	missing := MissingTorus(b.cfg.bin)
	opts := TorusOptions{Bin: b.cfg.bin, VolumeSize: b.settings.Size, DaemonSize: b.cfg.torusdSize}
	if missing == "" {
		// The help text tells which optional flags this torusd has; its
		// exit status does not matter.
		help, _ := RunCmd(ctx, 10*time.Second, filepath.Join(b.cfg.bin, "torusd"), "--help")
		opts.DaemonArgs = DaemonExtraArgs(string(help), b.cfg.downGrace, b.cfg.torusdArgs)
	}
	for _, spec := range TorusSpecs() {
		if !b.wanted(spec.Name) {
			continue
		}
		t := TargetStatus{Name: spec.Name, Desc: spec.Desc(), Skipped: missing}
		if ctx.Err() != nil {
			t.Skipped = "skipped: interrupted"
		}
		tp := b.addTarget(t)
		if tp.Skipped != "" {
			continue
		}
		if err := b.torusTarget(ctx, opts, spec); err != nil {
			// b.rep.Targets may have moved; find the entry again.
			for i := range b.rep.Targets {
				if b.rep.Targets[i].Name == spec.Name {
					b.rep.Targets[i].Error = err.Error()
				}
			}
			b.logger.Error("torus target failed", "target", spec.Name, "err", err)
		}
	}
	if b.rep.Heal == nil && b.wanted(TargetTorus2) {
		st := missing
		if st == "" {
			st = "skipped: " + TargetTorus2 + " did not run"
		}
		b.rep.Heal = &HealResult{Target: TargetTorus2, Status: st}
	}
}

func (b *bench) torusTarget(ctx context.Context, opts TorusOptions, spec TorusSpec) error {
	g := NewProcs(b.logger, b.runDir)
	defer g.Close()
	b.logger.Info("starting Torus", "target", spec.Name)
	c, err := StartTorus(ctx, g, opts, spec)
	if err != nil {
		return err
	}
	var watched []*Watched
	for _, d := range c.Daemons {
		watched = append(watched, &Watched{Name: d.Name, Proc: d.Proc})
	}
	watched = append(watched, &Watched{Name: "torusblk", Proc: c.Blk})
	sample := func() {
		for _, w := range watched {
			w.Sample()
		}
	}
	alive := func() error {
		for _, w := range watched {
			if err := exited(w.Proc); err != nil {
				return err
			}
		}
		return nil
	}
	b.logger.Info("prefilling", "target", spec.Name, "size", FormatSize(b.settings.Size))
	if err := b.prefill(ctx, spec.Name, c.Endpoint()); err != nil {
		return err
	}
	sample()
	b.runJobs(ctx, spec.Name, c.Endpoint(), c.DataDirs(), watched, alive)
	sample()

	// Idle: no I/O for the idle window.
	before := make([]ProcSample, len(watched))
	for i, w := range watched {
		before[i] = w.Last
	}
	b.logger.Info("measuring idle CPU", "target", spec.Name, "for", b.cfg.idle)
	t0 := time.Now()
	select {
	case <-ctx.Done():
	case <-time.After(b.cfg.idle):
	}
	sample()
	secs := time.Since(t0).Seconds()
	for i, w := range watched {
		idle := -1.0
		if w.Proc.Alive() {
			idle = IdleCPUPercent(before[i], w.Last, secs)
		}
		b.rep.Procs = append(b.rep.Procs, ProcResources{Target: spec.Name, Name: w.Name, PID: w.Proc.PID(),
			PeakRSSBytes: w.Last.PeakRSSBytes, CPUSeconds: before[i].CPUSeconds, IdleCPUPercent: idle})
	}
	// Every process must have lived through the jobs and the idle window;
	// healing then kills one on purpose.
	if err := alive(); err != nil {
		return err
	}
	if spec.Name == TargetTorus2 && ctx.Err() == nil {
		b.logger.Info("measuring healing", "target", spec.Name, "timeout", b.cfg.healTimeout)
		h := MeasureHealing(ctx, b.logger, c, b.cfg.healTimeout)
		b.rep.Heal = &h
	}
	return nil
}

// prefill writes the whole data set once through ep.
func (b *bench) prefill(ctx context.Context, name string, ep Endpoint) error {
	out := filepath.Join(b.runDir, name+"-prefill.json")
	// Generous: the data set at 5 MiB/s.
	timeout := time.Duration(b.settings.Size/(5<<20))*time.Second + time.Minute
	argv := append([]string{"fio"}, PrefillArgs(ep, b.settings.Size, out)...)
	if _, err := RunCmdEnv(ctx, timeout, ep.Env(), argv...); err != nil {
		return fmt.Errorf("prefill: %w", err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return fmt.Errorf("prefill: %w", err)
	}
	if _, err := ParseFio(data); err != nil {
		return fmt.Errorf("prefill: %w", err)
	}
	return nil
}

// runJobs runs every job against ep and records the results, and the CPU
// time each watched process used during each job. check, if not nil, is
// called before each job and fails it when the target died.
func (b *bench) runJobs(ctx context.Context, target string, ep Endpoint, evict []string, watched []*Watched, check func() error) {
	for _, job := range b.jobs {
		before := make([]ProcSample, len(watched))
		sampled := make([]bool, len(watched))
		for i, w := range watched {
			sampled[i] = w.Sample()
			before[i] = w.Last
		}
		r := b.runJob(ctx, target, job, ep, evict, check)
		for i, w := range watched {
			// Only a process seen alive before and after the job.
			if w.Sample() && sampled[i] && r.Error == "" {
				b.rep.JobCPU = append(b.rep.JobCPU, JobCPU{Target: target, Job: job.Name, Proc: w.Name,
					CPUSeconds: w.Last.CPUSeconds - before[i].CPUSeconds})
			}
		}
		if r.Error != "" {
			b.logger.Error("job failed", "target", target, "job", job.Name, "err", r.Error)
		} else {
			b.logger.Info("job done", "target", target, "job", job.Name, "value", fmt.Sprintf("%.1f %s", r.Value, r.Metric),
				"p50", FormatLatency(r.P50Ns), "p99", FormatLatency(r.P99Ns))
		}
		b.rep.Results = append(b.rep.Results, r)
	}
}

func (b *bench) runJob(ctx context.Context, target string, job Job, ep Endpoint, evict []string, check func() error) Result {
	failed := func(err error) Result {
		return Result{Target: target, Job: job.Name, Metric: job.Metric, Error: err.Error()}
	}
	if err := ctx.Err(); err != nil {
		return failed(fmt.Errorf("interrupted: %w", err))
	}
	if check != nil {
		if err := check(); err != nil {
			return failed(err)
		}
	}
	if !b.cfg.noEvict {
		if err := EvictCache(evict); err != nil {
			b.logger.Warn("page cache eviction", "err", err)
		}
	}
	out := filepath.Join(b.runDir, fmt.Sprintf("%s-%s.json", target, job.Name))
	// The margin covers the final flush of everything the page cache held.
	timeout := b.settings.Runtime + b.settings.Ramp + 3*time.Minute
	argv := append([]string{"fio"}, FioArgs(job, ep, b.settings, out)...)
	if _, err := RunCmdEnv(ctx, timeout, ep.Env(), argv...); err != nil {
		if check != nil {
			if cerr := check(); cerr != nil {
				err = fmt.Errorf("%w; %w", err, cerr)
			}
		}
		return failed(err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return failed(err)
	}
	fr, err := ParseFio(data)
	if err != nil {
		return failed(err)
	}
	return HeadlineResult(target, job, fr)
}

// hostInfo describes the machine and tool versions; failures leave fields
// empty.
func hostInfo(ctx context.Context) HostInfo {
	h := HostInfo{CPUs: runtime.NumCPU(), LoadStart: loadAvg()}
	h.Hostname, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(b))
	}
	first := func(argv ...string) string {
		out, err := RunCmd(ctx, 10*time.Second, argv...)
		if err != nil {
			return ""
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line
	}
	h.Fio = first("fio", "--version")
	h.NBDKit = first("nbdkit", "--version")
	h.QemuNBD = first("qemu-nbd", "--version")
	h.Etcd = first("etcd", "--version")
	h.Commit = first("git", "rev-parse", "--short", "HEAD")
	return h
}

// writeCPUCost prints CPU seconds per GiB by target and process kind.
func writeCPUCost(w io.Writer, costs []CPUCost) {
	if len(costs) == 0 {
		return
	}
	fmt.Fprintln(w, "\nCPU per GiB (CPU seconds during the write-only and read-only jobs ÷ GiB they moved):")
	for _, c := range costs {
		fmt.Fprintf(w, "  %-16s %-10s %s\n", c.Target, c.Proc, c.String())
	}
}

// writeCeph prints Torus against Ceph RBD, job by job.
func writeCeph(w io.Writer, rows []CephRow) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\nAgainst Ceph RBD (same run): %s / %s and %s / %s\n", TargetTorus2, TargetCeph2, TargetTorus1, TargetCeph1)
	for _, r := range rows {
		fmt.Fprintf(w, "  %-20s size 2 %8s vs %8s %-5s ratio %-5s   size 1 %8s vs %8s ratio %s\n", r.Job,
			valueOrDash(r.Torus2), valueOrDash(r.Ceph2), r.Metric, formatRatio(r.Ratio2),
			valueOrDash(r.Torus1), valueOrDash(r.Ceph1), formatRatio(r.Ratio1))
	}
}

// valueOrDash is formatValue, or "-" for a value not measured.
func valueOrDash(v float64) string {
	if v <= 0 {
		return "-"
	}
	return formatValue(v)
}

// writeWA prints the write-amplification rows.
func writeWA(w io.Writer, rows []WAResult) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\nWrite amplification of 4 KiB random writes (%s: bytes in the daemons' data dirs ÷ bytes written ÷ replication):\n", TargetWA)
	for _, r := range rows {
		if r.Error != "" {
			fmt.Fprintf(w, "  %-7s %s\n", FormatSize(r.Size), oneLine(r.Error, 200))
			continue
		}
		fmt.Fprintf(w, "  %-7s %s\n", FormatSize(r.Size), r.Summary())
	}
}

// WriteAims prints every aim with its status and measured figure.
func WriteAims(w io.Writer, aims []AimResult) {
	met, missed, na := AimCounts(aims)
	fmt.Fprintf(w, "\nAims (issue 11; write amplification: issue 10): %d met, %d not met, %d not measured\n", met, missed, na)
	for _, a := range aims {
		fmt.Fprintf(w, "  %-12s [%s] %s: %s\n", a.Status, a.Group, a.Aim, a.Got)
	}
}
