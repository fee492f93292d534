package volume

import (
	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/ring"
)

// placement is what the volume needs from the ring: the preference order of
// a segment's key over the members (Lookup, Order).
type placement = torus.Placement

// newPlacement builds the placement spec describes (an empty one while the
// ring has no members).
func newPlacement(spec torus.RingSpec) (placement, error) {
	return ring.Build(spec)
}
