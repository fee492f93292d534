// Command scale measures what an idle Torus cluster costs the metadata
// store and the peer network: etcd requests and peer RPCs per daemon per
// minute, and CPU. It is what `make scale` runs:
//
//	go run ./bench/scale [-runs 3x10,3x1000] [-window 30s] [-baseline main]
//
// The figures of docs/design/cluster.md ("Idle cost") come from
//
//	go run ./bench/scale -runs 300x10 -settle 45s -max-settle 5m -sample 20s -window 90s
//	go run ./bench/scale -runs 300x10 -join batch -settle 45s -max-settle 5m -sample 20s -window 90s
//	go run ./bench/scale -runs 3x10,30x1000 -settle 45s -max-settle 5m -sample 20s -window 90s
//	go run ./bench/scale -runs 3x10000 -settle 3m -max-settle 6m -sample 20s -window 90s
//
// -join auto (the default) starts every daemon with --auto-join, -parallel
// (16) at a time: joiners add every peer waiting to auto-join in the same
// ring version (docs/design/cluster.md, "Joining"), so the setup writes a
// few ring versions, not one per daemon; the count is printed. -join batch
// starts them without it and adds them all in one SetRing. The settle
// check takes any steady rate for the idle one: a start-up transient that
// lasts minutes at a steady rate is counted as the steady state.
//
// Each run (DAEMONSxVOLUMES) starts an embedded etcd and DAEMONS in-process
// torusd servers (server.New, each with its own etcd client, store and peer
// port; the stores are in memory, fake stores, unless -store disk) in one
// ring on VOLUMES empty volumes created before they start, lets
// the cluster settle — at least -settle, then until the etcd request rates
// of two consecutive -sample periods agree within 10 %, at most -max-settle
// (which must exceed -settle; a run that never got steady says so) — then
// counts over the window:
//
//   - etcd requests, from etcd's own server metrics (the gRPC unary calls
//     handled plus the messages received on streams: watch creations, lease
//     keepalives), divided by the number of daemons;
//   - peer RPCs, from a counting proxy in front of every daemon's peer port
//     (each daemon advertises its proxy, so every request another daemon
//     sends it is a frame the proxy reads);
//   - the process's CPU time divided by the number of daemons (etcd
//     included): on a shared machine an order of magnitude, not a figure
//     to compare closely (-cpuprofile says where it goes).
//
// With -baseline REF the same program also runs against the code of git
// ref REF (exported with git archive to a temporary directory, with this
// program copied in), in the same invocation, and the table shows both and their ratio.
//
// The counters are independent of the code measured, so the figures of a
// baseline and of the current tree are comparable.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/torus-storage/torus"
	etcdmeta "github.com/torus-storage/torus/metadata/etcd"
	"github.com/torus-storage/torus/server"
	"github.com/torus-storage/torus/storage"
)

// result is one run's figures, per daemon per minute.
type result struct {
	Daemons, Volumes int
	EtcdPerMin       float64            // etcd requests per daemon per minute
	EtcdByMethod     map[string]float64 // per daemon per minute
	PeerPerMin       float64            // peer RPCs per daemon per minute
	PeerByOp         map[string]float64
	CPUPerDaemon     float64 // CPU seconds per daemon per minute (process ÷ daemons)
	Window           time.Duration
	Settled          time.Duration // how long the cluster took to settle (settleDown)
	Steady           bool          // the rate settled before -max-settle
	Setup            time.Duration // creating the volumes and starting the daemons
	// RingVersions is how many ring versions the setup wrote (each
	// reaches every daemon's watch); Join the -join mode.
	RingVersions uint64
	Join         string
}

func main() {
	runs := flag.String("runs", "3x10,3x1000", "comma-separated DAEMONSxVOLUMES runs")
	window := flag.Duration("window", 30*time.Second, "counting window")
	settle := flag.Duration("settle", 15*time.Second, "least wait after the setup before counting")
	maxSettle := flag.Duration("max-settle", 5*time.Minute, "longest wait for the etcd request rate to settle (more than -settle)")
	sample := flag.Duration("sample", 20*time.Second, "settling: the rates of two consecutive samples this long must agree within 10 %")
	heartbeat := flag.Duration("heartbeat-ttl", 5*time.Second, "daemons' liveness TTL (heartbeat every third of it)")
	join := flag.String("join", "auto", "how daemons join the ring: auto (each its own ring version, as torusd --auto-join) or batch (one SetRing with every daemon once all started, as an operator adding them at once)")
	parallel := flag.Int("parallel", 16, "how many daemons start at once (machines booting together; 1: one after another)")
	store := flag.String("store", "memory", "daemons' segment stores: memory (fake stores, as for 300 daemons in one process) or disk")
	baseline := flag.String("baseline", "", "also run against this git ref (e.g. main), exported to a temporary directory")
	baseRuns := flag.String("baseline-runs", "", "runs for the baseline (default: -runs); the old code is slow at scale")
	jsonOut := flag.Bool("json", false, "print results as JSON (used for the baseline run)")
	verbose := flag.Bool("v", false, "log the daemons' warnings")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole invocation (daemons and etcd) to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "scale: cpu profile:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	fail := func(code int, a ...any) {
		fmt.Fprintln(os.Stderr, a...)
		pprof.StopCPUProfile()
		os.Exit(code)
	}
	if *join != "auto" && *join != "batch" {
		fmt.Fprintf(os.Stderr, "scale: -join %q: want auto or batch\n", *join)
		os.Exit(2)
	}
	if *store != "memory" && *store != "disk" {
		fmt.Fprintf(os.Stderr, "scale: -store %q: want memory or disk\n", *store)
		os.Exit(2)
	}
	if *maxSettle <= *settle || *sample <= 0 {
		// With -max-settle <= -settle the rate would never be checked:
		// the window could count the start-up reads.
		fmt.Fprintf(os.Stderr, "scale: -max-settle (%v) must be larger than -settle (%v), -sample (%v) positive\n", *maxSettle, *settle, *sample)
		os.Exit(2)
	}

	var before []result
	if *baseline != "" {
		var err error
		br := *baseRuns
		if br == "" {
			br = *runs
		}
		before, err = runBaseline(*baseline, br, os.Args[1:])
		if err != nil {
			fmt.Fprintln(os.Stderr, "scale: baseline:", err)
			os.Exit(1)
		}
	}
	var after []result
	for _, spec := range strings.Split(*runs, ",") {
		n, v, err := parseRun(spec)
		if err != nil {
			fmt.Fprintln(os.Stderr, "scale:", err)
			os.Exit(2)
		}
		r, err := run(n, v, *parallel, *settle, *maxSettle, *sample, *window, *heartbeat, *store == "memory", *join == "batch", *verbose)
		if err != nil {
			fail(1, fmt.Sprintf("scale: run %s: %v", spec, err))
		}
		after = append(after, r)
		if !*jsonOut {
			fmt.Fprintf(os.Stderr, "scale: %dx%d done: %.0f etcd req/daemon/min, %.0f peer RPC/daemon/min, %.3f CPU s/daemon/min (join %s, setup %v, %d ring versions, settled after %v, steady %v)\n",
				n, v, r.EtcdPerMin, r.PeerPerMin, r.CPUPerDaemon, r.Join, r.Setup.Round(time.Second), r.RingVersions, r.Settled.Round(time.Second), r.Steady)
		}
	}
	if *jsonOut {
		_ = json.NewEncoder(os.Stdout).Encode(after)
		return
	}
	printTable(os.Stdout, before, after, *baseline)
}

func parseRun(s string) (int, int, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "x")
	n, err1 := strconv.Atoi(a)
	v, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || n < 1 || v < 0 {
		return 0, 0, fmt.Errorf("bad run %q: want DAEMONSxVOLUMES", s)
	}
	return n, v, nil
}

// runBaseline runs this program in a worktree of ref and reads its JSON.
func runBaseline(ref, runs string, args []string) ([]result, error) {
	dir, err := os.MkdirTemp("", "torus-scale-baseline-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	wt := filepath.Join(dir, "tree")
	if err := os.Mkdir(wt, 0o755); err != nil {
		return nil, err
	}
	// An exported tree, not a worktree: the repository is left as it is.
	if out, err := exec.Command("sh", "-c", `git archive --format=tar "$1" | tar -x -C "$2"`, "sh", ref, wt).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("git archive %s: %v: %s", ref, err, out)
	}
	self, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	src := filepath.Join(self, "bench", "scale", "main.go")
	b, err := os.ReadFile(src)
	if err != nil {
		return nil, fmt.Errorf("run from the repository root: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(wt, "bench", "scale"), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(wt, "bench", "scale", "main.go"), b, 0o644); err != nil {
		return nil, err
	}
	var pass []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		name := strings.TrimLeft(a, "-")
		if name == "baseline" || name == "baseline-runs" || name == "runs" {
			i++
			continue
		}
		if strings.HasPrefix(name, "baseline=") || strings.HasPrefix(name, "baseline-runs=") || strings.HasPrefix(name, "runs=") {
			continue
		}
		pass = append(pass, a)
	}
	pass = append(pass, "-runs", runs)
	cmd := exec.Command("go", append([]string{"run", "./bench/scale", "-json"}, pass...)...)
	cmd.Dir = wt
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("baseline run: %w", err)
	}
	var rs []result
	if err := json.Unmarshal(out, &rs); err != nil {
		return nil, fmt.Errorf("baseline output: %w", err)
	}
	return rs, nil
}

// run measures one cluster of n daemons and v volumes.
func run(n, v, parallel int, settle, maxSettle, sample, window, hbTTL time.Duration, memStores, batchJoin, verbose bool) (result, error) {
	setupStart := time.Now()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir, err := os.MkdirTemp("", "torus-scale-")
	if err != nil {
		return result{}, err
	}
	defer os.RemoveAll(dir)
	level := slog.LevelError + 1
	if verbose {
		level = slog.LevelWarn
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	clientPort, err := freePort()
	if err != nil {
		return result{}, err
	}
	peerPort, err := freePort()
	if err != nil {
		return result{}, err
	}
	emb, err := etcdmeta.StartEmbedded(ctx, etcdmeta.EmbedConfig{Dir: filepath.Join(dir, "etcd"), UnsafeNoFsync: true,
		ClientURL: fmt.Sprintf("http://127.0.0.1:%d", clientPort), PeerURL: fmt.Sprintf("http://127.0.0.1:%d", peerPort)})
	if err != nil {
		return result{}, err
	}
	defer emb.Close()
	newMeta := func() (*etcdmeta.Store, error) {
		return etcdmeta.New(ctx, etcdmeta.Config{Endpoints: emb.Endpoints(), RequestTimeout: 30 * time.Second,
			DialTimeout: 30 * time.Second})
	}
	admin, err := newMeta()
	if err != nil {
		return result{}, err
	}
	defer admin.Close()
	cfg := torus.ClusterConfig{Replication: min(2, n)}
	cfg.EnsureDefaults()
	if err := admin.InitCluster(ctx, cfg); err != nil {
		return result{}, err
	}

	// The volumes exist before the daemons start, as after a restart: each
	// daemon reads them once.
	// Four at a time (the volume ID counter is one key, so more only
	// contend), retried when contended.
	var (
		next    atomic.Int64
		createG sync.WaitGroup
		errs    = make(chan error, 4) // buffered to the workers
	)
	for range 4 {
		createG.Add(1)
		go func() {
			defer createG.Done()
			for i := int(next.Add(1)) - 1; i < v; i = int(next.Add(1)) - 1 {
				var err error
				for try := 0; try == 0 || errors.Is(err, torus.ErrUnavailable) && try < 10; try++ {
					_, err = admin.CreateVolume(ctx, torus.VolumeInfo{Name: fmt.Sprintf("v%05d", i), Size: 64 << 20})
				}
				if err != nil {
					errs <- fmt.Errorf("creating volume %d: %w", i, err)
					return
				}
			}
		}()
	}
	createG.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return result{}, err
	}

	var servers []*server.Server
	var proxies []*proxy
	var metas []*etcdmeta.Store
	defer func() {
		var wg sync.WaitGroup
		for _, s := range servers {
			wg.Add(1)
			go func() { defer wg.Done(); s.Close() }()
		}
		wg.Wait()
		for _, m := range metas {
			m.Close()
		}
		for _, p := range proxies {
			p.Close()
		}
	}()
	// Each daemon's port, proxy and etcd client, made one after another;
	// then the daemons start -parallel at a time (machines booting
	// together), each Start returning once it is in the ring.
	cfgs := make([]server.Config, n)
	for i := range n {
		p, err := newProxy("") // its target is set just before the daemon starts
		if err != nil {
			return result{}, err
		}
		proxies = append(proxies, p)
		meta, err := newMeta()
		if err != nil {
			return result{}, err
		}
		metas = append(metas, meta)
		cfgs[i] = server.Config{DataDir: filepath.Join(dir, fmt.Sprint("d", i)), Capacity: 1 << 30,
			PeerAdvertise: p.Addr(), AutoJoin: !batchJoin, HeartbeatTTL: hbTTL, ScrubInterval: -1}
		if memStores {
			cfgs[i].Store = storage.NewMemory(cfgs[i].Capacity)
		}
	}
	var (
		startMu  sync.Mutex
		startErr error
		started  int
		startG   sync.WaitGroup
		slots    = make(chan struct{}, max(1, parallel))
	)
	for i := range n {
		slots <- struct{}{}
		startMu.Lock()
		failed := startErr != nil
		startMu.Unlock()
		if failed {
			<-slots
			break
		}
		startG.Add(1)
		go func() {
			defer startG.Done()
			defer func() { <-slots }()
			// The port is picked just before the daemon binds it, as
			// little time as possible for another socket to take it (and
			// picked again if one did).
			var s *server.Server
			var err error
			for try := 0; try == 0 || errors.Is(err, syscall.EADDRINUSE) && try < 5; try++ {
				var port int
				if port, err = freePort(); err != nil {
					break
				}
				cfgs[i].PeerListen = fmt.Sprintf("127.0.0.1:%d", port)
				proxies[i].setTarget(cfgs[i].PeerListen)
				if s, err = server.New(cfgs[i], metas[i], log); err == nil {
					err = s.Start(ctx)
				}
			}
			startMu.Lock()
			defer startMu.Unlock()
			if err != nil {
				if startErr == nil {
					startErr = fmt.Errorf("daemon %d: %w", i, err)
				}
				return
			}
			servers = append(servers, s)
			if started++; started%50 == 0 && started < n {
				fmt.Fprintf(os.Stderr, "scale: %dx%d: %d daemons started after %v\n", n, v, started, time.Since(setupStart).Round(time.Second))
			}
		}()
	}
	startG.Wait()
	if startErr != nil {
		return result{}, startErr
	}
	if batchJoin {
		// Every daemon in one ring version: each builds one new ring,
		// not one per daemon joining before it.
		spec, err := admin.Ring(ctx)
		if err != nil {
			return result{}, err
		}
		if len(spec.Members) == 0 && spec.Format == 0 {
			spec.Format = torus.RingFormatCurrent
		}
		spec.Version++
		for _, s := range servers {
			spec.Members = append(spec.Members, torus.NewRingMember(s.ID(), torus.Location{}, 1<<30))
		}
		if err := admin.SetRing(ctx, spec); err != nil {
			return result{}, fmt.Errorf("batch join: %w", err)
		}
	}
	setup := time.Since(setupStart)
	ring, err := admin.Ring(ctx)
	if err != nil {
		return result{}, err
	}
	if len(ring.Members) != n {
		return result{}, fmt.Errorf("the ring has %d members after the setup, want %d", len(ring.Members), n)
	}
	fmt.Fprintf(os.Stderr, "scale: %dx%d: %d daemons in the ring after %v, %d ring versions\n", n, v, n, setup.Round(time.Second), ring.Version-1)
	settled, steady, err := settleDown(settle, maxSettle, sample)
	if err != nil {
		return result{}, err
	}
	if !steady {
		fmt.Fprintf(os.Stderr, "scale: %dx%d: the etcd request rate was not steady after %v (-max-settle); counting anyway\n", n, v, settled.Round(time.Second))
	}

	e0, err := etcdCounts()
	if err != nil {
		return result{}, err
	}
	p0 := peerCounts(proxies)
	c0 := cpuTime()
	start := time.Now()
	time.Sleep(window)
	e1, err := etcdCounts()
	if err != nil {
		return result{}, err
	}
	p1 := peerCounts(proxies)
	c1 := cpuTime()
	mins := time.Since(start).Minutes()
	per := func(d float64) float64 { return d / float64(n) / mins }

	r := result{Daemons: n, Volumes: v, EtcdByMethod: map[string]float64{}, PeerByOp: map[string]float64{}, Window: window, Settled: settled, Steady: steady, Setup: setup,
		RingVersions: ring.Version - 1, Join: map[bool]string{true: "batch", false: "auto"}[batchJoin]}
	for k, c := range e1 {
		if d := c - e0[k]; d > 0 {
			r.EtcdByMethod[k] = per(d)
			r.EtcdPerMin += per(d)
		}
	}
	for k, c := range p1 {
		if d := float64(c - p0[k]); d > 0 {
			r.PeerByOp[k] = per(d)
			r.PeerPerMin += per(d)
		}
	}
	r.CPUPerDaemon = per((c1 - c0).Seconds())
	return r, nil
}

// settleDown waits at least least, then until the etcd request rates of
// two consecutive samples (each sample long) differ by at most 10 % (the
// start-up reads are over), at most most (which must exceed least: the
// rate is always checked). It returns how long it waited and whether the
// rate was steady.
func settleDown(least, most, sample time.Duration) (time.Duration, bool, error) {
	start := time.Now()
	time.Sleep(least)
	total := func() (float64, error) {
		m, err := etcdCounts()
		var t float64
		for _, c := range m {
			t += c
		}
		return t, err
	}
	prev := -1.0
	last, err := total()
	if err != nil {
		return 0, false, err
	}
	for {
		time.Sleep(sample)
		now, err := total()
		if err != nil {
			return 0, false, err
		}
		rate := now - last
		last = now
		if prev >= 0 && math.Abs(rate-prev) <= 0.1*math.Max(rate, prev) {
			return time.Since(start), true, nil
		}
		prev = rate
		if time.Since(start)+sample > most {
			return time.Since(start), false, nil
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// etcdCounts reads the embedded etcd's gRPC server counters (registered
// in the default Prometheus registry): unary calls handled and stream
// messages received, by method.
func etcdCounts() (map[string]float64, error) {
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		name := mf.GetName()
		unary := name == "grpc_server_handled_total"
		stream := name == "grpc_server_msg_received_total"
		if !unary && !stream {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			isUnary := labels["grpc_type"] == "unary"
			if unary != isUnary {
				continue // unary calls from handled, streams from messages
			}
			out[labels["grpc_method"]] += m.GetCounter().GetValue()
		}
	}
	return out, nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// proxy forwards TCP to a daemon's peer port and counts the request frames
// (docs/design/peer-protocol.md: a 24-byte header, op at byte 5, body
// length at byte 16, little-endian) by op.
type proxy struct {
	ln     net.Listener
	target string
	counts [16]atomic.Int64
	mu     sync.Mutex
	conns  []net.Conn
}

func newProxy(target string) (*proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &proxy{ln: ln, target: target}
	go p.serve()
	return p, nil
}

func (p *proxy) Addr() string { return p.ln.Addr().String() }

func (p *proxy) setTarget(addr string) {
	p.mu.Lock()
	p.target = addr
	p.mu.Unlock()
}

func (p *proxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.handle(c)
	}
}

func (p *proxy) handle(c net.Conn) {
	p.mu.Lock()
	target := p.target
	p.mu.Unlock()
	d, err := net.Dial("tcp", target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, d)
	p.mu.Unlock()
	go func() { io.Copy(c, d); c.Close() }()
	defer d.Close()
	defer c.Close()
	r := bufio.NewReader(c)
	hdr := make([]byte, 24)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			return
		}
		op := hdr[5]
		n := binary.LittleEndian.Uint32(hdr[16:20])
		p.counts[op&15].Add(1)
		if _, err := d.Write(hdr); err != nil {
			return
		}
		if _, err := io.CopyN(d, r, int64(n)); err != nil {
			return
		}
	}
}

var opNames = map[int]string{1: "Append", 2: "Sync", 3: "ReadAt", 4: "Stat", 5: "List", 6: "Delete", 7: "Fence", 8: "Usage"}

func peerCounts(ps []*proxy) map[string]int64 {
	out := map[string]int64{}
	for _, p := range ps {
		for op := range p.counts {
			if c := p.counts[op].Load(); c > 0 {
				name := opNames[op]
				if name == "" {
					name = fmt.Sprint("op", op)
				}
				out[name] += c
			}
		}
	}
	return out
}

func printTable(w io.Writer, before, after []result, ref string) {
	key := func(r result) string { return fmt.Sprintf("%dx%d", r.Daemons, r.Volumes) }
	base := map[string]result{}
	for _, r := range before {
		base[key(r)] = r
	}
	fmt.Fprintln(w, "Idle cluster, per daemon per minute (etcd: server gRPC calls + stream messages; peer: request frames; CPU: process CPU s ÷ daemons, etcd included)")
	fmt.Fprintln(w)
	if ref != "" {
		fmt.Fprintf(w, "| daemons × volumes | etcd req (%s) | etcd req | ratio | peer RPC (%s) | peer RPC | CPU s (%s) | CPU s |\n", ref, ref, ref)
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	} else {
		fmt.Fprintln(w, "| daemons × volumes | etcd req | peer RPC | CPU s |")
		fmt.Fprintln(w, "|---|---|---|---|")
	}
	for _, r := range after {
		if ref == "" {
			fmt.Fprintf(w, "| %d × %d | %.0f | %.0f | %.2f |\n", r.Daemons, r.Volumes, r.EtcdPerMin, r.PeerPerMin, r.CPUPerDaemon)
			continue
		}
		b, ok := base[key(r)]
		if !ok {
			fmt.Fprintf(w, "| %d × %d | – | %.0f | – | – | %.0f | – | %.2f |\n", r.Daemons, r.Volumes, r.EtcdPerMin, r.PeerPerMin, r.CPUPerDaemon)
			continue
		}
		ratio := "–"
		if r.EtcdPerMin > 0 {
			ratio = fmt.Sprintf("%.1f×", b.EtcdPerMin/r.EtcdPerMin)
		}
		fmt.Fprintf(w, "| %d × %d | %.0f | %.0f | %s | %.0f | %.0f | %.2f | %.2f |\n", r.Daemons, r.Volumes,
			b.EtcdPerMin, r.EtcdPerMin, ratio, b.PeerPerMin, r.PeerPerMin, b.CPUPerDaemon, r.CPUPerDaemon)
	}
	fmt.Fprintln(w)
	for _, r := range after {
		steady := ""
		if !r.Steady {
			steady = " (not steady: -max-settle reached)"
		}
		fmt.Fprintf(w, "this tree %dx%d: join %s, setup %v (%d ring versions), settled after %v%s; ", r.Daemons, r.Volumes, r.Join, r.Setup.Round(time.Second), r.RingVersions, r.Settled.Round(time.Second), steady)
	}
	fmt.Fprintln(w)
	for _, set := range []struct {
		name string
		rs   []result
	}{{ref, before}, {"this tree", after}} {
		for _, r := range set.rs {
			fmt.Fprintf(w, "%s %dx%d etcd by method: %s; peer by op: %s\n", set.name, r.Daemons, r.Volumes, fmtMap(r.EtcdByMethod), fmtMap(r.PeerByOp))
		}
	}
}

func fmtMap(m map[string]float64) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %.1f", k, m[k])
	}
	return b.String()
}
