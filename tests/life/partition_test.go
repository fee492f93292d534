package life

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/proccluster"
)

// TestWriterPartition: the writer's host is cut off from etcd and every
// daemon (torusblk runs in its own network namespace, linked to the
// cluster through proxies that blackhole). Its lease expires, a new writer
// takes over and writes; then the partition heals, so everything the old
// writer sent or sends afterwards is delivered late. None of it lands: the
// old writer's flush fails, and the volume holds exactly the new writer's
// view, through the new writer and through a third one.
func TestWriterPartition(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2})
	const vol, blocks = "wp", 4096
	createVolume(t, c, vol, "16MiB", 0)
	m := newModel(seed(t), blocks)

	host := c.NewHost()
	_, addr1 := c.StartNBDOn(host)
	old := attach(t, host.Dial, addr1, vol, blocks*blockSize)
	w := newWorkload(m, uint64(m.seed), "old writer")
	stop := w.background(old)
	time.Sleep(2 * time.Second)
	stop()
	if we, fe, log := w.errors(); we+fe > 0 {
		t.Fatalf("old writer before the partition: %d failed writes, %d failed flushes:\n%s", we, fe, strings.Join(log, "\n"))
	}
	// One acknowledged but unflushed write: may survive or not.
	id, p := m.newWrite(0, 4, "old writer, unflushed before the cut", false)
	err := old.WriteAt(p, 0, false)
	m.done(id, err)

	t.Logf("cutting the writer's host off (%s)", w.summary())
	cut := time.Now()
	host.Cut()
	// Writes sent into the partition: they must never land.
	lateDone := make(chan struct{})
	go func() {
		defer close(lateDone)
		for i := 0; i < 3; i++ {
			id, p := m.newWrite(int64(i)*8, 8, "old writer, sent during the partition", true)
			m.done(id, old.WriteAt(p, int64(i)*8*blockSize, false))
		}
		old.Flush()
	}()

	// A new writer takes over once the old lease has expired.
	_, addr2 := c.StartNBD()
	nw := reattach(t, c, nil, addr2, vol, blocks*blockSize, writerLeaseTTL+30*time.Second)
	t.Logf("new writer attached %v after the cut (writer lease %v)", time.Since(cut).Round(time.Millisecond), writerLeaseTTL)
	ids := mustVerify(t, nw, m, "new writer after takeover")
	m.settle(0, ids)
	w2 := newWorkload(m, uint64(m.seed)+1, "new writer")
	for i := 0; i < 200; i++ {
		if err := w2.step(nw); err != nil {
			t.Fatalf("new writer: %v", err)
		}
	}
	if err := w2.doFlush(nw); err != nil {
		t.Fatalf("new writer flush: %v", err)
	}

	// Heal: the old writer's held traffic arrives now, and it keeps trying.
	before := hostTraffic(c, host)
	t.Log("healing the partition")
	host.Heal()
	select {
	case <-lateDone:
	case <-time.After(2 * ioTimeout):
		t.Fatal("the old writer's requests neither completed nor failed after the partition healed")
	}
	flushOK := 0
	for i := 0; i < 20; i++ {
		id, p := m.newWrite(int64(i)*16, 16, "old writer, after the heal", true)
		err := old.WriteAt(p, int64(i)*16*blockSize, false)
		m.done(id, err)
		if err != nil && old.broken != nil {
			break
		}
		if i%5 == 4 {
			if err := old.Flush(); err == nil {
				flushOK++
			}
		}
	}
	if flushOK > 0 {
		t.Errorf("the fenced old writer's FLUSH succeeded %d times after a new writer took over", flushOK)
	}
	m.mu.Lock()
	var late []string
	for _, wr := range m.writes {
		if wr.state == wsForbidden {
			late = append(late, wr.result)
		}
	}
	m.mu.Unlock()
	t.Logf("old writer's late writes: %d, results: %s", len(late), summarize(late))
	t.Logf("old writer's traffic to the daemons delivered after the heal: %d bytes (requests held in the partition reach the daemons late and must be refused there)", hostTraffic(c, host)-before)

	mustVerify(t, nw, m, "new writer after the old writer's late traffic")
	nw.Close()
	_, addr3 := c.StartNBD()
	n3 := reattach(t, c, nil, addr3, vol, blocks*blockSize, 15*time.Second)
	mustVerify(t, n3, m, "third writer")
}

// hostTraffic is the bytes the host sent to the daemons so far.
func hostTraffic(c *proccluster.Cluster, h *proccluster.Host) int64 {
	var n int64
	for _, d := range c.Daemons {
		if p := h.Proxy(d.PeerAddr); p != nil {
			up, _ := p.Forwarded()
			n += up
		}
	}
	return n
}

var reqPrefix = regexp.MustCompile(`^nbd [A-Z]+ off=\d+ len=\d+: `)

// summarize counts identical strings (request offsets removed).
func summarize(ss []string) string {
	counts := map[string]int{}
	var order []string
	for _, s := range ss {
		s = reqPrefix.ReplaceAllString(s, "")
		if len(s) > 120 {
			s = s[:120] + "..."
		}
		if counts[s] == 0 {
			order = append(order, s)
		}
		counts[s]++
	}
	var out []string
	for _, s := range order {
		out = append(out, fmt.Sprintf("%s ×%d", s, counts[s]))
	}
	return strings.Join(out, "; ")
}

// TestWriterCutFromEtcd: the writer's host loses only etcd; the daemons
// stay reachable, so the old writer can keep sending appends and syncs
// while its lease runs out and after a new writer took over. Writes and
// flushes it makes before the takeover may count; after it, its flushes
// fail and nothing it writes is visible, while etcd is still cut and after
// the link heals.
func TestWriterCutFromEtcd(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2})
	const vol, blocks = "we", 4096
	createVolume(t, c, vol, "16MiB", 0)
	m := newModel(seed(t), blocks)
	host := c.NewHost()
	u, err := url.Parse(c.EtcdURL)
	if err != nil {
		t.Fatal(err)
	}
	etcdLink := host.Proxy(u.Host)
	_, addr1 := c.StartNBDOn(host)
	old := attach(t, host.Dial, addr1, vol, blocks*blockSize)
	w := newWorkload(m, uint64(m.seed), "old writer")
	stop := w.background(old)
	time.Sleep(2 * time.Second)
	t.Logf("cutting the writer's host off etcd only (%s)", w.summary())
	cut := time.Now()
	etcdLink.Blackhole()

	_, addr2 := c.StartNBD()
	nw := reattach(t, c, nil, addr2, vol, blocks*blockSize, writerLeaseTTL+30*time.Second)
	t.Logf("new writer attached %v after the cut; old writer meanwhile: %s", time.Since(cut).Round(time.Millisecond), w.summary())
	stop()
	ids := mustVerify(t, nw, m, "new writer after takeover")
	m.settle(0, ids)

	oldAttempts := func(phase string) int {
		ok := 0
		for i := 0; i < 10; i++ {
			id, p := m.newWrite(int64(i)*16, 16, "old writer after the takeover, "+phase, true)
			err := old.WriteAt(p, int64(i)*16*blockSize, false)
			m.done(id, err)
			if err != nil && old.broken != nil {
				break
			}
			if i%3 == 2 && old.Flush() == nil {
				ok++
			}
		}
		return ok
	}
	if n := oldAttempts("etcd still cut"); n > 0 {
		t.Errorf("the fenced old writer's FLUSH succeeded %d times after a new writer took over (etcd cut, daemons reachable)", n)
	}
	mustVerify(t, nw, m, "new writer after the old writer's attempts (etcd cut)")
	etcdLink.Heal()
	time.Sleep(time.Second)
	if n := oldAttempts("etcd link healed"); n > 0 {
		t.Errorf("the fenced old writer's FLUSH succeeded %d times after its etcd link healed", n)
	}
	w2 := newWorkload(m, uint64(m.seed)+1, "new writer")
	for i := 0; i < 100; i++ {
		if err := w2.step(nw); err != nil {
			t.Fatalf("new writer: %v", err)
		}
	}
	if err := w2.doFlush(nw); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, nw, m, "new writer after its own writes")
	nw.Close()
	_, addr3 := c.StartNBD()
	n3 := reattach(t, c, nil, addr3, vol, blocks*blockSize, 15*time.Second)
	mustVerify(t, n3, m, "third writer")
}
