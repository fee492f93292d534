package life

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/proccluster"
)

// TestEvents: the event history records what an operator needs to know,
// and `torusctl events --follow -o json` streams it. Three daemons start
// (peer-up each); torusblk attaches a volume (writer-attached); a daemon is
// SIGKILLed (peer-down, volume-degraded, heal-started, heal-finished,
// volume-healthy); the lock is removed and a second torusblk attaches
// (writer-takeover), and the first writer's next write finds it fenced
// (writer-fenced). `torusctl events` prints them as a table too.
func TestEvents(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2})
	follow := &proccluster.Proc{Name: "events-follow",
		Args: []string{proccluster.Bin(t, "torusctl"), "--etcd", c.EtcdURL, "-o", "json", "events", "--follow"},
		Env:  c.EtcdEnv}
	follow.Start(t)
	t.Cleanup(func() { follow.Kill(t) })

	// streamed decodes the events follow printed so far.
	streamed := func() []torus.Event {
		var out []torus.Event
		for _, line := range strings.Split(follow.Output(), "\n") {
			var e torus.Event
			if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &e) == nil {
				out = append(out, e)
			}
		}
		return out
	}
	has := func(evs []torus.Event, kind torus.EventKind, about string) bool {
		for _, e := range evs {
			if e.Kind == kind && (about == "" || e.Peer == about || e.Volume == about) {
				return true
			}
		}
		return false
	}
	waitEvent := func(kind torus.EventKind, about string, d time.Duration) {
		t.Helper()
		eventually(t, d, 200*time.Millisecond, fmt.Sprintf("event %s about %q streamed by events --follow", kind, about), func() (bool, string) {
			evs := streamed()
			var kinds []string
			for _, e := range evs {
				kinds = append(kinds, string(e.Kind))
			}
			return has(evs, kind, about), strings.Join(kinds, " ")
		})
	}

	ids := map[int]string{}
	ps, err := peerList(c)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range c.Daemons {
		p, ok := peerByAddr(ps, d.PeerAddr)
		if !ok {
			t.Fatalf("daemon %d not in peer list", i)
		}
		ids[i] = p.ID
		waitEvent(torus.EventPeerUp, p.ID, 10*time.Second)
	}

	const vol, blocks = "ev", 4096
	createVolume(t, c, vol, "16MiB", 0)
	c.Ctl("volume", "set", vol, "min-replicas=1")
	_, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)
	w := newWorkload(m, uint64(m.seed), "writer 1")
	for i := 0; i < 200; i++ {
		if err := w.step(nc); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatal(err)
	}
	waitEvent(torus.EventWriterAttached, vol, 10*time.Second)
	if took, ok, last := pollHealth(c, vol, "healthy", 20*time.Second); !ok {
		t.Fatalf("volume health %q after %v, want healthy before the kill", last, took)
	}

	c.Daemons[2].Kill(t)
	waitEvent(torus.EventPeerDown, ids[2], 3*heartbeatTTL)
	waitEvent(torus.EventVolumeDegraded, vol, 15*time.Second)
	waitEvent(torus.EventHealStarted, "", downGrace+15*time.Second)
	waitEvent(torus.EventHealFinished, "", 60*time.Second)
	waitEvent(torus.EventVolumeHealthy, vol, 30*time.Second)

	// A takeover: the lock is removed, a second torusblk attaches, and
	// the first writer is fenced at its next write. The killed daemon
	// comes back first: it may hold the open segment, which recovery must
	// hear from (a ring member that is unreachable could hold more).
	c.Daemons[2].Start(t)
	c.WaitHTTP("http://"+c.Daemons[2].HTTPAddr+"/readyz", 30*time.Second)
	for i := 0; i < 20; i++ {
		if err := w.step(nc); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatal(err)
	}
	c.Ctl("volume", "unlock", vol, "--force")
	_, addr2 := c.StartNBD()
	nc2 := reattach(t, c, nil, addr2, vol, blocks*blockSize, 30*time.Second)
	defer nc2.Close()
	waitEvent(torus.EventWriterTakeover, vol, 10*time.Second)
	if err := nc.WriteAt(make([]byte, blockSize), 0, true); err == nil {
		t.Errorf("the first writer wrote after the takeover")
	}
	waitEvent(torus.EventWriterFenced, vol, 10*time.Second)

	// The table form, and the JSON form without --follow.
	out := c.Ctl("events", "--limit", "0")
	for _, want := range []string{"TIME", "peer-down", "volume-degraded", "writer-takeover", "writer-fenced"} {
		if !strings.Contains(out, want) {
			t.Errorf("torusctl events: no %q in\n%s", want, out)
		}
	}
	var all []torus.Event
	if err := c.CtlJSON(&all, "events", "--limit", "3"); err != nil || len(all) != 3 {
		t.Errorf("events --limit 3 -o json: %d events, %v", len(all), err)
	}
	for i := 1; i < len(all); i++ {
		if all[i].Seq <= all[i-1].Seq {
			t.Errorf("events out of order: %+v before %+v", all[i-1], all[i])
		}
	}
	follow.Signal(t, syscall.SIGTERM)
	for _, e := range streamed() {
		t.Logf("event %d %s %s peer=%s volume=%s by %s: %s", e.Seq, e.Severity, e.Kind, short(e.Peer), e.Volume, short(e.Reporter), e.Message)
	}
}
