package volume

import (
	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/ring"
)

// placement is what the volume needs from the ring: the preference order of
// a segment's key over the members. *ring.Ring implements it.
type placement interface {
	// Lookup returns up to n distinct member IDs in preference order,
	// leaving out those skip rejects.
	Lookup(key []byte, n int, skip func(id string) bool) []string
	// Order returns every member in preference order.
	Order(key []byte) []string
}

// emptyPlacement is the ring of a cluster with no members yet: nothing can
// be placed or read.
type emptyPlacement struct{}

func (emptyPlacement) Lookup([]byte, int, func(string) bool) []string { return nil }
func (emptyPlacement) Order([]byte) []string                          { return nil }

func newPlacement(spec torus.RingSpec) (placement, error) {
	if len(spec.Members) == 0 {
		return emptyPlacement{}, nil
	}
	return ring.New(spec)
}
