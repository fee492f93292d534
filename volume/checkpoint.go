package volume

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/torus-storage/torus"
)

// Checkpoint format constants (docs/design/data-path.md, "Index").
const (
	// CheckpointMagic starts a checkpoint: "TRSC" as a little-endian u32.
	CheckpointMagic uint32 = 0x43535254
	// CheckpointVersion is the version of a checkpoint whose segment
	// table names only segments of its own volume (the header's volume
	// ID): every checkpoint of a volume that is not a clone.
	CheckpointVersion = 1
	// CheckpointVersionShared is the version of a checkpoint whose table
	// also names segments of other volumes (a clone's, sharing its
	// parent's segments). The layout is version 1's; only the rule for
	// table entries differs, and readers that know only version 1 refuse
	// it ("unknown version 2") rather than misread it.
	CheckpointVersionShared = 2
	checkpointHeaderSize    = 40
	checkpointSegEntrySize  = 40
	checkpointRunHeader     = 24
)

// Checkpoint is a decoded checkpoint: the segment table and the index
// (versions 1 and 2), or the segment table and one run over a stack of
// older runs (version 3: Runs set, Index nil; rebuild reads the stack).
type Checkpoint struct {
	VolumeID uint64
	Size     int64              // volume size when written
	Segments []torus.SegmentRef // the segment table, by slot
	Index    *Index
	Runs     *RunCheckpoint
}

// EncodeCheckpoint serializes x for volume (id, size). Only segments that
// hold live blocks are written into the table; slots are renumbered. Every
// segment x points into must be sealed (its length set). The version is
// CheckpointVersion unless the table names a segment of another volume (a
// clone's shared segments): CheckpointVersionShared then.
//
// Layout, little-endian:
//
//	0  4 magic "TRSC"   4 4 version   8 8 volume ID   16 8 size (bytes)
//	24 4 nsegs          28 4 reserved 32 8 nruns
//	40   nsegs × {volume u64, epoch u64, seq u64, kind u8, 7 reserved, length u64}
//	     nruns × {first block u64, count u32, slot u32, data offset u64, count × crc32c u32}
//	     crc32c u32 of everything before it
func EncodeCheckpoint(id uint64, size int64, x *Index) []byte {
	remap := make([]uint32, len(x.slots))
	var table []torus.SegmentRef
	for i, s := range x.slots {
		if s.Live > 0 {
			remap[i] = uint32(len(table))
			table = append(table, s.Ref)
		}
	}
	var runs []byte
	var nruns uint64
	_ = x.Runs(func(r Run) error {
		runs = binary.LittleEndian.AppendUint64(runs, r.First)
		runs = binary.LittleEndian.AppendUint32(runs, uint32(len(r.CRCs)))
		runs = binary.LittleEndian.AppendUint32(runs, remap[r.Slot])
		runs = binary.LittleEndian.AppendUint64(runs, uint64(r.DataOff))
		for _, c := range r.CRCs {
			runs = binary.LittleEndian.AppendUint32(runs, c)
		}
		nruns++
		return nil
	})
	version := uint32(CheckpointVersion)
	for _, s := range table {
		if s.ID.Volume != id {
			version = CheckpointVersionShared
		}
	}
	p := make([]byte, 0, checkpointHeaderSize+len(table)*checkpointSegEntrySize+len(runs)+4)
	p = binary.LittleEndian.AppendUint32(p, CheckpointMagic)
	p = binary.LittleEndian.AppendUint32(p, version)
	p = binary.LittleEndian.AppendUint64(p, id)
	p = binary.LittleEndian.AppendUint64(p, uint64(size))
	p = binary.LittleEndian.AppendUint32(p, uint32(len(table)))
	p = binary.LittleEndian.AppendUint32(p, 0)
	p = binary.LittleEndian.AppendUint64(p, nruns)
	for _, s := range table {
		p = appendSegmentEntry(p, s)
	}
	p = append(p, runs...)
	return binary.LittleEndian.AppendUint32(p, crc32.Checksum(p, castagnoli))
}

func corruptf(format string, args ...any) error {
	return fmt.Errorf("volume: checkpoint: %w: %s", torus.ErrCorrupt, fmt.Sprintf(format, args...))
}

// DecodeCheckpoint parses a checkpoint into an index of nblocks blocks (the
// reading volume's current size, which may have grown since). shares says
// which volumes' segments the reader may name (torus.VolumeInfo.
// SharesVolume of the reading volume; AnyVolume for a check of the format
// alone): the header's volume must be one of them, and so must every
// table entry of a version 2 checkpoint; a version 1 table names only the
// header's volume. Any inconsistency is an error wrapping torus.ErrCorrupt.
func DecodeCheckpoint(p []byte, shares func(volume uint64) bool, nblocks uint64) (*Checkpoint, error) {
	if len(p) < checkpointHeaderSize+4 {
		return nil, corruptf("%d bytes is too short", len(p))
	}
	body := p[:len(p)-4]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(p[len(p)-4:]) {
		return nil, corruptf("checksum mismatch")
	}
	if m := binary.LittleEndian.Uint32(body[0:]); m != CheckpointMagic {
		return nil, corruptf("bad magic %#x", m)
	}
	version := binary.LittleEndian.Uint32(body[4:])
	if version == CheckpointVersionRuns {
		rc, err := decodeRunCheckpoint(p, shares, nblocks)
		if err != nil {
			return nil, err
		}
		return &Checkpoint{VolumeID: rc.VolumeID, Size: rc.Size, Segments: rc.Segments, Runs: rc}, nil
	}
	if version != CheckpointVersion && version != CheckpointVersionShared {
		return nil, corruptf("unknown version %d", version)
	}
	ck := &Checkpoint{
		VolumeID: binary.LittleEndian.Uint64(body[8:]),
		Size:     int64(binary.LittleEndian.Uint64(body[16:])),
	}
	id := ck.VolumeID
	if !shares(id) {
		return nil, corruptf("checkpoint of volume %d, which the reading volume does not share", id)
	}
	if ck.Size < 0 || ck.Size%torus.BlockSize != 0 || uint64(ck.Size)/torus.BlockSize > nblocks {
		return nil, corruptf("size %d does not fit a volume of %d blocks", ck.Size, nblocks)
	}
	nsegs := uint64(binary.LittleEndian.Uint32(body[24:]))
	if binary.LittleEndian.Uint32(body[28:]) != 0 {
		return nil, corruptf("reserved bytes set")
	}
	nruns := binary.LittleEndian.Uint64(body[32:])
	rest := body[checkpointHeaderSize:]
	if nsegs > uint64(len(rest))/checkpointSegEntrySize {
		return nil, corruptf("%d segments do not fit", nsegs)
	}
	x := NewIndex(nblocks)
	for i := uint64(0); i < nsegs; i++ {
		ref, err := decodeSegmentEntry(rest[:checkpointSegEntrySize])
		if err != nil {
			return nil, err
		}
		rest = rest[checkpointSegEntrySize:]
		own := ref.ID.Volume == id || version == CheckpointVersionShared && shares(ref.ID.Volume)
		if !own || ref.ID.Kind != torus.KindData {
			return nil, corruptf("segment %d: %v is not a data segment of volume %d or a volume it shares (checkpoint version %d)", i, ref.ID, id, version)
		}
		if ref.Length < 0 || ref.Length >= 1<<32 {
			return nil, corruptf("segment %d: length %d", i, ref.Length)
		}
		if _, dup := x.slotOf[ref.ID]; dup {
			return nil, corruptf("segment %v listed twice", ref.ID)
		}
		slot := x.AddSegment(ref.ID)
		x.SetLength(slot, ref.Length)
		ck.Segments = append(ck.Segments, ref)
	}
	if nruns > uint64(len(rest))/(checkpointRunHeader+4) {
		return nil, corruptf("%d runs do not fit", nruns)
	}
	var next uint64 // first block a run may start at
	for i := uint64(0); i < nruns; i++ {
		if len(rest) < checkpointRunHeader {
			return nil, corruptf("run %d truncated", i)
		}
		first := binary.LittleEndian.Uint64(rest[0:])
		count := uint64(binary.LittleEndian.Uint32(rest[8:]))
		slot := binary.LittleEndian.Uint32(rest[12:])
		off := binary.LittleEndian.Uint64(rest[16:])
		rest = rest[checkpointRunHeader:]
		switch {
		case count == 0:
			return nil, corruptf("run %d is empty", i)
		case first < next || first+count < first || first+count > nblocks:
			return nil, corruptf("run %d [%d,+%d) overlaps or is out of range", i, first, count)
		case uint64(slot) >= nsegs:
			return nil, corruptf("run %d: slot %d of %d", i, slot, nsegs)
		case off > 1<<32 || off+count*torus.BlockSize > uint64(ck.Segments[slot].Length):
			return nil, corruptf("run %d: data [%d,+%d blocks) past segment length %d", i, off, count, ck.Segments[slot].Length)
		case uint64(len(rest))/4 < count:
			return nil, corruptf("run %d truncated", i)
		}
		crcs := make([]uint32, count)
		for j := range crcs {
			crcs[j] = binary.LittleEndian.Uint32(rest[4*j:])
		}
		rest = rest[4*count:]
		x.Map(first, slot, int64(off), crcs)
		next = first + count
	}
	if len(rest) != 0 {
		return nil, corruptf("%d trailing bytes", len(rest))
	}
	ck.Index = x
	return ck, nil
}

// appendSegmentEntry encodes a segment table entry (40 bytes):
// {volume u64, epoch u64, seq u64, kind u8, 7 reserved, length u64}.
func appendSegmentEntry(p []byte, s torus.SegmentRef) []byte {
	p = binary.LittleEndian.AppendUint64(p, s.ID.Volume)
	p = binary.LittleEndian.AppendUint64(p, s.ID.Epoch)
	p = binary.LittleEndian.AppendUint64(p, s.ID.Seq)
	p = append(p, byte(s.ID.Kind), 0, 0, 0, 0, 0, 0, 0)
	return binary.LittleEndian.AppendUint64(p, uint64(s.Length))
}

// decodeSegmentEntry decodes the first 40 bytes of e as a segment table
// entry; reserved bytes must be zero.
func decodeSegmentEntry(e []byte) (torus.SegmentRef, error) {
	r := torus.SegmentRef{
		ID: torus.SegmentID{
			Volume: binary.LittleEndian.Uint64(e[0:]),
			Epoch:  binary.LittleEndian.Uint64(e[8:]),
			Seq:    binary.LittleEndian.Uint64(e[16:]),
			Kind:   torus.SegmentKind(e[24]),
		},
		Length: int64(binary.LittleEndian.Uint64(e[32:])),
	}
	for _, b := range e[25:32] {
		if b != 0 {
			return r, corruptf("segment %v: reserved bytes set", r.ID)
		}
	}
	return r, nil
}

// AnyVolume is DecodeCheckpoint's shares for a check of the format alone
// (scrub, healing): it accepts every volume ID.
func AnyVolume(uint64) bool { return true }

// OnlyVolume is DecodeCheckpoint's shares for a volume that shares no
// other's segments.
func OnlyVolume(id uint64) func(uint64) bool { return func(v uint64) bool { return v == id } }
