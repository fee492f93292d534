package peer

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/torus-storage/torus"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite the seed corpus under testdata/fuzz")

// fuzzMaxBody is the body limit used while fuzzing, small so that
// iterations stay fast; the code paths are the same as with MaxBody.
const fuzzMaxBody = 1 << 16

// seedFrames returns well-formed request and response frames of every op,
// and a few malformed ones.
func seedFrames() [][]byte {
	var out [][]byte
	for i, r := range allRequests() {
		out = append(out, frame(r.Op, 0, uint64(i), EncodeRequest(r)))
	}
	info := torus.SegmentInfo{ID: testSeg, Length: 10, Synced: 5}
	resps := []struct {
		op Op
		r  Response
	}{
		{OpAppend, Response{Status: StatusFenced, Msg: "fenced"}},
		{OpReadAt, Response{Status: StatusEOF, Data: []byte("xy")}},
		{OpStat, Response{Info: info}},
		{OpList, Response{List: []torus.SegmentInfo{info, info}}},
		{OpUsage, Response{Usage: torus.Usage{Used: 1, Capacity: 2}}},
	}
	for i, r := range resps {
		out = append(out, frame(r.op, FlagResponse, uint64(100+i), AppendResponse(nil, r.op, r.r)))
	}
	two := append(frame(OpUsage, 0, 1, nil), frame(OpSync, 0, 2, EncodeRequest(Request{Op: OpSync}))...)
	bad := frame(OpSync, 0, 3, []byte{1, 2, 3})
	huge := frame(OpAppend, 0, 4, nil)
	PutHeader(huge, Header{Version: Version, Op: OpAppend, ID: 4, Length: 1 << 31})
	return append(out, two, bad, huge, []byte("TRSP"), nil)
}

// seedBodies returns op-prefixed bodies for the body decoders.
func seedBodies(response bool) [][]byte {
	var out [][]byte
	for _, f := range seedFrames() {
		h, body, _, err := DecodeFrame(f, MaxBody)
		if err == nil && h.Response() == response {
			out = append(out, append([]byte{byte(h.Op)}, body...))
		}
	}
	return out
}

func TestFuzzSeedCorpus(t *testing.T) {
	corpora := map[string][][]byte{
		"FuzzDecodeFrame":    seedFrames(),
		"FuzzDecodeRequest":  seedBodies(false),
		"FuzzDecodeResponse": seedBodies(true),
	}
	for name, seeds := range corpora {
		dir := filepath.Join("testdata", "fuzz", name)
		if *updateCorpus {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for i, s := range seeds {
				content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
				if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) < len(seeds) {
			t.Fatalf("%s: %d corpus files for %d seeds (%v); run go test -run TestFuzzSeedCorpus -update-corpus", name, len(entries), len(seeds), err)
		}
	}
}

func FuzzDecodeFrame(f *testing.F) {
	for _, s := range seedFrames() {
		f.Add(s)
	}
	hdr := make([]byte, HeaderSize)
	f.Fuzz(func(t *testing.T, data []byte) {
		h, body, rest, err := DecodeFrame(data, fuzzMaxBody)
		h2, body2, err2 := ReadFrame(bytes.NewReader(data), hdr, fuzzMaxBody)
		if (err == nil) != (err2 == nil) {
			t.Fatalf("DecodeFrame %v, ReadFrame %v", err, err2)
		}
		if err != nil {
			return
		}
		if h != h2 || !bytes.Equal(body, body2) || len(body) > fuzzMaxBody || cap(body2) > fuzzMaxBody {
			t.Fatalf("frame %+v/%+v, bodies %d/%d", h, h2, len(body), cap(body2))
		}
		if HeaderSize+len(body)+len(rest) != len(data) {
			t.Fatal("lengths do not add up")
		}
		if re := frame(h.Op, h.Flags, h.ID, body); !bytes.Equal(re, data[:HeaderSize+len(body)]) {
			t.Fatal("frame does not re-encode identically")
		}
		if h.Response() {
			checkResponse(t, h.Op, body)
		} else {
			checkRequest(t, h.Op, body)
		}
	})
}

func checkRequest(t *testing.T, op Op, body []byte) {
	r, err := DecodeRequest(op, body)
	if err != nil {
		return
	}
	if r.Op != op || r.Off < 0 || r.Length > MaxData || len(r.Data) > MaxData {
		t.Fatalf("decoded %+v", r)
	}
	if re := EncodeRequest(r); !bytes.Equal(re, body) {
		t.Fatalf("request %s does not re-encode identically", op)
	}
}

func checkResponse(t *testing.T, op Op, body []byte) {
	r, err := DecodeResponse(op, body)
	if err != nil {
		return
	}
	if len(r.List)*segInfoSize > len(body) || len(r.Msg) > MaxMessage {
		t.Fatalf("decoded list of %d from %d bytes", len(r.List), len(body))
	}
	if re := AppendResponse(nil, op, r); !bytes.Equal(re, body) {
		t.Fatalf("response %s does not re-encode identically", op)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, s := range seedBodies(false) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		checkRequest(t, Op(data[0]), data[1:])
	})
}

func FuzzDecodeResponse(f *testing.F) {
	for _, s := range seedBodies(true) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		checkResponse(t, Op(data[0]), data[1:])
	})
}

// TestReadFrameAllocationBounded: a header announcing a body over the limit
// allocates nothing for it; one at the limit allocates at most the limit.
func TestReadFrameAllocationBounded(t *testing.T) {
	hdr := make([]byte, HeaderSize)
	over := make([]byte, HeaderSize)
	PutHeader(over, Header{Version: Version, Op: OpAppend, ID: 1, Length: 1<<32 - 1})
	at := make([]byte, HeaderSize)
	PutHeader(at, Header{Version: Version, Op: OpAppend, ID: 1, Length: fuzzMaxBody})
	measure := func(b []byte) uint64 {
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		for range 10 {
			ReadFrame(bytes.NewReader(b), hdr, fuzzMaxBody)
		}
		runtime.ReadMemStats(&m1)
		return (m1.TotalAlloc - m0.TotalAlloc) / 10
	}
	if n := measure(over); n > 1024 {
		t.Fatalf("over-limit header allocated %d bytes", n)
	}
	if n := measure(at); n > fuzzMaxBody+1024 {
		t.Fatalf("at-limit header allocated %d bytes", n)
	}
}

// FuzzReadAtResponse feeds arbitrary bytes to the client's ReadAt response
// reader, which puts the data straight into the caller's buffer: it never
// writes past that buffer, and what it accepts is exactly what
// DecodeFrame and DecodeResponse make of the same bytes.
func FuzzReadAtResponse(f *testing.F) {
	for _, r := range []Response{
		{Data: []byte("0123456789")},
		{Status: StatusEOF, Msg: "short", Data: []byte("abc")},
		{Status: StatusNotExist, Msg: "no such segment"},
		{Data: bytes.Repeat([]byte{7}, 300)},
	} {
		fr := frame(OpReadAt, FlagResponse, 1, AppendResponse(nil, OpReadAt, r))
		f.Add(fr, uint16(len(r.Data)))
		f.Add(fr, uint16(len(r.Data)/2))
		bad := bytes.Clone(fr)
		bad[len(bad)-1] ^= 1
		f.Add(bad, uint16(len(r.Data)))
	}
	f.Fuzz(func(t *testing.T, stream []byte, dstLen uint16) {
		n := int(dstLen) % 4096
		backing := bytes.Repeat([]byte{0xAA}, n+16)
		dst := backing[:n:n]
		cc := &clientConn{bufs: &bufPool{}}
		r := bytes.NewReader(stream)
		hdr := make([]byte, HeaderSize)
		h, err := cc.readHeader(r, hdr)
		if err != nil || h.Op != OpReadAt || h.Length > fuzzMaxBody {
			return
		}
		res, err := cc.readInto(r, h, dst)
		if !bytes.Equal(backing[n:], bytes.Repeat([]byte{0xAA}, 16)) {
			t.Fatalf("wrote past the %d-byte buffer", n)
		}
		if err != nil {
			return
		}
		_, body, _, derr := DecodeFrame(stream, fuzzMaxBody)
		if derr != nil {
			t.Fatalf("readInto accepted a frame DecodeFrame refuses: %v", derr)
		}
		want, derr := DecodeResponse(OpReadAt, body)
		if derr != nil {
			t.Fatalf("readInto accepted a body DecodeResponse refuses: %v", derr)
		}
		got, gerr := DecodeResponse(OpReadAt, *res.body)
		if gerr != nil || got.Status != want.Status || got.Msg != want.Msg || !bytes.Equal(res.data, want.Data) {
			t.Fatalf("readInto: %v %q %d bytes (%v), DecodeResponse: %v %q %d bytes",
				got.Status, got.Msg, len(res.data), gerr, want.Status, want.Msg, len(want.Data))
		}
	})
}
