package life

import (
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/proccluster"
)

// TestEtcdRestart: etcd is SIGKILLed mid-workload and restarted 3 s later
// (well inside the writer's 10 s lease). Daemons become ready again and
// show up, the writer keeps its lease and its connection: after etcd is
// back writes and flushes succeed on the same NBD connection, and every
// flushed write verifies, there and through a fresh writer.
func TestEtcdRestart(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2})
	const vol, blocks = "er", 4096
	createVolume(t, c, vol, "16MiB", 0)
	m := newModel(seed(t), blocks)
	_, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	w := newWorkload(m, uint64(m.seed), "writer")
	stop := w.background(nc)
	defer stop()
	time.Sleep(2 * time.Second)
	we0, fe0, _ := w.errors()
	t.Logf("SIGKILL etcd (%s)", w.summary())
	c.Etcd.Kill(t)
	time.Sleep(3 * time.Second)
	duringW, duringF, _ := w.errors()
	t.Logf("restarting etcd after 3 s down; meanwhile: %s", w.summary())
	c.Etcd.Start(t)
	back := time.Now()
	c.WaitHTTP(c.EtcdURL+"/health", 30*time.Second)

	for _, d := range c.Daemons {
		c.WaitHTTP("http://"+d.HTTPAddr+"/readyz", 30*time.Second)
	}
	eventually(t, 20*time.Second, 200*time.Millisecond, "every peer up after the etcd restart", func() (bool, string) {
		ps, err := peerList(c)
		if err != nil {
			return false, err.Error()
		}
		up := 0
		for _, p := range ps {
			if p.State == torus.PeerUp {
				up++
			}
		}
		return up == len(c.Daemons), peerStates(ps)
	})
	t.Logf("daemons ready and up %v after etcd came back", time.Since(back).Round(time.Millisecond))

	// From now on the same connection must work without errors.
	time.Sleep(2 * time.Second)
	stop()
	we1, fe1, log := w.errors()
	t.Logf("workload: %s (failures before the kill %d/%d, by the restart %d/%d)", w.summary(), we0, fe0, duringW, duringF)
	if we0+fe0 > 0 {
		t.Errorf("failures before etcd was killed:\n%s", strings.Join(log, "\n"))
	}
	after := 0
	for i := 0; i < 100; i++ {
		if err := w.step(nc); err != nil {
			t.Fatalf("write after etcd came back (on the writer's original connection): %v", err)
		}
		after++
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatalf("flush after etcd came back: %v", err)
	}
	if we1+fe1 > 0 {
		t.Logf("failed requests while etcd was down or reconnecting (allowed when a segment seal needed etcd):\n%s", strings.Join(log, "\n"))
	}
	mustVerify(t, nc, m, "after the etcd restart")
	r, err := volumeInfo(c, vol)
	if err != nil {
		t.Fatal(err)
	}
	if r.Writer == "" {
		t.Errorf("volume %s shows no writer after the etcd restart though its writer is attached", vol)
	}
	nc.Close()
	n2 := reattach(t, c, nil, addr, vol, blocks*blockSize, 20*time.Second)
	mustVerify(t, n2, m, "fresh writer after the etcd restart")
}
