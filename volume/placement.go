package volume

import (
	"hash/fnv"
	"slices"

	"github.com/torus-storage/torus"
)

// placement is what the volume needs from the ring: the preference order of
// a segment's key over the members.
type placement interface {
	// Lookup returns up to n distinct member IDs in preference order,
	// leaving out those skip rejects.
	Lookup(key []byte, n int, skip func(id string) bool) []string
	// Order returns every member in preference order.
	Order(key []byte) []string
}

// hashPlacement is a stand-in for package ring until it lands: rendezvous
// hashing over the members, without zones or weights.
type hashPlacement struct{ members []string }

func newPlacement(spec torus.RingSpec) (placement, error) {
	p := &hashPlacement{}
	for _, m := range spec.Members {
		p.members = append(p.members, m.ID)
	}
	return p, nil
}

func (p *hashPlacement) Order(key []byte) []string {
	type scored struct {
		id string
		h  uint64
	}
	s := make([]scored, len(p.members))
	for i, id := range p.members {
		h := fnv.New64a()
		h.Write(key)
		h.Write([]byte{0})
		h.Write([]byte(id))
		s[i] = scored{id, h.Sum64()}
	}
	slices.SortFunc(s, func(a, b scored) int {
		if a.h > b.h {
			return -1
		}
		if a.h < b.h {
			return 1
		}
		return 0
	})
	out := make([]string, len(s))
	for i := range s {
		out[i] = s[i].id
	}
	return out
}

func (p *hashPlacement) Lookup(key []byte, n int, skip func(string) bool) []string {
	var out []string
	for _, id := range p.Order(key) {
		if len(out) == n {
			break
		}
		if skip == nil || !skip(id) {
			out = append(out, id)
		}
	}
	return out
}
