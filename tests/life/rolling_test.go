package life

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testutil"
)

// rollingRestart stops each daemon in turn with sig, starts it again gap
// later, and goes on to the next only when it is ready and shown up in the
// peer list: an upgrade of the cluster, one machine at a time.
func rollingRestart(t *testing.T, c *proccluster.Cluster, gap time.Duration, sig syscall.Signal) {
	t.Helper()
	start := time.Now()
	for i, d := range c.Daemons {
		began := time.Now()
		d.Signal(t, sig)
		stopped := time.Since(began)
		time.Sleep(gap)
		d.Start(t)
		readyIn, ok, last := poll(30*time.Second, 100*time.Millisecond, func() (bool, string) { return ready(d.HTTPAddr) })
		if !ok {
			t.Fatalf("rolling restart: daemon %d not ready %v after its restart: %s", i, readyIn, last)
		}
		upIn, ok, last := poll(15*time.Second, 100*time.Millisecond, func() (bool, string) {
			ps, err := peerList(c)
			if err != nil {
				return false, err.Error()
			}
			p, found := peerByAddr(ps, d.PeerAddr)
			return found && p.State == torus.PeerUp, peerStates(ps)
		})
		if !ok {
			t.Fatalf("rolling restart: daemon %d not shown up %v after its restart: %s", i, upIn, last)
		}
		t.Logf("rolling restart: daemon %d %v in %v, down %v, ready %v after start, up %v later",
			i, sig, stopped.Round(time.Millisecond), gap, readyIn.Round(time.Millisecond), upIn.Round(time.Millisecond))
	}
	t.Logf("rolling restart of %d daemons took %v", len(c.Daemons), time.Since(start).Round(time.Millisecond))
}

// latencies summarizes durations as "n=…, p50 …, p99 …, max …".
func latencies(ds []time.Duration) (p50, p99, mx time.Duration, s string) {
	if len(ds) == 0 {
		return 0, 0, 0, "n=0"
	}
	d := append([]time.Duration(nil), ds...)
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	at := func(q float64) time.Duration { return d[min(len(d)-1, int(q*float64(len(d))))] }
	p50, p99, mx = at(0.50), at(0.99), d[len(d)-1]
	return p50, p99, mx, fmt.Sprintf("n=%d p50 %v p99 %v max %v", len(d), p50.Round(time.Millisecond), p99.Round(time.Millisecond), mx.Round(time.Millisecond))
}

// TestRollingRestartFlush (issue 8, fourth case): replication 2 over 3
// daemons, the default policy; a client keeps writing 64 KiB blocks and
// FLUSHes every 8 writes while every daemon in turn is SIGTERMed and started
// again 1 s later. Two of three daemons are up at every moment, so every
// write and every FLUSH must succeed, the slowest FLUSH within 15 s; every
// flushed block then reads back, through the writer and a fresh one. The
// FLUSH latencies (p50/p99/max) are logged as a FIGURE.
func TestRollingRestartFlush(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2})
	const vol, blocks, per, flushEvery = "rr", 8192, 16, 8 // 32 MiB, 64 KiB writes
	createVolume(t, c, vol, "32MiB", 0)
	_, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)

	type flushRec struct {
		at     time.Time
		took   time.Duration
		err    error
		during bool
	}
	var (
		mu         sync.Mutex
		flushes    []flushRec
		writeErrs  []string
		writes     int
		writeFails int
		restarting bool
	)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		rng := rand.New(rand.NewPCG(uint64(m.seed), 64))
		for i := 0; ctx.Err() == nil && nc.broken == nil; i++ {
			first := rng.Int64N(blocks/per) * per
			id, p := m.newWrite(first, per, "64k writer at "+time.Now().Format("15:04:05.000"), false)
			err := nc.WriteAt(p, first*blockSize, false)
			m.done(id, err)
			mu.Lock()
			writes++
			if err != nil {
				writeFails++
			}
			if err != nil && len(writeErrs) < 10 {
				writeErrs = append(writeErrs, time.Now().Format("15:04:05.000 ")+err.Error())
			}
			mu.Unlock()
			if (i+1)%flushEvery != 0 {
				continue
			}
			s := time.Now()
			err = nc.Flush()
			if err == nil {
				m.flushed()
			}
			mu.Lock()
			flushes = append(flushes, flushRec{at: s, took: time.Since(s), err: err, during: restarting})
			mu.Unlock()
		}
	}()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	defer stop()

	time.Sleep(2 * time.Second)
	mu.Lock()
	restarting = true
	mu.Unlock()
	rollingRestart(t, c, time.Second, syscall.SIGTERM)
	mu.Lock()
	restarting = false
	mu.Unlock()
	time.Sleep(5 * time.Second)
	stop()

	var all, during []time.Duration
	var failed []string
	for _, f := range flushes {
		// Latencies of successful FLUSHes only: a fast EIO is no figure.
		if f.err == nil {
			all = append(all, f.took)
			if f.during {
				during = append(during, f.took)
			}
		}
		if f.err != nil {
			failed = append(failed, fmt.Sprintf("%s (after %v): %v", f.at.Format("15:04:05.000"), f.took.Round(time.Millisecond), f.err))
		}
	}
	_, _, mx, sAll := latencies(all)
	_, _, _, sDuring := latencies(during)
	t.Logf("FIGURE FLUSH latency during a rolling restart of 3 daemons (replication 2, 64 KiB writes, FLUSH every %d; successful FLUSHes): %s", flushEvery, sDuring)
	t.Logf("FIGURE FLUSH latency over the whole run (successful FLUSHes): %s; %d FLUSHes, %d failed; %d writes, %d failed", sAll, len(flushes), len(failed), writes, writeFails)
	if len(failed) > 0 {
		t.Errorf("%d of %d FLUSHes failed with two of three daemons up at every moment:\n%s", len(failed), len(flushes), strings.Join(failed[:min(10, len(failed))], "\n"))
	}
	if len(writeErrs) > 0 {
		t.Errorf("%d of %d writes failed during the rolling restart; first ones:\n%s", writeFails, writes, strings.Join(writeErrs, "\n"))
	}
	if mx > 15*time.Second {
		t.Errorf("slowest FLUSH took %v; want at most 15 s", mx.Round(time.Millisecond))
	}
	if nc.broken != nil {
		t.Fatalf("the NBD connection broke: %v", nc.broken)
	}
	if err := nc.Flush(); err != nil {
		t.Errorf("FLUSH after the rolling restart: %v", err)
	} else {
		m.flushed()
	}
	mustVerify(t, nc, m, "after the rolling restart, through the writer")
	nc.Close()
	nc2 := reattach(t, c, nil, addr, vol, blocks*blockSize, 30*time.Second)
	mustVerify(t, nc2, m, "after the rolling restart, through a fresh writer")
}

// TestFioRollingRestart (issue 8, fourth case, with fio): fio's nbd engine
// writes 64 KiB blocks at random, fsyncs every 32 writes and verifies every
// block it wrote (crc32c), in loops, while every daemon is restarted in
// turn. fio must exit 0: no EIO on a write or an fsync, no verify error.
func TestFioRollingRestart(t *testing.T) {
	fio := testutil.RequireBinary(t, "fio")
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2})
	const vol = "fio"
	createVolume(t, c, vol, "64MiB", 0)
	_, addr := c.StartNBD()
	const runtime = 20 * time.Second
	args := []string{"--name=rolling", "--ioengine=nbd", "--uri=nbd://" + addr + "/" + vol,
		"--rw=randwrite", "--bs=64k", "--size=32M", "--loops=100000", fmt.Sprintf("--runtime=%d", int(runtime.Seconds())),
		"--iodepth=4", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--fsync=32", "--randrepeat=0"}
	ctx, cancel := context.WithTimeout(context.Background(), runtime+60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, fio, args...)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	t.Logf("fio %s", strings.Join(args, " "))
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	time.Sleep(3 * time.Second)
	rollingRestart(t, c, time.Second, syscall.SIGTERM)
	restartDone := time.Since(start)
	var err error
	select {
	case err = <-exited:
	case <-ctx.Done():
		err = <-exited
	}
	took := time.Since(start)
	t.Logf("fio exited after %v (rolling restart over at %v): %v", took.Round(time.Millisecond), restartDone.Round(time.Millisecond), err)
	if err != nil {
		t.Errorf("fio --verify=crc32c --fsync=32 failed during the rolling restart: %v\n%s\n...\n%s", err, errLines(out.String(), 10), tail(out.String(), 15))
	} else if took < restartDone {
		t.Errorf("fio ended before the rolling restart did")
	} else {
		t.Logf("fio:\n%s", tail(out.String(), 12))
	}
}

// errLines returns the first n lines of s that mention an error.
func errLines(s string, n int) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if low := strings.ToLower(l); strings.Contains(low, "err") && len(keep) < n {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
