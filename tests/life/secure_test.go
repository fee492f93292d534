package life

import (
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/proccluster"
)

// refusedTotal sums torus_peer_refused_total over the running daemons (0
// while none was refused: the counter is exported once it counts).
func refusedTotal(c *proccluster.Cluster) (float64, string) {
	var sum float64
	var desc []string
	for i, d := range c.Daemons {
		if !d.Running() {
			continue
		}
		v, err := metric(d.HTTPAddr, "torus_peer_refused_total")
		if err != nil && !strings.Contains(err.Error(), "not exported") {
			desc = append(desc, fmt.Sprintf("d%d: %v", i, err))
			continue
		}
		sum += v
		desc = append(desc, fmt.Sprintf("d%d: %v", i, v))
	}
	return sum, strings.Join(desc, ", ")
}

// TestSecureCluster: three torusd with mutual TLS on the peer port and a
// torusblk with a client certificate. Writes and flushes through NBD work;
// a replica is killed and healing (daemon certificates, RepairEpoch
// copies between daemons) restores redundancy with not one request
// refused; everything flushed verifies through a fresh torusblk. A
// torusblk without certificates cannot read a byte, and its refusal is
// counted with role "plain". /debug/pprof is off (no --pprof).
func TestSecureCluster(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2, Secure: true})
	const vol, blocks = "sec", 2048 // 8 MiB
	createVolume(t, c, vol, "8MiB", 0)
	c.Ctl("volume", "set", vol, "min-replicas=1")
	_, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)
	w := newWorkload(m, uint64(m.seed), "secure writer")
	for i := 0; i < 200; i++ {
		if err := w.step(nc); err != nil {
			t.Fatalf("workload over TLS: %v", err)
		}
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatalf("flush over TLS: %v", err)
	}
	mustVerify(t, nc, m, "after writing over TLS")

	for _, d := range c.Daemons {
		resp, err := http.Get("http://" + d.HTTPAddr + "/debug/pprof/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("/debug/pprof/ without --pprof: %d, want 404", resp.StatusCode)
		}
	}

	// Kill the daemon holding the most segment files of the volume, keep
	// writing, and wait for healing.
	victim, most := 0, -1
	for i, d := range c.Daemons {
		segs, _ := d.Segments(1)
		if len(segs) > most {
			victim, most = i, len(segs)
		}
	}
	w.lo = blocks * 3 / 4
	stop := w.background(nc)
	defer stop()
	copiedBefore := healCopied(t, c)
	c.Daemons[victim].Kill(t)
	t.Logf("killed daemon %d (%d segment files)", victim, most)
	eventually(t, 90*time.Second, 500*time.Millisecond, "healing over TLS", func() (bool, string) {
		copied := healCopied(t, c) - copiedBefore
		r, err := volumeInfo(c, vol)
		if err != nil {
			return false, err.Error()
		}
		h := healthOf(r)
		return copied > 0 && h == "healthy", fmt.Sprintf("health %s, %d bytes copied", h, copied)
	})
	stop()
	if we, fe, log := w.errors(); we+fe > 0 {
		t.Errorf("%d failed writes, %d failed flushes over TLS with a replica down:\n%s", we, fe, strings.Join(log, "\n"))
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatalf("flush after healing: %v", err)
	}
	if n, desc := refusedTotal(c); n != 0 {
		t.Fatalf("daemons or torusblk were refused %v requests (%s): roles are wrong", n, desc)
	}
	mustVerify(t, nc, m, "after healing")
	nc.Abort()
	c.NBD[0].Signal(t, syscall.SIGTERM) // flushes and releases the volume

	// A torusblk without certificates reaches etcd but no daemon.
	plain, plainAddr := c.StartNBDEnv(nil)
	pc, err := tryAttach(nil, plainAddr, vol)
	if err == nil {
		buf := make([]byte, blockSize)
		err = pc.ReadAt(buf, 0)
		pc.Abort()
	}
	if err == nil {
		t.Fatal("a torusblk without certificates read from a TLS cluster")
	}
	eventually(t, 10*time.Second, 200*time.Millisecond, "the plain torusblk's refusal counted", func() (bool, string) {
		n, desc := refusedTotal(c)
		return n > 0, desc
	})
	if out := plain.Output(); !strings.Contains(out, "requires mutual TLS") {
		t.Errorf("the plain torusblk's log does not say TLS is required:\n%s", tail(out, 40))
	}
	plain.Signal(t, syscall.SIGTERM)

	_, addr2 := c.StartNBD()
	mustVerify(t, reattach(t, c, nil, addr2, vol, blocks*blockSize, 30*time.Second), m, "through a fresh torusblk")
}
