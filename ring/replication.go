package ring

import (
	"fmt"

	"github.com/torus-storage/torus"
)

// CheckReplication reports whether the ring spec describes can place n
// copies of a segment in distinct failure domains at its rule's level
// (distinct peers for a RingFormatZones ring): nil when it can, an error
// wrapping torus.ErrInvalid naming what it has otherwise. n = 0 (the
// cluster's replication) is always accepted. Used for a volume's own
// replication (torusctl volume create --replication, the CSI parameter).
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
	if n > h.Domains {
		return fmt.Errorf("%w: replication %d: the ring has %d %s failure domains, so copies would share one",
			torus.ErrInvalid, n, h.Domains, h.FailureDomain)
	}
	return nil
}
