package rebalance_test

import (
	"fmt"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/rebalance"
	"github.com/torus-storage/torus/ring"
)

func Example() {
	r, err := ring.New(torus.RingSpec{
		Version:     1,
		Replication: 2,
		Members: []torus.RingMember{
			{ID: "a", Weight: 1}, {ID: "b", Weight: 1}, {ID: "c", Weight: 1},
		},
	})
	if err != nil {
		panic(err)
	}
	seg := torus.SegmentID{Volume: 1, Epoch: 1, Seq: 5}
	fmt.Println("replicas:", r.Lookup(seg.Key(), 2, nil))

	// b is down; the segment (sealed at 4096 bytes) lives on a and b.
	in := rebalance.Input{
		Ring: r,
		Up:   map[string]bool{"a": true, "c": true},
		Segments: []rebalance.Segment{{
			ID: seg, Sealed: true, Length: 4096,
			Holders: []rebalance.Holder{{Peer: "a", Length: 4096}, {Peer: "b", Length: 4096}},
		}},
	}
	plan, err := rebalance.Compute(in)
	if err != nil {
		panic(err)
	}
	fmt.Println("under-replicated:", plan.UnderReplicated)
	// Each daemon carries out its own part: a pushes the copy to c.
	for _, c := range plan.ForPeer("a").Copies {
		fmt.Printf("a: copy %s to %s, %d bytes\n", c.Seg, c.To, c.Length-c.Have)
	}

	// b comes back: c's interim copy is surplus.
	in.Up["b"] = true
	in.Segments[0].Holders = append(in.Segments[0].Holders, rebalance.Holder{Peer: "c", Length: 4096})
	plan, _ = rebalance.Compute(in)
	for _, d := range plan.ForPeer("c").Deletes {
		fmt.Printf("c: delete %s\n", d.Seg)
	}
	// Output:
	// replicas: [a b]
	// under-replicated: 1
	// a: copy v1-e1-s5-k0 to c, 4096 bytes
	// c: delete v1-e1-s5-k0
}
