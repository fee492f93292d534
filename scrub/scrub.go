package scrub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/rebalance"
	"github.com/torus-storage/torus/volume"
)

// Target is one segment to scrub and where its copies are.
type Target struct {
	Seg torus.SegmentID
	// Length is the length that counts (from the head), or volume.Unknown
	// for the open segment: then the reference is the longest valid
	// prefix among the copies.
	Length  int64
	NBlocks uint64   // the volume's size in blocks
	Holders []string // peers holding a copy, in preference order
	// Busy says the volume's writer may still append to or sync this
	// segment (its open segment, or one sealed since its last
	// checkpoint): bad copies are reported but not replaced, since the
	// replacement would fail the writer's syncs meanwhile.
	Busy bool
}

// Action is what scrub did about a copy.
type Action string

const (
	// ActionNone: the copy is good.
	ActionNone Action = ""
	// ActionFound: the copy is bad; repair was not asked for.
	ActionFound Action = "found"
	// ActionRepaired: the copy was replaced by a verified good one.
	ActionRepaired Action = "repaired"
	// ActionDeferred: the copy is bad and the writer still uses the
	// segment; a later scrub repairs it.
	ActionDeferred Action = "deferred"
	// ActionUnrepairable: no copy of the segment is good.
	ActionUnrepairable Action = "unrepairable"
	// ActionFailed: a good copy exists but the repair failed (a peer
	// error); a later scrub retries.
	ActionFailed Action = "failed"
	// ActionUnreadable: the copy could not be read (the peer is down or
	// failed), so it was not judged.
	ActionUnreadable Action = "unreadable"
)

// Finding is one copy that is not good.
type Finding struct {
	Segment   torus.SegmentID `json:"segment"`
	Peer      string          `json:"peer"`
	Length    int64           `json:"length"` // the length that counts; -1 for an open segment
	Valid     int64           `json:"valid"`  // the copy's valid prefix
	Problem   string          `json:"problem"`
	BadBlocks []uint64        `json:"bad_blocks,omitempty"`
	Action    Action          `json:"action"`
	Error     string          `json:"error,omitempty"`
}

// SegmentResult is what scrubbing one segment found and did.
type SegmentResult struct {
	Copies        int   // copies read
	CheckedBytes  int64 // bytes read and verified (repairs' read-backs excluded)
	RepairedBytes int64 // bytes sent to replace bad copies
	Findings      []Finding
}

// Options tunes a scrub.
type Options struct {
	// Repair replaces bad copies with a verified good copy.
	Repair bool
	// Only, if set, is the one peer whose copy is checked (a daemon's
	// background scrub of its own copies): the other holders are read
	// only to find a source when that copy is bad.
	Only string
	// Limit paces every read.
	Limit *Limiter
	// Logger receives a Warn per bad copy, an Error per unrepairable
	// segment. nil: discard.
	Logger *slog.Logger
}

func (o *Options) logger() *slog.Logger {
	if o.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Logger
}

type checked struct {
	peer  string
	c     volume.CopyCheck
	err   error
	valid bool // read without error
}

// Segment checks the copies of t on its holders and, with Repair, replaces
// each bad copy with a verified good one (Copy with Replace). A copy is
// good when it verifies up to the reference length: t.Length, or for an
// open segment the longest valid prefix of the copies read.
func Segment(ctx context.Context, peers torus.PeerPool, t Target, o Options) SegmentResult {
	log := o.logger()
	var res SegmentResult
	read := func(id string) checked {
		svc, err := peers.Peer(ctx, id)
		if err != nil {
			return checked{peer: id, err: err}
		}
		c, err := Check(ctx, svc, t.Seg, t.Length, t.NBlocks, o.Limit)
		if err != nil {
			return checked{peer: id, err: err}
		}
		res.Copies++
		res.CheckedBytes += c.Length
		return checked{peer: id, c: c, valid: true}
	}
	holders := slices.Clone(t.Holders)
	var all []checked
	if o.Only != "" {
		if !slices.Contains(holders, o.Only) {
			return res
		}
		me := read(o.Only)
		all = append(all, me)
		if me.valid && me.c.OK() && t.Length >= 0 {
			return res
		}
		for _, h := range holders {
			if h != o.Only {
				all = append(all, read(h))
			}
		}
	} else {
		for _, h := range holders {
			all = append(all, read(h))
		}
	}
	ref := t.Length
	if ref < 0 {
		for _, x := range all {
			if x.valid && len(x.c.BadBlocks) == 0 {
				ref = max(ref, x.c.Valid)
			}
		}
	}
	good := func(x checked) bool {
		return x.valid && x.c.OK() && (t.Length >= 0 || x.c.Valid == ref)
	}
	var source string
	for _, x := range all {
		if good(x) {
			source = x.peer
			break
		}
	}
	for _, x := range all {
		if o.Only != "" && x.peer != o.Only {
			continue
		}
		if good(x) {
			continue
		}
		f := Finding{Segment: t.Seg, Peer: x.peer, Length: t.Length, Valid: x.c.Valid, Problem: x.c.Problem, BadBlocks: x.c.BadBlocks}
		switch {
		case !x.valid:
			f.Action, f.Problem, f.Error = ActionUnreadable, "could not be read", x.err.Error()
			res.Findings = append(res.Findings, f)
			continue
		case f.Problem == "":
			f.Problem = fmt.Sprintf("short: valid prefix %d, another copy has %d", x.c.Valid, ref)
		}
		switch {
		case source == "":
			f.Action = ActionUnrepairable
			// Name every block some copy cannot give.
			for _, y := range all {
				f.BadBlocks = append(f.BadBlocks, y.c.BadBlocks...)
			}
			slices.Sort(f.BadBlocks)
			f.BadBlocks = slices.Compact(f.BadBlocks)
			log.Error("scrub: no good copy of a segment", "segment", t.Seg, "peer", x.peer, "problem", f.Problem, "blocks", f.BadBlocks)
		case !o.Repair:
			f.Action = ActionFound
		case t.Busy:
			f.Action = ActionDeferred
		case ref <= 0:
			f.Action = ActionFailed
			f.Error = "no reference length"
		default:
			n, err := repair(ctx, peers, t, source, x.peer, ref, o)
			res.RepairedBytes += n
			if err != nil {
				f.Action, f.Error = ActionFailed, err.Error()
			} else {
				f.Action = ActionRepaired
			}
		}
		if f.Action != ActionUnrepairable {
			log.Warn("scrub: bad segment copy", "segment", t.Seg, "peer", x.peer, "problem", f.Problem,
				"blocks", f.BadBlocks, "action", f.Action, "err", f.Error)
		}
		res.Findings = append(res.Findings, f)
	}
	return res
}

func repair(ctx context.Context, peers torus.PeerPool, t Target, from, to string, length int64, o Options) (int64, error) {
	src, err := peers.Peer(ctx, from)
	if err != nil {
		return 0, err
	}
	dst, err := peers.Peer(ctx, to)
	if err != nil {
		return 0, err
	}
	return Copy(ctx, src, dst, t.Seg, length, t.NBlocks, CopyOptions{Limit: o.Limit, Replace: true})
}

// Report is the outcome of scrubbing one volume.
type Report struct {
	Volume        string    `json:"volume"`
	ID            uint64    `json:"id"`
	Segments      int       `json:"segments"`       // live segments looked at
	Copies        int       `json:"copies"`         // copies read
	CheckedBytes  int64     `json:"checked_bytes"`  // bytes read and verified
	Bad           int       `json:"bad"`            // bad or unreadable copies found
	Repaired      int       `json:"repaired"`       // copies replaced by a verified copy
	RepairedBytes int64     `json:"repaired_bytes"` // bytes sent for them
	Findings      []Finding `json:"findings,omitempty"`
	// Unrepairable lists the blocks of segments no good copy exists of.
	Unrepairable []uint64 `json:"unrepairable_blocks,omitempty"`
	// Errors are problems that kept part of the volume from being
	// scrubbed (a live set that could not be read).
	Errors []string `json:"errors,omitempty"`
}

// Clean reports whether every copy checked is good or was repaired and
// nothing kept the scrub from looking everywhere.
func (r Report) Clean() bool {
	if len(r.Errors) > 0 {
		return false
	}
	for _, f := range r.Findings {
		if f.Action != ActionRepaired {
			return false
		}
	}
	return true
}

// Deps are what Volume reaches the cluster with.
type Deps struct {
	Meta  torus.Metadata
	Peers torus.PeerPool
}

// Volume scrubs every live segment copy of a volume on every up peer: it
// reads each copy, checks record headers and every block CRC against the
// length in the head (volume.Verifier), and with o.Repair replaces bad or
// short copies by a verified copy from a good holder. Segments the writer
// may still sync are reported, not replaced (ActionDeferred).
//
// It fails only when the volume or the peers cannot be read at all; a
// live set that cannot be read whole (a checkpoint with no good copy) is
// scrubbed as far as the head names it and reported in Errors.
func Volume(ctx context.Context, d Deps, name string, o Options) (Report, error) {
	info, err := d.Meta.Volume(ctx, name)
	if err != nil {
		return Report{}, err
	}
	rep := Report{Volume: name, ID: info.ID}
	head, err := d.Meta.Head(ctx, name)
	if err != nil {
		return rep, err
	}
	_, writing, err := d.Meta.Writer(ctx, name)
	if err != nil {
		return rep, err
	}
	lens, err := volume.LiveSegmentLengths(ctx, d.Meta, d.Peers, name, nil)
	if err != nil {
		if errors.Is(err, torus.ErrNotExist) {
			return rep, err
		}
		rep.Errors = append(rep.Errors, fmt.Sprintf("live segments: %v", err))
		lens = headSegments(head)
	}
	peers, err := d.Meta.Peers(ctx)
	if err != nil {
		return rep, err
	}
	inv := make(map[torus.SegmentID][]string)
	for _, p := range peers {
		if p.State != torus.PeerUp && p.State != torus.PeerDraining {
			continue
		}
		svc, err := d.Peers.Peer(ctx, p.ID)
		if err == nil {
			var infos []torus.SegmentInfo
			if infos, err = svc.List(ctx, info.ID); err == nil {
				for _, si := range infos {
					inv[si.ID] = append(inv[si.ID], p.ID)
				}
				continue
			}
		}
		rep.Errors = append(rep.Errors, fmt.Sprintf("listing peer %s: %v", p.ID, err))
	}
	busy := make(map[torus.SegmentID]bool)
	if writing {
		for _, s := range head.Sealed {
			busy[s.ID] = true
		}
	}
	ids := make([]torus.SegmentID, 0, len(lens))
	for id := range lens {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, rebalance.CompareSegmentID)
	nblocks := uint64(info.Size / torus.BlockSize)
	for _, id := range ids {
		n := lens[id]
		open := head.Open != nil && *head.Open == id
		if n == 0 || (n == volume.Unknown && !open) {
			continue // empty, or not written yet
		}
		rep.Segments++
		holders := inv[id]
		slices.Sort(holders)
		if len(holders) == 0 {
			f := Finding{Segment: id, Length: n, Problem: "no copy on an up peer", Action: ActionUnrepairable}
			rep.Findings = append(rep.Findings, f)
			rep.Bad++
			rep.Errors = append(rep.Errors, fmt.Sprintf("segment %s has no copy on an up peer", id))
			continue
		}
		r := Segment(ctx, d.Peers, Target{Seg: id, Length: n, NBlocks: nblocks, Holders: holders,
			Busy: writing && (open || busy[id])}, o)
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		rep.Copies += r.Copies
		rep.CheckedBytes += r.CheckedBytes
		rep.RepairedBytes += r.RepairedBytes
		for _, f := range r.Findings {
			rep.Bad++
			if f.Action == ActionRepaired {
				rep.Repaired++
			}
			if f.Action == ActionUnrepairable {
				rep.Unrepairable = append(rep.Unrepairable, f.BadBlocks...)
			}
			rep.Findings = append(rep.Findings, f)
		}
	}
	slices.Sort(rep.Unrepairable)
	rep.Unrepairable = slices.Compact(rep.Unrepairable)
	return rep, nil
}

// headSegments is the live set as far as the head alone names it (its
// checkpoint's table could not be read).
func headSegments(h torus.Head) map[torus.SegmentID]int64 {
	m := make(map[torus.SegmentID]int64)
	if h.Checkpoint != nil {
		m[h.Checkpoint.ID] = h.Checkpoint.Length
	}
	for _, s := range h.Sealed {
		m[s.ID] = s.Length
	}
	if h.Open != nil {
		m[*h.Open] = volume.Unknown
	}
	return m
}
