package volume

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/torus-storage/torus"
)

// Record format constants (docs/design/data-path.md, "Records").
const (
	// RecordMagic starts every record: "TRSR" read as a little-endian u32.
	RecordMagic uint32 = 0x52535254
	// RecordHeaderSize is the fixed header length of a record.
	RecordHeaderSize = 40
	// MaxRecordBlocks is the largest block count of one record.
	MaxRecordBlocks = 2048
)

// RecordType is the kind of a record.
type RecordType uint8

const (
	// RecordWrite carries block data.
	RecordWrite RecordType = 1
	// RecordZero makes a block range read as zeros (trim, write-zeroes).
	RecordZero RecordType = 2
	// RecordMove carries block data copied by compaction from a source
	// location; it applies only to blocks the index still maps there.
	RecordMove RecordType = 3
)

// moveSourceSize is the size of a move record's source descriptor.
const moveSourceSize = 24

// MoveSource is where a move record's blocks were copied from: a data
// segment of the same volume and the data offset of the first block.
type MoveSource struct {
	Epoch, Seq uint64
	Offset     int64
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// BlockCRC is the CRC32C of one block, as stored in records and the index.
func BlockCRC(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }

// RecordHeader is the decoded fixed part of a record.
type RecordHeader struct {
	Type  RecordType
	Block uint64 // first volume block
	Count uint32 // blocks, 1..MaxRecordBlocks
	Epoch uint64 // writer epoch
}

// RecordSize is the encoded size of a record with header h.
func RecordSize(h RecordHeader) int64 {
	switch h.Type {
	case RecordWrite:
		return RecordHeaderSize + int64(h.Count)*(4+torus.BlockSize)
	case RecordMove:
		return RecordHeaderSize + moveSourceSize + int64(h.Count)*(4+torus.BlockSize)
	}
	return RecordHeaderSize
}

// AppendWriteRecord appends a write record for data (a non-empty multiple of
// BlockSize, at most MaxRecordBlocks blocks) at block to dst. crcs, when not
// nil, must hold the data's per-block CRCs (saving their recomputation).
func AppendWriteRecord(dst []byte, block, epoch uint64, data []byte, crcs []uint32) []byte {
	return appendDataRecord(dst, RecordWrite, block, epoch, nil, data, crcs)
}

// AppendMoveRecord appends a move record (compaction) for data copied from
// src to block. Arguments are as for AppendWriteRecord.
func AppendMoveRecord(dst []byte, block, epoch uint64, src MoveSource, data []byte, crcs []uint32) []byte {
	return appendDataRecord(dst, RecordMove, block, epoch, &src, data, crcs)
}

func appendDataRecord(dst []byte, t RecordType, block, epoch uint64, src *MoveSource, data []byte, crcs []uint32) []byte {
	n := len(data) / torus.BlockSize
	if n == 0 || n > MaxRecordBlocks || len(data)%torus.BlockSize != 0 {
		panic(fmt.Sprintf("volume: bad data record of %d bytes", len(data)))
	}
	start := len(dst)
	dst = appendHeader(dst, t, block, uint32(n), epoch)
	crcStart := len(dst)
	if src != nil {
		dst = binary.LittleEndian.AppendUint64(dst, src.Epoch)
		dst = binary.LittleEndian.AppendUint64(dst, src.Seq)
		dst = binary.LittleEndian.AppendUint64(dst, uint64(src.Offset))
	}
	for i := 0; i < n; i++ {
		var c uint32
		if crcs != nil {
			c = crcs[i]
		} else {
			c = BlockCRC(data[i*torus.BlockSize : (i+1)*torus.BlockSize])
		}
		dst = binary.LittleEndian.AppendUint32(dst, c)
	}
	sum := crc32.Checksum(dst[crcStart:], castagnoli)
	sealHeader(dst[start:], sum)
	return append(dst, data...)
}

// AppendZeroRecord appends a zero record for count blocks at block to dst.
func AppendZeroRecord(dst []byte, block uint64, count uint32, epoch uint64) []byte {
	if count == 0 || count > MaxRecordBlocks {
		panic(fmt.Sprintf("volume: bad zero record of %d blocks", count))
	}
	start := len(dst)
	dst = appendHeader(dst, RecordZero, block, count, epoch)
	sealHeader(dst[start:], 0)
	return dst
}

func appendHeader(dst []byte, t RecordType, block uint64, count uint32, epoch uint64) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, RecordMagic)
	dst = append(dst, byte(t), 0, 0, 0)
	dst = binary.LittleEndian.AppendUint64(dst, block)
	dst = binary.LittleEndian.AppendUint32(dst, count)
	dst = binary.LittleEndian.AppendUint32(dst, 0)
	dst = binary.LittleEndian.AppendUint64(dst, epoch)
	return append(dst, 0, 0, 0, 0, 0, 0, 0, 0) // sumcrc, hdrcrc
}

func sealHeader(h []byte, sum uint32) {
	binary.LittleEndian.PutUint32(h[32:], sum)
	binary.LittleEndian.PutUint32(h[36:], crc32.Checksum(h[:36], castagnoli))
}

// ScannedRecord is one valid record found by ScanRecords.
type ScannedRecord struct {
	RecordHeader
	Offset     int64      // of the record in the segment
	DataOffset int64      // of the first block's data (write and move records)
	CRCs       []uint32   // per-block CRC32C (write and move records)
	Source     MoveSource // move records
}

// decodeHeader validates the header at the start of p (len ≥ RecordHeaderSize).
func decodeHeader(p []byte) (RecordHeader, uint32, bool) {
	if binary.LittleEndian.Uint32(p[0:]) != RecordMagic {
		return RecordHeader{}, 0, false
	}
	if binary.LittleEndian.Uint32(p[36:]) != crc32.Checksum(p[:36], castagnoli) {
		return RecordHeader{}, 0, false
	}
	h := RecordHeader{
		Type:  RecordType(p[4]),
		Block: binary.LittleEndian.Uint64(p[8:]),
		Count: binary.LittleEndian.Uint32(p[16:]),
		Epoch: binary.LittleEndian.Uint64(p[24:]),
	}
	if p[5]|p[6]|p[7] != 0 || binary.LittleEndian.Uint32(p[20:]) != 0 {
		return RecordHeader{}, 0, false
	}
	if h.Type != RecordWrite && h.Type != RecordZero && h.Type != RecordMove {
		return RecordHeader{}, 0, false
	}
	if h.Count == 0 || h.Count > MaxRecordBlocks || h.Block+uint64(h.Count) < h.Block {
		return RecordHeader{}, 0, false
	}
	sum := binary.LittleEndian.Uint32(p[32:])
	if h.Type == RecordZero && sum != 0 {
		return RecordHeader{}, 0, false
	}
	return h, sum, true
}

// ScanRecords returns the records of the valid prefix of a data segment's
// bytes p, and the length of that prefix. The prefix ends at the first record
// whose header or CRC array does not verify, or that runs past len(p). Block
// data is not verified here: reads check it against the index's CRCs.
//
// base is added to every offset reported (the position of p[0] in the
// segment); ScanRecords never retains p.
func ScanRecords(p []byte, base int64) (recs []ScannedRecord, valid int64) {
	var off int64
	for {
		rest := p[off:]
		if len(rest) < RecordHeaderSize {
			return recs, off
		}
		h, sum, ok := decodeHeader(rest)
		if !ok {
			return recs, off
		}
		size := RecordSize(h)
		if int64(len(rest)) < size {
			return recs, off
		}
		r := ScannedRecord{RecordHeader: h, Offset: base + off}
		if h.Type == RecordWrite || h.Type == RecordMove {
			meta := 0
			if h.Type == RecordMove {
				meta = moveSourceSize
			}
			summed := rest[RecordHeaderSize : RecordHeaderSize+meta+4*int(h.Count)]
			if crc32.Checksum(summed, castagnoli) != sum {
				return recs, off
			}
			if h.Type == RecordMove {
				r.Source = MoveSource{
					Epoch:  binary.LittleEndian.Uint64(summed[0:]),
					Seq:    binary.LittleEndian.Uint64(summed[8:]),
					Offset: int64(binary.LittleEndian.Uint64(summed[16:])),
				}
				if r.Source.Offset < 0 {
					return recs, off
				}
			}
			arr := summed[meta:]
			r.CRCs = make([]uint32, h.Count)
			for i := range r.CRCs {
				r.CRCs[i] = binary.LittleEndian.Uint32(arr[4*i:])
			}
			r.DataOffset = r.Offset + RecordHeaderSize + int64(meta) + 4*int64(h.Count)
		}
		recs = append(recs, r)
		off += size
	}
}
