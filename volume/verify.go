package volume

import (
	"fmt"
	"slices"

	"github.com/torus-storage/torus"
)

// CopyCheck is the verdict on one copy of a segment, as Verifier and
// VerifySegment compute it from the copy's bytes alone.
//
// For a data segment the copy is good when its records, from offset 0 to
// the required length, all have valid headers and CRC arrays (the valid
// prefix reaches the required length) and every block's data matches its
// CRC. For a checkpoint segment it is good when its first Required bytes
// decode (DecodeCheckpoint). Bytes past Required are ignored: they do not
// exist for anyone (a fenced writer's late appends).
type CopyCheck struct {
	Segment torus.SegmentID `json:"segment"`
	// Required is the length that counts, from the head, or Unknown for a
	// segment still being written (then every byte given is looked at and
	// the copy is complete whatever its length).
	Required int64 `json:"required"`
	// Length is the number of bytes looked at: what the copy holds, up to
	// Required.
	Length int64 `json:"length"`
	// Valid is the valid prefix: for data segments, the end of the last
	// record (from 0) whose header and CRC array verify; for checkpoints,
	// Length if it decodes, else 0.
	Valid int64 `json:"valid"`
	// Complete says Valid covers Required (always true when Required is
	// Unknown).
	Complete bool `json:"complete"`
	// BadBlocks lists, sorted and without repeats, the volume blocks
	// whose data fails its CRC in the valid prefix, and the blocks of the
	// record where the valid prefix ends before Required when its header
	// still decodes (its CRC array is bad, or it is cut short).
	BadBlocks []uint64 `json:"bad_blocks,omitempty"`
	// BadRecord is the offset of the record where the valid prefix ends
	// before Required (or before the bytes end when Required is Unknown),
	// or -1. Blocks past it cannot be named from this copy alone when the
	// header there does not decode.
	BadRecord int64 `json:"bad_record"`
	// Problem says in a few words what is wrong, "" for a good copy.
	Problem string `json:"problem,omitempty"`
}

// OK reports whether the copy is complete and every block verifies.
func (c CopyCheck) OK() bool { return c.Problem == "" }

// Verifier checks one copy of a segment fed to it in order, from offset 0,
// in pieces of any size. It holds back at most one record's bytes (8 MiB)
// for a data segment, and the whole checkpoint for a checkpoint segment.
// It does no I/O; VerifySegment is the one-shot form.
type Verifier struct {
	seg      torus.SegmentID
	required int64
	nblocks  uint64
	buf      []byte   // bytes from off not yet consumed as whole records
	off      int64    // segment offset of buf[0]
	seen     int64    // bytes fed (up to required)
	stopped  bool     // the valid prefix has ended
	bad      []uint64 // blocks whose data fails its CRC
	cut      []uint64 // blocks of the record where the prefix ended, if its header decoded
	firstBad int64    // offset of the first record with a bad block, -1 if none
	badRec   int64
	why      string // why the prefix ended
	done     bool
	res      CopyCheck
}

// NewVerifier starts checking a copy of seg whose required length is
// required (Unknown for a segment still being written). nblocks is the
// volume's size in blocks, needed to decode a checkpoint.
func NewVerifier(seg torus.SegmentID, required int64, nblocks uint64) *Verifier {
	return &Verifier{seg: seg, required: required, nblocks: nblocks, badRec: -1, firstBad: -1}
}

// Write feeds the next bytes of the copy. It never fails; p is not
// retained.
func (v *Verifier) Write(p []byte) (int, error) {
	n := len(p)
	if v.done {
		panic("volume: Verifier.Write after Result")
	}
	if v.required >= 0 {
		if rest := v.required - v.seen; int64(len(p)) > rest {
			p = p[:max(rest, 0)]
		}
	}
	v.seen += int64(len(p))
	if v.stopped || len(p) == 0 {
		return n, nil
	}
	v.buf = append(v.buf, p...)
	if v.seg.Kind == torus.KindData {
		v.consume(false)
	}
	return n, nil
}

// Verified is the length of the prefix already proven good: whole records
// whose headers, CRC arrays and block data verify. A copier may send that
// much on. For a checkpoint it is 0 until Result.
func (v *Verifier) Verified() int64 {
	if v.seg.Kind != torus.KindData {
		if v.done && v.res.OK() {
			return v.res.Valid
		}
		return 0
	}
	if v.firstBad >= 0 {
		return v.firstBad
	}
	return v.off
}

// consume checks whole records at the start of buf. At the end (final), a
// remainder is a record cut short or a bad header.
func (v *Verifier) consume(final bool) {
	start := 0
	defer func() {
		// Keep the unconsumed tail at the front of buf.
		rest := copy(v.buf, v.buf[start:])
		v.buf = v.buf[:rest]
	}()
	for !v.stopped {
		rest := v.buf[start:]
		if len(rest) == 0 {
			return
		}
		if len(rest) < RecordHeaderSize {
			if final {
				v.stop("a torn record header", nil)
			}
			return
		}
		h, _, ok := decodeHeader(rest)
		if !ok {
			v.stop("a bad record header", nil)
			return
		}
		size := RecordSize(h)
		if int64(len(rest)) < size {
			if final {
				v.stop("a record cut short", &h)
			}
			return
		}
		recs, valid := ScanRecords(rest[:size], v.off)
		if valid != size || len(recs) != 1 {
			v.stop("a bad CRC array", &h)
			return
		}
		r := recs[0]
		if r.CRCs != nil {
			data := rest[r.DataOffset-v.off:]
			for i, c := range r.CRCs {
				if BlockCRC(data[i*torus.BlockSize:(i+1)*torus.BlockSize]) != c {
					v.bad = append(v.bad, r.Block+uint64(i))
					if v.firstBad < 0 {
						v.firstBad = v.off
					}
				}
			}
		}
		start += int(size)
		v.off += size
	}
}

// stop ends the valid prefix at v.off; h is the header there, if it decoded.
func (v *Verifier) stop(why string, h *RecordHeader) {
	v.stopped = true
	v.badRec = v.off
	v.why = why
	if h != nil {
		for i := uint32(0); i < h.Count; i++ {
			v.cut = append(v.cut, h.Block+uint64(i))
		}
	}
}

// Result finishes the check and returns the verdict. No Write may follow.
//
// For a segment still being written (Required Unknown) the end of the
// valid prefix is not a fault by itself (a torn tail after a crash looks
// the same): only blocks failing their CRC are; a caller comparing copies
// judges the prefix lengths.
func (v *Verifier) Result() CopyCheck {
	if v.done {
		return v.res
	}
	v.done = true
	c := CopyCheck{Segment: v.seg, Required: v.required, Length: v.seen, BadRecord: -1}
	if v.seg.Kind != torus.KindData {
		if _, err := DecodeCheckpoint(v.buf, AnyVolume, v.nblocks); err == nil {
			c.Valid = c.Length
		}
		c.Complete = c.Valid > 0 && (v.required < 0 || c.Valid >= v.required)
		switch {
		case c.Complete:
		case v.required >= 0 && c.Length < v.required:
			c.Problem = fmt.Sprintf("checkpoint is short: %d of %d bytes", c.Length, v.required)
		default:
			c.Problem = "checkpoint does not decode"
		}
		v.res = c
		return c
	}
	if !v.stopped && len(v.buf) > 0 {
		v.consume(true)
	}
	c.Valid = v.off
	c.BadRecord = v.badRec
	c.Complete = v.required < 0 || c.Valid >= v.required
	bad := slices.Clone(v.bad)
	if !c.Complete {
		bad = append(bad, v.cut...)
	}
	slices.Sort(bad)
	c.BadBlocks = slices.Compact(bad)
	switch {
	case !c.Complete && v.why != "":
		c.Problem = fmt.Sprintf("%s at offset %d: valid prefix %d of %d bytes", v.why, v.badRec, c.Valid, v.required)
	case !c.Complete:
		c.Problem = fmt.Sprintf("short: %d of %d bytes", c.Valid, v.required)
	case len(v.bad) > 0:
		c.Problem = fmt.Sprintf("%d blocks fail their CRC", len(c.BadBlocks))
	}
	v.res = c
	return c
}

// VerifySegment checks one copy of seg held in p (from offset 0) against
// the required length (Unknown for a segment still being written); nblocks
// is the volume's size in blocks (for checkpoints). It is a pure function
// of its input and does not retain p.
func VerifySegment(seg torus.SegmentID, p []byte, required int64, nblocks uint64) CopyCheck {
	v := NewVerifier(seg, required, nblocks)
	v.Write(p)
	return v.Result()
}
