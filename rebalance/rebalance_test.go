package rebalance

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/ring"
)

func mustRing(t testing.TB, spec torus.RingSpec) *ring.Ring {
	t.Helper()
	r, err := ring.New(spec)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func members(n int, zones int) []torus.RingMember {
	ms := make([]torus.RingMember, n)
	for i := range ms {
		ms[i] = torus.RingMember{ID: fmt.Sprintf("p%04d", i), Zone: fmt.Sprintf("z%d", i%zones), Weight: 1 << 40}
	}
	return ms
}

func allUp(ms []torus.RingMember) map[string]bool {
	up := map[string]bool{}
	for _, m := range ms {
		up[m.ID] = true
	}
	return up
}

func seg(i int) torus.SegmentID { return torus.SegmentID{Volume: 1, Epoch: 1, Seq: uint64(i)} }

func TestComputeInvalid(t *testing.T) {
	r := mustRing(t, torus.RingSpec{Replication: 2, Members: members(3, 1)})
	cases := map[string]Input{
		"nil ring":        {},
		"dup segment":     {Ring: r, Segments: []Segment{{ID: seg(1), Sealed: true}, {ID: seg(1), Sealed: true}}},
		"negative length": {Ring: r, Segments: []Segment{{ID: seg(1), Sealed: true, Length: -1}}},
		"dup holder":      {Ring: r, Segments: []Segment{{ID: seg(1), Sealed: true, Holders: []Holder{{"p0000", 1}, {"p0000", 1}}}}},
		"empty holder":    {Ring: r, Segments: []Segment{{ID: seg(1), Sealed: true, Holders: []Holder{{"", 1}}}}},
		"negative holder": {Ring: r, Segments: []Segment{{ID: seg(1), Sealed: true, Holders: []Holder{{"p0000", -3}}}}},
	}
	for name, in := range cases {
		if p, err := Compute(in); !errors.Is(err, torus.ErrInvalid) {
			t.Errorf("%s: Compute = %v, %v; want ErrInvalid", name, p, err)
		}
	}
}

func TestDeterministicAndOrderIndependent(t *testing.T) {
	ms := members(20, 3)
	r := mustRing(t, torus.RingSpec{Replication: 3, Members: ms})
	up := allUp(ms)
	delete(up, "p0003")
	rng := rand.New(rand.NewPCG(7, 7))
	var segs []Segment
	for i := 0; i < 500; i++ {
		s := Segment{ID: seg(i), Sealed: true, Length: 100}
		for _, h := range r.Lookup(s.ID.Key(), 3, nil) {
			s.Holders = append(s.Holders, Holder{h, int64(rng.IntN(101))})
		}
		segs = append(segs, s)
	}
	p1, err := Compute(Input{Ring: r, Up: up, Segments: segs})
	if err != nil {
		t.Fatal(err)
	}
	shuffled := slices.Clone(segs)
	rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	for i := range shuffled {
		shuffled[i].Holders = slices.Clone(shuffled[i].Holders)
		slices.Reverse(shuffled[i].Holders)
	}
	p2, err := Compute(Input{Ring: r, Up: up, Segments: shuffled})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(p1.Copies, p2.Copies) || !slices.Equal(p1.Deletes, p2.Deletes) || p1.UnderReplicated != p2.UnderReplicated {
		t.Errorf("plan depends on input order")
	}
	if len(p1.Copies) == 0 {
		t.Errorf("expected copies for short and down replicas")
	}
	if shuffled[0].ID == seg(0) || segs[0].ID != seg(0) {
		t.Errorf("Compute reordered its input")
	}
}

// TestForPeerPartitions: every move is carried out by exactly one peer.
func TestForPeerPartitions(t *testing.T) {
	ms := members(30, 3)
	r := mustRing(t, torus.RingSpec{Replication: 2, Members: ms})
	up := allUp(ms)
	delete(up, "p0001")
	var segs []Segment
	for i := 0; i < 2000; i++ {
		s := Segment{ID: seg(i), Sealed: true, Length: 10}
		for _, h := range r.Lookup(s.ID.Key(), 3, nil) { // one extra copy
			s.Holders = append(s.Holders, Holder{h, 10})
		}
		segs = append(segs, s)
	}
	p, err := Compute(Input{Ring: r, Up: up, Draining: map[string]bool{"p0002": true}, Segments: segs})
	if err != nil {
		t.Fatal(err)
	}
	var copies, deletes int
	var bytes int64
	for _, m := range ms {
		w := p.ForPeer(m.ID)
		copies += len(w.Copies)
		deletes += len(w.Deletes)
		bytes += w.Bytes()
		for _, c := range w.Copies {
			if c.From != m.ID {
				t.Fatalf("ForPeer(%s) has copy from %s", m.ID, c.From)
			}
		}
		for _, d := range w.Deletes {
			if d.Peer != m.ID {
				t.Fatalf("ForPeer(%s) has delete on %s", m.ID, d.Peer)
			}
		}
	}
	if copies != len(p.Copies) || deletes != len(p.Deletes) || bytes != p.CopyBytes {
		t.Errorf("ForPeer over all peers: %d copies %d deletes %d bytes; plan %d %d %d", copies, deletes, bytes, len(p.Copies), len(p.Deletes), p.CopyBytes)
	}
	if len(p.Copies) == 0 || len(p.Deletes) == 0 {
		t.Errorf("want both copies and deletes, got %d, %d", len(p.Copies), len(p.Deletes))
	}
	if w := p.ForPeer("nobody"); !w.Empty() {
		t.Errorf("ForPeer(nobody) = %+v", w)
	}
}

// TestJoinMovement measures the share of (segment, replica) placements
// copied when one peer joins N.
func TestJoinMovement(t *testing.T) {
	for _, n := range []int{10, 100} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			const segments, repl = 20000, 3
			old := members(n, 1)
			nw := members(n+1, 1)
			r0 := mustRing(t, torus.RingSpec{Replication: repl, Members: old})
			r1 := mustRing(t, torus.RingSpec{Version: 2, Replication: repl, Members: nw})
			segs := place(r0, segments, 1000)
			p, err := Compute(Input{Ring: r1, Up: allUp(nw), Segments: segs})
			if err != nil {
				t.Fatal(err)
			}
			frac := float64(len(p.Copies)) / float64(segments*repl)
			ideal := 1 / float64(n+1)
			t.Logf("join 1 to %d: %.4f of placements copied (ideal %.4f), %d bytes", n, frac, ideal, p.CopyBytes)
			if frac < 0.7*ideal || frac > 1.3*ideal {
				t.Errorf("copied %.4f of placements, want %.4f ± 30%%", frac, ideal)
			}
			for _, c := range p.Copies {
				if c.To != nw[n].ID {
					t.Fatalf("copy to %s, want only to the new peer %s", c.To, nw[n].ID)
				}
			}
			apply(segs, p.Moves)
			p2, err := Compute(Input{Ring: r1, Up: allUp(nw), Segments: segs})
			if err != nil {
				t.Fatal(err)
			}
			if len(p2.Copies) != 0 || len(p2.Deletes) != len(p.Copies) {
				t.Errorf("after copies: %d copies, %d deletes; want 0, %d", len(p2.Copies), len(p2.Deletes), len(p.Copies))
			}
		})
	}
}

// place makes n segments with full copies where r puts them.
func place(r torus.Placement, n int, length int64) []Segment {
	segs := make([]Segment, n)
	for i := range segs {
		segs[i] = Segment{ID: seg(i), Sealed: true, Length: length}
		for _, h := range r.Lookup(segs[i].ID.Key(), r.Replication(), nil) {
			segs[i].Holders = append(segs[i].Holders, Holder{h, length})
		}
	}
	return segs
}

// apply carries out moves on the inventory: a copy leaves a full copy on
// its target, a delete removes the copy.
func apply(segs []Segment, m Moves) {
	idx := make(map[torus.SegmentID]int, len(segs))
	for i, s := range segs {
		idx[s.ID] = i
	}
	for _, c := range m.Copies {
		s := &segs[idx[c.Seg]]
		if j := slices.IndexFunc(s.Holders, func(h Holder) bool { return h.Peer == c.To }); j >= 0 {
			s.Holders[j].Length = c.Length
		} else {
			s.Holders = append(s.Holders, Holder{c.To, c.Length})
		}
	}
	for _, d := range m.Deletes {
		s := &segs[idx[d.Seg]]
		s.Holders = slices.DeleteFunc(s.Holders, func(h Holder) bool { return h.Peer == d.Peer })
	}
}

// checkPlan asserts the rules every plan follows.
func checkPlan(t *testing.T, in Input, p *Plan) {
	t.Helper()
	view := in.Ring.Exclude(func(id string) bool { return !in.Up[id] || in.Draining[id] })
	desiredOf := func(s *Segment) []string { return view.Lookup(s.ID.Key(), in.Ring.Replication(), nil) }
	byID := make(map[torus.SegmentID]*Segment, len(in.Segments))
	for i := range in.Segments {
		byID[in.Segments[i].ID] = &in.Segments[i]
	}
	holds := func(s *Segment, peer string) int64 {
		for _, h := range s.Holders {
			if h.Peer == peer {
				return h.Length
			}
		}
		return -1
	}
	copied := map[torus.SegmentID]bool{}
	for _, c := range p.Copies {
		s := byID[c.Seg]
		copied[c.Seg] = true
		if !s.Sealed || c.Length != s.Length {
			t.Fatalf("copy %+v of %+v", c, s)
		}
		if !in.Up[c.From] || holds(s, c.From) < s.Length {
			t.Fatalf("copy %+v: source is down or short", c)
		}
		if !slices.Contains(desiredOf(s), c.To) || holds(s, c.To) >= s.Length {
			t.Fatalf("copy %+v: target not desired or already full", c)
		}
	}
	for _, d := range p.Deletes {
		s := byID[d.Seg]
		if copied[d.Seg] {
			t.Fatalf("segment %s has copies and deletes", d.Seg)
		}
		desired := desiredOf(s)
		if !in.Up[d.Peer] || slices.Contains(desired, d.Peer) || holds(s, d.Peer) < 0 {
			t.Fatalf("delete %+v: peer down, desired or not a holder", d)
		}
		if len(desired) < in.Ring.Replication() {
			t.Fatalf("delete %+v with only %d desired holders", d, len(desired))
		}
		for _, h := range desired {
			if holds(s, h) < s.Length {
				t.Fatalf("delete %+v while desired %s is not full", d, h)
			}
		}
	}
}

// TestSimulation runs the planner at 1000 peers and 100k segments through
// joins, failures, drains, short and stray copies, interrupted execution,
// and checks that repeated planning converges to exact placement.
func TestSimulation(t *testing.T) {
	const (
		peers = 1000
		repl  = 3
	)
	segments := 100000
	if raceEnabled || testing.Short() {
		segments = 20000 // the race detector makes the full run take a minute
	}
	rng := rand.New(rand.NewPCG(42, 1))
	ms := members(peers, 10)
	for i := range ms {
		ms[i].Weight = (1 + int64(rng.IntN(4))) << 40 // 1..4 TiB
	}
	r0 := mustRing(t, torus.RingSpec{Version: 1, Replication: repl, Members: ms})
	segs := make([]Segment, segments)
	for i := range segs {
		l := 1 + rng.Int64N(32<<20)
		segs[i] = Segment{ID: torus.SegmentID{Volume: uint64(1 + i%50), Epoch: 1, Seq: uint64(i)}, Sealed: true, Length: l}
		for _, h := range r0.Lookup(segs[i].ID.Key(), repl, nil) {
			segs[i].Holders = append(segs[i].Holders, Holder{h, l})
		}
	}
	// Ten peers join (ring version 2).
	joined := slices.Clone(ms)
	for i := 0; i < 10; i++ {
		joined = append(joined, torus.RingMember{ID: fmt.Sprintf("new%02d", i), Zone: fmt.Sprintf("z%d", i), Weight: 2 << 40})
	}
	r1 := mustRing(t, torus.RingSpec{Version: 2, Replication: repl, Members: joined})
	up := allUp(joined)
	// Ten peers are down, five draining.
	for _, i := range rng.Perm(peers)[:15] {
		delete(up, ms[i].ID)
	}
	draining := map[string]bool{}
	for _, i := range rng.Perm(peers)[:5] {
		if up[ms[i].ID] {
			draining[ms[i].ID] = true
		}
	}
	// 1% of segments have one short copy; 1% a stray full copy elsewhere.
	for i := 0; i < segments/100; i++ {
		s := &segs[rng.IntN(segments)]
		h := &s.Holders[rng.IntN(len(s.Holders))]
		h.Length = rng.Int64N(h.Length)
		s2 := &segs[rng.IntN(segments)]
		stray := ms[rng.IntN(peers)].ID
		if !slices.ContainsFunc(s2.Holders, func(h Holder) bool { return h.Peer == stray }) {
			s2.Holders = append(s2.Holders, Holder{stray, s2.Length})
		}
	}
	// Five segments only on down peers; one open segment.
	var downIDs []string
	for _, m := range ms {
		if !up[m.ID] {
			downIDs = append(downIDs, m.ID)
		}
	}
	var lost []torus.SegmentID
	for i := 0; i < 5; i++ {
		id := torus.SegmentID{Volume: 99, Epoch: 1, Seq: uint64(i)}
		lost = append(lost, id)
		segs = append(segs, Segment{ID: id, Sealed: true, Length: 7, Holders: []Holder{{downIDs[i], 7}}})
	}
	segs = append(segs, Segment{ID: torus.SegmentID{Volume: 99, Epoch: 2, Seq: 9}, Holders: []Holder{{ms[0].ID, 5}}})

	in := Input{Ring: r1, Up: up, Draining: draining, Segments: segs}
	var totalCopies, totalDeletes int
	var totalBytes int64
	start := time.Now()
	for round := 0; ; round++ {
		if round == 6 {
			t.Fatalf("no convergence after %d rounds", round)
		}
		t0 := time.Now()
		p, err := Compute(in)
		if err != nil {
			t.Fatal(err)
		}
		elapsed := time.Since(t0)
		checkPlan(t, in, p)
		if !slices.Equal(p.Unavailable, lost) {
			t.Fatalf("unavailable %v, want %v", p.Unavailable, lost)
		}
		if p.Unsealed != 1 || p.Sealed != segments+5 {
			t.Fatalf("sealed %d unsealed %d", p.Sealed, p.Unsealed)
		}
		t.Logf("round %d: %d copies (%d MiB), %d deletes, %d under-replicated, computed in %v",
			round, len(p.Copies), p.CopyBytes>>20, len(p.Deletes), p.UnderReplicated, elapsed)
		if p.Empty() {
			if p.UnderReplicated != len(lost) {
				t.Fatalf("converged with %d under-replicated, want %d (the lost ones)", p.UnderReplicated, len(lost))
			}
			break
		}
		m := p.Moves
		if round == 0 {
			// Interrupted: only a random half of the moves happen, and
			// some copies stop half way (short copies on the target).
			var half Moves
			for _, c := range m.Copies {
				switch rng.IntN(3) {
				case 0:
					half.Copies = append(half.Copies, c)
				case 1:
					c.Length = c.Have + (c.Length-c.Have)/2
					half.Copies = append(half.Copies, c)
				}
			}
			m = half
		}
		for _, c := range m.Copies {
			totalBytes += c.Length - c.Have
		}
		totalCopies += len(m.Copies)
		totalDeletes += len(m.Deletes)
		apply(in.Segments, m)
	}
	t.Logf("total: %d copies, %d bytes (%.2f%% of placements), %d deletes, %v",
		totalCopies, totalBytes, 100*float64(totalCopies)/float64(segments*repl), totalDeletes, time.Since(start))

	// Final state: exact placement for every available segment.
	view := r1.Exclude(func(id string) bool { return !up[id] || draining[id] })
	for _, s := range in.Segments {
		if !s.Sealed || slices.Contains(lost, s.ID) {
			continue
		}
		desired := view.Lookup(s.ID.Key(), repl, nil)
		if len(desired) != repl {
			t.Fatalf("%s: %d desired", s.ID, len(desired))
		}
		for _, d := range desired {
			if !slices.ContainsFunc(s.Holders, func(h Holder) bool { return h.Peer == d && h.Length >= s.Length }) {
				t.Fatalf("%s: desired %s lacks a full copy: %v", s.ID, d, s.Holders)
			}
		}
		for _, h := range s.Holders {
			if up[h.Peer] && !slices.Contains(desired, h.Peer) {
				t.Fatalf("%s: surplus copy on up peer %s", s.ID, h.Peer)
			}
			if draining[h.Peer] {
				t.Fatalf("%s: copy left on draining %s", s.ID, h.Peer)
			}
		}
	}
}

func BenchmarkCompute(b *testing.B) {
	ms := members(1000, 10)
	r := mustRing(b, torus.RingSpec{Replication: 3, Members: ms})
	segs := place(r, 100000, 1<<20)
	up := allUp(ms)
	delete(up, ms[7].ID)
	in := Input{Ring: r, Up: up, Segments: segs}
	for b.Loop() {
		if _, err := Compute(in); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPerSegmentReplication: a segment's own Replication overrides the
// ring's: 1 copy is kept of a replication-1 segment (the surplus deleted),
// 3 of a replication-3 segment on a replication-2 ring (a copy planned to
// the third peer of the writer's order).
func TestPerSegmentReplication(t *testing.T) {
	r, err := ring.New(torus.RingSpec{Version: 1, Replication: 2, Members: []torus.RingMember{
		{ID: "a", Weight: 1}, {ID: "b", Weight: 1}, {ID: "c", Weight: 1}}})
	if err != nil {
		t.Fatal(err)
	}
	up := map[string]bool{"a": true, "b": true, "c": true}
	one := torus.SegmentID{Volume: 1, Epoch: 1, Seq: 1}
	three := torus.SegmentID{Volume: 2, Epoch: 1, Seq: 1}
	order1, order3 := r.Lookup(one.Key(), 3, nil), r.Lookup(three.Key(), 3, nil)
	full := func(peers ...string) []Holder {
		var hs []Holder
		for _, p := range peers {
			hs = append(hs, Holder{Peer: p, Length: 100})
		}
		return hs
	}
	plan, err := Compute(Input{Ring: r, Up: up, Segments: []Segment{
		{ID: one, Sealed: true, Length: 100, Holders: full(order1[0], order1[1]), Replication: 1},
		{ID: three, Sealed: true, Length: 100, Holders: full(order3[0], order3[1]), Replication: 3},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Deletes) != 1 || plan.Deletes[0].Seg != one || plan.Deletes[0].Peer != order1[1] {
		t.Errorf("deletes = %+v, want %s's copy on %s", plan.Deletes, one, order1[1])
	}
	if len(plan.Copies) != 1 || plan.Copies[0].Seg != three || plan.Copies[0].To != order3[2] {
		t.Errorf("copies = %+v, want %s to %s", plan.Copies, three, order3[2])
	}
	if plan.UnderReplicated != 1 {
		t.Errorf("under-replicated = %d, want 1 (the replication-3 segment)", plan.UnderReplicated)
	}
}
