package report

import (
	"context"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/ring"
)

// Ring is the -o json form of `torusctl ring get` and /api/v1/ring: the
// ring spec's fields, and the health of its placement over all members.
type Ring struct {
	torus.RingSpec
	Placement torus.PlacementHealth `json:"placement"`
}

// RingView pairs spec with its placement health.
func RingView(spec torus.RingSpec) Ring {
	return Ring{RingSpec: spec, Placement: PlacementHealth(spec, nil)}
}

// ReadRing reads the ring from md.
func ReadRing(ctx context.Context, md torus.Metadata) (Ring, error) {
	spec, err := md.Ring(ctx)
	if err != nil {
		return Ring{}, err
	}
	return RingView(spec), nil
}

// ReadPeers reads the peer list (`torusctl peer list -o json`,
// /api/v1/peers): the records as they are.
func ReadPeers(ctx context.Context, md torus.Metadata) ([]torus.PeerInfo, error) {
	return md.Peers(ctx)
}

// PlacementHealth is the health of spec's placement over the members skip
// does not reject; degraded with the build error as reason when spec
// cannot be built.
func PlacementHealth(spec torus.RingSpec, skip func(id string) bool) torus.PlacementHealth {
	p, err := ring.Build(spec)
	if err != nil {
		return torus.PlacementHealth{Replication: spec.Replication, Degraded: true, Reason: err.Error()}
	}
	return p.Health(skip)
}
