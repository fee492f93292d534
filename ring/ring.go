package ring

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/torus-storage/torus"
)

// Ring is an immutable consistent-hash ring built from a torus.RingSpec. It is
// safe for concurrent use. It implements torus.Placement.
type Ring struct {
	version     uint64
	replication int
	vnodes      int
	format      int
	rule        int // failure-domain level of the rule: levelZone..levelHost, or levelPeer
	// volRule holds the volumes with a rule of their own (RingSpec.Rules):
	// volume ID to level. Shared by exclude's views; never written after New.
	volRule map[uint64]int

	members []torus.RingMember // sorted by ID
	// dom[l][m] is member m's domain index at level l; domSize[l][d] the
	// number of members of domain d; domains[l] the number of domains.
	dom     [numLevels][]int32
	domSize [numLevels][]int32

	hashes []uint64 // point hashes, ascending
	owners []int32  // owners[i] is the member index of point i

	scratch sync.Pool // *walkState sized for this ring
}

// Failure-domain levels of the walk, from the largest. levelPeer is not a
// walk level: it names the rule of a RingFormatZones ring (distinct peers).
const (
	levelZone = iota
	levelRack
	levelHost
	numLevels
	levelPeer = numLevels
)

var levelNames = [...]string{torus.DomainZone, torus.DomainRack, torus.DomainHost, "peer"}

// New builds the ring described by spec. The order of spec.Members does not
// matter. VirtualNodes 0 means torus.DefaultVirtualNodes; Format 0 means
// torus.RingFormatZones.
//
// It fails with an error wrapping torus.ErrInvalid when spec has no members,
// an empty or duplicate member ID, a member weight <= 0, Replication < 1,
// VirtualNodes outside 0..4096, an unknown Format, or a FailureDomain that
// is not a level ("" is host) or is set on a RingFormatZones ring, or a
// per-volume rule (spec.Rules) that names no volume ID > 0 or no level, or
// is set on a RingFormatZones ring. New ignores spec.Pins (see Build).
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
	format, rule, err := formatRule(spec)
	if err != nil {
		return nil, err
	}
	volRule, err := volumeRules(spec, format)
	if err != nil {
		return nil, err
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
		format:      format,
		rule:        rule,
		volRule:     volRule,
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
	r.indexDomains()
	return r, nil
}

// formatRule checks spec's format and rule and returns the format and the
// rule's level.
func formatRule(spec torus.RingSpec) (format, rule int, err error) {
	switch spec.Format {
	case 0, torus.RingFormatZones:
		if spec.FailureDomain != "" {
			return 0, 0, fmt.Errorf("ring: failure domain %q needs ring format %d, not %d: %w",
				spec.FailureDomain, torus.RingFormatHierarchy, torus.RingFormatZones, torus.ErrInvalid)
		}
		return torus.RingFormatZones, levelPeer, nil
	case torus.RingFormatHierarchy:
		switch spec.FailureDomain {
		case torus.DomainZone:
			return spec.Format, levelZone, nil
		case torus.DomainRack:
			return spec.Format, levelRack, nil
		case "", torus.DomainHost:
			return spec.Format, levelHost, nil
		}
		return 0, 0, fmt.Errorf("ring: failure domain %q: want zone, rack or host: %w", spec.FailureDomain, torus.ErrInvalid)
	}
	return 0, 0, fmt.Errorf("ring: unknown ring format %d (this build reads formats %d and %d; upgrade it): %w",
		spec.Format, torus.RingFormatZones, torus.RingFormatHierarchy, torus.ErrInvalid)
}

// volumeRules parses spec.Rules: decimal volume ID to level.
func volumeRules(spec torus.RingSpec, format int) (map[uint64]int, error) {
	if len(spec.Rules) == 0 {
		return nil, nil
	}
	if format != torus.RingFormatHierarchy {
		return nil, fmt.Errorf("ring: per-volume rules need ring format %d (torusctl ring set-rule), not %d: %w",
			torus.RingFormatHierarchy, format, torus.ErrInvalid)
	}
	out := make(map[uint64]int, len(spec.Rules))
	for vol, d := range spec.Rules {
		id, err := strconv.ParseUint(vol, 10, 64)
		if err != nil || id == 0 || strconv.FormatUint(id, 10) != vol {
			return nil, fmt.Errorf("ring: rule for volume %q: want a decimal volume ID: %w", vol, torus.ErrInvalid)
		}
		l := slices.Index(levelNames[:numLevels], d)
		if l < 0 {
			return nil, fmt.Errorf("ring: rule for volume %s: failure domain %q: want zone, rack or host: %w", vol, d, torus.ErrInvalid)
		}
		out[id] = l
	}
	return out, nil
}

// ruleFor is the rule's level for key's segment: its volume's own rule,
// else the ring's.
func (r *Ring) ruleFor(key []byte) int {
	if l, ok := r.volRule[keyVolume(key)]; ok {
		return l
	}
	return r.rule
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

// domainKeys returns member m's domain keys at each level.
//
// Format RingFormatZones: the zone; the rack is the zone (no rack level);
// the host is the member itself. Format RingFormatHierarchy: the zone; the
// rack within its zone; the host by its name alone (a host name names one
// machine wherever it is filed), or the member itself when it has no host.
// Keys of different kinds cannot collide: member keys begin with 0x01.
func (r *Ring) domainKeys(m torus.RingMember) [numLevels]string {
	own := "\x01" + m.ID
	if r.format == torus.RingFormatZones {
		return [numLevels]string{m.Zone, m.Zone, own}
	}
	host := m.Host
	if host == "" {
		host = own
	}
	return [numLevels]string{m.Zone, m.Zone + "\x00" + m.Rack, host}
}

// indexDomains fills dom and domSize from r.members and sets up the
// scratch pool.
func (r *Ring) indexDomains() {
	var idx [numLevels]map[string]int32
	for l := range numLevels {
		idx[l] = make(map[string]int32)
		r.dom[l] = make([]int32, len(r.members))
		r.domSize[l] = nil
	}
	for i, m := range r.members {
		keys := r.domainKeys(m)
		for l, k := range keys {
			d, ok := idx[l][k]
			if !ok {
				d = int32(len(r.domSize[l]))
				idx[l][k] = d
				r.domSize[l] = append(r.domSize[l], 0)
			}
			r.dom[l][i] = d
			r.domSize[l][d]++
		}
	}
	nm := len(r.members)
	var nd [numLevels]int
	for l := range numLevels {
		nd[l] = len(r.domSize[l])
	}
	r.scratch.New = func() any {
		w := &walkState{member: make([]uint8, nm)}
		for l := range numLevels {
			w.chosen[l] = make([]bool, nd[l])
			w.skipped[l] = make([]int32, nd[l])
		}
		return w
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
func (r *Ring) Zones() int { return len(r.domSize[levelZone]) }

// Format is the ring format, a torus.RingFormat constant.
func (r *Ring) Format() int { return r.format }

// FailureDomain is the level of the placement rule: "zone", "rack", "host",
// or "peer" for a RingFormatZones ring.
func (r *Ring) FailureDomain() string { return levelNames[r.rule] }

// Domains returns the number of distinct failure domains among the members
// at level (zone, rack, host or peer) and 0 for an unknown level.
func (r *Ring) Domains(level string) int {
	for l, name := range levelNames {
		if name == level {
			if l == levelPeer {
				return len(r.members)
			}
			return len(r.domSize[l])
		}
	}
	return 0
}

// Health counts the failure domains at the rule's level among the members
// skip does not reject: the placement is degraded when there are fewer
// than Replication, since Lookup then fills replicas from a domain it has
// already used. Whenever there are enough, every Lookup(key, Replication(),
// skip) puts its replicas in distinct domains at that level. A volume with
// a rule of its own (RingSpec.Rules) is held to its level: when the ring's
// rule is met but a volume's is not, the lowest such volume is named.
func (r *Ring) Health(skip func(id string) bool) torus.PlacementHealth {
	h := health(levelNames[r.rule], r.usableDomains(r.rule, skip), r.replication)
	if h.Degraded || len(r.volRule) == 0 {
		return h
	}
	vols := make([]uint64, 0, len(r.volRule))
	for vol := range r.volRule {
		vols = append(vols, vol)
	}
	slices.Sort(vols)
	for _, vol := range vols {
		l := r.volRule[vol]
		if n := r.usableDomains(l, skip); n < r.replication {
			v := health(levelNames[l], n, r.replication)
			v.Reason = fmt.Sprintf("volume %d (rule %s): %s", vol, levelNames[l], v.Reason)
			return v
		}
	}
	return h
}

// usableDomains counts the domains at level among the members skip does
// not reject (at levelPeer, the members).
func (r *Ring) usableDomains(level int, skip func(id string) bool) int {
	seen := make(map[int32]bool)
	for i, m := range r.members {
		if skip != nil && skip(m.ID) {
			continue
		}
		if level == levelPeer {
			seen[int32(i)] = true
		} else {
			seen[r.dom[level][i]] = true
		}
	}
	return len(seen)
}

// Desired implements torus.Placement: Lookup(key, Replication(), down),
// keeping only the first replica of each failure domain at the level of
// key's rule (its volume's, else the ring's) unless the members span fewer
// such domains than Replication.
func (r *Ring) Desired(key []byte, down func(id string) bool) []string {
	ids := r.Lookup(key, r.replication, down)
	rule := r.ruleFor(key)
	if rule == levelPeer || len(r.domSize[rule]) < r.replication || len(ids) < 2 {
		return ids
	}
	var seen [8]int32
	used := seen[:0]
	out := ids[:0]
	for _, id := range ids {
		i, _ := slices.BinarySearchFunc(r.members, id, func(m torus.RingMember, id string) int { return strings.Compare(m.ID, id) })
		d := r.dom[rule][i]
		if slices.Contains(used, d) {
			continue
		}
		used = append(used, d)
		out = append(out, id)
	}
	return out
}

func health(level string, domains, repl int) torus.PlacementHealth {
	h := torus.PlacementHealth{FailureDomain: level, Domains: domains, Replication: repl}
	if domains < repl {
		h.Degraded = true
		h.Reason = fmt.Sprintf("%d usable %s domains for replication %d: some segments have two replicas in one %s",
			domains, level, repl, level)
	}
	return h
}

// member states during one walk
const (
	stUnknown uint8 = iota
	stChosen
	stSkipped
)

// walkState is the per-call scratch of Lookup, pooled per ring.
type walkState struct {
	member  []uint8 // stUnknown, stChosen, stSkipped
	chosen  [numLevels][]bool
	skipped [numLevels][]int32 // members of the domain known to be skipped
}

func (w *walkState) reset() {
	clear(w.member)
	for l := range numLevels {
		clear(w.chosen[l])
		clear(w.skipped[l])
	}
}

// Lookup returns up to n distinct member IDs for key, in preference order,
// skipping members for which skip(id) is true (skip may be nil; it must
// give the same answer for the same id during one call and may be called at
// most once per member).
//
// The walk starts at the first point clockwise from KeyHash(key) (wrapping
// around) and makes up to four passes over the points, each taking members
// in walk order: first the first usable member of each zone not yet chosen;
// then of each rack not yet chosen; then of each host not yet chosen (in
// each pass a member qualifies only if its domains at that level and below
// are all new); last, any member not yet chosen. So with D usable domains
// at a level, the first min(n, D) results are in distinct domains at that
// level, and they spread over the levels above it as far as the topology
// allows. A RingFormatZones ring has no racks and each member is its own
// host, which makes this the zone-aware walk of that format.
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

// walk does the passes of Lookup from point index start.
func (r *Ring) walk(w *walkState, start, n int, skip func(string) bool, res []string) []string {
	P := len(r.hashes)
	numMembers := len(r.members)
	var chosen, exhausted [numLevels]int
	resolved := 0 // members chosen or known skipped
	// After this many steps of a pass, resolve skip for every member at
	// once, so a walk that cannot finish early (a whole zone skipped, most
	// members skipped) costs O(members) rather than O(points).
	threshold := numMembers
	allResolved := skip == nil

	markSkipped := func(m int32) {
		w.member[m] = stSkipped
		resolved++
		for l := range numLevels {
			d := r.dom[l][m]
			w.skipped[l][d]++
			if w.skipped[l][d] == r.domSize[l][d] {
				exhausted[l]++
			}
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
	// done reports whether pass p can take no one more.
	done := func(p int) bool {
		if p == numLevels {
			return resolved == numMembers
		}
		return chosen[p]+exhausted[p] == len(r.domSize[p])
	}

	for p := 0; p <= numLevels && len(res) < n; p++ {
		for i := 0; i < P && len(res) < n; i++ {
			if done(p) {
				break
			}
			if i == threshold && !allResolved {
				resolveAll()
				if done(p) {
					break
				}
			}
			m := r.owners[(start+i)%P]
			if w.member[m] != stUnknown {
				continue
			}
			fresh := true
			for l := p; l < numLevels; l++ {
				if w.chosen[l][r.dom[l][m]] {
					fresh = false
					break
				}
			}
			if !fresh {
				continue
			}
			if !allResolved && skip(r.members[m].ID) {
				markSkipped(m)
				continue
			}
			w.member[m] = stChosen
			resolved++
			for l := range numLevels {
				if d := r.dom[l][m]; !w.chosen[l][d] {
					w.chosen[l][d] = true
					chosen[l]++
				}
			}
			res = append(res, r.members[m].ID)
		}
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
// The view (a *Ring) has r's Version, Replication, format and rule, and may
// have no members, in which case every Lookup returns nil.
func (r *Ring) Exclude(skip func(id string) bool) torus.Placement { return r.exclude(skip) }

func (r *Ring) exclude(skip func(id string) bool) *Ring {
	v := &Ring{
		version:     r.version,
		replication: r.replication,
		vnodes:      r.vnodes,
		format:      r.format,
		rule:        r.rule,
		volRule:     r.volRule,
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
	v.indexDomains()
	return v
}
