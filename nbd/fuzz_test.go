package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/torus-storage/torus"
)

// session builds a client byte stream: flags, options, then requests.
func session(opts [][]byte, reqs ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, flagCFixedNewstyle|flagCNoZeroes)
	for _, o := range opts {
		b = append(b, o...)
	}
	for _, r := range reqs {
		b = append(b, r...)
	}
	return b
}

func req(typ, flags uint16, off uint64, n uint32, payload []byte) []byte {
	return append(request{typ: typ, flags: flags, handle: uint64(typ), offset: off, length: n}.encode(nil), payload...)
}

func handshakeSeeds() [][]byte {
	goVol := appendOption(nil, optGo, appendInfoRequest(nil, infoRequest{name: "vol", infos: []uint16{infoBlockSize, infoName, infoDescription}}))
	structured := appendOption(nil, optStructuredReply, nil)
	meta := appendOption(nil, optSetMetaContext, appendMetaRequest(nil, metaRequest{name: "vol", queries: []string{metaAllocCtx}}))
	listMeta := appendOption(nil, optListMetaContext, appendMetaRequest(nil, metaRequest{name: "vol"}))
	return [][]byte{
		session([][]byte{structured, meta, goVol},
			req(cmdWrite, cmdFlagFUA, 100, 5, []byte("hello")), req(cmdRead, 0, 98, 10, nil),
			req(cmdBlockStatus, cmdFlagReqOne, 0, 8192, nil), req(cmdTrim, 0, 0, 4096, nil),
			req(cmdWriteZeroes, cmdFlagNoHole, 4096, 4096, nil), req(cmdCache, 0, 0, 4096, nil),
			req(cmdFlush, 0, 0, 0, nil), req(cmdDisc, 0, 0, 0, nil)),
		session([][]byte{appendOption(nil, optExportName, nil)},
			req(cmdRead, 0, 1<<20-1, 2, nil), req(cmdWrite, 0, 0, 3, []byte("abc")), req(9, 0, 0, 0, nil)),
		session([][]byte{appendOption(nil, optList, nil), appendOption(nil, optInfo, appendInfoRequest(nil, infoRequest{name: "vol@snap"})),
			appendOption(nil, 0x77, []byte("junk")), structured, listMeta, appendOption(nil, optAbort, nil)}),
		session([][]byte{appendOption(nil, optStartTLS, nil), appendOption(nil, optInfo, []byte{0, 0, 1, 0}), goVol},
			req(cmdWrite, 0, 0, 4, []byte("ab"))),
	}
}

// fuzzExports serves two small devices for fuzzing.
func fuzzExports() *memExports {
	ex := newMemExports()
	ex.add("vol", 1<<20)
	ex.add("vol@snap", 64<<10)
	ex.def = "vol"
	return ex
}

// FuzzHandshake feeds arbitrary client bytes through the handshake and,
// if it reaches transmission, through the request decoder and handlers.
// Nothing may panic, hang or leak a device reference.
func FuzzHandshake(f *testing.F) {
	for _, s := range handshakeSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ex := fuzzExports()
		srv := NewServer(Config{}, ex, slog.New(slog.DiscardHandler))
		c := &conn{srv: srv, log: srv.log, r: bytes.NewReader(data), w: io.Discard}
		exp, err := c.handshake(context.Background())
		if err == nil {
			c.transmit(exp)
			c.closeExport(exp)
		}
		srv.mu.Lock()
		open := len(srv.devs)
		srv.mu.Unlock()
		if open != 0 {
			t.Fatalf("%d devices still open after the session", open)
		}
	})
}

// FuzzOptionParsers checks the INFO/GO and meta-context payload decoders:
// no panic, and whatever decodes re-encodes to the same bytes.
func FuzzOptionParsers(f *testing.F) {
	f.Add(appendInfoRequest(nil, infoRequest{name: "vol", infos: []uint16{1, 3}}))
	f.Add(appendMetaRequest(nil, metaRequest{name: "vol", queries: []string{"base:allocation", "qemu:x"}}))
	f.Add([]byte{0, 0, 0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		if q, err := parseInfoRequest(data); err == nil {
			if got := appendInfoRequest(nil, q); !bytes.Equal(got, data) {
				t.Fatalf("info request %+v re-encodes to %x, not %x", q, got, data)
			}
		}
		if q, err := parseMetaRequest(data); err == nil {
			if got := appendMetaRequest(nil, q); !bytes.Equal(got, data) {
				t.Fatalf("meta request %+v re-encodes to %x, not %x", q, got, data)
			}
			if len(q.queries) > maxMetaQueries {
				t.Fatalf("%d queries accepted", len(q.queries))
			}
		}
		if o, err := readOption(bytes.NewReader(data)); err == nil {
			if !o.tooLong && len(o.data) > maxOptionLen {
				t.Fatalf("option of %d bytes accepted", len(o.data))
			}
		}
	})
}

// FuzzRequest checks the request decoder and validation: a request that
// validates lies inside the export and within the size limit, and
// block-status descriptors never exceed the request.
func FuzzRequest(f *testing.F) {
	f.Add(req(cmdRead, 0, 0, 4096, nil), int64(1<<20), false, true, true, int64(0), int64(8192), false)
	f.Add(req(cmdWrite, cmdFlagFUA, 1<<20-1, 1, nil), int64(1<<20), true, false, false, int64(100), int64(5), true)
	f.Add(req(cmdBlockStatus, cmdFlagReqOne, 4095, 3, nil), int64(4096), false, true, true, int64(4095), int64(1), true)
	f.Fuzz(func(t *testing.T, b []byte, size int64, readOnly, structured, meta bool, eoff, elen int64, ezero bool) {
		r, err := decodeRequest(b)
		if err != nil {
			return
		}
		if got := r.encode(nil); !bytes.Equal(got, b[:requestLen]) {
			t.Fatalf("re-encoded %x, not %x", got, b[:requestLen])
		}
		if size < 0 {
			size = -size
		}
		errno, _ := validate(r, size, readOnly, structured, meta)
		if errno == 0 && r.typ != cmdFlush {
			if r.offset+uint64(r.length) > uint64(size) || r.offset > uint64(size) {
				t.Fatalf("request %+v outside export of %d validated", r, size)
			}
			if (r.typ == cmdRead || r.typ == cmdWrite) && r.length > MaxRequestSize {
				t.Fatalf("oversized request %+v validated", r)
			}
			if readOnly && (r.typ == cmdWrite || r.typ == cmdTrim || r.typ == cmdWriteZeroes) {
				t.Fatalf("write %+v validated on a read-only export", r)
			}
		}
		ext := []torus.Extent{
			{Offset: int64(r.offset), Length: elen, Zero: ezero},
			{Offset: int64(r.offset) + elen, Length: eoff, Zero: !ezero},
		}
		descs := blockDescriptors(ext, r.offset, r.length, r.flags&cmdFlagReqOne != 0)
		var sum uint64
		for _, d := range descs {
			if d.length == 0 {
				t.Fatal("zero-length descriptor")
			}
			sum += uint64(d.length)
		}
		if sum > uint64(r.length) || len(descs) > maxDescriptors || (r.flags&cmdFlagReqOne != 0 && len(descs) > 1) {
			t.Fatalf("descriptors %v for request %+v", descs, r)
		}
	})
}

// TestWriteFuzzCorpus regenerates the checked-in seed corpus under
// testdata/fuzz when NBD_WRITE_CORPUS=1.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("NBD_WRITE_CORPUS") != "1" {
		t.Skip("set NBD_WRITE_CORPUS=1 to rewrite testdata/fuzz")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzHandshake")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range handshakeSeeds() {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed%d", i)), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
