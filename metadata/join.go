package metadata

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/torus-storage/torus"
)

// ErrRemoved is returned by AutoJoin when the joining peer was removed
// from the ring (`torusctl peer remove`): --auto-join must not undo that;
// `torusctl peer add` brings it back.
var ErrRemoved = errors.New("metadata: peer was removed from the ring")

// AutoJoin returns the ring version an auto-joining peer self writes with
// torus.Metadata.JoinRing, and the peers it adds: self and every other
// peer waiting to auto-join, so that daemons starting together share a
// ring version instead of writing one each. peers is a Peers read made
// after ring was read (Peers' states are then as of ring's version or
// later; a later one makes JoinRing's compare-and-swap fail).
//
// A peer other than self is added when its record asks to auto-join
// (PeerInfo.AutoJoin), it is alive (a dead one would be a down member)
// and its state is new: never a member, or forgotten (DeletePeer) and
// registered again; not removed (a ring change dropped it) and not a
// member (up, down or draining). Each is added as it would add itself:
// torus.NewRingMember at its record's location, weighted by its capacity.
// Self comes first, then the others by ID, at most torus.MaxJoinBatch in
// all. The members of ring are kept as they are (an operator's weights,
// locations and rules are never rewritten); the first members of a
// formatless ring give it torus.RingFormatCurrent.
//
// Outcomes: self already a member: ring, nil, nil (nothing to write).
// Self removed: ErrRemoved. Self not in peers (its record was deleted):
// an error wrapping torus.ErrNotExist.
func AutoJoin(ring torus.RingSpec, peers []torus.PeerInfo, self string) (torus.RingSpec, []string, error) {
	members := make(map[string]bool, len(ring.Members))
	for _, m := range ring.Members {
		members[m.ID] = true
	}
	if members[self] {
		return ring, nil, nil
	}
	i := slices.IndexFunc(peers, func(p torus.PeerInfo) bool { return p.ID == self })
	if i < 0 {
		return ring, nil, fmt.Errorf("metadata: auto-join: %w: peer %s has no record (forgotten by `torusctl peer remove`?)", torus.ErrNotExist, self)
	}
	if peers[i].State == torus.PeerRemoved {
		return ring, nil, fmt.Errorf("%w: peer %s", ErrRemoved, self)
	}
	add := []torus.PeerInfo{peers[i]}
	others := slices.Clone(peers)
	slices.SortFunc(others, func(a, b torus.PeerInfo) int { return strings.Compare(a.ID, b.ID) })
	for _, p := range others {
		if len(add) == torus.MaxJoinBatch {
			break
		}
		if p.ID != self && p.AutoJoin && p.Alive && p.State == torus.PeerNew && !members[p.ID] {
			add = append(add, p)
		}
	}
	next := ring
	next.Members = slices.Clone(ring.Members)
	joined := make([]string, 0, len(add))
	for _, p := range add {
		next.Members = append(next.Members, torus.NewRingMember(p.ID, p.Location(), p.Capacity))
		joined = append(joined, p.ID)
	}
	if len(ring.Members) == 0 && ring.Format == 0 {
		next.Format = torus.RingFormatCurrent // the first members: a new cluster
	}
	next.Version++
	return next, joined, nil
}
