package rebalance

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/ring"
)

// computeAll applies plans until there is nothing left to do.
func computeAll(t *testing.T, in Input) []Segment {
	t.Helper()
	for range 5 {
		p, err := Compute(in)
		if err != nil {
			t.Fatal(err)
		}
		if p.Empty() {
			return in.Segments
		}
		apply(in.Segments, p.Moves)
	}
	t.Fatal("plans did not converge in 5 rounds")
	return nil
}

// TestPlanPinnedPlacement: the planner takes any torus.Placement. With
// volume 1 pinned to two peers, every segment of it moves there and
// nowhere else; another volume keeps the ring's placement.
func TestPlanPinnedPlacement(t *testing.T) {
	ms := members(6, 3)
	r := mustRing(t, torus.RingSpec{Version: 1, Replication: 2, Members: ms})
	pins := []string{"p0005", "p0001"}
	pl, err := ring.NewPinned(r, map[uint64][]string{1: pins})
	if err != nil {
		t.Fatal(err)
	}
	segs := place(r, 200, 100)
	other := torus.SegmentID{Volume: 2, Epoch: 1, Seq: 1}
	otherHolders := r.Lookup(other.Key(), 2, nil)
	segs = append(segs, Segment{ID: other, Sealed: true, Length: 100,
		Holders: []Holder{{otherHolders[0], 100}, {otherHolders[1], 100}}})
	segs = computeAll(t, Input{Ring: pl, Up: allUp(ms), Segments: segs})
	for _, s := range segs {
		var got []string
		for _, h := range s.Holders {
			got = append(got, h.Peer)
		}
		slices.Sort(got)
		want := slices.Sorted(slices.Values(pins))
		if s.ID.Volume == 2 {
			want = slices.Sorted(slices.Values(otherHolders))
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s held by %v, want %v", s.ID, got, want)
		}
	}
	// A pin down: its replicas come from the base order, and Health says so.
	down := allUp(ms)
	down["p0005"] = false
	if h := pl.Health(func(id string) bool { return !down[id] }); !h.Degraded {
		t.Errorf("pinned volume with one usable pin of 2: health %+v, want degraded", h)
	}
	for _, s := range segs[:20] {
		d := Input{Ring: pl, Up: down}.Desired(s.ID.Key())
		if len(d) != 2 || d[0] != "p0001" {
			t.Fatalf("%s desired %v with p0005 down, want [p0001 <base>]", s.ID, d)
		}
	}
}

// TestPlanHostRule: 4 daemons on 2 hosts, replication 2, rule host. Every
// segment has one copy on each host. With both daemons of one host down,
// every segment still has its copy on the other host, and healing does not
// put a second copy there; when the host is back, nothing moves.
func TestPlanHostRule(t *testing.T) {
	var ms []torus.RingMember
	for i := range 4 {
		ms = append(ms, torus.RingMember{ID: fmt.Sprintf("d%d", i), Host: fmt.Sprintf("h%d", i%2), Weight: 1 << 40})
	}
	host := map[string]string{}
	for _, m := range ms {
		host[m.ID] = m.Host
	}
	r := mustRing(t, torus.RingSpec{Version: 1, Replication: 2, Members: ms,
		Format: torus.RingFormatHierarchy, FailureDomain: torus.DomainHost})
	segs := place(r, 500, 10)
	spread := func(up map[string]bool, want int) {
		t.Helper()
		for _, s := range segs {
			hosts := map[string]int{}
			for _, h := range s.Holders {
				if up[h.Peer] {
					hosts[host[h.Peer]]++
				}
			}
			if len(hosts) != want {
				t.Fatalf("%s: up holders %v span hosts %v, want %d hosts", s.ID, s.Holders, hosts, want)
			}
			for h, n := range hosts {
				if n > 1 {
					t.Fatalf("%s: %d copies on host %s (holders %v)", s.ID, n, h, s.Holders)
				}
			}
		}
	}
	up := allUp(ms)
	spread(up, 2)
	up["d0"], up["d2"] = false, false // host h0 down
	p, err := Compute(Input{Ring: r, Up: up, Segments: segs})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Copies) != 0 || len(p.Unavailable) != 0 || p.UnderReplicated != len(segs) {
		t.Fatalf("host h0 down: %d copies, %d unavailable, %d under-replicated; want 0, 0, %d",
			len(p.Copies), len(p.Unavailable), p.UnderReplicated, len(segs))
	}
	spread(up, 1)
	up["d0"], up["d2"] = true, true
	p, err = Compute(Input{Ring: r, Up: up, Segments: segs})
	if err != nil || !p.Empty() {
		t.Fatalf("host h0 back: plan %+v, %v; want empty", p, err)
	}
	// One daemon of h0 down: its copies go to the other daemon of h0.
	up["d0"] = false
	segs = computeAll(t, Input{Ring: r, Up: up, Segments: segs})
	spread(up, 2)
}

// TestPlanTooFewHosts: rule host with replication 3 on 2 hosts: the
// topology forces a host to hold two copies, and the planner fills them.
func TestPlanTooFewHosts(t *testing.T) {
	var ms []torus.RingMember
	for i := range 4 {
		ms = append(ms, torus.RingMember{ID: fmt.Sprintf("d%d", i), Host: fmt.Sprintf("h%d", i%2), Weight: 1 << 40})
	}
	r := mustRing(t, torus.RingSpec{Version: 1, Replication: 3, Members: ms, Format: torus.RingFormatHierarchy})
	if h := r.Health(nil); !h.Degraded || h.Domains != 2 {
		t.Fatalf("health %+v, want degraded with 2 domains", h)
	}
	segs := place(mustRing(t, torus.RingSpec{Version: 1, Replication: 1, Members: ms}), 100, 10)
	segs = computeAll(t, Input{Ring: r, Up: allUp(ms), Segments: segs})
	for _, s := range segs {
		if len(s.Holders) != 3 {
			t.Fatalf("%s: holders %v, want 3", s.ID, s.Holders)
		}
	}
}

// TestPlanVolumeRule: a volume's own rule (RingSpec.Rules) steers healing.
// Two zones of two hosts, replication 2, ring rule host. With zone z0
// down, the segments of a volume with rule zone wait for z0 (no copy into
// z1, which holds the other copy), while under the ring's rule alone they
// are healed onto z1's other host.
func TestPlanVolumeRule(t *testing.T) {
	var ms []torus.RingMember
	for z := range 2 {
		for h := range 2 {
			ms = append(ms, torus.RingMember{ID: fmt.Sprintf("z%d-h%d", z, h), Zone: fmt.Sprintf("z%d", z),
				Host: fmt.Sprintf("z%dh%d", z, h), Weight: 1 << 40})
		}
	}
	spec := torus.RingSpec{Version: 1, Replication: 2, Members: ms, Format: torus.RingFormatHierarchy}
	plain := mustRing(t, spec)
	segs := place(plain, 300, 10)
	vol := strconv.FormatUint(segs[0].ID.Volume, 10)
	spec.Rules = map[string]string{vol: torus.DomainZone}
	ruled, err := ring.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	up := allUp(ms)
	up["z0-h0"], up["z0-h1"] = false, false
	p, err := Compute(Input{Ring: ruled, Up: up, Segments: segs})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Copies) != 0 || p.UnderReplicated != len(segs) {
		t.Errorf("rule zone, zone z0 down: %d copies, %d under-replicated; want 0 and %d", len(p.Copies), p.UnderReplicated, len(segs))
	}
	p, err = Compute(Input{Ring: plain, Up: up, Segments: segs})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Copies) != len(segs) {
		t.Errorf("rule host, zone z0 down: %d copies, want one per segment (%d)", len(p.Copies), len(segs))
	}
	for _, c := range p.Copies {
		if !strings.HasPrefix(c.To, "z1-") {
			t.Errorf("copy %v goes to zone z0, which is down", c)
		}
	}
}
