package life

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/proccluster"
)

// robustnessDuration is how long the fault loop runs: short in `make
// test`, long under TORUS_ROBUSTNESS=long (`make robustness`);
// TORUS_ROBUSTNESS_DURATION overrides both.
func robustnessDuration(t *testing.T) time.Duration {
	if s := os.Getenv("TORUS_ROBUSTNESS_DURATION"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("TORUS_ROBUSTNESS_DURATION=%q: %v", s, err)
		}
		return d
	}
	if os.Getenv("TORUS_ROBUSTNESS") == "long" {
		return 10 * time.Minute
	}
	return 30 * time.Second
}

// faultKind is a kind of fault the robustness run injects: its name (the
// key in robust.counts) and the draw (0..99) that selects it.
type faultKind struct {
	name string
	x    int
}

// robust is the state of one robustness run.
type robust struct {
	t      *testing.T
	c      *proccluster.Cluster
	rng    *rand.Rand
	m      *model
	w      *workload
	host   *proccluster.Host // nil when network namespaces are unavailable
	writer *proccluster.Proc
	addr   string
	nc     *nbdClient
	vol    string
	blocks int64
	trace  []string
	start  time.Time
	counts map[string]int
	etcdUp bool
	cut    bool
	repl   int
	seed   int64
}

func (r *robust) logf(format string, args ...any) {
	s := fmt.Sprintf("%8.3fs ", time.Since(r.start).Seconds()) + fmt.Sprintf(format, args...)
	r.trace = append(r.trace, s)
	if testing.Verbose() {
		r.t.Log(s)
	}
}

func (r *robust) fatalf(format string, args ...any) {
	r.t.Helper()
	tail := r.trace
	if len(tail) > 60 {
		tail = tail[len(tail)-60:]
	}
	r.t.Fatalf("%s\nlast operations:\n%s\n(seed %d: replay with TORUS_SEED=%d)", fmt.Sprintf(format, args...), strings.Join(tail, "\n"), r.seed, r.seed)
}

func (r *robust) dial() func(string) (net.Conn, error) {
	if r.host == nil {
		return nil
	}
	return r.host.Dial
}

// newWriter starts a fresh torusblk (on the writer's host) and attaches,
// forcing the previous lock away; it then verifies everything and takes
// the recovered contents as the new truth.
func (r *robust) newWriter(why string) {
	r.t.Helper()
	if r.nc != nil {
		r.nc.Abort()
	}
	if r.writer != nil {
		r.writer.Kill(r.t)
	}
	if out, err := r.c.CtlErr("volume", "unlock", r.vol, "--force"); err != nil {
		r.logf("unlock --force: %v: %s", err, strings.TrimSpace(out))
	}
	if r.host != nil {
		r.writer, r.addr = r.c.StartNBDOn(r.host)
	} else {
		r.writer, r.addr = r.c.StartNBD()
	}
	deadline := time.Now().Add(writerLeaseTTL + 30*time.Second)
	began := time.Now()
	for {
		nc, err := tryAttach(r.dial(), r.addr, r.vol)
		if err == nil {
			r.nc = nc
			if d := time.Since(began); d > 5*time.Second {
				r.logf("attaching took %v", d.Round(time.Millisecond))
			}
			break
		}
		if time.Since(began) > 5*time.Second && r.counts["attach retries logged"] < 20 {
			r.counts["attach retries logged"]++
			r.logf("attach: %v", err)
		}
		if time.Now().After(deadline) {
			r.fatalf("new writer (%s) cannot attach: %v", why, err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	ids, err := verify(r.nc, r.m)
	if err != nil {
		r.fatalf("after new writer (%s): %v", why, err)
	}
	r.counts["full verify"]++
	r.m.settle(0, ids)
	r.logf("new writer %s attached and verified (%s)", r.writer.Name, why)
}

// healFaults ends the partition, starts etcd and every daemon, and waits
// until they are ready.
func (r *robust) healFaults() {
	r.t.Helper()
	if r.cut {
		r.host.Heal()
		r.cut = false
		r.logf("heal partition")
	}
	if !r.etcdUp {
		r.c.Etcd.Start(r.t)
		r.etcdUp = true
		r.logf("start etcd")
	}
	for i, d := range r.c.Daemons {
		if !d.Running() {
			d.Start(r.t)
			r.logf("restart daemon %d", i)
		}
	}
	r.c.WaitHTTP(r.c.EtcdURL+"/health", 30*time.Second)
	for i, d := range r.c.Daemons {
		// Not ready is a liveness bug, reported without stopping the run:
		// the data checks go on.
		if took, ok, last := poll(30*time.Second, 200*time.Millisecond, func() (bool, string) { return ready(d.HTTPAddr) }); !ok {
			r.counts["daemon not ready after healing"]++
			r.logf("daemon %d not ready %v after every fault healed: %s", i, took.Round(time.Millisecond), last)
			r.t.Errorf("daemon %d not ready %v after every fault healed (readyz: %s)", i, took.Round(time.Millisecond), last)
		}
	}
}

// recover heals every fault and requires a write and a flush to succeed
// on the same writer within 20 s. A writer that stays stuck (its writes or
// flushes keep failing, its connection broke, its process died) fails the
// run: it is never replaced to hide the problem. Only a writer the run
// itself killed is replaced (newWriter), and one that fenced itself because
// its etcd lease was lost: cut from etcd (a partition, an etcd restart) for
// its lease TTL without a successful keepalive, fencing is the designed
// outcome (docs/design/data-path.md, Crash cases), counted and logged.
func (r *robust) recover() {
	r.t.Helper()
	r.healFaults()
	began := time.Now()
	deadline := began.Add(20 * time.Second)
	for {
		if r.nc.broken != nil {
			r.fatalf("writer stuck: its NBD connection broke (%v; torusblk running: %v); its last warnings:\n%s",
				r.nc.broken, r.writer.Running(), lastWarnings(r.writer.Output(), 8))
		}
		err := r.w.step(r.nc)
		if err == nil {
			err = r.w.doFlush(r.nc)
		}
		if err == nil {
			if d := time.Since(began); d > 5*time.Second {
				r.logf("writer recovered %v after every fault healed", d.Round(time.Millisecond))
			}
			return
		}
		if strings.Contains(err.Error(), "EIO") && strings.Contains(r.writer.Output(), `msg="writer fenced" `) &&
			strings.Contains(r.writer.Output(), `cause="session lost"`) {
			r.counts["writer fenced by lease loss"]++
			r.logf("writer fenced itself after losing its etcd lease: replaced")
			r.newWriter("after lease loss")
			return
		}
		if time.Now().After(deadline) {
			r.fatalf("writer stuck: no successful write+flush within 20 s after every fault healed: %v; its last warnings:\n%s",
				err, lastWarnings(r.writer.Output(), 8))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// TestRobustness runs random writes, flushes, partial reads and faults
// (replica SIGKILL and restart, writer SIGKILL and takeover, etcd restart,
// short partitions of the writer's host, ring changes: a daemon joining,
// the replication factor toggling between 2 and 3) against a 3-daemon cluster,
// checking every read against the model. TORUS_SEED replays the sequence of
// operations (timing still varies).
//
// The volume has the default policy (min-replicas = the replication
// factor). Every fault kind the run claims is made to happen at least once
// (the first faults go through every kind in a seeded order) and the run
// fails if one never did; a writer that stays stuck after every fault
// healed fails it too.
func TestRobustness(t *testing.T) {
	sd := seed(t)
	dur := robustnessDuration(t)
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2})
	r := &robust{t: t, c: c, rng: rand.New(rand.NewPCG(uint64(sd), 7)), vol: "rb", blocks: 4096,
		start: time.Now(), counts: map[string]int{}, etcdUp: true, repl: 2, seed: sd}
	createVolume(t, c, r.vol, "16MiB", 0)
	r.m = newModel(sd, r.blocks)
	r.w = newWorkload(r.m, uint64(sd), "robustness")
	r.w.maxN = 32
	if h, err := c.TryNewHost(); err == nil {
		r.host = h
	} else if os.Getenv("TORUS_REQUIRE_TOOLS") == "1" {
		t.Fatalf("network namespaces unavailable, so no partitions (TORUS_REQUIRE_TOOLS=1): %v", err)
	} else {
		t.Logf("partitions disabled: %v", err)
	}
	// The fault kinds this run claims, each with the draw that selects it
	// below; pending are those that have not happened yet, tried first.
	kinds := []faultKind{{"kill daemon", 0}, {"kill writer", 40}, {"etcd restart", 55}, {"ring: add daemon", 70},
		{"ring: set replication", 70}, {"partition", 78}, {"recover", 85}}
	if r.host == nil {
		kinds = slices.DeleteFunc(kinds, func(k faultKind) bool {
			return k.name == "partition"
		})
	}
	pending := slices.Clone(kinds)
	r.rng.Shuffle(len(pending), func(i, j int) { pending[i], pending[j] = pending[j], pending[i] })
	r.newWriter("first")
	t.Logf("robustness run of %v (seed %d)", dur, sd)
	end := time.Now().Add(dur)
	ops := 0
	// Faults come every 1.5-4 s; each is undone after a random while
	// (undo), unless recover() heals everything first.
	nextFault := time.Now().Add(time.Second)
	type undo struct {
		at   time.Time
		what string
		do   func()
	}
	var undos []undo
	lastErr, repeats := "", 0
	ioErr := func(err error) {
		msg := reqPrefix.ReplaceAllString(err.Error(), "")
		if msg == lastErr {
			repeats++
			return
		}
		if repeats > 0 {
			r.logf("(%d more: %s)", repeats, lastErr)
		}
		lastErr, repeats = msg, 0
		r.logf("I/O: %v", err)
		time.Sleep(20 * time.Millisecond)
	}
	runUndos := func() {
		now := time.Now()
		for i := 0; i < len(undos); i++ {
			if now.After(undos[i].at) {
				r.logf("%s", undos[i].what)
				undos[i].do()
				undos = append(undos[:i], undos[i+1:]...)
				i--
			}
		}
	}
	// runIO runs one request in a goroutine while this goroutine keeps
	// undoing faults on time (a write stuck in a partition must not
	// stretch the partition). io must not touch t.
	runIO := func(io func() error) error {
		done := make(chan error, 1)
		go func() { done <- io() }()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case err := <-done:
				return err
			case <-tick.C:
				runUndos()
			}
		}
	}
	// The run goes on past its duration (for at most 90 s) until every
	// fault kind happened.
	for time.Now().Before(end) || (len(pending) > 0 && time.Now().Before(end.Add(90*time.Second))) {
		pending = slices.DeleteFunc(pending, func(k faultKind) bool {
			return r.counts[k.name] > 0
		})
		ops++
		now := time.Now()
		runUndos()
		if now.After(nextFault) {
			nextFault = now.Add(1500*time.Millisecond + time.Duration(r.rng.Int64N(int64(2500*time.Millisecond))))
			hold := time.Second + time.Duration(r.rng.Int64N(int64(4*time.Second)))
			x := r.rng.IntN(100)
			if len(pending) > 0 {
				x = pending[0].x
				// A kind that cannot happen now (etcd already down, a
				// daemon already dead) goes to the back of the queue.
				pending = append(pending[1:], pending[0])
			}
			switch {
			case x < 40:
				i := r.rng.IntN(len(c.Daemons))
				d := c.Daemons[i]
				running := 0
				for _, d := range c.Daemons {
					if d.Running() {
						running++
					}
				}
				if d.Running() && running == len(c.Daemons) {
					r.counts["kill daemon"]++
					r.logf("SIGKILL daemon %d (restart in %v)", i, hold.Round(time.Millisecond))
					d.Kill(t)
					undos = append(undos, undo{now.Add(hold), fmt.Sprintf("restart daemon %d", i), func() {
						if !d.Running() {
							d.Start(t)
						}
					}})
				}
			case x < 55:
				r.counts["kill writer"]++
				r.logf("SIGKILL writer %s", r.writer.Name)
				r.writer.Kill(t)
				r.healFaults()
				undos = nil
				r.newWriter("after writer SIGKILL")
			case x < 70:
				if r.etcdUp {
					r.counts["etcd restart"]++
					r.logf("SIGKILL etcd (restart in %v)", hold.Round(time.Millisecond))
					c.Etcd.Kill(t)
					r.etcdUp = false
					undos = append(undos, undo{now.Add(hold), "start etcd", func() {
						if !r.etcdUp {
							c.Etcd.Start(t)
							r.etcdUp = true
						}
					}})
				}
			case x < 78:
				// Ring change: a fourth daemon joins, then the replication
				// factor toggles between 2 and 3.
				if len(c.Daemons) == 3 {
					r.counts["ring: add daemon"]++
					d := c.AddDaemon(c.Opts)
					if r.host != nil {
						r.host.Link(t, d.PeerAddr)
					}
					r.logf("ring change: daemon %d (%s) joins", len(c.Daemons)-1, d.PeerAddr)
				} else {
					n := "3"
					if r.repl == 3 {
						n = "2"
					}
					out, err := c.CtlErr("ring", "set-replication", n)
					if err == nil {
						r.repl = int(n[0] - '0')
						r.counts["ring: set replication"]++
					}
					r.logf("ring change: replication %s: %v %s", n, err, strings.TrimSpace(out))
				}
			case x < 85:
				if r.host != nil && !r.cut {
					r.counts["partition"]++
					r.logf("cut the writer's host off (heal in %v)", hold.Round(time.Millisecond))
					r.host.Cut()
					r.cut = true
					undos = append(undos, undo{now.Add(hold), "heal partition", func() {
						if r.cut {
							r.host.Heal()
							r.cut = false
						}
					}})
				}
			default:
				r.counts["recover"]++
				r.recover()
				undos = nil
				r.logf("recovered: all faults healed, write+flush ok")
			}
			continue
		}
		switch x := r.rng.IntN(100); {
		case x < 80:
			r.counts["write"]++
			if err := runIO(func() error { return r.w.step(r.nc) }); err != nil {
				ioErr(err)
			}
		case x < 90:
			r.counts["flush"]++
			if err := runIO(func() error { return r.w.doFlush(r.nc) }); err != nil {
				ioErr(err)
			}
		default:
			r.counts["read"]++
			n := 1 + r.rng.Int64N(64)
			first := r.rng.Int64N(r.blocks - n + 1)
			p := make([]byte, n*blockSize)
			if err := runIO(func() error { return r.nc.ReadAt(p, first*blockSize) }); err != nil {
				ioErr(err)
				break
			}
			if _, bad := r.m.check(first, p); len(bad) > 0 {
				r.fatalf("read of blocks [%d,%d) differs from the model:\n%s", first, first+n, formatMismatches(bad, 20))
			}
		}
		if r.nc.broken != nil {
			r.logf("writer connection broken (%v): recovering", r.nc.broken)
			r.recover()
			undos = nil
		}
	}
	// Final: everything healed, every daemon back, full verification
	// through the writer and through a fresh one.
	r.recover()
	if _, err := verify(r.nc, r.m); err != nil {
		r.fatalf("final verification: %v", err)
	}
	r.newWriter("final check")
	for _, k := range kinds {
		if r.counts[k.name] == 0 {
			t.Errorf("fault kind %q is claimed but never happened in this run of %v (seed %d; counts %v)", k.name, time.Since(r.start).Round(time.Second), sd, r.counts)
		}
	}
	d, u, f, _ := r.m.stats()
	t.Logf("FIGURE robustness run: %v of faults, %d operations (%v); workload %s; model: %d writes flushed, %d unflushed, %d failed; verified in full %d times",
		dur, ops, r.counts, r.w.summary(), d, u, f, r.counts["full verify"])
}

// lastWarnings returns the last n Warn or Error lines of a process log.
func lastWarnings(out string, n int) string {
	var keep []string
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") || strings.Contains(line, "request failed") {
			if len(line) > 400 {
				line = line[:400] + "..."
			}
			keep = append(keep, "    "+line)
		}
	}
	if len(keep) > n {
		keep = keep[len(keep)-n:]
	}
	return strings.Join(keep, "\n")
}
