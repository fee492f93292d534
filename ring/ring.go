package ring

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"sync"

	"github.com/torus-storage/torus"
)

// Ring is an immutable consistent-hash ring built from a torus.RingSpec. It is
// safe for concurrent use.
type Ring struct {
	version     uint64
	replication int
	vnodes      int

	members  []torus.RingMember // sorted by ID
	zoneOf   []int32            // member index -> zone index
	zoneSize []int32            // zone index -> number of members
	zones    []string           // zone index -> zone name

	hashes []uint64 // point hashes, ascending
	owners []int32  // owners[i] is the member index of point i

	scratch sync.Pool // *walkState sized for this ring
}

// New builds the ring described by spec. The order of spec.Members does not
// matter. VirtualNodes 0 means torus.DefaultVirtualNodes.
//
// It fails with an error wrapping torus.ErrInvalid when spec has no members,
// an empty or duplicate member ID, a member weight <= 0, Replication < 1, or
// VirtualNodes outside 0..4096.
func New(spec torus.RingSpec) (*Ring, error) {
	if len(spec.Members) == 0 {
		return nil, fmt.Errorf("ring: no members: %w", torus.ErrInvalid)
	}
	if spec.Replication < 1 {
		return nil, fmt.Errorf("ring: replication %d must be at least 1: %w", spec.Replication, torus.ErrInvalid)
	}
	vnodes := spec.VirtualNodes
	if vnodes == 0 {
		vnodes = torus.DefaultVirtualNodes
	}
	if vnodes < 1 || vnodes > 4096 {
		return nil, fmt.Errorf("ring: virtual nodes %d must be 1..4096: %w", spec.VirtualNodes, torus.ErrInvalid)
	}
	members := slices.Clone(spec.Members)
	slices.SortFunc(members, func(a, b torus.RingMember) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	sum := new(big.Int)
	for i, m := range members {
		if m.ID == "" {
			return nil, fmt.Errorf("ring: member with empty ID: %w", torus.ErrInvalid)
		}
		if i > 0 && members[i-1].ID == m.ID {
			return nil, fmt.Errorf("ring: duplicate member %q: %w", m.ID, torus.ErrInvalid)
		}
		if m.Weight <= 0 {
			return nil, fmt.Errorf("ring: member %q has weight %d, must be > 0: %w", m.ID, m.Weight, torus.ErrInvalid)
		}
		sum.Add(sum, big.NewInt(m.Weight))
	}

	r := &Ring{
		version:     spec.Version,
		replication: spec.Replication,
		vnodes:      vnodes,
		members:     members,
	}
	type point struct {
		hash   uint64
		member int32
		index  int
	}
	var points []point
	for mi, m := range members {
		k := pointCount(vnodes, m.Weight, len(members), sum)
		for i := 0; i < k; i++ {
			points = append(points, point{hash: PointHash(m.ID, i), member: int32(mi), index: i})
		}
	}
	// Ties (64-bit collisions) are broken by member ID, then point index,
	// so placement never depends on the order of spec.Members.
	slices.SortFunc(points, func(a, b point) int {
		switch {
		case a.hash != b.hash:
			if a.hash < b.hash {
				return -1
			}
			return 1
		case a.member != b.member:
			return int(a.member - b.member)
		}
		return a.index - b.index
	})
	r.hashes = make([]uint64, len(points))
	r.owners = make([]int32, len(points))
	for i, p := range points {
		r.hashes[i] = p.hash
		r.owners[i] = p.member
	}
	r.indexZones()
	return r, nil
}

// pointCount is round(vnodes * weight / meanWeight), at least 1, computed
// exactly in integers: round(vnodes*weight*n / sum).
func pointCount(vnodes int, weight int64, n int, sum *big.Int) int {
	num := new(big.Int).Mul(big.NewInt(int64(vnodes)), big.NewInt(weight))
	num.Mul(num, big.NewInt(int64(n)))
	// round half up: floor((2*num + sum) / (2*sum))
	num.Lsh(num, 1).Add(num, sum)
	den := new(big.Int).Lsh(sum, 1)
	k := num.Quo(num, den).Int64()
	if k < 1 {
		k = 1
	}
	return int(k)
}

// indexZones fills zoneOf, zoneSize and zones from r.members and sets up the
// scratch pool.
func (r *Ring) indexZones() {
	idx := make(map[string]int32)
	r.zoneOf = make([]int32, len(r.members))
	r.zones = r.zones[:0]
	r.zoneSize = r.zoneSize[:0]
	for i, m := range r.members {
		z, ok := idx[m.Zone]
		if !ok {
			z = int32(len(r.zones))
			idx[m.Zone] = z
			r.zones = append(r.zones, m.Zone)
			r.zoneSize = append(r.zoneSize, 0)
		}
		r.zoneOf[i] = z
		r.zoneSize[z]++
	}
	nm, nz := len(r.members), len(r.zones)
	r.scratch.New = func() any {
		return &walkState{
			member:      make([]uint8, nm),
			zoneChosen:  make([]bool, nz),
			zoneSkipped: make([]int32, nz),
		}
	}
}

// PointHash is the position on the ring of virtual node i of member id: the
// first 8 bytes, big-endian, of SHA-256("<id>-<i>") with i in decimal.
//
// This function is part of the on-disk format in all but name: every
// segment's placement follows from it. Changing it moves all data.
func PointHash(id string, i int) uint64 {
	buf := make([]byte, 0, len(id)+12)
	buf = append(buf, id...)
	buf = append(buf, '-')
	buf = strconv.AppendInt(buf, int64(i), 10)
	sum := sha256.Sum256(buf)
	return binary.BigEndian.Uint64(sum[:8])
}

// KeyHash is the position on the ring of key: the first 8 bytes, big-endian,
// of SHA-256(key). Like PointHash it must never change.
func KeyHash(key []byte) uint64 {
	sum := sha256.Sum256(key)
	return binary.BigEndian.Uint64(sum[:8])
}

// Version is the spec's version.
func (r *Ring) Version() uint64 { return r.version }

// Replication is the number of copies of each segment the spec asks for.
func (r *Ring) Replication() int { return r.replication }

// VirtualNodes is the number of points a member of average weight gets.
func (r *Ring) VirtualNodes() int { return r.vnodes }

// Members returns a copy of the ring's members sorted by ID.
func (r *Ring) Members() []torus.RingMember { return slices.Clone(r.members) }

// Zones returns the number of distinct zones among the members (members
// with no zone share the zone "").
func (r *Ring) Zones() int { return len(r.zones) }

// member states during one walk
const (
	stUnknown uint8 = iota
	stChosen
	stSkipped
)

// walkState is the per-call scratch of Lookup, pooled per ring.
type walkState struct {
	member      []uint8 // stUnknown, stChosen, stSkipped
	zoneChosen  []bool
	zoneSkipped []int32 // members of the zone known to be skipped
}

func (w *walkState) reset() {
	clear(w.member)
	clear(w.zoneChosen)
	clear(w.zoneSkipped)
}

// Lookup returns up to n distinct member IDs for key, in preference order,
// skipping members for which skip(id) is true (skip may be nil; it must
// give the same answer for the same id during one call and may be called at
// most once per member).
//
// The walk starts at the first point clockwise from KeyHash(key) (wrapping
// around). Lookup is zone-aware: it first takes, in walk order, the first
// usable member of each zone not yet chosen; only when no new zone is left
// does it take further members, again in walk order, repeating zones. So
// with Z usable zones the first min(n, Z) results are in distinct zones.
//
// Lookup(key, n, skip) is a prefix of Lookup(key, m, skip) for n <= m. The
// result has min(n, number of usable members) entries; nil when n < 1.
// Lookup allocates only its result.
func (r *Ring) Lookup(key []byte, n int, skip func(id string) bool) []string {
	if n < 1 || len(r.hashes) == 0 {
		return nil
	}
	if n > len(r.members) {
		n = len(r.members)
	}
	h := KeyHash(key)
	start, _ := slices.BinarySearch(r.hashes, h)
	w := r.scratch.Get().(*walkState)
	w.reset()
	res := r.walk(w, start, n, skip, make([]string, 0, n))
	r.scratch.Put(w)
	return res
}

// Order returns every member in preference order for key: Lookup with n =
// all members and no skip. Readers walk it when the first candidates lack a
// segment; its first Replication() entries are the segment's replicas.
func (r *Ring) Order(key []byte) []string {
	return r.Lookup(key, len(r.members), nil)
}

// walk does the two passes of Lookup from point index start.
func (r *Ring) walk(w *walkState, start, n int, skip func(string) bool, res []string) []string {
	P := len(r.hashes)
	numMembers := len(r.members)
	numZones := len(r.zones)
	chosenZones, exhaustedZones := 0, 0
	resolved := 0 // members chosen or known skipped
	// After this many steps of a pass, resolve skip for every member at
	// once, so a walk that cannot finish early (a whole zone skipped, most
	// members skipped) costs O(members) rather than O(points).
	threshold := numMembers
	allResolved := skip == nil

	markSkipped := func(m int32) {
		w.member[m] = stSkipped
		resolved++
		z := r.zoneOf[m]
		w.zoneSkipped[z]++
		if w.zoneSkipped[z] == r.zoneSize[z] {
			exhaustedZones++
		}
	}
	resolveAll := func() {
		for m := range r.members {
			if w.member[m] == stUnknown && skip(r.members[m].ID) {
				markSkipped(int32(m))
			}
		}
		allResolved = true
	}

	// Pass 1: one member per new zone.
	for i := 0; i < P && len(res) < n; i++ {
		if chosenZones+exhaustedZones == numZones {
			break
		}
		if i == threshold && !allResolved {
			resolveAll()
			if chosenZones+exhaustedZones == numZones {
				break
			}
		}
		m := r.owners[(start+i)%P]
		if w.member[m] != stUnknown {
			continue
		}
		z := r.zoneOf[m]
		if w.zoneChosen[z] {
			continue
		}
		if !allResolved && skip(r.members[m].ID) {
			markSkipped(m)
			continue
		}
		w.member[m] = stChosen
		resolved++
		w.zoneChosen[z] = true
		chosenZones++
		res = append(res, r.members[m].ID)
	}
	// Pass 2: anything not chosen or skipped, zones repeating.
	for i := 0; i < P && len(res) < n && resolved < numMembers; i++ {
		if i == threshold && !allResolved {
			resolveAll()
			if resolved == numMembers {
				break
			}
		}
		m := r.owners[(start+i)%P]
		if w.member[m] != stUnknown {
			continue
		}
		if !allResolved && skip(r.members[m].ID) {
			markSkipped(m)
			continue
		}
		w.member[m] = stChosen
		resolved++
		res = append(res, r.members[m].ID)
	}
	return res
}

// Exclude returns a view of r without the members for which skip(id) is
// true: for every key and n, r.Exclude(skip).Lookup(key, n, nil) equals
// r.Lookup(key, n, skip). The remaining members keep exactly their points
// (point counts are not recomputed from the remaining weights), so nothing
// moves among them. Use it to run many lookups with the same skip: a view
// costs O(points) to build, and its lookups never walk past skipped zones.
//
// The view has r's Version and Replication, and may have no members, in
// which case every Lookup returns nil.
func (r *Ring) Exclude(skip func(id string) bool) *Ring {
	v := &Ring{
		version:     r.version,
		replication: r.replication,
		vnodes:      r.vnodes,
	}
	newIdx := make([]int32, len(r.members))
	for i, m := range r.members {
		if skip != nil && skip(m.ID) {
			newIdx[i] = -1
			continue
		}
		newIdx[i] = int32(len(v.members))
		v.members = append(v.members, m)
	}
	for i, h := range r.hashes {
		if ni := newIdx[r.owners[i]]; ni >= 0 {
			v.hashes = append(v.hashes, h)
			v.owners = append(v.owners, ni)
		}
	}
	v.indexZones()
	return v
}
