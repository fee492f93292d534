package peer

import (
	"bytes"
	"errors"
	"hash/crc32"
	"io"
	"testing"
	"testing/iotest"
)

func TestBufPool(t *testing.T) {
	var p bufPool
	for _, n := range []int{0, 100, 64<<10 - 1, 64 << 10, 64<<10 + 1, 1 << 20, 16 << 20, 16<<20 + 1} {
		b := p.get(n)
		if len(*b) != n {
			t.Fatalf("get(%d) has length %d", n, len(*b))
		}
		if n >= 64<<10 && n <= 16<<20 && cap(*b)&(cap(*b)-1) != 0 {
			t.Fatalf("get(%d): capacity %d is not a class", n, cap(*b))
		}
		p.put(b)
		if again := p.get(n); len(*again) != n {
			t.Fatalf("recycled get(%d) has length %d", n, len(*again))
		}
	}
}

func TestReadBody(t *testing.T) {
	data := bytes.Repeat([]byte("0123456789"), 100000)
	b := make([]byte, len(data))
	crc, err := readBody(iotest.OneByteReader(bytes.NewReader(data[:1000])), b[:1000])
	if err != nil || !bytes.Equal(b[:1000], data[:1000]) {
		t.Fatal(err)
	}
	whole, err := readBody(bytes.NewReader(data), b)
	if err != nil || !bytes.Equal(b, data) {
		t.Fatal(err)
	}
	if want := crcOf(data); whole != want || crc != crcOf(data[:1000]) {
		t.Fatalf("crc %x, want %x", whole, want)
	}
	if _, err := readBody(bytes.NewReader(data[:10]), b); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short: %v", err)
	}
}

func crcOf(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }
