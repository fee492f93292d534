package volume

import (
	"slices"
	"strings"
	"testing"

	"github.com/torus-storage/torus"
)

var dataSeg = torus.SegmentID{Volume: 1, Epoch: 7, Seq: 3}

// verifySegment layout (sampleSegment): write [10,13) at 0, zero 11 at r1,
// write 0 at r2, move [20,22) at r3.
func recordOffsets() []int64 {
	r1 := RecordSize(RecordHeader{Type: RecordWrite, Count: 3})
	r2 := r1 + RecordHeaderSize
	r3 := r2 + RecordSize(RecordHeader{Type: RecordWrite, Count: 1})
	return []int64{0, r1, r2, r3}
}

func TestVerifyGoodSegment(t *testing.T) {
	seg := sampleSegment()
	c := VerifySegment(dataSeg, seg, int64(len(seg)), 64)
	if !c.OK() || c.Valid != int64(len(seg)) || !c.Complete || c.BadRecord != -1 || len(c.BadBlocks) != 0 {
		t.Fatalf("good segment: %+v", c)
	}
	// Bytes past the required length do not count, even garbage.
	long := append(slices.Clone(seg), "garbage past the sealed length....................."...)
	if c := VerifySegment(dataSeg, long, int64(len(seg)), 64); !c.OK() || c.Length != int64(len(seg)) {
		t.Fatalf("garbage past the length: %+v", c)
	}
	// Unknown length (an open segment): a torn last record is not a fault.
	r3 := recordOffsets()[3]
	if c := VerifySegment(dataSeg, seg[:r3+100], Unknown, 64); !c.OK() || c.Valid != r3 {
		t.Fatalf("open segment with a torn tail: %+v", c)
	}
}

func TestVerifyFindsCorruption(t *testing.T) {
	offs := recordOffsets()
	full := int64(len(sampleSegment()))
	for _, tc := range []struct {
		name     string
		at       int64 // byte flipped
		valid    int64
		complete bool
		blocks   []uint64
		problem  string
	}{
		{"first header magic", 0, 0, false, nil, "bad record header"},
		{"first header block field", 9, 0, false, nil, "bad record header"},
		{"first header crc", 37, 0, false, nil, "bad record header"},
		{"first crc array", RecordHeaderSize + 5, 0, false, []uint64{10, 11, 12}, "bad CRC array"},
		{"first record data", RecordHeaderSize + 12 + 4096 + 1, full, true, []uint64{11}, "fail their CRC"},
		{"zero record header", offs[1] + 2, offs[1], false, nil, "bad record header"},
		{"third record data", offs[2] + RecordHeaderSize + 4 + 4095, full, true, []uint64{0}, "fail their CRC"},
		{"move source", offs[3] + RecordHeaderSize + 3, offs[3], false, []uint64{20, 21}, "bad CRC array"},
		{"move data", full - 1, full, true, []uint64{21}, "fail their CRC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			seg := sampleSegment()
			seg[tc.at] ^= 0x10
			c := VerifySegment(dataSeg, seg, full, 64)
			if c.OK() || c.Valid != tc.valid || c.Complete != tc.complete || !slices.Equal(c.BadBlocks, tc.blocks) ||
				!strings.Contains(c.Problem, tc.problem) {
				t.Fatalf("got %+v\nwant valid %d complete %v blocks %v problem %q", c, tc.valid, tc.complete, tc.blocks, tc.problem)
			}
			if !tc.complete && c.BadRecord != tc.valid {
				t.Fatalf("bad record at %d, want %d", c.BadRecord, tc.valid)
			}
		})
	}
}

func TestVerifyShortCopy(t *testing.T) {
	seg := sampleSegment()
	offs := recordOffsets()
	c := VerifySegment(dataSeg, seg[:offs[2]], int64(len(seg)), 64)
	if c.OK() || c.Complete || c.Valid != offs[2] || !strings.Contains(c.Problem, "short") {
		t.Fatalf("short copy: %+v", c)
	}
	// Cut inside a record: its blocks are named.
	c = VerifySegment(dataSeg, seg[:offs[3]+RecordHeaderSize+30], int64(len(seg)), 64)
	if c.Complete || c.Valid != offs[3] || !slices.Equal(c.BadBlocks, []uint64{20, 21}) {
		t.Fatalf("cut record: %+v", c)
	}
	// A sealed length that ends inside a record: the copy cannot be right.
	c = VerifySegment(dataSeg, seg, offs[3]+10, 64)
	if c.Complete || c.Valid != offs[3] {
		t.Fatalf("length inside a record: %+v", c)
	}
}

// TestVerifierStreaming: feeding a copy in pieces of any size gives the
// verdict of the one-shot call, and Verified never passes a bad record.
func TestVerifierStreaming(t *testing.T) {
	seg := sampleSegment()
	seg[recordOffsets()[2]+RecordHeaderSize+4+7] ^= 1 // block 0's data
	want := VerifySegment(dataSeg, seg, int64(len(seg)), 64)
	for _, piece := range []int{1, 7, 40, 4096, 5000, len(seg)} {
		v := NewVerifier(dataSeg, int64(len(seg)), 64)
		for off := 0; off < len(seg); off += piece {
			v.Write(seg[off:min(off+piece, len(seg))])
			if got := v.Verified(); got > recordOffsets()[2] {
				t.Fatalf("piece %d: verified %d past the bad record at %d", piece, got, recordOffsets()[2])
			}
		}
		got := v.Result()
		if got.Valid != want.Valid || !slices.Equal(got.BadBlocks, want.BadBlocks) || got.Problem != want.Problem {
			t.Fatalf("piece %d: %+v, one-shot %+v", piece, got, want)
		}
	}
	v := NewVerifier(dataSeg, Unknown, 64)
	good := sampleSegment()
	v.Write(good[:recordOffsets()[1]+3])
	if v.Verified() != recordOffsets()[1] {
		t.Fatalf("verified %d after the first record", v.Verified())
	}
}

func TestVerifyCheckpoint(t *testing.T) {
	x := NewIndex(64)
	slot := x.AddSegment(dataSeg)
	x.SetLength(slot, 1<<20)
	x.Map(3, slot, 4096, []uint32{1, 2})
	p := EncodeCheckpoint(1, 64*torus.BlockSize, x)
	ck := torus.SegmentID{Volume: 1, Epoch: 7, Seq: 4, Kind: torus.KindCheckpoint}
	if c := VerifySegment(ck, p, int64(len(p)), 64); !c.OK() || c.Valid != int64(len(p)) {
		t.Fatalf("good checkpoint: %+v", c)
	}
	for _, at := range []int{0, 20, len(p) / 2, len(p) - 1} {
		q := slices.Clone(p)
		q[at] ^= 4
		if c := VerifySegment(ck, q, int64(len(q)), 64); c.OK() || c.Valid != 0 || !strings.Contains(c.Problem, "decode") {
			t.Fatalf("flip at %d: %+v", at, c)
		}
	}
	if c := VerifySegment(ck, p[:len(p)-3], int64(len(p)), 64); c.OK() || !strings.Contains(c.Problem, "short") {
		t.Fatalf("short checkpoint: %+v", c)
	}
	v := NewVerifier(ck, int64(len(p)), 64)
	v.Write(p)
	if v.Verified() != 0 {
		t.Fatal("a checkpoint is verified before Result")
	}
	if v.Result(); v.Verified() != int64(len(p)) {
		t.Fatalf("verified %d after Result", v.Verified())
	}
}
