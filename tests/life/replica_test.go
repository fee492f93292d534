package life

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/proccluster"
	metaetcd "github.com/torus-storage/torus/metadata/etcd"
)

// TestReplicaKill: SIGKILL a replica under a write+flush workload through
// torusblk (replication 2, min-replicas 1, three daemons). The workload
// goes on without a failed write or flush; the peer shows down within the
// heartbeat TTL; after --down-grace healing restores two full copies of
// every live segment; after the peer restarts its stale and surplus copies
// are removed, replicas agree byte for byte, and every flushed byte
// verifies through the running writer and through a fresh one.
func TestReplicaKill(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2})
	md := metaClient(t, c)
	const vol, blocks = "rk", 8192 // 32 MiB
	createVolume(t, c, vol, "32MiB", 0)
	c.Ctl("volume", "set", vol, "min-replicas=1")
	_, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)
	w := newWorkload(m, uint64(m.seed), "writer 1")

	// Fill a good part of the volume so that every daemon holds segments.
	for i := 0; i < 300; i++ {
		if err := w.step(nc); err != nil {
			t.Fatalf("workload before the kill: %v", err)
		}
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatalf("flush before the kill: %v", err)
	}
	// From now on the workload writes only the last quarter of the
	// volume, so segments written before the kill stay live and must be
	// healed rather than superseded.
	w.lo = blocks * 3 / 4
	stop := w.background(nc)
	defer stop()
	time.Sleep(time.Second)

	// Kill the daemon holding the most segments of the volume.
	victim := pickVictim(t, c, md, vol)
	vd := c.Daemons[victim]
	t.Logf("killing daemon %d (%s) under load; workload so far: %s", victim, vd.PeerAddr, w.summary())
	killed := time.Now()
	vd.Kill(t)

	// Detection: `torusctl peer list` shows it down within the TTL.
	var lastState string
	for {
		ps, err := peerList(c)
		if err == nil {
			p, ok := peerByAddr(ps, vd.PeerAddr)
			lastState = fmt.Sprintf("%v (found %v): %s", p.State, ok, peerStates(ps))
			if ok && p.State == torus.PeerDown {
				break
			}
		} else {
			lastState = err.Error()
		}
		if time.Since(killed) > 3*heartbeatTTL {
			t.Fatalf("peer %s not shown down %v after SIGKILL; last: %s", vd.PeerAddr, time.Since(killed), lastState)
		}
		time.Sleep(50 * time.Millisecond)
	}
	detect := time.Since(killed)
	t.Logf("FIGURE detection time: peer shown down %v after SIGKILL (heartbeat TTL %v)", detect.Round(time.Millisecond), heartbeatTTL)
	if detect > heartbeatTTL+detectSlack {
		t.Errorf("peer shown down after %v; documented bound is the heartbeat TTL %v (+%v slack)", detect, heartbeatTTL, detectSlack)
	}

	// Degraded is never silent: while a copy is missing the volume says so.
	// (Daemons publish status every few seconds: allow one round.)
	if took, ok, last := pollHealth(c, vol, "degraded", 5*time.Second); !ok {
		t.Errorf("volume %s health %q %v after the peer was shown down (not yet healed), want \"degraded\"", vol, last, took.Round(time.Millisecond))
	}

	// Healing: after the grace period every live segment again has two
	// full copies on running daemons.
	copiedBefore := healCopied(t, c)
	healStart := killed.Add(downGrace)
	var healedCS *census
	// Sample the daemons' heal counters to time the copying itself: from
	// the last sample before it rose to the first one after it stopped.
	sampler := startSampler(t, c, 200*time.Millisecond)
	healTime := eventually(t, 60*time.Second, 500*time.Millisecond, "healing to full redundancy", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cs, err := takeCensus(ctx, c, md, vol, 2)
		if err != nil {
			return false, err.Error()
		}
		if u := cs.underReplicated(); len(u) > 0 {
			return false, fmt.Sprintf("%d under-replicated segments, e.g. %s; workload: %s", len(u), strings.Join(u[:min(3, len(u))], "; "), w.summary())
		}
		healedCS = cs
		return true, ""
	})
	healedAt := time.Now()
	time.Sleep(500 * time.Millisecond)
	copyBytes, copyTime := sampler.stop()
	copied := healCopied(t, c) - copiedBefore
	span := healedAt.Sub(healStart)
	n, sz := healedCS.size()
	t.Logf("healed %v after the kill (%v after the grace period): %d live segments, %.1f MiB; heal copies %.1f MiB",
		time.Since(killed).Round(time.Millisecond), span.Round(time.Millisecond), n, float64(sz)/(1<<20), float64(copied)/(1<<20))
	if copied > 0 && span > 0 {
		t.Logf("FIGURE healing, end to end: %.1f MiB/s (%d bytes in the %v from the end of --down-grace to full redundancy, maintenance interval and polling included)", float64(copied)/(1<<20)/span.Seconds(), copied, span.Round(time.Millisecond))
	}
	if copyBytes > 0 && copyTime > 0 {
		t.Logf("FIGURE healing copy throughput: %.1f MiB/s (%d bytes copied within %v, torus_heal_copied_bytes_total sampled every 200 ms)", float64(copyBytes)/(1<<20)/copyTime.Seconds(), copyBytes, copyTime.Round(time.Millisecond))
	}
	_ = healTime
	if took, ok, last := pollHealth(c, vol, "healthy", 15*time.Second); !ok {
		t.Errorf("volume %s health %q %v after every segment had two copies again, want \"healthy\"", vol, last, took.Round(time.Millisecond))
	}

	// The workload went on the whole time.
	time.Sleep(time.Second)
	stop()
	we, fe, log := w.errors()
	t.Logf("workload: %s", w.summary())
	if we+fe > 0 {
		t.Errorf("the workload saw %d failed writes and %d failed flushes with one replica of two down (min-replicas=1):\n%s", we, fe, strings.Join(log, "\n"))
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatalf("flush after healing: %v", err)
	}
	mustVerify(t, nc, m, "after healing")

	// The victim comes back: its stale copies are reconciled, surplus ones
	// removed, and the cluster is exactly replicated.
	vd.Start(t)
	c.WaitHTTP("http://"+vd.HTTPAddr+"/readyz", 30*time.Second)
	stop2 := w.background(nc)
	time.Sleep(3 * time.Second)
	stop2()
	if err := w.doFlush(nc); err != nil {
		t.Fatalf("flush after restart: %v", err)
	}
	mustVerify(t, nc, m, "after the peer restarted")
	if we, fe, log := w.errors(); we+fe > 0 {
		t.Errorf("workload errors: %d writes, %d flushes:\n%s", we, fe, strings.Join(log, "\n"))
	}
	// Detach: daemons keep surplus copies of segments sealed since the
	// last checkpoint while a writer is attached (it may still sync them);
	// once it is gone, and without new writes, surplus copies and garbage
	// must go within a GC interval (30 s).
	nc.Close()
	detached := time.Now()
	eventually(t, 75*time.Second, time.Second, "surplus copies and garbage removed after the peer restarted and the writer detached", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cs, err := takeCensus(ctx, c, md, vol, 2)
		if err != nil {
			return false, err.Error()
		}
		if u := cs.underReplicated(); len(u) > 0 {
			return false, fmt.Sprintf("under-replicated: %s", strings.Join(u[:min(3, len(u))], "; "))
		}
		if s := cs.surplus(); len(s) > 0 {
			return false, fmt.Sprintf("%d surplus: %s", len(s), strings.Join(s[:min(5, len(s))], "; "))
		}
		return true, ""
	})
	t.Logf("exactly 2 copies of every live segment, no garbage, %v after the writer detached", time.Since(detached).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cs, err := takeCensus(ctx, c, md, vol, 2)
	if err != nil {
		t.Fatal(err)
	}
	diff, err := cs.compareCopies(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(diff) > 0 {
		t.Errorf("replicas disagree:\n%s", strings.Join(diff, "\n"))
	}

	// A fresh writer rebuilds the index from the stores and sees the same.
	nc2 := reattach(t, c, nil, addr, vol, blocks*blockSize, 30*time.Second)
	mustVerify(t, nc2, m, "through a fresh writer")
}

// pickVictim returns the running daemon holding the most live segments.
func pickVictim(t *testing.T, c *proccluster.Cluster, md *metaetcd.Store, vol string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cs, err := takeCensus(ctx, c, md, vol, c.Opts.Replication)
	if err != nil {
		t.Fatalf("census: %v", err)
	}
	count := make([]int, len(c.Daemons))
	for id := range cs.live {
		for _, h := range cs.holders[id] {
			count[h.daemon]++
		}
	}
	best := 0
	for i := range count {
		if count[i] > count[best] {
			best = i
		}
	}
	t.Logf("live segments per daemon: %v", count)
	if count[best] == 0 {
		t.Fatalf("no daemon holds a live segment of %s: %s", vol, strings.Join(cs.underReplicated(), "; "))
	}
	return best
}

// healCopied sums torus_heal_copied_bytes_total over running daemons.
func healCopied(t *testing.T, c *proccluster.Cluster) int64 {
	var sum int64
	for _, d := range c.Daemons {
		if !d.Running() {
			continue
		}
		v, err := metric(d.HTTPAddr, "torus_heal_copied_bytes_total")
		if err != nil {
			t.Logf("metrics of %s: %v", d.HTTPAddr, err)
			continue
		}
		sum += int64(v)
	}
	return sum
}

// reattach connects a client to addr, retrying while the volume is still
// held (the previous client's detach is in progress) for up to d.
func reattach(t *testing.T, c *proccluster.Cluster, h *proccluster.Host, addr, vol string, size int64, d time.Duration) *nbdClient {
	t.Helper()
	var dial func(string) (net.Conn, error)
	if h != nil {
		dial = h.Dial
	}
	var nc *nbdClient
	var seen []string
	took := eventually(t, d, 200*time.Millisecond, "attaching "+vol+" at "+addr, func() (bool, string) {
		var err error
		nc, err = tryAttach(dial, addr, vol)
		if err != nil {
			if len(seen) == 0 || seen[len(seen)-1] != err.Error() {
				seen = append(seen, err.Error())
			}
			return false, err.Error()
		}
		return true, ""
	})
	if took > 5*time.Second && len(seen) > 0 {
		t.Logf("attaching took %v; refusals seen (in order): %s", took.Round(time.Millisecond), strings.Join(seen[max(0, len(seen)-4):], " | "))
	}
	if nc.size != size {
		t.Fatalf("export %s has size %d, want %d", vol, nc.size, size)
	}
	t.Cleanup(func() { nc.Abort() })
	return nc
}

// pollHealth waits until `volume list` reports want for vol.
func pollHealth(c *proccluster.Cluster, vol, want string, d time.Duration) (time.Duration, bool, string) {
	return poll(d, 250*time.Millisecond, func() (bool, string) {
		r, err := volumeInfo(c, vol)
		if err != nil {
			return false, err.Error()
		}
		h := healthOf(r)
		return h == want, h
	})
}

// sampler polls the sum of torus_heal_copied_bytes_total.
type sampler struct {
	done chan struct{}
	res  chan [2]int64
}

func startSampler(t *testing.T, c *proccluster.Cluster, every time.Duration) *sampler {
	s := &sampler{done: make(chan struct{}), res: make(chan [2]int64, 1)}
	base := healCopied(t, c)
	go func() {
		prev, prevAt := base, time.Now()
		var first, last time.Time
		var total int64
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-s.done:
				s.res <- [2]int64{total, int64(last.Sub(first))}
				return
			case <-tick.C:
			}
			v := quietHealCopied(c)
			now := time.Now()
			if v > prev {
				if first.IsZero() {
					first = prevAt
				}
				last = now
				total += v - prev
			}
			prev, prevAt = v, now
		}
	}()
	return s
}

func (s *sampler) stop() (int64, time.Duration) {
	close(s.done)
	r := <-s.res
	return r[0], time.Duration(r[1])
}

// quietHealCopied is healCopied without logging (for goroutines).
func quietHealCopied(c *proccluster.Cluster) int64 {
	var sum int64
	for _, d := range c.Daemons {
		if !d.Running() {
			continue
		}
		if v, err := metric(d.HTTPAddr, "torus_heal_copied_bytes_total"); err == nil {
			sum += int64(v)
		}
	}
	return sum
}
