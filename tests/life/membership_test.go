package life

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/proccluster"
	metaetcd "github.com/torus-storage/torus/metadata/etcd"
	"github.com/torus-storage/torus/ring"
)

// TestAddRemovePeer: under a write+flush workload a fourth daemon is
// started (registered, not in the ring) and added with `torusctl peer add`;
// data rebalances onto it until every live segment is exactly replicated on
// the new ring. Then a daemon is removed gracefully with `torusctl peer
// remove`: it drains (its data moves off), ends "removed", and once it is
// stopped every byte still verifies. Data is verified after every phase.
func TestAddRemovePeer(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2})
	md := metaClient(t, c)
	const vol, blocks = "ar", 4096
	createVolume(t, c, vol, "16MiB", 0)
	m := newModel(seed(t), blocks)
	_, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	w := newWorkload(m, uint64(m.seed), "writer")
	for i := 0; i < 200; i++ {
		if err := w.step(nc); err != nil {
			t.Fatalf("workload: %v", err)
		}
	}
	stop := w.background(nc)

	// A fourth daemon: registered as new, then added.
	o := c.Opts
	o.NoAutoJoin = true
	d3 := c.AddDaemon(o)
	c.WaitHTTP("http://"+d3.HTTPAddr+"/readyz", 30*time.Second)
	eventually(t, 10*time.Second, 200*time.Millisecond, "the new daemon listed as new", func() (bool, string) {
		ps, err := peerList(c)
		if err != nil {
			return false, err.Error()
		}
		p, ok := peerByAddr(ps, d3.PeerAddr)
		return ok && p.State == torus.PeerNew, peerStates(ps)
	})
	out, err := c.CtlErr("peer", "add", d3.PeerAddr)
	if err != nil {
		stop()
		t.Fatalf("`torusctl peer add %s` failed (issue 4 behaviour 1 needs it): %v\n%s", d3.PeerAddr, err, out)
	}
	t.Logf("peer add: %s", strings.TrimSpace(out))
	if _, ok, last := poll(10*time.Second, 200*time.Millisecond, func() (bool, string) {
		ps, err := peerList(c)
		if err != nil {
			return false, err.Error()
		}
		p, ok := peerByAddr(ps, d3.PeerAddr)
		return ok && p.State == torus.PeerUp, peerStates(ps)
	}); !ok {
		stop()
		t.Fatalf("`torusctl peer add %s` did not make the daemon an up ring member within 10 s (peers: %s); its output:\n%s", d3.PeerAddr, last, out)
	}
	added := time.Now()
	waitBalanced(t, c, md, vol, w, nil, "after adding a fourth daemon")
	t.Logf("rebalanced onto the fourth daemon %v after peer add", time.Since(added).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	cs, err := takeCensus(ctx, c, md, vol, 2)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	onNew := 0
	for id := range cs.live {
		for _, h := range cs.holders[id] {
			if h.daemon == 3 {
				onNew++
			}
		}
	}
	if onNew == 0 {
		t.Errorf("the fourth daemon holds no live segment after rebalancing")
	}
	stop()
	if err := w.doFlush(nc); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, nc, m, "after adding a daemon")

	// Remove daemon 0 gracefully.
	stop = w.background(nc)
	defer stop()
	d0 := c.Daemons[0]
	out, err = c.CtlErr("peer", "remove", d0.PeerAddr)
	if err != nil {
		stop()
		t.Fatalf("`torusctl peer remove %s` failed (issue 4 behaviour 1 needs it): %v\n%s", d0.PeerAddr, err, out)
	}
	t.Logf("peer remove: %s", strings.TrimSpace(out))
	removing := time.Now()
	if _, ok, last := poll(10*time.Second, 200*time.Millisecond, func() (bool, string) {
		ps, err := peerList(c)
		if err != nil {
			return false, err.Error()
		}
		p, ok := peerByAddr(ps, d0.PeerAddr)
		return !ok || p.State == torus.PeerDraining || p.State == torus.PeerRemoved, peerStates(ps)
	}); !ok {
		stop()
		t.Fatalf("`torusctl peer remove %s` did not start draining the daemon within 10 s (peers: %s); its output:\n%s", d0.PeerAddr, last, out)
	}
	sawDraining := false
	eventually(t, 90*time.Second, 300*time.Millisecond, "daemon 0 drained and removed", func() (bool, string) {
		ps, err := peerList(c)
		if err != nil {
			return false, err.Error()
		}
		p, ok := peerByAddr(ps, d0.PeerAddr)
		if ok && p.State == torus.PeerDraining {
			sawDraining = true
		}
		return !ok || p.State == torus.PeerRemoved, peerStates(ps)
	})
	t.Logf("daemon 0 removed %v after peer remove (saw draining: %v)", time.Since(removing).Round(time.Millisecond), sawDraining)
	waitBalanced(t, c, md, vol, w, []int{0}, "after removing daemon 0")
	stop()
	if we, fe, log := w.errors(); we+fe > 0 {
		t.Errorf("workload errors during membership changes: %d writes, %d flushes:\n%s", we, fe, strings.Join(log, "\n"))
	}
	t.Logf("workload: %s", w.summary())
	d0.Kill(t)
	if err := w.doFlush(nc); err != nil {
		t.Fatalf("flush with the removed daemon stopped: %v", err)
	}
	mustVerify(t, nc, m, "after removing daemon 0 and stopping it")
	nc.Close()
	n2 := reattach(t, c, nil, addr, vol, blocks*blockSize, 20*time.Second)
	mustVerify(t, n2, m, "fresh writer without daemon 0")
}

// waitBalanced waits until every live segment has exactly two full copies
// on running daemons outside exclude, and the daemons report nothing
// pending.
func waitBalanced(t *testing.T, c *proccluster.Cluster, md *metaetcd.Store, vol string, w *workload, exclude []int, when string) {
	t.Helper()
	eventually(t, 90*time.Second, 500*time.Millisecond, "rebalanced "+when, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cs, err := takeCensus(ctx, c, md, vol, 2)
		if err != nil {
			return false, err.Error()
		}
		if u := cs.underReplicated(exclude...); len(u) > 0 {
			return false, fmt.Sprintf("%d under-replicated: %s; workload %s", len(u), strings.Join(u[:min(3, len(u))], "; "), w.summary())
		}
		var extra []string
		for id := range cs.live {
			n := 0
			for _, h := range cs.holders[id] {
				if !containsInt(exclude, h.daemon) {
					n++
				}
			}
			if n > 2 {
				extra = append(extra, cs.describe(id))
			}
		}
		if len(extra) > 0 {
			return false, fmt.Sprintf("%d segments with surplus copies, e.g. %s", len(extra), extra[0])
		}
		ps, err := peerList(c)
		if err != nil {
			return false, err.Error()
		}
		for _, p := range ps {
			if p.Pending > 0 {
				return false, "pending: " + peerStates(ps)
			}
		}
		// Data sits where the current ring places it.
		spec, err := md.Ring(ctx)
		if err != nil {
			return false, err.Error()
		}
		r, err := ring.New(spec)
		if err != nil {
			return false, err.Error()
		}
		up := map[string]bool{}
		for _, p := range ps {
			if p.State == torus.PeerUp {
				up[p.ID] = true
			}
		}
		if mp := cs.misplaced(r, up); len(mp) > 0 {
			return false, fmt.Sprintf("%d segments not yet where ring version %d places them, e.g. %s", len(mp), spec.Version, strings.Join(mp[:min(3, len(mp))], "; "))
		}
		return true, ""
	})
}

func containsInt(s []int, x int) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}
