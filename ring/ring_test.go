package ring

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/torus-storage/torus"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

func equalMembers(n int, zones ...string) []torus.RingMember {
	ms := make([]torus.RingMember, n)
	for i := range ms {
		ms[i] = torus.RingMember{ID: fmt.Sprintf("p%02d", i), Weight: 1 << 30}
		if len(zones) > 0 {
			ms[i].Zone = zones[i%len(zones)]
		}
	}
	return ms
}

func mustNew(t testing.TB, spec torus.RingSpec) *Ring {
	t.Helper()
	r, err := New(spec)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r
}

func segKey(i int) []byte {
	return torus.SegmentID{Volume: 1, Epoch: 1, Seq: uint64(i)}.Key()
}

// TestHashesAreStable pins the hash functions: if this test fails, placement
// of every stored segment has changed.
func TestHashesAreStable(t *testing.T) {
	if got, want := PointHash("a", 0), uint64(0x68571817c96c5c83); got != want {
		t.Errorf("PointHash(a, 0) = %#x, want %#x", got, want)
	}
	if got, want := KeyHash([]byte("v1-e1-s0-k0")), KeyHash([]byte("v1-e1-s0-k0")); got != want {
		t.Errorf("KeyHash not deterministic")
	}
	// SHA-256("a-0") begins 68571817c96c5c83...; SHA-256("") begins e3b0c44298fc1c14.
	if got, want := KeyHash(nil), uint64(0xe3b0c44298fc1c14); got != want {
		t.Errorf("KeyHash(nil) = %#x, want %#x", got, want)
	}
}

func TestGolden(t *testing.T) {
	cases := []struct {
		name string
		spec torus.RingSpec
	}{
		{"equal", torus.RingSpec{Version: 1, Replication: 2, VirtualNodes: 64, Members: equalMembers(5)}},
		{"unequal", torus.RingSpec{Version: 1, Replication: 2, VirtualNodes: 64, Members: []torus.RingMember{
			{ID: "small", Weight: 100}, {ID: "medium", Weight: 200}, {ID: "large", Weight: 400}, {ID: "huge", Weight: 800},
		}}},
		{"zones3", torus.RingSpec{Version: 1, Replication: 3, VirtualNodes: 64, Members: equalMembers(9, "za", "zb", "zc")}},
		{"zones2-r3", torus.RingSpec{Version: 1, Replication: 3, VirtualNodes: 64, Members: equalMembers(6, "east", "west")}},
		{"r3-default-vnodes", torus.RingSpec{Version: 7, Replication: 3, Members: equalMembers(12)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := mustNew(t, tc.spec)
			var b bytes.Buffer
			fmt.Fprintf(&b, "# ring %s: version %d, replication %d, virtual nodes %d\n", tc.name, r.Version(), r.Replication(), r.VirtualNodes())
			for _, m := range r.Members() {
				fmt.Fprintf(&b, "# member %s zone=%q weight=%d points=%d\n", m.ID, m.Zone, m.Weight, r.points(m.ID))
			}
			for i := 0; i < 64; i++ {
				k := segKey(i)
				fmt.Fprintf(&b, "%s %s\n", k, strings.Join(r.Lookup(k, r.Replication(), nil), " "))
			}
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./ring -update)", err)
			}
			if !bytes.Equal(b.Bytes(), want) {
				t.Errorf("placement differs from %s; if intended, run go test ./ring -update and review the diff\ngot:\n%s", path, b.String())
			}
		})
	}
}

// points counts the points of member id (test helper).
func (r *Ring) points(id string) int {
	n := 0
	for _, o := range r.owners {
		if r.members[o].ID == id {
			n++
		}
	}
	return n
}

func TestBadSpecs(t *testing.T) {
	good := equalMembers(3)
	cases := map[string]torus.RingSpec{
		"no members":      {Replication: 1},
		"replication 0":   {Replication: 0, Members: good},
		"replication -1":  {Replication: -1, Members: good},
		"dup ids":         {Replication: 1, Members: append(slices.Clone(good), good[1])},
		"zero weight":     {Replication: 1, Members: []torus.RingMember{{ID: "a", Weight: 1}, {ID: "b", Weight: 0}}},
		"negative weight": {Replication: 1, Members: []torus.RingMember{{ID: "a", Weight: -5}}},
		"empty id":        {Replication: 1, Members: []torus.RingMember{{ID: "", Weight: 1}}},
		"vnodes -1":       {Replication: 1, VirtualNodes: -1, Members: good},
		"vnodes 5000":     {Replication: 1, VirtualNodes: 5000, Members: good},
	}
	for name, spec := range cases {
		r, err := New(spec)
		if !errors.Is(err, torus.ErrInvalid) {
			t.Errorf("%s: New = %v, %v; want ErrInvalid", name, r, err)
		}
	}
}

func TestMemberOrderIrrelevant(t *testing.T) {
	ms := equalMembers(8, "a", "b", "c")
	r1 := mustNew(t, torus.RingSpec{Replication: 3, Members: ms})
	rev := slices.Clone(ms)
	slices.Reverse(rev)
	r2 := mustNew(t, torus.RingSpec{Replication: 3, Members: rev})
	for i := 0; i < 1000; i++ {
		k := segKey(i)
		if a, b := r1.Order(k), r2.Order(k); !slices.Equal(a, b) {
			t.Fatalf("key %s: %v vs %v", k, a, b)
		}
	}
}

func TestDeterminism(t *testing.T) {
	spec := torus.RingSpec{Replication: 3, Members: equalMembers(20, "x", "y", "z")}
	r1, r2 := mustNew(t, spec), mustNew(t, spec)
	for i := 0; i < 2000; i++ {
		k := segKey(i)
		a := r1.Lookup(k, 3, nil)
		if b := r1.Lookup(k, 3, nil); !slices.Equal(a, b) {
			t.Fatalf("same ring, key %s: %v vs %v", k, a, b)
		}
		if b := r2.Lookup(k, 3, nil); !slices.Equal(a, b) {
			t.Fatalf("equal rings, key %s: %v vs %v", k, a, b)
		}
	}
}

// moved counts (key, member) placements present in b but not in a.
func moved(a, b []string) int {
	n := 0
	for _, x := range b {
		if !slices.Contains(a, x) {
			n++
		}
	}
	return n
}

func TestMovementOnJoinAndLeave(t *testing.T) {
	const keys, repl = 20000, 3
	ten := equalMembers(10)
	eleven := equalMembers(11)
	nine := slices.Delete(slices.Clone(ten), 4, 5)
	r10 := mustNew(t, torus.RingSpec{Replication: repl, Members: ten})
	r11 := mustNew(t, torus.RingSpec{Replication: repl, Members: eleven})
	r9 := mustNew(t, torus.RingSpec{Replication: repl, Members: nine})
	var join, leave int
	for i := 0; i < keys; i++ {
		k := segKey(i)
		old := r10.Lookup(k, repl, nil)
		join += moved(old, r11.Lookup(k, repl, nil))
		leave += moved(old, r9.Lookup(k, repl, nil))
	}
	total := float64(keys * repl)
	fj, fl := float64(join)/total, float64(leave)/total
	t.Logf("join 11th of 10: %.4f of placements moved (ideal %.4f)", fj, 1.0/11)
	t.Logf("remove 1 of 10: %.4f of placements moved (ideal %.4f)", fl, 1.0/10)
	if math.Abs(fj-1.0/11) > 0.03 {
		t.Errorf("join moved %.4f, want 1/11 ± 0.03", fj)
	}
	if math.Abs(fl-1.0/10) > 0.03 {
		t.Errorf("leave moved %.4f, want 1/10 ± 0.03", fl)
	}
}

func TestWeightProportional(t *testing.T) {
	ms := equalMembers(10)
	ms[3].Weight *= 2
	r := mustNew(t, torus.RingSpec{Replication: 1, Members: ms})
	count := map[string]int{}
	const keys = 50000
	for i := 0; i < keys; i++ {
		count[r.Lookup(segKey(i), 1, nil)[0]]++
	}
	others := 0
	for id, c := range count {
		if id != ms[3].ID {
			others += c
		}
	}
	mean := float64(others) / 9
	ratio := float64(count[ms[3].ID]) / mean
	t.Logf("2x member: %d primaries, 1x mean %.0f, ratio %.3f", count[ms[3].ID], mean, ratio)
	if ratio < 2*0.85 || ratio > 2*1.15 {
		t.Errorf("2x weight member got %.3f x the primaries of the others, want 2 ± 15%%", ratio)
	}
	if got := r.points(ms[3].ID); got != int(math.Round(128*2/1.1)) {
		t.Errorf("2x member has %d points, want round(128*2/1.1)", got)
	}
}

func zoneOf(r *Ring) map[string]string {
	z := map[string]string{}
	for _, m := range r.Members() {
		z[m.ID] = m.Zone
	}
	return z
}

func distinctZones(ids []string, zone map[string]string) int {
	seen := map[string]bool{}
	for _, id := range ids {
		seen[zone[id]] = true
	}
	return len(seen)
}

func TestZoneAware(t *testing.T) {
	t.Run("3 zones r3", func(t *testing.T) {
		// Unequal zone sizes make the test harder: zone c has one member.
		ms := equalMembers(9, "a", "b")
		ms = append(ms, torus.RingMember{ID: "lonely", Zone: "c", Weight: 1 << 30})
		r := mustNew(t, torus.RingSpec{Replication: 3, Members: ms})
		zone := zoneOf(r)
		for i := 0; i < 5000; i++ {
			got := r.Lookup(segKey(i), 3, nil)
			if len(got) != 3 || distinctZones(got, zone) != 3 {
				t.Fatalf("key %d: %v spans %d zones, want 3", i, got, distinctZones(got, zone))
			}
		}
	})
	t.Run("2 zones r3", func(t *testing.T) {
		r := mustNew(t, torus.RingSpec{Replication: 3, Members: equalMembers(7, "a", "b")})
		zone := zoneOf(r)
		for i := 0; i < 5000; i++ {
			got := r.Lookup(segKey(i), 3, nil)
			if len(got) != 3 || distinctZones(got, zone) != 2 {
				t.Fatalf("key %d: %v spans %d zones, want 2", i, got, distinctZones(got, zone))
			}
			if zone[got[0]] == zone[got[1]] {
				t.Fatalf("key %d: first two %v share a zone", i, got)
			}
		}
	})
	t.Run("zone down", func(t *testing.T) {
		r := mustNew(t, torus.RingSpec{Replication: 3, Members: equalMembers(30, "a", "b", "c")})
		zone := zoneOf(r)
		skip := func(id string) bool { return zone[id] == "c" }
		for i := 0; i < 2000; i++ {
			got := r.Lookup(segKey(i), 3, skip)
			if len(got) != 3 || distinctZones(got, zone) != 2 {
				t.Fatalf("key %d: %v", i, got)
			}
			for _, id := range got {
				if zone[id] == "c" {
					t.Fatalf("key %d: skipped member %s chosen", i, id)
				}
			}
		}
	})
}

func TestSkip(t *testing.T) {
	r := mustNew(t, torus.RingSpec{Replication: 3, Members: equalMembers(10, "a", "b")})
	for i := 0; i < 2000; i++ {
		k := segKey(i)
		full := r.Lookup(k, 3, nil)
		down := full[0]
		calls := map[string]int{}
		skip := func(id string) bool { calls[id]++; return id == down }
		got := r.Lookup(k, 3, skip)
		if slices.Contains(got, down) || len(got) != 3 {
			t.Fatalf("key %d: skip %s, got %v", i, down, got)
		}
		for id, c := range calls {
			if c > 1 {
				t.Fatalf("skip(%s) called %d times", id, c)
			}
		}
		// Survivors keep their relative order (zone rules permitting,
		// the second replica survives as a replica).
		if !slices.Contains(got, full[1]) {
			t.Fatalf("key %d: %v lost %s when %s was skipped (full %v)", i, got, full[1], down, full)
		}
	}
	all := r.Lookup(segKey(1), 3, func(string) bool { return true })
	if len(all) != 0 {
		t.Errorf("all skipped: got %v", all)
	}
	only := r.Members()[7].ID
	got := r.Lookup(segKey(1), 3, func(id string) bool { return id != only })
	if !slices.Equal(got, []string{only}) {
		t.Errorf("one survivor: got %v, want [%s]", got, only)
	}
}

// checkLookup asserts the invariants of one Lookup result.
func checkLookup(t *testing.T, r *Ring, key []byte, n int, skip func(string) bool, got []string) {
	t.Helper()
	zone := zoneOf(r)
	usable := 0
	usableZones := map[string]bool{}
	for _, m := range r.Members() {
		if skip == nil || !skip(m.ID) {
			usable++
			usableZones[m.Zone] = true
		}
	}
	if want := min(max(n, 0), usable); len(got) != want {
		t.Fatalf("Lookup(%q, %d) returned %d members %v, want %d", key, n, len(got), got, want)
	}
	seen := map[string]bool{}
	for _, id := range got {
		if seen[id] {
			t.Fatalf("duplicate %s in %v", id, got)
		}
		seen[id] = true
		if skip != nil && skip(id) {
			t.Fatalf("skipped %s in %v", id, got)
		}
	}
	if want := min(len(got), len(usableZones)); distinctZones(got[:want], zone) != want {
		t.Fatalf("first %d of %v not in distinct zones", want, got)
	}
}

func TestRandomizedInvariants(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 200; iter++ {
		nm := 1 + rng.IntN(40)
		nz := 1 + rng.IntN(5)
		ms := make([]torus.RingMember, nm)
		for i := range ms {
			ms[i] = torus.RingMember{ID: fmt.Sprintf("m%d", i), Zone: fmt.Sprintf("z%d", rng.IntN(nz)), Weight: 1 + rng.Int64N(1000)}
		}
		r := mustNew(t, torus.RingSpec{Replication: 1 + rng.IntN(4), VirtualNodes: 1 + rng.IntN(200), Members: ms})
		down := map[string]bool{}
		for _, m := range ms {
			if rng.IntN(3) == 0 {
				down[m.ID] = true
			}
		}
		skip := func(id string) bool { return down[id] }
		view := r.Exclude(skip)
		for k := 0; k < 50; k++ {
			key := segKey(rng.IntN(1 << 20))
			n := rng.IntN(nm + 2)
			got := r.Lookup(key, n, skip)
			checkLookup(t, r, key, n, skip, got)
			if v := view.Lookup(key, n, nil); !slices.Equal(got, v) {
				t.Fatalf("Exclude view: %v, Lookup with skip: %v", v, got)
			}
			order := r.Order(key)
			checkLookup(t, r, key, nm, nil, order)
			if plain := r.Lookup(key, n, nil); !slices.Equal(plain, order[:len(plain)]) {
				t.Fatalf("Lookup(%d) %v is not a prefix of Order %v", n, plain, order)
			}
		}
	}
}

func TestSlowWalkFallback(t *testing.T) {
	// 300 members in 3 zones, zone c entirely skipped and most of a and b
	// too: the walk must still be correct once it resolves skip for all.
	r := mustNew(t, torus.RingSpec{Replication: 3, Members: equalMembers(300, "a", "b", "c")})
	zone := zoneOf(r)
	calls := 0
	skip := func(id string) bool {
		calls++
		return zone[id] == "c" || (id != "p00" && id != "p03" && id != "p04")
	}
	for i := 0; i < 100; i++ {
		calls = 0
		got := r.Lookup(segKey(i), 3, skip)
		slices.Sort(got)
		if !slices.Equal(got, []string{"p00", "p03", "p04"}) {
			t.Fatalf("got %v", got)
		}
		if calls > 300 {
			t.Fatalf("skip called %d times for 300 members", calls)
		}
	}
}

func TestExcludeEverything(t *testing.T) {
	r := mustNew(t, torus.RingSpec{Replication: 2, Members: equalMembers(3)})
	v := r.exclude(func(string) bool { return true })
	if got := v.Lookup(segKey(0), 2, nil); got != nil {
		t.Errorf("empty view Lookup = %v", got)
	}
	if len(v.Members()) != 0 || v.Version() != r.Version() || v.Replication() != 2 {
		t.Errorf("empty view: members %v version %d replication %d", v.Members(), v.Version(), v.Replication())
	}
}

func TestLookupAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under -race")
	}
	r := mustNew(t, torus.RingSpec{Replication: 3, Members: equalMembers(100, "a", "b", "c")})
	key := segKey(42)
	r.Lookup(key, 3, nil)
	allocs := testing.AllocsPerRun(100, func() { r.Lookup(key, 3, nil) })
	if allocs > 1 {
		t.Errorf("Lookup allocates %.1f times, want 1 (the result)", allocs)
	}
}

func FuzzLookup(f *testing.F) {
	f.Add([]byte("v1-e1-s0-k0"), uint8(3), uint16(0))
	f.Add([]byte{}, uint8(0), uint16(0xffff))
	r := mustNew(f, torus.RingSpec{Replication: 3, VirtualNodes: 16, Members: equalMembers(16, "a", "b", "c")})
	f.Fuzz(func(t *testing.T, key []byte, n uint8, mask uint16) {
		skip := func(id string) bool {
			var i int
			fmt.Sscanf(id, "p%d", &i)
			return mask&(1<<i) != 0
		}
		checkLookup(t, r, key, int(n), skip, r.Lookup(key, int(n), skip))
	})
}

func benchRing(b *testing.B, members int) *Ring {
	zones := []string{"z0", "z1", "z2", "z3", "z4"}
	return mustNew(b, torus.RingSpec{Replication: 3, Members: equalMembers(members, zones...)})
}

func BenchmarkLookup(b *testing.B) {
	for _, members := range []int{10, 1000} {
		b.Run(fmt.Sprint(members), func(b *testing.B) {
			r := benchRing(b, members)
			keys := make([][]byte, 1024)
			for i := range keys {
				keys[i] = segKey(i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				r.Lookup(keys[i%len(keys)], 3, nil)
			}
		})
	}
}

func BenchmarkLookupSkip(b *testing.B) {
	r := benchRing(b, 1000)
	down := map[string]bool{"p00": true, "p17": true, "p555": true}
	skip := func(id string) bool { return down[id] }
	key := segKey(7)
	b.ReportAllocs()
	for b.Loop() {
		r.Lookup(key, 3, skip)
	}
}

func BenchmarkOrder(b *testing.B) {
	r := benchRing(b, 1000)
	key := segKey(7)
	b.ReportAllocs()
	for b.Loop() {
		r.Order(key)
	}
}

func BenchmarkNew(b *testing.B) {
	ms := equalMembers(1000, "a", "b", "c")
	for b.Loop() {
		if _, err := New(torus.RingSpec{Replication: 3, Members: ms}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestCheckReplication: a volume's replication is accepted up to the
// ring's failure domains (peers for a zones-format ring) and refused with
// ErrInvalid beyond.
func TestCheckReplication(t *testing.T) {
	spec := torus.RingSpec{Version: 2, Replication: 2, Members: []torus.RingMember{
		{ID: "a", Weight: 1}, {ID: "b", Weight: 1}, {ID: "c", Weight: 1}}}
	for n, ok := range map[int]bool{0: true, 1: true, 3: true, 4: false, -1: false} {
		if err := CheckReplication(spec, n); (err == nil) != ok || err != nil && !errors.Is(err, torus.ErrInvalid) {
			t.Errorf("replication %d on 3 peers: %v", n, err)
		}
	}
	hosts := torus.RingSpec{Version: 2, Replication: 2, Format: torus.RingFormatHierarchy, Members: []torus.RingMember{
		{ID: "a", Host: "h1", Weight: 1}, {ID: "b", Host: "h1", Weight: 1}, {ID: "c", Host: "h2", Weight: 1}}}
	if err := CheckReplication(hosts, 2); err != nil {
		t.Errorf("replication 2 on 2 hosts: %v", err)
	}
	if err := CheckReplication(hosts, 3); !errors.Is(err, torus.ErrInvalid) || !strings.Contains(err.Error(), "2 host failure domains") {
		t.Errorf("replication 3 on 2 hosts: %v, want ErrInvalid naming 2 host domains", err)
	}
	// One host, ring replication 2 (degraded already): a volume may ask
	// for up to 2, placed as degraded as the cluster's own; not for 3.
	oneHost := hosts
	oneHost.Members = []torus.RingMember{{ID: "a", Host: "h", Weight: 1}, {ID: "b", Host: "h", Weight: 1}, {ID: "c", Host: "h", Weight: 1}}
	if err := CheckReplication(oneHost, 2); err != nil {
		t.Errorf("replication 2 (the ring's) on 1 host: %v", err)
	}
	if err := CheckReplication(oneHost, 3); !errors.Is(err, torus.ErrInvalid) {
		t.Errorf("replication 3 on 1 host with ring replication 2: %v, want ErrInvalid", err)
	}
}
