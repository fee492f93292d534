package life

import (
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/proccluster"
)

// TestWriterKill: SIGKILL the writer (torusblk) mid-workload. A new
// torusblk attaches at once after `torusctl volume unlock --force`, and,
// the second time, only once the dead writer's lease expired; both times
// every flushed write is there and unflushed ones are either there or not
// (and stay so).
func TestWriterKill(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2})
	const vol, blocks = "wk", 4096 // 16 MiB
	createVolume(t, c, vol, "16MiB", 0)
	m := newModel(seed(t), blocks)

	p1, addr1 := c.StartNBD()
	nc := attach(t, nil, addr1, vol, blocks*blockSize)
	w := newWorkload(m, uint64(m.seed), "writer 1")
	stop := w.background(nc)
	time.Sleep(3 * time.Second)
	t.Logf("SIGKILL writer 1 mid-workload (%s)", w.summary())
	p1.Kill(t)
	stop()

	// The lock is still held by the dead writer: a new writer is refused.
	p2, addr2 := c.StartNBD()
	if nc2, err := tryAttach(nil, addr2, vol); err == nil {
		nc2.Abort()
		t.Fatalf("a second writer attached while the dead writer's lease (%v) still held the volume", writerLeaseTTL)
	} else {
		t.Logf("attach before unlock refused as expected: %v", err)
	}
	r, err := volumeInfo(c, vol)
	if err != nil {
		t.Fatal(err)
	}
	if r.Writer == "" {
		t.Errorf("volume list shows no writer right after the writer was killed; want the dead writer until its lease expires")
	}

	t.Run("unlock-force", func(t *testing.T) {
		out := c.Ctl("volume", "unlock", vol, "--force")
		t.Logf("torusctl volume unlock --force: %s", strings.TrimSpace(out))
		start := time.Now()
		nc2 := reattach(t, c, nil, addr2, vol, blocks*blockSize, 10*time.Second)
		t.Logf("writer 2 attached %v after unlock --force", time.Since(start).Round(time.Millisecond))
		ids := mustVerify(t, nc2, m, "writer 2 after unlock --force")
		m.settle(0, ids)
		w2 := newWorkload(m, uint64(m.seed)+2, "writer 2")
		stop := w2.background(nc2)
		time.Sleep(2 * time.Second)
		stop()
		if we, fe, log := w2.errors(); we+fe > 0 {
			t.Errorf("writer 2: %d failed writes, %d failed flushes:\n%s", we, fe, strings.Join(log, "\n"))
		}
		mustVerify(t, nc2, m, "writer 2 after its own writes")
		t.Logf("SIGKILL writer 2 mid-workload (%s)", w2.summary())
		stop = w2.background(nc2)
		time.Sleep(time.Second)
		p2.Kill(t)
		stop()
	})

	t.Run("lease-expiry", func(t *testing.T) {
		killed := time.Now()
		_, addr3 := c.StartNBD()
		nc3 := reattach(t, c, nil, addr3, vol, blocks*blockSize, writerLeaseTTL+20*time.Second)
		took := time.Since(killed)
		t.Logf("writer 3 attached %v after writer 2 died, without unlock (lease %v)", took.Round(time.Millisecond), writerLeaseTTL)
		if took < writerLeaseTTL/2 {
			t.Errorf("writer 3 attached after %v, before the dead writer's lease (%v) could have expired", took, writerLeaseTTL)
		}
		if took > writerLeaseTTL+15*time.Second { // slack for a loaded 2-core CI box
			t.Errorf("writer 3 attached only %v after the writer died; the documented takeover is when the %v lease expires", took.Round(time.Millisecond), writerLeaseTTL)
		}
		ids := mustVerify(t, nc3, m, "writer 3 after lease expiry")
		m.settle(0, ids)
		w3 := newWorkload(m, uint64(m.seed)+3, "writer 3")
		for i := 0; i < 100; i++ {
			if err := w3.step(nc3); err != nil {
				t.Fatalf("writer 3: %v", err)
			}
		}
		if err := w3.doFlush(nc3); err != nil {
			t.Fatal(err)
		}
		mustVerify(t, nc3, m, "writer 3 after its own writes")
	})
}
