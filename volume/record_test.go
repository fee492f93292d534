package volume

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/torus-storage/torus"
)

func blocks(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	p := make([]byte, n*torus.BlockSize)
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

func sampleSegment() []byte {
	var seg []byte
	seg = AppendWriteRecord(seg, 10, 7, blocks(1, 3), nil)
	seg = AppendZeroRecord(seg, 11, 1, 7)
	seg = AppendWriteRecord(seg, 0, 7, blocks(2, 1), nil)
	seg = AppendMoveRecord(seg, 20, 7, MoveSource{Epoch: 3, Seq: 4, Offset: 4140}, blocks(3, 2), nil)
	return seg
}

func TestRecordRoundTrip(t *testing.T) {
	seg := sampleSegment()
	recs, valid := ScanRecords(seg, 100)
	if valid != int64(len(seg)) || len(recs) != 4 {
		t.Fatalf("valid %d of %d, %d records", valid, len(seg), len(recs))
	}
	if got, want := int64(len(seg)), RecordSize(recs[0].RecordHeader)+RecordSize(recs[1].RecordHeader)+RecordSize(recs[2].RecordHeader)+RecordSize(recs[3].RecordHeader); got != want {
		t.Fatalf("size %d, RecordSize sum %d", got, want)
	}
	r := recs[0]
	if r.Type != RecordWrite || r.Block != 10 || r.Count != 3 || r.Epoch != 7 || r.Offset != 100 {
		t.Fatalf("record 0: %+v", r)
	}
	if r.DataOffset != 100+RecordHeaderSize+12 {
		t.Fatalf("data offset %d", r.DataOffset)
	}
	data := blocks(1, 3)
	for i := 0; i < 3; i++ {
		b := data[i*torus.BlockSize : (i+1)*torus.BlockSize]
		if r.CRCs[i] != BlockCRC(b) {
			t.Fatalf("crc %d", i)
		}
		off := r.DataOffset - 100 + int64(i)*torus.BlockSize
		if !bytes.Equal(seg[off:off+torus.BlockSize], b) {
			t.Fatalf("data %d not at its offset", i)
		}
	}
	if z := recs[1]; z.Type != RecordZero || z.Block != 11 || z.Count != 1 || z.CRCs != nil {
		t.Fatalf("record 1: %+v", z)
	}
	mv := recs[3]
	if mv.Type != RecordMove || mv.Block != 20 || mv.Count != 2 || mv.Source != (MoveSource{Epoch: 3, Seq: 4, Offset: 4140}) {
		t.Fatalf("record 3: %+v", mv)
	}
	if mv.DataOffset != mv.Offset+RecordHeaderSize+moveSourceSize+8 || mv.CRCs[1] != BlockCRC(blocks(3, 2)[4096:]) {
		t.Fatalf("move record layout: %+v", mv)
	}
	if !bytes.Equal(seg[mv.DataOffset-100:mv.DataOffset-100+8192], blocks(3, 2)) {
		t.Fatal("move data not at its offset")
	}
	// 4 KiB write amplification as the design note states.
	if got := RecordSize(RecordHeader{Type: RecordWrite, Count: 1}); got != 40+4+4096 {
		t.Fatalf("4K record size %d", got)
	}
}

func TestScanValidPrefix(t *testing.T) {
	seg := sampleSegment()
	first := RecordSize(RecordHeader{Type: RecordWrite, Count: 3})
	second := first + RecordHeaderSize
	third := second + RecordSize(RecordHeader{Type: RecordWrite, Count: 1})
	// Truncation anywhere inside the third record leaves two.
	for cut := second; cut < third; cut += 97 {
		recs, valid := ScanRecords(seg[:cut], 0)
		if len(recs) != 2 || valid != second {
			t.Fatalf("cut %d: %d records, valid %d", cut, len(recs), valid)
		}
	}
	// A flipped bit in a header or CRC array ends the prefix there.
	for _, pos := range []int64{0, 5, 9, 17, 21, 25, 33, 37, 40, 50} {
		bad := bytes.Clone(seg)
		bad[pos] ^= 0x10
		recs, valid := ScanRecords(bad, 0)
		if len(recs) != 0 || valid != 0 {
			t.Fatalf("flip at %d: %d records valid %d", pos, len(recs), valid)
		}
	}
	// A flipped bit in block data is not detected by the scan (lazy check).
	bad := bytes.Clone(seg)
	bad[first-1] ^= 1
	if recs, _ := ScanRecords(bad, 0); len(recs) != 4 {
		t.Fatalf("data flip changed the scan: %d", len(recs))
	}
	// Garbage after valid records (a torn tail) is ignored.
	tail := append(bytes.Clone(seg), make([]byte, 100)...)
	if recs, valid := ScanRecords(tail, 0); len(recs) != 4 || valid != int64(len(seg)) {
		t.Fatalf("zero tail: %d records valid %d", len(recs), valid)
	}
}

func FuzzScanRecords(f *testing.F) {
	f.Add(sampleSegment())
	f.Add([]byte{})
	f.Add(AppendZeroRecord(nil, 1<<40, MaxRecordBlocks, 1))
	f.Fuzz(func(t *testing.T, p []byte) {
		recs, valid := ScanRecords(p, 0)
		if valid < 0 || valid > int64(len(p)) {
			t.Fatalf("valid %d of %d", valid, len(p))
		}
		// Re-encoding the scanned records reproduces the prefix exactly.
		var re []byte
		for _, r := range recs {
			if r.Count == 0 || r.Count > MaxRecordBlocks {
				t.Fatalf("bad count %d", r.Count)
			}
			switch r.Type {
			case RecordWrite:
				data := p[r.DataOffset : r.DataOffset+int64(r.Count)*torus.BlockSize]
				re = AppendWriteRecord(re, r.Block, r.Epoch, data, r.CRCs)
			case RecordMove:
				data := p[r.DataOffset : r.DataOffset+int64(r.Count)*torus.BlockSize]
				re = AppendMoveRecord(re, r.Block, r.Epoch, r.Source, data, r.CRCs)
			case RecordZero:
				re = AppendZeroRecord(re, r.Block, r.Count, r.Epoch)
			default:
				t.Fatalf("bad type %d", r.Type)
			}
		}
		if !bytes.Equal(re, p[:valid]) {
			t.Fatalf("re-encoding differs from the valid prefix")
		}
	})
}
