package life

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/proccluster"
)

// TestHostFailureDomain: four daemons on two "hosts" (torusd --location
// host=a for daemons 0 and 3, host=b for 1 and 2), replication 2, the
// default rule (failure domain host). Every live segment has one copy on
// each host. SIGKILL both daemons of host a: every flushed byte still
// reads back, and healing does not put a second copy of a segment on host
// b while host a is down (Placement.Desired leaves a down domain alone).
// When host a is back, every segment again has one copy on each host.
func TestHostFailureDomain(t *testing.T) {
	// Hosts interleave with the daemons' addresses: a, b, b, a.
	hostOf := func(d int) string { return []string{"a", "b", "b", "a"}[d] }
	c := startCluster(t, proccluster.Options{Daemons: 4, Replication: 2,
		Locations: []string{"host=a", "host=b", "host=b", "host=a"}})
	md := metaClient(t, c)

	var rg struct {
		Format        int    `json:"format"`
		FailureDomain string `json:"failure_domain"`
		Members       []struct {
			ID   string `json:"id"`
			Host string `json:"host"`
		} `json:"members"`
	}
	if err := c.CtlJSON(&rg, "ring", "get", "-o", "json"); err != nil {
		t.Fatal(err)
	}
	hosts := map[string]int{}
	for _, m := range rg.Members {
		hosts[m.Host]++
	}
	if rg.Format != torus.RingFormatHierarchy || hosts["a"] != 2 || hosts["b"] != 2 {
		t.Fatalf("ring format %d, hosts %v; want format %d with two members on each of hosts a and b", rg.Format, hosts, torus.RingFormatHierarchy)
	}

	const vol, blocks = "hosts", 8192 // 32 MiB
	createVolume(t, c, vol, "32MiB", 0)
	c.Ctl("volume", "set", vol, "min-replicas=1")
	_, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)
	w := newWorkload(m, uint64(m.seed), "writer")
	for i := 0; i < 400; i++ {
		if err := w.step(nc); err != nil {
			t.Fatalf("workload: %v", err)
		}
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatalf("flush: %v", err)
	}

	// perHost counts each live segment's full copies by host.
	perHost := func(cs *census, id torus.SegmentID) map[string]int {
		n := map[string]int{}
		for _, h := range cs.holders[id] {
			if h.length >= cs.required[id] {
				n[hostOf(h.daemon)]++
			}
		}
		return n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before, err := takeCensus(ctx, c, md, vol, 2)
	if err != nil {
		t.Fatal(err)
	}
	var sealed []torus.SegmentID
	for _, id := range before.sortedLive() {
		if before.speculative[id] {
			continue
		}
		sealed = append(sealed, id)
		if n := perHost(before, id); n["a"] != 1 || n["b"] != 1 {
			t.Errorf("segment %s: copies by host %v, want one on a and one on b", before.describe(id), n)
		}
	}
	if len(sealed) < 8 {
		t.Fatalf("only %d sealed segments; the workload should have written more", len(sealed))
	}
	t.Logf("%d live sealed segments, each with one copy on host a and one on host b", len(sealed))

	// Host a goes away: both its daemons at once.
	for _, d := range []int{0, 3} {
		c.Daemons[d].Kill(t)
	}
	killed := time.Now()
	mustVerify(t, nc, m, "with host a down")

	// Healing must not fill host b with the second copies: watch it for
	// several maintenance passes past --down-grace.
	for time.Since(killed) < downGrace+15*time.Second {
		cs, err := takeCensus(ctx, c, md, vol, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range sealed {
			if !cs.live[id] {
				continue
			}
			if n := perHost(cs, id); n["b"] != 1 {
				t.Fatalf("%v after host a went down, segment %s has %d copies on host b, want 1 (healing must wait for host a)",
					time.Since(killed).Round(time.Second), cs.describe(id), n["b"])
			}
		}
		time.Sleep(time.Second)
	}
	var st struct {
		Placement torus.PlacementHealth `json:"placement"`
	}
	if err := c.CtlJSON(&st, "status", "-o", "json"); err != nil {
		t.Fatal(err)
	}
	t.Logf("status placement with host a down: %+v", st.Placement)

	// Host a comes back: one copy of every segment on each host again,
	// and every flushed byte reads back through a fresh writer.
	for _, d := range []int{0, 3} {
		c.Daemons[d].Start(t)
		c.WaitHTTP("http://"+c.Daemons[d].HTTPAddr+"/readyz", 30*time.Second)
	}
	eventually(t, 90*time.Second, time.Second, "one copy on each host after host a returned", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cs, err := takeCensus(ctx, c, md, vol, 2)
		if err != nil {
			return false, err.Error()
		}
		var bad []string
		for _, id := range cs.sortedLive() {
			if cs.speculative[id] {
				continue
			}
			if n := perHost(cs, id); n["a"] != 1 || n["b"] != 1 {
				bad = append(bad, fmt.Sprintf("%v: %s", n, cs.describe(id)))
			}
		}
		if len(bad) > 0 {
			return false, fmt.Sprintf("%d segments not one per host, e.g. %s", len(bad), strings.Join(bad[:min(3, len(bad))], "; "))
		}
		return true, ""
	})
	nc.Close()
	nc2 := reattach(t, c, nil, addr, vol, blocks*blockSize, 30*time.Second)
	mustVerify(t, nc2, m, "through a fresh writer after host a returned")
}

// TestRingFormatUpgrade: a cluster whose ring is in the format written
// before failure domains existed (format 1, zones only) keeps working, and
// `torusctl ring set-rule` switches it to the hierarchy format. Its
// daemons are on distinct hosts with no racks, so the switch moves
// nothing: every live segment keeps exactly its holders, and every flushed
// block reads back before and after.
func TestRingFormatUpgrade(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2,
		Locations: []string{"zone=z0,host=h0", "zone=z1,host=h1", "zone=z2,host=h2"}})
	md := metaClient(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	// Rewrite the ring as an older torusctl stored it: no format, no rule.
	old, err := md.Ring(ctx)
	if err != nil {
		t.Fatal(err)
	}
	old.Version++
	old.Format, old.FailureDomain = 0, ""
	if err := md.SetRing(ctx, old); err != nil {
		t.Fatal(err)
	}
	if out := c.Ctl("ring", "get"); !strings.Contains(out, "format 1, failure domain peer") {
		t.Fatalf("ring get after writing a format-1 ring:\n%s", out)
	}

	const vol, blocks = "upg", 4096 // 16 MiB
	createVolume(t, c, vol, "16MiB", 0)
	_, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)
	w := newWorkload(m, uint64(m.seed), "writer")
	for i := 0; i < 200; i++ {
		if err := w.step(nc); err != nil {
			t.Fatalf("workload on the format-1 ring: %v", err)
		}
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, nc, m, "on the format-1 ring")
	nc.Close()
	holders := func() map[torus.SegmentID]string {
		cs, err := takeCensus(ctx, c, md, vol, 2)
		if err != nil {
			t.Fatal(err)
		}
		if u := cs.underReplicated(); len(u) > 0 {
			t.Fatalf("under-replicated: %s", strings.Join(u, "; "))
		}
		out := map[torus.SegmentID]string{}
		for _, id := range cs.sortedLive() {
			if !cs.speculative[id] {
				var ds []string
				for _, h := range cs.holders[id] {
					ds = append(ds, fmt.Sprint(h.daemon))
				}
				slices.Sort(ds)
				out[id] = strings.Join(ds, ",")
			}
		}
		return out
	}
	before := holders()

	out := c.Ctl("ring", "set-rule", "--failure-domain", "host")
	if !strings.Contains(out, "failure domain host; placement ok (3 host domains for replication 2)") {
		t.Fatalf("set-rule: %s", out)
	}
	// Give the daemons several maintenance passes on the new ring.
	time.Sleep(10 * time.Second)
	after := holders()
	for id, h := range before {
		if after[id] != h {
			t.Errorf("segment %v held by daemons [%s] before the switch, [%s] after: the switch must move nothing", id, h, after[id])
		}
	}
	nc2 := reattach(t, c, nil, addr, vol, blocks*blockSize, 30*time.Second)
	for i := 0; i < 50; i++ {
		if err := w.step(nc2); err != nil {
			t.Fatalf("workload on the format-2 ring: %v", err)
		}
	}
	if err := w.doFlush(nc2); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, nc2, m, "after set-rule")
}
