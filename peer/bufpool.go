package peer

import (
	"hash/crc32"
	"io"
	"math/bits"
	"sync"
)

// Buffers from 64 KiB to 16 MiB are recycled in power-of-two classes;
// smaller and larger ones are plain allocations.
const (
	minPooledShift = 16
	maxPooledShift = 24
)

// readBufferSize is the read buffer of each connection, client and server:
// a frame header and a small body, or several small frames, in one read
// syscall.
const readBufferSize = 64 << 10

// bufPool recycles large frame bodies so that a stream of big appends or
// reads does not allocate (and clear) a fresh buffer per request.
type bufPool struct {
	classes [maxPooledShift - minPooledShift + 1]sync.Pool
}

// get returns a buffer of length n (contents undefined).
func (p *bufPool) get(n int) *[]byte {
	if n < 1<<minPooledShift || n > 1<<maxPooledShift {
		b := make([]byte, n)
		return &b
	}
	shift := bits.Len(uint(n - 1))
	if v := p.classes[shift-minPooledShift].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<shift)
	return &b
}

// put recycles a buffer from get; the caller must not use it afterwards.
func (p *bufPool) put(b *[]byte) {
	c := cap(*b)
	if c < 1<<minPooledShift || c > 1<<maxPooledShift || c&(c-1) != 0 {
		return
	}
	*b = (*b)[:0]
	p.classes[bits.Len(uint(c-1))-minPooledShift].Put(b)
}

// readBody fills b from r and returns its CRC32C, computed chunk by chunk
// as the bytes arrive so that checksumming overlaps the transfer.
func readBody(r io.Reader, b []byte) (uint32, error) {
	return readBodyCRC(r, b, 0)
}

// readBodyCRC is readBody continuing the CRC32C crc of the bytes before b.
func readBodyCRC(r io.Reader, b []byte, crc uint32) (uint32, error) {
	const chunk = 256 << 10
	for off := 0; off < len(b); {
		n := min(chunk, len(b)-off)
		if _, err := io.ReadFull(r, b[off:off+n]); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		crc = crc32.Update(crc, castagnoli, b[off:off+n])
		off += n
	}
	return crc, nil
}
