package life

import (
	"strings"
	"syscall"
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
	stop()

	// The writer's own connection works again soon: no re-attach.
	resumed, ok, last := poll(60*time.Second, 250*time.Millisecond, func() (bool, string) {
		err := w.step(nc)
		if err == nil {
			err = w.doFlush(nc)
		}
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	if !ok {
		t.Fatalf("no write+flush succeeded on the writer's connection within %v after etcd came back; last error: %s; workload %s",
			resumed.Round(time.Millisecond), last, w.summary())
	}
	t.Logf("writes resumed %v after etcd came back", time.Since(back).Round(time.Millisecond))
	if since := time.Since(back); since > 15*time.Second {
		t.Errorf("writes resumed only %v after etcd came back (want within 15 s)", since.Round(time.Millisecond))
	}
	_, failsBefore, _ := w.errors()
	weBefore, _, _ := w.errors()
	for i := 0; i < 100; i++ {
		w.step(nc)
	}
	w.doFlush(nc)
	we1, fe1, log := w.errors()
	if we1 > weBefore || fe1 > failsBefore {
		t.Errorf("after recovery %d writes and %d flushes still failed:\n%s", we1-weBefore, fe1-failsBefore, strings.Join(log, "\n"))
	}
	t.Logf("workload: %s (failures before the kill %d/%d, by the restart %d/%d)", w.summary(), we0, fe0, duringW, duringF)
	if we0+fe0 > 0 {
		t.Errorf("failures before etcd was killed:\n%s", strings.Join(log, "\n"))
	}
	mustVerify(t, nc, m, "after the etcd restart")

	// Daemons reconnect: ready, and shown up.
	for i, d := range c.Daemons {
		took, ok, last := poll(20*time.Second, 200*time.Millisecond, func() (bool, string) { return stablyReady(d.HTTPAddr) })
		if !ok {
			t.Errorf("daemon %d not steadily ready %v after etcd came back (readyz: %s)", i, took.Round(time.Millisecond), last)
		}
	}
	if _, ok, last := poll(10*time.Second, 200*time.Millisecond, func() (bool, string) {
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
	}); !ok {
		t.Errorf("not every peer up after the etcd restart: %s", last)
	}
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

// TestDaemonStartsBeforeEtcd: a daemon restarted while etcd is down waits
// for it instead of exiting (it exited after 3 s before: a restart during an
// etcd outage, or a boot where torusd starts first, left it dead), and is
// ready soon after etcd is back.
func TestDaemonStartsBeforeEtcd(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 2, Replication: 2})
	d := c.Daemons[0]
	d.Signal(t, syscall.SIGTERM)
	c.Etcd.Kill(t)
	d.Start(t)
	time.Sleep(6 * time.Second)
	if !d.Running() {
		t.Fatalf("torusd exited while etcd was down:\n%s", d.Output())
	}
	if !strings.Contains(d.Output(), "etcd unreachable; retrying") {
		t.Fatalf("torusd did not say it is waiting for etcd:\n%s", d.Output())
	}
	c.Etcd.Start(t)
	c.WaitHTTP(c.EtcdURL+"/health", 30*time.Second)
	c.WaitHTTP("http://"+d.HTTPAddr+"/readyz", 30*time.Second)
}
