package ring_test

import (
	"fmt"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/ring"
)

func Example() {
	r, err := ring.New(torus.RingSpec{
		Version:     1,
		Replication: 2,
		Members: []torus.RingMember{
			{ID: "alpha", Zone: "east", Weight: 1 << 40},
			{ID: "bravo", Zone: "east", Weight: 1 << 40},
			{ID: "charlie", Zone: "west", Weight: 1 << 40},
			{ID: "delta", Zone: "west", Weight: 2 << 40},
		},
	})
	if err != nil {
		panic(err)
	}
	seg := torus.SegmentID{Volume: 1, Epoch: 3, Seq: 42}

	// The replicas of a segment: one in each zone.
	fmt.Println(r.Lookup(seg.Key(), r.Replication(), nil))

	// With a replica down, the next member in the walk takes its place.
	down := r.Lookup(seg.Key(), 1, nil)[0]
	fmt.Println(r.Lookup(seg.Key(), r.Replication(), func(id string) bool { return id == down }))

	// Readers try every member in this order.
	fmt.Println(r.Order(seg.Key()))
	// Output:
	// [bravo delta]
	// [delta alpha]
	// [bravo delta charlie alpha]
}

func ExampleNew_invalid() {
	_, err := ring.New(torus.RingSpec{Replication: 2})
	fmt.Println(err)
	// Output:
	// ring: no members: torus: invalid argument
}
