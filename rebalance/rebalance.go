package rebalance

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/torus-storage/torus"
)

// Holder is one peer's copy of a segment as the peer reported it (Store.Stat
// or List): Length is the bytes it holds, which may be less than the
// segment's authoritative length (a short copy) or more (a fenced writer's
// late appends, ignored by everyone).
type Holder struct {
	Peer   string
	Length int64
}

// Segment is one segment of the inventory.
type Segment struct {
	ID torus.SegmentID
	// Sealed says Length is known: the segment is sealed in its volume's
	// head (or named by a checkpoint or snapshot) with that length. Only
	// sealed segments are planned; the open segment of a volume belongs to
	// its writer.
	Sealed bool
	// Length is the authoritative length from the volume head.
	Length int64
	// Holders are the peers that hold a copy, in any order, each at most
	// once. Peers that are down may be listed (what they held when last
	// seen); they are never used as sources nor asked to delete.
	Holders []Holder
	// Replication is the number of copies this segment needs (its
	// volume's torus.VolumeInfo.Replication); 0 means the ring's.
	Replication int
}

// Input is everything the planner looks at.
type Input struct {
	// Ring is the placement: desired holders come from its Lookup. Any
	// torus.Placement will do (ring.Build gives the one a RingSpec says).
	Ring torus.Placement
	// Up holds the peers whose liveness key is present. A peer not in Up
	// is down. Up may hold peers that are not ring members (new, or
	// removed but still running): their copies are surplus.
	Up map[string]bool
	// Draining holds ring members being removed gracefully: they are
	// never desired holders, so their copies move off and are then
	// deleted. While up they serve as copy sources.
	Draining map[string]bool
	// Segments is the inventory, in any order, each ID at most once.
	Segments []Segment
}

// Copy asks From to send the first Length bytes of Seg to To.
//
// From is an up peer holding at least Length bytes. To is a desired holder
// that lacks a full copy; it holds Have bytes (0: nothing). Segments are
// append-only, so a short copy is a prefix of the full one: the copier may
// append just [Have, Length), or delete To's copy and send all of it.
// Copies use torus.RepairEpoch.
type Copy struct {
	Seg    torus.SegmentID
	From   string
	To     string
	Length int64
	Have   int64
}

// Delete asks Peer to delete its copy of Seg: the copy is surplus (Peer is
// not a desired holder) and every desired holder has a full copy.
type Delete struct {
	Seg  torus.SegmentID
	Peer string
}

// Moves is a list of copies and deletes.
type Moves struct {
	Copies  []Copy
	Deletes []Delete
}

// Bytes is the number of bytes the copies send.
func (m Moves) Bytes() int64 {
	var n int64
	for _, c := range m.Copies {
		n += c.Length - c.Have
	}
	return n
}

// Empty reports whether there is nothing to do.
func (m Moves) Empty() bool { return len(m.Copies) == 0 && len(m.Deletes) == 0 }

// Plan is the planner's output.
//
// Copies are ordered by segment (Volume, Epoch, Seq, Kind), then by the
// target's rank in the segment's desired holders; deletes by segment, then
// peer ID. A segment never has both copies and deletes in one plan: deletes
// wait until its copies are done.
type Plan struct {
	Moves
	// CopyBytes is Moves.Bytes().
	CopyBytes int64
	// Sealed counts the sealed segments looked at; Unsealed those skipped
	// because their length is not known yet.
	Sealed, Unsealed int
	// UnderReplicated counts sealed segments with fewer than Replication
	// full copies on desired holders (before the plan is carried out; it
	// includes the unavailable ones, and every segment when fewer than
	// Replication peers are usable).
	UnderReplicated int
	// Unavailable lists, in order, the sealed segments with no full copy
	// on any up peer. Nothing is planned for them: they are lost unless a
	// down peer holding them comes back.
	Unavailable []torus.SegmentID
}

// ForPeer returns the moves peer id carries out: the copies it is the
// source of (it pushes the bytes) and the deletes of its own copies. The
// order is the plan's.
func (p *Plan) ForPeer(id string) Moves {
	var m Moves
	for _, c := range p.Copies {
		if c.From == id {
			m.Copies = append(m.Copies, c)
		}
	}
	for _, d := range p.Deletes {
		if d.Peer == id {
			m.Deletes = append(m.Deletes, d)
		}
	}
	return m
}

// CompareSegmentID orders segment IDs by Volume, Epoch, Seq, Kind.
func CompareSegmentID(a, b torus.SegmentID) int {
	return cmp.Or(
		cmp.Compare(a.Volume, b.Volume),
		cmp.Compare(a.Epoch, b.Epoch),
		cmp.Compare(a.Seq, b.Seq),
		cmp.Compare(a.Kind, b.Kind),
	)
}

// Desired returns the desired holders of a segment key: the placement's
// Desired holders over the members that are not draining, skipping those
// that are down. That is the first Replication members in preference
// order, except that while the members span enough failure domains a
// member sharing a domain with an earlier one is left out (a host down is
// not re-replicated onto the host that holds the other copy).
func (in Input) Desired(key []byte) []string {
	return in.Ring.Exclude(in.draining).Desired(key, in.down)
}

func (in Input) draining(id string) bool { return in.Draining[id] }
func (in Input) down(id string) bool     { return !in.Up[id] }

// Compute plans the copies and deletes that bring every sealed segment to
// Replication full copies on its desired holders and nothing elsewhere.
//
// Compute is a pure function of its input: no I/O, no clock, and the same
// input gives the same plan. That is what makes rebalancing resumable: a
// driver carries out some moves, crashes or is interrupted, gathers a fresh
// inventory and computes again; done moves no longer appear, and a move
// half done (a short copy) is planned again from where it stopped. A
// driver may also recompute at any time (a peer came back, the ring
// changed) and drop the old plan.
//
// Rules, per sealed segment of authoritative length L:
//   - desired holders D = Ring.Exclude(draining).Desired(key, down): the
//     first Replication up members in preference order, leaving out one
//     that shares a failure domain with an earlier one unless the
//     topology has too few domains (torus.Placement.Desired);
//   - a full copy is one of at least L bytes; sources are up peers (draining
//     ones included) with a full copy, preferring one in D;
//   - each peer of D without a full copy gets a Copy;
//   - surplus copies (on up peers outside D, short ones included) are
//     deleted only when every peer of D has a full copy and D has
//     Replication peers; copies on down peers are left alone;
//   - with no up full copy the segment is reported in Unavailable and
//     nothing is planned for it;
//   - a sealed segment of length 0 needs nothing.
//
// Compute fails with an error wrapping torus.ErrInvalid for a nil placement, a
// segment listed twice, a negative length, or a peer listed twice as holder
// of one segment.
func Compute(in Input) (*Plan, error) {
	if in.Ring == nil {
		return nil, fmt.Errorf("rebalance: nil ring: %w", torus.ErrInvalid)
	}
	segs := slices.Clone(in.Segments)
	slices.SortFunc(segs, func(a, b Segment) int { return CompareSegmentID(a.ID, b.ID) })
	for i, s := range segs {
		if i > 0 && segs[i-1].ID == s.ID {
			return nil, fmt.Errorf("rebalance: segment %s listed twice: %w", s.ID, torus.ErrInvalid)
		}
		if s.Length < 0 {
			return nil, fmt.Errorf("rebalance: segment %s has length %d: %w", s.ID, s.Length, torus.ErrInvalid)
		}
		for j, h := range s.Holders {
			if h.Length < 0 || h.Peer == "" {
				return nil, fmt.Errorf("rebalance: segment %s: bad holder %q with length %d: %w", s.ID, h.Peer, h.Length, torus.ErrInvalid)
			}
			for _, o := range s.Holders[:j] {
				if o.Peer == h.Peer {
					return nil, fmt.Errorf("rebalance: segment %s: holder %q listed twice: %w", s.ID, h.Peer, torus.ErrInvalid)
				}
			}
		}
	}

	// One view of the placement without draining peers serves every
	// lookup: they are gone as far as the topology is concerned.
	view := in.Ring.Exclude(in.draining)
	repl := in.Ring.Replication()
	p := &Plan{}
	for i := range segs {
		s := &segs[i]
		if !s.Sealed {
			p.Unsealed++
			continue
		}
		p.Sealed++
		n := repl
		if s.Replication > 0 {
			n = s.Replication
		}
		planSegment(p, s, desired(view, s.ID.Key(), in.down, repl, n), n, in.Up)
	}
	p.CopyBytes = p.Bytes()
	return p, nil
}

// desired is the placement's Desired for a segment that needs n copies
// where the placement's replication is repl: its first n entries when n is
// smaller; when n is larger, those followed by the next peers of
// Lookup(key, n, down), the order the writer placed the segment in.
func desired(view torus.Placement, key []byte, down func(string) bool, repl, n int) []string {
	d := view.Desired(key, down)
	if n == repl {
		return d
	}
	if n < len(d) {
		return d[:n]
	}
	for _, id := range view.Lookup(key, n, down) {
		if len(d) == n {
			break
		}
		if !slices.Contains(d, id) {
			d = append(d, id)
		}
	}
	return d
}

func planSegment(p *Plan, s *Segment, desired []string, repl int, up map[string]bool) {
	if s.Length == 0 {
		// Nothing to lose, and a store cannot hold an empty segment
		// (it exists once something is appended): nothing to do.
		return
	}
	holding := func(peer string) (int64, bool) {
		for _, h := range s.Holders {
			if h.Peer == peer {
				return h.Length, true
			}
		}
		return 0, false
	}
	// Pick the source: the first desired holder with a full copy, else
	// the up full holder with the smallest ID.
	source := ""
	fullDesired := 0
	for _, d := range desired {
		if n, _ := holding(d); n >= s.Length {
			fullDesired++
			if source == "" {
				source = d
			}
		}
	}
	if source == "" {
		for _, h := range s.Holders {
			if up[h.Peer] && h.Length >= s.Length && (source == "" || h.Peer < source) {
				source = h.Peer
			}
		}
	}
	if fullDesired < repl {
		p.UnderReplicated++
	}
	if source == "" {
		p.Unavailable = append(p.Unavailable, s.ID)
		return
	}
	if fullDesired < len(desired) {
		for _, d := range desired {
			if n, _ := holding(d); n < s.Length {
				p.Copies = append(p.Copies, Copy{Seg: s.ID, From: source, To: d, Length: s.Length, Have: n})
			}
		}
		return
	}
	if len(desired) < repl {
		return // keep every copy while the cluster is too small
	}
	start := len(p.Deletes)
	for _, h := range s.Holders {
		if up[h.Peer] && !slices.Contains(desired, h.Peer) {
			p.Deletes = append(p.Deletes, Delete{Seg: s.ID, Peer: h.Peer})
		}
	}
	slices.SortFunc(p.Deletes[start:], func(a, b Delete) int { return cmp.Compare(a.Peer, b.Peer) })
}
