package ring

import (
	"fmt"
	"slices"
	"strconv"

	"github.com/torus-storage/torus"
)

// Build returns the placement spec describes: an empty placement when it
// has no members (every Lookup and Order returns nil), else the ring New
// builds, wrapped in a Pinned when spec.Pins is not empty. Daemons and
// tools build placements only through Build.
//
// It fails with an error wrapping torus.ErrInvalid when New does, or when
// a pin names a volume that is not a decimal ID > 0 or a peer that is not a
// member (or names one twice).
func Build(spec torus.RingSpec) (torus.Placement, error) {
	if len(spec.Members) == 0 {
		if _, _, err := formatRule(spec); err != nil {
			return nil, err
		}
		return empty{version: spec.Version, replication: spec.Replication}, nil
	}
	r, err := New(spec)
	if err != nil {
		return nil, err
	}
	if len(spec.Pins) == 0 {
		return r, nil
	}
	pins := make(map[uint64][]string, len(spec.Pins))
	for vol, peers := range spec.Pins {
		id, err := strconv.ParseUint(vol, 10, 64)
		if err != nil || id == 0 || strconv.FormatUint(id, 10) != vol {
			return nil, fmt.Errorf("ring: pin for volume %q: want a decimal volume ID: %w", vol, torus.ErrInvalid)
		}
		pins[id] = peers
	}
	return NewPinned(r, pins)
}

// empty is the placement of a ring with no members yet.
type empty struct {
	version     uint64
	replication int
}

func (e empty) Version() uint64                              { return e.version }
func (e empty) Replication() int                             { return e.replication }
func (empty) Lookup([]byte, int, func(string) bool) []string { return nil }
func (empty) Order([]byte) []string                          { return nil }
func (e empty) Exclude(func(string) bool) torus.Placement    { return e }
func (empty) Desired([]byte, func(string) bool) []string     { return nil }
func (e empty) Health(func(string) bool) torus.PlacementHealth {
	return health("peer", 0, e.replication)
}

// Pinned is a placement that pins the segments of chosen volumes to chosen
// peers, in the order given, and leaves every other volume to a base
// placement. For a pinned volume the preference order of a segment is its
// pins, then the base order of the other peers: so its replicas are its
// first Replication usable pins, and only when fewer pins are usable do
// replicas come from the base order (the placement is then degraded, and
// Health says so). Tests use it to put data exactly where they want it;
// operators, through RingSpec.Pins, to keep a volume on chosen machines.
//
// Pinned is immutable and safe for concurrent use.
type Pinned struct {
	base torus.Placement
	pins map[uint64][]string
}

// NewPinned returns base with the volumes of pins pinned to their peers.
// It fails with an error wrapping torus.ErrInvalid when a volume ID is 0, or
// a pinned peer is not in base (base.Order(nil)) or is listed twice for one
// volume. Pins with no peers are dropped.
func NewPinned(base torus.Placement, pins map[uint64][]string) (*Pinned, error) {
	members := base.Order(nil)
	p := &Pinned{base: base, pins: make(map[uint64][]string, len(pins))}
	for vol, peers := range pins {
		if vol == 0 {
			return nil, fmt.Errorf("ring: pin for volume 0: %w", torus.ErrInvalid)
		}
		for i, id := range peers {
			if !slices.Contains(members, id) {
				return nil, fmt.Errorf("ring: volume %d pinned to %q, not a member: %w", vol, id, torus.ErrInvalid)
			}
			if slices.Contains(peers[:i], id) {
				return nil, fmt.Errorf("ring: volume %d pinned to %q twice: %w", vol, id, torus.ErrInvalid)
			}
		}
		if len(peers) > 0 {
			p.pins[vol] = slices.Clone(peers)
		}
	}
	return p, nil
}

// keyVolume parses the volume ID of a SegmentID key ("v<volume>-..."); 0
// when key is not one.
func keyVolume(key []byte) uint64 {
	if len(key) < 2 || key[0] != 'v' {
		return 0
	}
	var v uint64
	for _, c := range key[1:] {
		if c == '-' {
			return v
		}
		if c < '0' || c > '9' || v > (1<<64-1)/10-1 {
			return 0
		}
		v = v*10 + uint64(c-'0')
	}
	return 0
}

// Version is the base's version.
func (p *Pinned) Version() uint64 { return p.base.Version() }

// Replication is the base's replication.
func (p *Pinned) Replication() int { return p.base.Replication() }

// Order returns the pins of key's volume, then the base order of the
// others; for an unpinned volume, the base order.
func (p *Pinned) Order(key []byte) []string {
	base := p.base.Order(key)
	pins := p.pins[keyVolume(key)]
	if len(pins) == 0 {
		return base
	}
	out := make([]string, 0, len(base))
	out = append(out, pins...)
	for _, id := range base {
		if !slices.Contains(pins, id) {
			out = append(out, id)
		}
	}
	return out
}

// Lookup returns the first n peers of Order(key) that skip does not
// reject; skip is called at most once per peer.
func (p *Pinned) Lookup(key []byte, n int, skip func(id string) bool) []string {
	if n < 1 {
		return nil
	}
	pins := p.pins[keyVolume(key)]
	if len(pins) == 0 {
		return p.base.Lookup(key, n, skip)
	}
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

// Desired is the base's for an unpinned volume; for a pinned one it is
// Lookup(key, Replication(), down): pins are the operator's choice of
// domains.
func (p *Pinned) Desired(key []byte, down func(id string) bool) []string {
	if len(p.pins[keyVolume(key)]) == 0 {
		return p.base.Desired(key, down)
	}
	return p.Lookup(key, p.Replication(), down)
}

// Exclude returns the base's view without the peers skip rejects, with
// those peers dropped from the pins too.
func (p *Pinned) Exclude(skip func(id string) bool) torus.Placement {
	v := &Pinned{base: p.base.Exclude(skip), pins: make(map[uint64][]string, len(p.pins))}
	for vol, peers := range p.pins {
		kept := slices.DeleteFunc(slices.Clone(peers), func(id string) bool { return skip != nil && skip(id) })
		if len(kept) > 0 {
			v.pins[vol] = kept
		}
	}
	return v
}

// Health is the base's health, degraded too when a pinned volume has fewer
// usable pins than Replication (the lowest such volume is named).
func (p *Pinned) Health(skip func(id string) bool) torus.PlacementHealth {
	h := p.base.Health(skip)
	if h.Degraded {
		return h
	}
	vols := make([]uint64, 0, len(p.pins))
	for vol := range p.pins {
		vols = append(vols, vol)
	}
	slices.Sort(vols)
	for _, vol := range vols {
		usable := 0
		for _, id := range p.pins[vol] {
			if skip == nil || !skip(id) {
				usable++
			}
		}
		if usable < h.Replication {
			h.Degraded = true
			h.Reason = fmt.Sprintf("volume %d is pinned to %d usable peers for replication %d", vol, usable, h.Replication)
			return h
		}
	}
	return h
}
