package life

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testutil"
	metaetcd "github.com/torus-storage/torus/metadata/etcd"
	"github.com/torus-storage/torus/peer"
)

// Replica-side network faults (issue 8): one replica's links blackholed,
// slowed or reset mid-write, an asymmetric partition, a daemon cut from
// etcd, and a writer whose etcd replies arrive after its request timeout.
// Each runs the default policy (min-replicas = replication = 2) over three
// daemons, with one client writing 64 KiB blocks and FLUSHing every 8
// writes through torusblk (flushIO), and checks every flushed block at the
// end through the writer and through a fresh one.

// flushIO is one NBD client writing 64 KiB blocks at random and FLUSHing
// every flushIOEvery writes, and a second connection to the same export
// (the server shares the volume between connections: NBD multi-conn) that
// only FLUSHes, every 250 ms: the probe, which measures how long a FLUSH
// takes at any moment, also while the writing client is stuck in a write.
// Every write and FLUSH is recorded with the phase of the test it
// completed in.
type flushIO struct {
	nc, probe *nbdClient
	m         *model

	mu      sync.Mutex
	phase   string
	phases  []string // in order of first use
	flushes []ioRec
	writes  []ioRec
	probes  []ioRec
	cancel  context.CancelFunc
	done    chan struct{}
}

type ioRec struct {
	phase string
	at    time.Time
	took  time.Duration
	err   error
}

const (
	flushIOPer   = 16 // blocks per write: 64 KiB
	flushIOEvery = 8  // writes per FLUSH
)

// startFlushIO starts the client on nc and the probe on probe (nil: no
// probe); phase names the first phase.
func startFlushIO(nc, probe *nbdClient, m *model, phase string) *flushIO {
	ctx, cancel := context.WithCancel(context.Background())
	f := &flushIO{nc: nc, probe: probe, m: m, phase: phase, phases: []string{phase}, cancel: cancel, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(uint64(m.seed), 0x6e6574))
		for i := 0; ctx.Err() == nil && nc.broken == nil; i++ {
			first := rng.Int64N(m.blocks/flushIOPer) * flushIOPer
			id, p := m.newWrite(first, flushIOPer, "64 KiB writer at "+time.Now().Format("15:04:05.000"), false)
			s := time.Now()
			err := nc.WriteAt(p, first*blockSize, false)
			m.done(id, err)
			f.record(&f.writes, s, err)
			if (i+1)%flushIOEvery != 0 {
				continue
			}
			s = time.Now()
			err = nc.Flush()
			if err == nil {
				m.flushed()
			}
			f.record(&f.flushes, s, err)
		}
	}()
	if probe != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && probe.broken == nil {
				// Not m.flushed(): writes completing while the probe
				// runs would be counted durable without being covered.
				s := time.Now()
				err := probe.Flush()
				f.record(&f.probes, s, err)
				select {
				case <-ctx.Done():
				case <-time.After(250 * time.Millisecond):
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		close(f.done)
	}()
	return f
}

// record appends the outcome of a request issued at s, labelled with the
// phase it completed in.
func (f *flushIO) record(to *[]ioRec, s time.Time, err error) {
	f.mu.Lock()
	*to = append(*to, ioRec{phase: f.phase, at: s, took: time.Since(s), err: err})
	f.mu.Unlock()
}

// setPhase labels what completes from now on.
func (f *flushIO) setPhase(p string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.phase = p
	if !containsString(f.phases, p) {
		f.phases = append(f.phases, p)
	}
}

// stop ends the client loops and waits for them. Idempotent.
func (f *flushIO) stop() {
	f.cancel()
	<-f.done
}

func (f *flushIO) counts() (writes, flushes int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.writes), len(f.flushes)
}

// report logs a FIGURE line per phase (and the whole run) with the
// latencies of the successful FLUSHes (p50/p99/max) of the writing client
// and of the probe, and the slowest write. It returns every failed write
// and FLUSH, and the slowest successful FLUSH or write.
func (f *flushIO) report(t *testing.T, what string) (failed []string, slowest time.Duration) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	stat := func(rs []ioRec, ph string) (ok []time.Duration, n, nfail int) {
		for _, r := range rs {
			if ph != "" && r.phase != ph {
				continue
			}
			n++
			if r.err != nil {
				nfail++
				continue
			}
			ok = append(ok, r.took)
		}
		return
	}
	for _, ph := range append(append([]string(nil), f.phases...), "") {
		name := ph
		if ph == "" {
			name = "whole run"
		}
		fl, nf, ff := stat(f.flushes, ph)
		pr, np, fp := stat(f.probes, ph)
		wr, nw, fw := stat(f.writes, ph)
		_, _, _, sf := latencySummary(fl)
		_, _, _, sp := latencySummary(pr)
		_, _, wmax, _ := latencySummary(wr)
		t.Logf("FIGURE %s, %s: FLUSH latency %s (%d of %d failed); probe FLUSH latency %s (%d of %d failed); slowest write %v (%d writes of 64 KiB, %d failed)",
			what, name, sf, ff, nf, sp, fp, np, wmax.Round(time.Millisecond), nw, fw)
	}
	for _, set := range []struct {
		what string
		rs   []ioRec
	}{{"FLUSH", f.flushes}, {"probe FLUSH", f.probes}, {"write", f.writes}} {
		for _, r := range set.rs {
			if r.err == nil {
				slowest = max(slowest, r.took)
			} else {
				failed = append(failed, fmt.Sprintf("%s %s (%s, after %v): %v", set.what, r.at.Format("15:04:05.000"), r.phase, r.took.Round(time.Millisecond), r.err))
			}
		}
	}
	sort.Strings(failed)
	return failed, slowest
}

// latencySummary is "n=…, p50 …, p99 …, max …" of ds.
func latencySummary(ds []time.Duration) (p50, p99, mx time.Duration, s string) {
	if len(ds) == 0 {
		return 0, 0, 0, "n=0"
	}
	d := append([]time.Duration(nil), ds...)
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	at := func(q float64) time.Duration { return d[min(len(d)-1, int(q*float64(len(d))))] }
	p50, p99, mx = at(0.50), at(0.99), d[len(d)-1]
	return p50, p99, mx, fmt.Sprintf("n=%d p50 %v p99 %v max %v", len(d), p50.Round(time.Millisecond), p99.Round(time.Millisecond), mx.Round(time.Millisecond))
}

func containsString(s []string, x string) bool {
	for _, y := range s {
		if y == x {
			return true
		}
	}
	return false
}

// finishFlushIO stops the client, reports, fails the test on any failed
// write or FLUSH, FLUSHes once more and verifies every flushed block
// through the writer; then the writer detaches and a fresh one (at addr,
// dialed through h when set) verifies again.
func finishFlushIO(t *testing.T, c *proccluster.Cluster, h *proccluster.Host, f *flushIO, addr, vol, what string) time.Duration {
	t.Helper()
	f.stop()
	if f.probe != nil {
		f.probe.Close()
	}
	failed, slowest := f.report(t, what)
	if len(failed) > 0 {
		t.Errorf("%d writes or FLUSHes failed (%s); first ones:\n%s", len(failed), what, strings.Join(failed[:min(10, len(failed))], "\n"))
	}
	nc := f.nc
	if nc.broken != nil {
		t.Fatalf("the NBD connection broke: %v", nc.broken)
	}
	if err := nc.Flush(); err != nil {
		t.Errorf("FLUSH after the fault: %v", err)
	} else {
		f.m.flushed()
	}
	mustVerify(t, nc, f.m, what+": through the writer")
	nc.Close()
	nc2 := reattach(t, c, h, addr, vol, f.m.blocks*blockSize, 30*time.Second)
	mustVerify(t, nc2, f.m, what+": through a fresh writer")
	return slowest
}

// openHolders returns the daemons that hold the volume's open segment,
// asked over the peer protocol at their listen addresses (behind any
// proxy, so a faulted link does not hide them). It waits up to 10 s for
// the open segment to have at least one holder.
func openHolders(t *testing.T, c *proccluster.Cluster, md *metaetcd.Store, vol string) (torus.SegmentID, []int) {
	t.Helper()
	var open torus.SegmentID
	var holders []int
	eventually(t, 10*time.Second, 100*time.Millisecond, "the open segment of "+vol+" has holders", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		vi, err := md.Volume(ctx, vol)
		if err != nil {
			return false, err.Error()
		}
		head, err := md.Head(ctx, vol)
		if err != nil {
			return false, err.Error()
		}
		if head.Open == nil {
			return false, "no open segment"
		}
		open, holders = *head.Open, nil
		for i, d := range c.Daemons {
			if !d.Running() {
				continue
			}
			pc, err := peer.Dial(ctx, d.ListenAddr, peer.ClientConfig{DialTimeout: 2 * time.Second, RequestTimeout: 3 * time.Second}, nil)
			if err != nil {
				continue
			}
			infos, err := pc.List(ctx, vi.ID)
			pc.Close()
			if err != nil {
				continue
			}
			for _, si := range infos {
				if si.ID == open {
					holders = append(holders, i)
				}
			}
		}
		return len(holders) > 0, fmt.Sprintf("open %v held by %v", open, holders)
	})
	return open, holders
}

// openReplica picks a daemon holding the open segment: the replica whose
// fault the writer meets at once.
func openReplica(t *testing.T, c *proccluster.Cluster, md *metaetcd.Store, vol string) int {
	t.Helper()
	open, holders := openHolders(t, c, md, vol)
	t.Logf("open segment %v is held by daemons %v; faulting daemon %d (%s)", open, holders, holders[0], c.Daemons[holders[0]].PeerAddr)
	return holders[0]
}

// verifyWithin is verify, giving up after d: it returns how many blocks
// it read and checked (all of them: m.blocks) and an error for the first
// chunk that differs from the model or failed.
func verifyWithin(nc *nbdClient, m *model, d time.Duration) (int64, error) {
	const chunk = 256
	start := time.Now()
	buf := make([]byte, chunk*blockSize)
	for b := int64(0); b < m.blocks; b += chunk {
		if time.Since(start) > d {
			return b, nil
		}
		n := min(chunk, m.blocks-b)
		p := buf[:n*blockSize]
		if err := nc.ReadAt(p, b*blockSize); err != nil {
			return b, fmt.Errorf("reading blocks [%d,%d): %w", b, b+n, err)
		}
		if _, bad := m.check(b, p); len(bad) > 0 {
			return b, fmt.Errorf("%d blocks differ from the model:\n%s", len(bad), formatMismatches(bad, 20))
		}
	}
	return m.blocks, nil
}

// logLines returns the lines of out containing every one of subs.
func logLines(out string, subs ...string) []string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		ok := true
		for _, s := range subs {
			if !strings.Contains(l, s) {
				ok = false
				break
			}
		}
		if ok && l != "" {
			keep = append(keep, l)
		}
	}
	return keep
}

// firstLines is at most n of ls, joined.
func firstLines(ls []string, n int) string {
	return strings.Join(ls[:min(n, len(ls))], "\n")
}

// TestReplicaBlackhole: every link into one replica of the open segment
// (from the writer and from the other daemons: the daemon advertises a
// proxy as its peer address, proccluster.Options.Links) is blackholed
// mid-write for 35 s, longer than any peer timeout of the writer: the proxy
// accepts connections and forwards nothing, as a pulled cable or a hung
// host does, while the replica keeps its etcd lease and so still shows
// up. No write and no FLUSH may fail; every flushed block must read back.
// The FLUSH latency during the blackhole is a FIGURE: how long the writer
// waits for a silent replica before it drops it is what bounds it (30 s
// until the writer gave up on a silent replica after 10 s).
func TestReplicaBlackhole(t *testing.T) {
	const vol = "bh"
	c, p, addr, f, victim := startLinkFault(t, vol, "before the blackhole")
	defer f.stop()
	link := c.Daemons[victim].PeerLink
	f.setPhase("during the blackhole")
	cut := time.Now()
	link.Blackhole()
	const cutFor = 35 * time.Second
	time.Sleep(cutFor)
	w, fl := f.counts()
	t.Logf("healing the link after %v; %d writes, %d FLUSHes so far", time.Since(cut).Round(time.Millisecond), w, fl)
	link.Heal()
	f.setPhase("after the heal")
	time.Sleep(5 * time.Second)
	slowest := finishFlushIO(t, c, nil, f, addr, vol, "replica blackholed 35 s (replication 2, min-replicas 2, 3 daemons)")
	if ls := logLines(p.Output(), "level=WARN"); len(ls) > 0 {
		t.Logf("writer warnings (%d), first ones:\n%s", len(ls), firstLines(ls, 8))
	}
	if slowest >= 5*time.Second {
		t.Logf("FINDING: the slowest write or FLUSH took %v: a blackholed replica (still up in etcd) stalls the volume until the writer gives up on it", slowest.Round(time.Millisecond))
	}
}

// TestReplicaSlow: every link into one replica of the open segment gets
// 200 ms of latency each way for 15 s (the proxy holds each byte, order
// kept). Writes and FLUSHes go on at the slow replica's pace; none fails
// and every flushed block reads back.
func TestReplicaSlow(t *testing.T) {
	const vol = "slow"
	c, _, addr, f, victim := startLinkFault(t, vol, "before the slowdown")
	defer f.stop()
	link := c.Daemons[victim].PeerLink
	f.setPhase("200 ms each way")
	link.SetDelay(200*time.Millisecond, 200*time.Millisecond)
	time.Sleep(15 * time.Second)
	w, fl := f.counts()
	up, down := link.Forwarded()
	t.Logf("link back to normal; %d writes, %d FLUSHes so far; %d/%d bytes through the slow link", w, fl, up, down)
	link.SetDelay(0, 0)
	f.setPhase("after the slowdown")
	time.Sleep(3 * time.Second)
	finishFlushIO(t, c, nil, f, addr, vol, "replica slowed by 200 ms each way (replication 2, min-replicas 2, 3 daemons)")
}

// TestReplicaReset: every connection into one replica of the open
// segment is reset (RST) every 300 ms for 6 s, new ones accepted in
// between; then, for 6 s more, the resets go round all three daemons (one
// every 300 ms), so every replica the writer may pick keeps failing and
// coming back (after its first failure the writer avoids a peer for 30 s
// unless it needs it to reach min-replicas, which it now does). No write
// and no FLUSH fails, and nothing flushed is lost.
func TestReplicaReset(t *testing.T) {
	const vol = "rst"
	c, p, addr, f, victim := startLinkFault(t, vol, "before the resets")
	defer f.stop()
	link := c.Daemons[victim].PeerLink
	f.setPhase("one replica reset every 300 ms")
	resets := 0
	for start := time.Now(); time.Since(start) < 6*time.Second; resets++ {
		link.Reset()
		time.Sleep(300 * time.Millisecond)
	}
	one := len(logLines(p.Output(), "replicas dropped from segment"))
	t.Logf("%d resets of every connection into daemon %d; the writer dropped a replica %d times", resets, victim, one)
	f.setPhase("every daemon in turn reset every 300 ms")
	resets = 0
	for start := time.Now(); time.Since(start) < 6*time.Second; resets++ {
		c.Daemons[(victim+resets)%len(c.Daemons)].PeerLink.Reset()
		time.Sleep(300 * time.Millisecond)
	}
	all := len(logLines(p.Output(), "replicas dropped from segment"))
	t.Logf("%d resets going round the daemons; the writer dropped a replica %d times more", resets, all-one)
	f.setPhase("after the resets")
	time.Sleep(5 * time.Second)
	finishFlushIO(t, c, nil, f, addr, vol, "replicas' connections reset every 300 ms (replication 2, min-replicas 2, 3 daemons)")
	if one == 0 {
		t.Errorf("the writer never dropped the reset replica: the resets did not reach the writer's links")
	}
	if all-one < 2 {
		t.Errorf("resets going round every daemon made the writer drop a replica only %d times", all-one)
	}
}

// TestAsymmetricPartition: the writer cannot reach one replica of the
// open segment, while that replica still reaches etcd (so it shows up)
// and the other daemons, and they reach it. torusblk runs on a host of
// its own (a network namespace, proccluster.Host) whose link to that
// daemon is blackholed (connections accepted, nothing forwarded) until
// the end. No write or FLUSH may fail. Then, the link still cut, every
// flushed block is read back through the writer, which must not take
// more than one peer timeout (30 s) in all for the 32 MiB; the writer
// detaches and a fresh writer on the same host must attach within 60 s;
// last, the link heals and a writer verifies everything again.
func TestAsymmetricPartition(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2})
	md := metaClient(t, c)
	const vol, blocks = "asym", 8192
	createVolume(t, c, vol, "32MiB", 0)
	host := c.NewHost()
	p, addr := c.StartNBDOn(host)
	nc := attach(t, host.Dial, addr, vol, blocks*blockSize)
	probe := attach(t, host.Dial, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)
	f := startFlushIO(nc, probe, m, "before the partition")
	defer f.stop()
	time.Sleep(3 * time.Second)

	victim := openReplica(t, c, md, vol)
	vd := c.Daemons[victim]
	link := host.Proxy(vd.PeerAddr)
	f.setPhase("writer cut from one replica")
	cut := time.Now()
	link.Blackhole()
	time.Sleep(32 * time.Second)
	ps, err := peerList(c)
	if err != nil {
		t.Fatal(err)
	}
	if pi, ok := peerByAddr(ps, vd.PeerAddr); !ok || pi.State != torus.PeerUp {
		t.Errorf("the partitioned daemon is %v in the peer list (found %v), want up: it still reaches etcd", pi.State, ok)
	}
	t.Logf("after %v of the partition: %s", time.Since(cut).Round(time.Millisecond), peerStates(ps))
	const what = "writer cut from one replica that still reaches etcd and the daemons (replication 2, min-replicas 2, 3 daemons)"
	f.stop()
	probe.Close()
	failed, _ := f.report(t, what)
	if len(failed) > 0 {
		t.Errorf("%d writes or FLUSHes failed (%s); first ones:\n%s", len(failed), what, strings.Join(failed[:min(10, len(failed))], "\n"))
	}
	if err := nc.Flush(); err != nil {
		t.Fatalf("FLUSH after the writes: %v", err)
	}
	m.flushed()

	start := time.Now()
	read, err := verifyWithin(nc, m, 40*time.Second)
	readTook := time.Since(start)
	if err != nil {
		t.Fatalf("through the writer, link still cut: %v", err)
	}
	stalls := logLines(p.Output(), "read failed; trying next replica")
	t.Logf("FIGURE reading back through the writer while it cannot reach one replica (shown up): %d of %d blocks in %v; %d replica reads failed over",
		read, m.blocks, readTook.Round(time.Millisecond), len(stalls))
	if read < m.blocks {
		t.Errorf("reading the volume back through the writer, one replica unreachable but shown up: only %d of %d blocks (1 MiB NBD reads) in %v: reads try that replica again and again and wait for it (%d failovers), the writer does not remember it cannot reach it; e.g.\n%s",
			read, m.blocks, readTook.Round(time.Millisecond), len(stalls), firstLines(stalls, 3))
	}

	nc.Close()
	start = time.Now()
	var nc2 *nbdClient
	var lastErr error
	took, ok, _ := poll(60*time.Second, 200*time.Millisecond, func() (bool, string) {
		nc2, lastErr = tryAttach(host.Dial, addr, vol)
		return lastErr == nil, fmt.Sprint(lastErr)
	})
	t.Logf("FIGURE a fresh writer that cannot reach one ring member (shown up) attached: %v after %v (%v)", ok, took.Round(time.Millisecond), lastErr)
	if !ok {
		ls := logLines(p.Output(), "option refused")
		t.Errorf("a fresh writer on the partitioned host could not attach within 60 s: %v; torusblk:\n%s", lastErr, firstLines(ls, 3))
	} else {
		t.Cleanup(func() { nc2.Abort() })
		mustVerify(t, nc2, m, "through a fresh writer, link still cut")
		nc2.Close()
	}
	link.Heal()
	nc3 := reattach(t, c, host, addr, vol, blocks*blockSize, 90*time.Second)
	mustVerify(t, nc3, m, "through a fresh writer after the link healed")
}

// TestDaemonCutFromEtcd: one replica of the open segment loses etcd (its
// etcd link blackholed, proccluster.Options.Links) but still serves its
// peers. Its liveness lease expires and it shows down within the
// heartbeat TTL; the writer goes on without a failed write or FLUSH.
// After 10 s the link returns and the daemon rejoins: shown up and
// stably ready again. Every flushed block reads back, through the writer
// and a fresh one.
func TestDaemonCutFromEtcd(t *testing.T) {
	const vol = "dce"
	c, _, addr, f, victim := startLinkFault(t, vol, "before the cut")
	defer f.stop()
	vd := c.Daemons[victim]
	f.setPhase("daemon cut from etcd")
	up0, _ := vd.PeerLink.Forwarded()
	cut := time.Now()
	vd.EtcdLink.Blackhole()
	downIn, ok, last := poll(3*heartbeatTTL, 50*time.Millisecond, func() (bool, string) {
		ps, err := peerList(c)
		if err != nil {
			return false, err.Error()
		}
		p, found := peerByAddr(ps, vd.PeerAddr)
		return found && p.State == torus.PeerDown, peerStates(ps)
	})
	if !ok {
		t.Errorf("the daemon cut from etcd is not shown down %v after the cut: %s", downIn.Round(time.Millisecond), last)
	} else {
		t.Logf("FIGURE daemon cut from etcd shown down %v after the cut (heartbeat TTL %v)", downIn.Round(time.Millisecond), heartbeatTTL)
		if downIn > heartbeatTTL+detectSlack {
			t.Errorf("shown down after %v; documented bound is the heartbeat TTL %v (+%v slack)", downIn.Round(time.Millisecond), heartbeatTTL, detectSlack)
		}
	}
	time.Sleep(10*time.Second - time.Since(cut))
	up1, _ := vd.PeerLink.Forwarded()
	rd, rdState := ready(vd.HTTPAddr)
	t.Logf("while cut from etcd the daemon received %d bytes from its peers; /readyz: %v %s", up1-up0, rd, rdState)
	f.setPhase("after the link returned")
	healed := time.Now()
	vd.EtcdLink.Heal()
	upIn, ok, last := poll(30*time.Second, 100*time.Millisecond, func() (bool, string) {
		ps, err := peerList(c)
		if err != nil {
			return false, err.Error()
		}
		p, found := peerByAddr(ps, vd.PeerAddr)
		return found && p.State == torus.PeerUp, peerStates(ps)
	})
	if !ok {
		t.Errorf("the daemon did not rejoin (shown up) %v after its etcd link returned: %s", upIn.Round(time.Millisecond), last)
	} else {
		t.Logf("FIGURE the daemon rejoined (shown up) %v after its etcd link returned", upIn.Round(time.Millisecond))
		if ok, state := stablyReady(vd.HTTPAddr); !ok {
			t.Errorf("the daemon is shown up but not stably ready after rejoining: %s", state)
		}
	}
	time.Sleep(max(0, 5*time.Second-time.Since(healed)))
	finishFlushIO(t, c, nil, f, addr, vol, "one replica cut from etcd for 10 s, still serving peers (replication 2, min-replicas 2, 3 daemons)")
	if out := vd.Output(); len(logLines(out, "level=ERROR")) > 0 {
		t.Logf("the cut daemon's errors:\n%s", firstLines(logLines(out, "level=ERROR"), 5))
	}
}

// TestAmbiguousEtcdCommit: the writer's replies from etcd arrive late.
// torusblk runs on a host of its own (proccluster.Host); for 8 s its etcd
// link holds every byte etcd sends for 6 s, past the writer's 5 s etcd
// request timeout (metadata/etcd.DefaultRequestTimeout; torusblk has no
// flag for it), while requests still reach etcd at once. So head commits
// at segment seals (every 1 MiB) are applied but their replies come too
// late: outcome unknown. 8 s later, a second round: replies are held for
// 5 s and then dropped, the connections reset (RST). Writes may wait; FLUSH must never lose data.
// The writer must have logged "head commit outcome unknown" (the test
// proves it met the case). Then the writer is SIGKILLed, the volume
// force-unlocked, and a new torusblk verifies every flushed block.
func TestAmbiguousEtcdCommit(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2})
	const vol, blocks = "amb", 8192
	createVolume(t, c, vol, "32MiB", 0)
	host := c.NewHost()
	u, err := url.Parse(c.EtcdURL)
	if err != nil {
		t.Fatal(err)
	}
	etcdLink := host.Proxy(u.Host)
	p, addr := c.StartNBDOn(host)
	nc := attach(t, host.Dial, addr, vol, blocks*blockSize)
	probe := attach(t, host.Dial, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)
	f := startFlushIO(nc, probe, m, "before the late replies")
	defer f.stop()
	time.Sleep(3 * time.Second)

	f.setPhase("etcd replies 6 s late")
	etcdLink.SetDelay(0, 6*time.Second)
	time.Sleep(8 * time.Second)
	etcdLink.SetDelay(0, 0)
	f.setPhase("after the late replies")
	time.Sleep(8 * time.Second)
	// Second round: replies held, then dropped with the connections.
	f.setPhase("etcd replies held 5 s, then dropped")
	etcdLink.SetDelay(0, time.Minute)
	time.Sleep(5 * time.Second)
	etcdLink.Reset()
	etcdLink.SetDelay(0, 0)
	f.setPhase("after the dropped replies")
	time.Sleep(8 * time.Second)
	f.stop()
	probe.Close()
	const what = "etcd replies to the writer late or dropped (replication 2, min-replicas 2, 3 daemons)"
	failed, _ := f.report(t, what)
	if len(failed) > 0 {
		t.Logf("%d writes or FLUSHes failed (allowed: the writer may fence itself; nothing flushed may be lost); first ones:\n%s", len(failed), strings.Join(failed[:min(10, len(failed))], "\n"))
	}
	out := p.Output()
	unknown := logLines(out, "head commit outcome unknown")
	t.Logf("the writer logged \"head commit outcome unknown\" %d times; \"applied though its answer was lost\" %d times; fenced itself %d times",
		len(unknown), len(logLines(out, "applied though its answer was lost")), len(logLines(out, "fenc")))
	if len(unknown) == 0 {
		t.Errorf("the writer never logged \"head commit outcome unknown\": the late replies did not hit a head commit")
	} else {
		t.Logf("first: %s", unknown[0])
	}
	if ls := logLines(out, "level=WARN"); len(ls) > 0 {
		t.Logf("writer warnings (%d), first ones:\n%s", len(ls), firstLines(ls, 10))
	}
	if nc.broken == nil {
		if err := nc.Flush(); err == nil {
			m.flushed()
		} else {
			t.Logf("FLUSH before the crash: %v", err)
		}
	}

	t.Logf("SIGKILL the writer")
	p.Kill(t)
	c.Ctl("volume", "unlock", vol, "--force")
	_, addr2 := c.StartNBD()
	nc2 := reattach(t, c, nil, addr2, vol, blocks*blockSize, 30*time.Second)
	mustVerify(t, nc2, m, "after the writer's crash, through a new writer")
}

// TestNbdcopyReplicaKill: nbdcopy copies a random 512 MiB file into a
// volume over four NBD connections (--connections=4: the server
// advertises multi-conn and shares the volume between them) and FLUSHes
// at the end, while a replica of the open segment is SIGKILLed and
// started again 2 s later. nbdcopy must exit 0, and the volume must read
// back equal to the file, through the writer (a fifth connection, held
// open the whole time, keeps the same writer) and through a fresh one.
func TestNbdcopyReplicaKill(t *testing.T) {
	nbdcopy := testutil.RequireBinary(t, "nbdcopy")
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2})
	md := metaClient(t, c)
	const vol, size = "copy", 512 << 20
	createVolume(t, c, vol, "512MiB", 0)
	p, addr := c.StartNBD()
	held := attach(t, nil, addr, vol, size)
	src := filepath.Join(t.TempDir(), "src.img")
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{byte(time.Now().UnixNano())}).Read(data)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"--connections=4", "--threads=4", "--flush", src, "nbd://" + addr + "/" + vol}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, nbdcopy, args...)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	t.Logf("nbdcopy %s", strings.Join(args, " "))
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	var took time.Duration
	go func() {
		err := cmd.Wait()
		took = time.Since(start)
		exited <- err
	}()
	time.Sleep(500 * time.Millisecond)
	victim := openReplica(t, c, md, vol)
	vd := c.Daemons[victim]
	killedAt := time.Since(start)
	vd.Kill(t)
	time.Sleep(2 * time.Second)
	vd.Start(t)
	c.WaitHTTP("http://"+vd.HTTPAddr+"/readyz", 30*time.Second)
	restartedAt := time.Since(start)
	err := <-exited
	t.Logf("FIGURE nbdcopy --connections=4 of %d MiB with a replica SIGKILLed at %v and back at %v: exited after %v (%.1f MiB/s): %v",
		size>>20, killedAt.Round(time.Millisecond), restartedAt.Round(time.Millisecond), took.Round(time.Millisecond), float64(size>>20)/took.Seconds(), err)
	if err != nil {
		t.Errorf("nbdcopy failed with a replica killed and restarted: %v\n%s", err, lastLines(out.String(), 15))
	}
	if took < restartedAt {
		t.Errorf("nbdcopy was done %v after its start, before the replica was back (%v): the test needs a longer copy", took.Round(time.Millisecond), restartedAt.Round(time.Millisecond))
	}
	if n := len(logLines(p.Output(), "nbd: transmission", "export="+vol)) - 1; n < 4 {
		t.Errorf("torusblk served nbdcopy %d NBD connections of %s, want 4 (--connections=4)", n, vol)
	}
	compare := func(nc *nbdClient, when string) {
		t.Helper()
		buf := make([]byte, 1<<20)
		for off := int64(0); off < size; off += int64(len(buf)) {
			if err := nc.ReadAt(buf, off); err != nil {
				t.Fatalf("%s: reading at %d: %v", when, off, err)
			}
			if !bytes.Equal(buf, data[off:off+int64(len(buf))]) {
				i := 0
				for buf[i] == data[off+int64(i)] {
					i++
				}
				t.Fatalf("%s: the volume differs from the file from byte %d", when, off+int64(i))
			}
		}
		t.Logf("%s: %d MiB equal to the file", when, size>>20)
	}
	compare(held, "through the writer")
	held.Close()
	// Every connection is closed now: the next attach opens the volume again.
	nc := reattach(t, c, nil, addr, vol, size, 30*time.Second)
	compare(nc, "through a fresh writer")
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// startLinkFault starts 3 daemons (replication 2) with a proxy on every
// daemon link, a 32 MiB volume, torusblk, and the write+FLUSH workload
// (with its FLUSH probe) for 3 s, and returns the daemon holding the open
// segment: the set-up every link-fault test shares. The caller stops f.
func startLinkFault(t *testing.T, vol, phase string) (*proccluster.Cluster, *proccluster.Proc, string, *flushIO, int) {
	t.Helper()
	const blocks = 8192
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2, Links: true})
	md := metaClient(t, c)
	createVolume(t, c, vol, "32MiB", 0)
	p, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	probe := attach(t, nil, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)
	f := startFlushIO(nc, probe, m, phase)
	time.Sleep(3 * time.Second)
	return c, p, addr, f, openReplica(t, c, md, vol)
}
