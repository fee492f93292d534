// Package ring places segments on storage daemons by consistent hashing.
//
// It is pure: no network, disk, clock or etcd. A *Ring is built from a
// torus.RingSpec (stored in etcd, versioned) and answers one question: for a
// key (a segment's SegmentID.Key()), which members hold it, in which order.
//
// # Placement
//
// The ring is Ketama-style. Each member gets
//
//	round(VirtualNodes * weight / meanWeight)   (at least 1)
//
// points, computed exactly in integer arithmetic. Point i of member id sits
// at PointHash(id, i): the first 8 bytes (big-endian) of SHA-256("<id>-<i>").
// A key sits at KeyHash(key): the first 8 bytes of SHA-256(key). Lookup walks
// clockwise from the key's position (the first point whose hash is >= the
// key's, wrapping around) and collects distinct members.
//
// These two hash functions are part of the storage format: every stored
// segment is found through them. Changing either moves all data. A test
// (TestHashesAreStable) and golden files under testdata/ pin them.
//
// # Failure domains
//
// Members have a location: zone > rack > host. Lookup walks the points in
// up to four passes: the first usable member of each new zone, then of each
// new rack, then of each new host, then anyone left; so with D usable
// domains at a level the first min(n, D) replicas are in distinct domains
// there. The ring's rule (RingSpec.FailureDomain, format
// RingFormatHierarchy) names the level that must be distinct; Health says
// when the topology has too few domains (then replicas repeat a domain) and
// Desired keeps healing from filling a domain that is only down. A
// RingFormatZones ring (every ring stored before formats) has no racks and
// every member is its own host: the zone-aware walk it always had. See
// docs/design/placement.md.
//
// Build turns a RingSpec into a torus.Placement: the ring, an empty
// placement, or a Pinned map over the ring.
//
// # Skipping and views
//
// Lookup takes a skip function (down or draining peers). Skipping a member
// does not move any other member's points, so the surviving replicas of a
// segment stay where they are and only the skipped member's place is taken
// by the next member in the walk. For many lookups with the same skip (the
// rebalance planner), Exclude builds a view with those members removed and
// identical answers.
//
// # Movement
//
// Adding the 11th member to 10 equal members moves about 1/11 of the (key,
// replica) placements; removing one of 10 moves about 1/10 (see
// TestMovementOnJoinAndLeave). A member of twice the weight holds about
// twice as many primaries.
//
// # Cost
//
// Lookup is a SHA-256 of the key, a binary search over the points, and a
// short walk; it allocates only its result (about 400 ns at 1000 members).
// A walk that cannot end early (a whole zone skipped) resolves skip for
// every member once, so it costs O(members), not O(points).
package ring
