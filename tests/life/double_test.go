package life

import (
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/proccluster"
)

// TestDoubleReplicaKill (issue 8, double faults): replication 3 over 3
// daemons, the default policy. Under a write+flush workload two daemons
// are SIGKILLed at once. Every flushed write must still read back, from the
// third daemon alone, once the writer is replaced; after both come back a
// writer writes and flushes again and everything verifies.
func TestDoubleReplicaKill(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 3})
	const vol, blocks = "dk", 4096 // 16 MiB
	createVolume(t, c, vol, "16MiB", 0)
	p, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)
	w := newWorkload(m, uint64(m.seed), "writer 1")
	for i := 0; i < 300; i++ {
		if err := w.step(nc); err != nil {
			t.Fatalf("workload before the kills: %v", err)
		}
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatalf("flush before the kills: %v", err)
	}
	stop := w.background(nc)
	time.Sleep(2 * time.Second)
	t.Logf("SIGKILL daemons 0 and 1 at once (%s)", w.summary())
	done := make(chan struct{})
	go func() { c.Daemons[0].Kill(t); close(done) }()
	c.Daemons[1].Kill(t)
	<-done
	time.Sleep(time.Second)
	stop()
	t.Logf("workload: %s", w.summary())
	nc.Abort()

	nc2, p2, what := openReader(t, c, p, vol, blocks*blockSize)
	ids := mustVerify(t, nc2, m, "with two of three daemons dead, through "+what)
	m.settle(0, ids)

	for _, i := range []int{0, 1} {
		c.Daemons[i].Start(t)
	}
	for _, i := range []int{0, 1} {
		c.WaitHTTP("http://"+c.Daemons[i].HTTPAddr+"/readyz", 30*time.Second)
	}
	nc2.Abort()
	nc3, _, what := openReader(t, c, p2, vol, blocks*blockSize)
	if what != "a new writer" {
		t.Fatalf("no writer could attach with every daemon back")
	}
	w3 := newWorkload(m, uint64(m.seed)+3, "writer 3")
	took, ok, last := poll(30*time.Second, 250*time.Millisecond, func() (bool, string) {
		err := w3.step(nc3)
		if err == nil {
			err = w3.doFlush(nc3)
		}
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	if !ok {
		t.Fatalf("no write+flush succeeded within %v with every daemon back: %s", took, last)
	}
	for i := 0; i < 100; i++ {
		if err := w3.step(nc3); err != nil {
			t.Fatalf("writer 3: %v", err)
		}
	}
	if err := w3.doFlush(nc3); err != nil {
		t.Fatalf("writer 3 flush: %v", err)
	}
	mustVerify(t, nc3, m, "after both daemons came back")
}

// TestEtcdRestartReplicaKill (issue 8, double faults): replication 2 over
// 3 daemons, the default policy. Under a write+flush workload etcd and a
// daemon holding the open segment are SIGKILLed together; etcd comes back
// 3 s later, the daemon stays down (two are left, enough for the policy).
// I/O may fail while etcd is down, but the writer's own connection must
// write and flush again within 30 s of etcd's return, and nothing flushed
// may be lost: through the writer, and through a fresh one after the
// daemon is back.
func TestEtcdRestartReplicaKill(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2})
	const vol, blocks = "ek", 4096
	createVolume(t, c, vol, "16MiB", 0)
	_, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)
	w := newWorkload(m, uint64(m.seed), "writer")
	stop := w.background(nc)
	defer stop()
	time.Sleep(2 * time.Second)
	victim := openHolder(t, c, vol)
	if victim < 0 {
		victim = 0
	}
	t.Logf("SIGKILL etcd and daemon %d together (%s)", victim, w.summary())
	done := make(chan struct{})
	go func() { c.Etcd.Kill(t); close(done) }()
	c.Daemons[victim].Kill(t)
	<-done
	time.Sleep(3 * time.Second)
	c.Etcd.Start(t)
	back := time.Now()
	c.WaitHTTP(c.EtcdURL+"/health", 30*time.Second)
	stop()
	t.Logf("etcd back; workload so far: %s", w.summary())

	took, ok, last := poll(30*time.Second, 250*time.Millisecond, func() (bool, string) {
		if nc.broken != nil {
			return true, ""
		}
		err := w.step(nc)
		if err == nil {
			err = w.doFlush(nc)
		}
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	if nc.broken != nil {
		t.Fatalf("the writer's NBD connection broke: %v", nc.broken)
	}
	if !ok {
		t.Errorf("no write+flush succeeded on the writer's connection within %v after etcd came back (one daemon of three down): %s; workload %s",
			took.Round(time.Millisecond), last, w.summary())
	} else {
		t.Logf("write+flush succeeded %v after etcd came back", time.Since(back).Round(time.Millisecond))
		_, fe0, _ := w.errors()
		for i := 0; i < 100; i++ {
			w.step(nc)
		}
		w.doFlush(nc)
		if _, fe, log := w.errors(); fe > fe0 {
			t.Errorf("flushes failed again after the first success: %s", strings.Join(log, "\n"))
		}
	}
	mustVerify(t, nc, m, "through the writer after etcd's restart with a daemon down")
	c.Daemons[victim].Start(t)
	c.WaitHTTP("http://"+c.Daemons[victim].HTTPAddr+"/readyz", 30*time.Second)
	nc.Close()
	nc2 := reattach(t, c, nil, addr, vol, blocks*blockSize, 30*time.Second)
	mustVerify(t, nc2, m, "through a fresh writer")
}
