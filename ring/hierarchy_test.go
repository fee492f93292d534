package ring

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/torus-storage/torus"
)

// topo builds members: zones x racks x hosts x disks, IDs "zZ-rR-hH-dD".
func topo(zones, racks, hosts, disks int) []torus.RingMember {
	var ms []torus.RingMember
	for z := range zones {
		for r := range racks {
			for h := range hosts {
				for d := range disks {
					ms = append(ms, torus.RingMember{
						ID:   fmt.Sprintf("z%d-r%d-h%d-d%d", z, r, h, d),
						Zone: fmt.Sprintf("z%d", z), Rack: fmt.Sprintf("r%d", r),
						Host: fmt.Sprintf("z%dr%dh%d", z, r, h), Weight: 1 << 30,
					})
				}
			}
		}
	}
	return ms
}

func hier(repl int, rule string, ms []torus.RingMember) torus.RingSpec {
	return torus.RingSpec{Version: 1, Replication: repl, VirtualNodes: 64, Members: ms,
		Format: torus.RingFormatHierarchy, FailureDomain: rule}
}

func TestGoldenHierarchy(t *testing.T) {
	uneven := append(topo(1, 2, 2, 2), torus.RingMember{ID: "lone", Zone: "z9", Rack: "r0", Host: "big", Weight: 4 << 30})
	cases := []struct {
		name string
		spec torus.RingSpec
	}{
		{"hier-host-r3", hier(3, "host", topo(2, 2, 2, 2))},
		{"hier-rack-r3", hier(3, "rack", topo(1, 3, 2, 2))},
		{"hier-zone-r3", hier(3, "zone", topo(3, 2, 1, 2))},
		{"hier-degraded-r3", hier(3, "host", topo(1, 1, 2, 3))},
		{"hier-uneven-r2", hier(2, "", uneven)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := mustNew(t, tc.spec)
			var b bytes.Buffer
			h := r.Health(nil)
			fmt.Fprintf(&b, "# ring %s: version %d, format %d, rule %s, replication %d, virtual nodes %d\n",
				tc.name, r.Version(), r.Format(), r.FailureDomain(), r.Replication(), r.VirtualNodes())
			fmt.Fprintf(&b, "# health: %d %s domains, degraded %v\n", h.Domains, h.FailureDomain, h.Degraded)
			for _, m := range r.Members() {
				fmt.Fprintf(&b, "# member %s %s weight=%d points=%d\n", m.ID, m.Location(), m.Weight, r.points(m.ID))
			}
			for i := 0; i < 64; i++ {
				k := segKey(i)
				fmt.Fprintf(&b, "%s %s\n", k, strings.Join(r.Lookup(k, r.Replication(), nil), " "))
			}
			golden(t, tc.name, b.Bytes())
		})
	}
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./ring -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("placement differs from %s; if intended, run go test ./ring -update and review the diff\ngot:\n%s", path, got)
	}
}

// TestFormatZonesIgnoresRackAndHost: a RingFormatZones ring places exactly
// as before formats existed, whatever racks and hosts its members name;
// and a hierarchy ring whose members have distinct hosts and no racks
// places exactly like it (switching such a cluster to a rule moves nothing).
func TestFormatZonesIgnoresRackAndHost(t *testing.T) {
	plain := equalMembers(12, "a", "b", "c")
	located := slices.Clone(plain)
	shared := slices.Clone(plain)
	for i := range located {
		located[i].Rack = fmt.Sprintf("r%d", i%2)
		located[i].Host = fmt.Sprintf("h%d", i)
		shared[i].Host = "same"
	}
	r0 := mustNew(t, torus.RingSpec{Replication: 3, Members: plain})
	r1 := mustNew(t, torus.RingSpec{Replication: 3, Members: shared, Format: torus.RingFormatZones})
	noRacks := slices.Clone(located)
	for i := range noRacks {
		noRacks[i].Rack = ""
	}
	r2 := mustNew(t, torus.RingSpec{Replication: 3, Members: noRacks, Format: torus.RingFormatHierarchy})
	for i := 0; i < 3000; i++ {
		k := segKey(i)
		a := r0.Order(k)
		if b := r1.Order(k); !slices.Equal(a, b) {
			t.Fatalf("format 1 with hosts: %v, without: %v", b, a)
		}
		if c := r2.Order(k); !slices.Equal(a, c) {
			t.Fatalf("format 2, distinct hosts, no racks: %v, format 1: %v", c, a)
		}
	}
}

func TestFormatErrors(t *testing.T) {
	ms := equalMembers(3)
	for name, spec := range map[string]torus.RingSpec{
		"unknown format":       {Replication: 1, Members: ms, Format: 3},
		"rule on format 1":     {Replication: 1, Members: ms, FailureDomain: "host"},
		"unknown rule":         {Replication: 1, Members: ms, Format: 2, FailureDomain: "room"},
		"unknown format empty": {Replication: 1, Format: 9},
	} {
		if _, err := Build(spec); err == nil {
			t.Errorf("%s: Build succeeded", name)
		}
	}
}

// domainOf maps member IDs to their domain at level for a hierarchy ring.
func domainOf(ms []torus.RingMember, level string) map[string]string {
	d := map[string]string{}
	for _, m := range ms {
		switch level {
		case "zone":
			d[m.ID] = m.Zone
		case "rack":
			d[m.ID] = m.Zone + "/" + m.Rack
		case "host":
			d[m.ID] = m.Host
			if m.Host == "" {
				d[m.ID] = "\x01" + m.ID
			}
		}
	}
	return d
}

func countDistinct(ids []string, dom map[string]string) int {
	seen := map[string]bool{}
	for _, id := range ids {
		seen[dom[id]] = true
	}
	return len(seen)
}

// TestHierarchyProperties: over random topologies (seeded) and random down
// sets, at every level at or above the rule, the replicas of every key
// are in distinct domains whenever there are enough usable domains, and
// Health is degraded exactly when the rule's level has too few.
func TestHierarchyProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 13))
	levels := []string{"zone", "rack", "host"}
	degraded, satisfied := 0, 0
	for iter := 0; iter < 300; iter++ {
		var ms []torus.RingMember
		nz, nr, nh := 1+rng.IntN(3), 1+rng.IntN(3), 1+rng.IntN(4)
		for i := range 1 + rng.IntN(30) {
			m := torus.RingMember{ID: fmt.Sprintf("m%02d", i), Weight: 1 + rng.Int64N(1000),
				Zone: fmt.Sprintf("z%d", rng.IntN(nz))}
			m.Rack = fmt.Sprintf("r%d", rng.IntN(nr))
			if rng.IntN(8) > 0 {
				m.Host = fmt.Sprintf("%s%s-h%d", m.Zone, m.Rack, rng.IntN(nh))
			}
			ms = append(ms, m)
		}
		rule := levels[rng.IntN(3)]
		repl := 1 + rng.IntN(4)
		r := mustNew(t, torus.RingSpec{Replication: repl, VirtualNodes: 1 + rng.IntN(100), Members: ms,
			Format: torus.RingFormatHierarchy, FailureDomain: rule})
		down := map[string]bool{}
		for _, m := range ms {
			if rng.IntN(4) == 0 {
				down[m.ID] = true
			}
		}
		skip := func(id string) bool { return down[id] }
		usable := map[string]map[string]bool{}
		for _, l := range levels {
			usable[l] = map[string]bool{}
			dom := domainOf(ms, l)
			for _, m := range ms {
				if !down[m.ID] {
					usable[l][dom[m.ID]] = true
				}
			}
		}
		h := r.Health(skip)
		if want := len(usable[rule]) < repl; h.Degraded != want || h.Domains != len(usable[rule]) {
			t.Fatalf("iter %d: health %+v, usable %s domains %d, replication %d", iter, h, rule, len(usable[rule]), repl)
		}
		if h.Degraded {
			degraded++
		} else {
			satisfied++
		}
		view := r.Exclude(skip)
		for k := 0; k < 40; k++ {
			key := segKey(rng.IntN(1 << 20))
			got := r.Lookup(key, repl, skip)
			if v := view.Lookup(key, repl, nil); !slices.Equal(got, v) {
				t.Fatalf("Exclude view %v != Lookup with skip %v", v, got)
			}
			if want := min(repl, len(ms)-len(down)); len(got) != want {
				t.Fatalf("iter %d: Lookup gave %d of %d", iter, len(got), want)
			}
			for _, l := range levels {
				dom := domainOf(ms, l)
				if want := min(len(got), len(usable[l])); countDistinct(got[:want], dom) != want {
					t.Fatalf("iter %d: %v: first %d not in distinct %s domains", iter, got, want, l)
				}
			}
			// Desired never repeats a rule domain while the topology
			// has enough of them.
			d := r.Desired(key, skip)
			if dom := domainOf(ms, rule); r.Domains(rule) >= repl && countDistinct(d, dom) != len(d) {
				t.Fatalf("iter %d: Desired %v repeats a %s", iter, d, rule)
			}
		}
	}
	t.Logf("%d topologies satisfied the rule, %d were degraded", satisfied, degraded)
	if degraded == 0 || satisfied == 0 {
		t.Errorf("random topologies did not cover both cases")
	}
}

// TestTwoDaemonsOneHost: daemons sharing a host never share a segment
// while there are at least Replication hosts.
func TestTwoDaemonsOneHost(t *testing.T) {
	ms := topo(1, 1, 3, 2) // 3 hosts, 2 daemons each
	r := mustNew(t, hier(3, "host", ms))
	dom := domainOf(ms, "host")
	for i := 0; i < 5000; i++ {
		if got := r.Lookup(segKey(i), 3, nil); countDistinct(got, dom) != 3 {
			t.Fatalf("key %d: %v shares a host", i, got)
		}
	}
}

func TestPinned(t *testing.T) {
	r := mustNew(t, hier(2, "host", topo(1, 1, 3, 2)))
	p, err := Build(torus.RingSpec{Version: 1, Replication: 2, Members: r.Members(), Format: 2,
		Pins: map[string][]string{"7": {"z0-r0-h2-d1", "z0-r0-h0-d0"}}})
	if err != nil {
		t.Fatal(err)
	}
	pinned := torus.SegmentID{Volume: 7, Epoch: 2, Seq: 9}.Key()
	if got := p.Lookup(pinned, 2, nil); !slices.Equal(got, []string{"z0-r0-h2-d1", "z0-r0-h0-d0"}) {
		t.Errorf("pinned volume: %v", got)
	}
	if o := p.Order(pinned); len(o) != 6 || o[0] != "z0-r0-h2-d1" {
		t.Errorf("pinned Order %v", o)
	}
	skip := func(id string) bool { return id == "z0-r0-h2-d1" }
	if got := p.Lookup(pinned, 2, skip); got[0] != "z0-r0-h0-d0" || len(got) != 2 {
		t.Errorf("pinned, one pin down: %v", got)
	}
	if v := p.Exclude(skip).Lookup(pinned, 2, nil); !slices.Equal(v, p.Lookup(pinned, 2, skip)) {
		t.Errorf("Exclude view %v", v)
	}
	if h := p.Health(skip); !h.Degraded || !strings.Contains(h.Reason, "volume 7") {
		t.Errorf("health with a pin down: %+v", h)
	}
	other := segKey(3)
	if got, want := p.Lookup(other, 2, nil), r.Lookup(other, 2, nil); !slices.Equal(got, want) {
		t.Errorf("unpinned volume: %v, ring %v", got, want)
	}
	for name, pins := range map[string]map[string][]string{
		"not a member": {"1": {"nobody"}},
		"twice":        {"1": {"z0-r0-h0-d0", "z0-r0-h0-d0"}},
		"bad volume":   {"x1": {"z0-r0-h0-d0"}},
		"volume 0":     {"0": {"z0-r0-h0-d0"}},
	} {
		if _, err := Build(torus.RingSpec{Replication: 2, Members: r.Members(), Pins: pins}); err == nil {
			t.Errorf("%s: Build succeeded", name)
		}
	}
	if e, err := Build(torus.RingSpec{Version: 4, Replication: 2}); err != nil || e.Lookup(other, 2, nil) != nil || e.Version() != 4 {
		t.Errorf("empty: %v %v", e, err)
	}
}

// TestVolumeRule: a volume's own rule (RingSpec.Rules) changes which
// domains its healing keeps apart and what Health holds it to, and moves
// nothing: its Lookup is the ring's. Two zones of two hosts, replication
// 2, ring rule host; volume 7 has rule zone. With zone z0 down, the ring's
// segments get their second desired copy on the other host of z1, while
// volume 7's wait for z0 (one desired holder), and Health names volume 7.
func TestVolumeRule(t *testing.T) {
	ms := topo(2, 1, 2, 1)
	spec := hier(2, "host", ms)
	spec.Rules = map[string]string{"7": "zone"}
	p, err := Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	base := mustNew(t, hier(2, "host", ms))
	z0Down := func(id string) bool { return strings.HasPrefix(id, "z0-") }
	for i := 0; i < 500; i++ {
		ruled := torus.SegmentID{Volume: 7, Epoch: 1, Seq: uint64(i)}.Key()
		other := torus.SegmentID{Volume: 8, Epoch: 1, Seq: uint64(i)}.Key()
		for _, k := range [][]byte{ruled, other} {
			if got, want := p.Lookup(k, 2, nil), base.Lookup(k, 2, nil); !slices.Equal(got, want) {
				t.Fatalf("key %s: Lookup %v, without rules %v: a rule must move nothing", k, got, want)
			}
			if got := p.Desired(k, nil); len(got) != 2 || got[0][:2] == got[1][:2] {
				t.Fatalf("key %s: Desired %v with every peer up, want one copy in each zone", k, got)
			}
		}
		if got := p.Desired(ruled, z0Down); len(got) != 1 {
			t.Fatalf("volume 7 (rule zone), zone z0 down: Desired %v, want one holder (wait for z0)", got)
		}
		if got := p.Desired(other, z0Down); len(got) != 2 {
			t.Fatalf("volume 8 (ring rule host), zone z0 down: Desired %v, want both hosts of z1", got)
		}
	}
	if h := p.Health(nil); h.Degraded {
		t.Errorf("health with every peer up: %+v", h)
	}
	h := p.Health(z0Down)
	if !h.Degraded || h.FailureDomain != "zone" || !strings.Contains(h.Reason, "volume 7 (rule zone)") {
		t.Errorf("health with zone z0 down: %+v, want degraded naming volume 7", h)
	}
	if h := base.Health(z0Down); h.Degraded {
		t.Errorf("without rules, health with zone z0 down: %+v (two hosts are left)", h)
	}
	if v := p.Exclude(z0Down).Desired(torus.SegmentID{Volume: 7, Epoch: 1}.Key(), nil); len(v) != 2 {
		// Excluded members are gone, not down: the topology has one zone,
		// so volume 7 fills from it (degraded, as Health says).
		t.Errorf("volume 7 in a view without zone z0: Desired %v, want 2 holders", v)
	}
	for name, rules := range map[string]map[string]string{
		"bad volume": {"x7": "zone"},
		"volume 0":   {"0": "zone"},
		"bad level":  {"7": "room"},
		"peer level": {"7": "peer"},
	} {
		s := hier(2, "host", ms)
		s.Rules = rules
		if _, err := Build(s); err == nil {
			t.Errorf("%s: Build succeeded", name)
		}
	}
	old := torus.RingSpec{Version: 1, Replication: 2, Members: ms, Rules: map[string]string{"7": "zone"}}
	if _, err := Build(old); err == nil || !strings.Contains(err.Error(), "ring format") {
		t.Errorf("rules on a format 1 ring: %v, want an error naming the format", err)
	}
}

// TestSpecGolden pins the stored form of a ring spec (JSON in etcd) with
// a rule, per-volume rules and pins, and its placement: the golden file
// holds the JSON, then the desired holders of a few keys of a ruled, a
// pinned and a plain volume.
func TestSpecGolden(t *testing.T) {
	spec := hier(2, "host", topo(2, 1, 2, 1))
	spec.Rules = map[string]string{"7": "zone"}
	spec.Pins = map[string][]string{"9": {"z1-r0-h1-d0", "z0-r0-h0-d0"}}
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	var back torus.RingSpec
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	p, err := Build(back)
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, '\n')
	down := func(id string) bool { return strings.HasPrefix(id, "z0-") }
	for _, vol := range []uint64{7, 8, 9} {
		for seq := range uint64(3) {
			k := torus.SegmentID{Volume: vol, Epoch: 1, Seq: seq}.Key()
			b = fmt.Appendf(b, "%s desired %v, zone z0 down %v\n", k, p.Desired(k, nil), p.Desired(k, down))
		}
	}
	golden(t, "spec-rules-pins", b)
}
