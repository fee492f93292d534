// Package rebalance plans healing and rebalancing: which sealed segments to
// copy where, and which surplus copies to delete, so that every segment ends
// up with Replication full copies on its desired holders and nowhere else.
//
// It is pure: Compute takes the ring, the liveness of peers (up, draining)
// and an inventory (each segment's authoritative length from its volume
// head, and which peers hold it with what length) and returns a Plan. The
// daemons gather the inventory and carry out the moves; each runs
// Plan.ForPeer(self): the source of a copy pushes the bytes to the target
// (with torus.RepairEpoch), the holder of a surplus copy deletes it.
//
// # One situation, one rule
//
// The same rules cover every case of "Cluster life":
//
//   - a peer goes down: it is skipped, the next peer in ring order becomes
//     a desired holder and receives a copy from a surviving full replica;
//   - the peer comes back: it is desired again and already full, so the
//     interim copy is surplus and is deleted;
//   - a peer drains: it is never desired; its copies move to the next peers
//     (it may itself be the source) and, once they are full, it is asked to
//     delete its own;
//   - a peer joins: it becomes a desired holder of about 1/N of the
//     (segment, replica) placements, which are copied to it; then the
//     displaced copies are deleted;
//   - a short copy (fewer bytes than the head says: a replica dropped
//     mid-segment) never serves as a source; on a desired peer it is
//     completed by a copy, elsewhere it is deleted like any surplus copy;
//   - a segment with no full copy on an up peer is reported in
//     Plan.Unavailable and left alone.
//
// # Safety
//
// A copy is deleted only when every desired holder of its segment holds a
// full copy and there are Replication of them; so a plan never lowers the
// number of full copies below Replication, and a segment never has copies
// and deletes in the same plan. Copies on down peers are never touched.
//
// # Resumability
//
// Compute is a pure, deterministic function of its input. A driver does not
// persist plans: after a crash, an interruption, a peer coming and going or
// a ring change it gathers a fresh inventory and computes again. Moves that
// were carried out no longer appear; an interrupted copy shows up as a short
// copy on its target and is planned again with Copy.Have set, so the copier
// can resume from there. Applying a whole plan and computing again gives an
// empty plan (TestSimulation checks this at 1000 peers and 100k segments).
package rebalance
