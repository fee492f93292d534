package ring

import (
	"fmt"

	"github.com/torus-storage/torus"
)

// CheckReplication reports whether a volume may ask the ring spec
// describes for n copies of each segment: nil when the ring can place them
// in distinct failure domains at its rule's level (distinct peers for a
// RingFormatZones ring), or when n is no more than the ring's own
// replication (a ring with fewer domains than that is already degraded,
// visibly, and a volume asking no more is placed the same way); an error
// wrapping torus.ErrInvalid naming what the ring has otherwise, and always
// when n exceeds the ring's peers. n = 0 (the cluster's replication) is
// always accepted. Used for a volume's own replication (torusctl volume
// create --replication, the CSI parameter).
func CheckReplication(spec torus.RingSpec, n int) error {
	if n == 0 {
		return nil
	}
	if n < 0 || n > 16 {
		return fmt.Errorf("%w: replication %d must be 1..16", torus.ErrInvalid, n)
	}
	p, err := Build(spec)
	if err != nil {
		return err
	}
	h := p.Health(nil)
	if n > len(spec.Members) {
		return fmt.Errorf("%w: replication %d: the ring has %d peers", torus.ErrInvalid, n, len(spec.Members))
	}
	if n > h.Domains && n > spec.Replication {
		return fmt.Errorf("%w: replication %d: the ring has %d %s failure domains, so copies would share one (a volume may ask for more copies than domains only up to the ring's replication %d)",
			torus.ErrInvalid, n, h.Domains, h.FailureDomain, spec.Replication)
	}
	return nil
}
