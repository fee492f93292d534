// Package scrub verifies segment copies and repairs bad ones, for torusctl
// (`torusctl volume scrub`), for each daemon's background scrub of its own
// copies, and for healing, which copies only what it has verified.
//
// The checks themselves are pure (volume.Verifier); this package reads the
// copies through torus.PeerService, paces the reads (Limiter), and carries
// out repairs:
//
//   - Check reads one copy and returns its verdict (volume.CopyCheck).
//   - Copy copies a segment from one peer to another, sending only bytes
//     that verified, and counts the destination as a full copy only once it
//     is synced to the length and reads back verified.
//   - Segment checks the copies of one segment on its holders and replaces
//     bad ones from a good one.
//   - Volume scrubs every live segment of a volume on every up peer and
//     returns a Report.
//
// Rules (docs/design/cluster.md, "Scrub"): a copy is good when it verifies
// up to the length that counts (the head's, or for an open segment the
// longest valid prefix among its copies); a bad copy is replaced only from a
// good one; a segment the volume's writer may still sync (its open segment,
// and those sealed since its last checkpoint) is reported, not replaced.
package scrub
