package peer

import (
	"bytes"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/torus-storage/torus"
)

var updateGolden = flag.Bool("update-golden", false, "rewrite testdata/frames-v*.golden")

// goldenFrames is one request frame per op and one response frame per op
// (with every field that op's body carries), as the writer sends them.
func goldenFrames() []struct {
	name  string
	frame []byte
} {
	var out []struct {
		name  string
		frame []byte
	}
	add := func(name string, op Op, flags uint16, id uint64, parts ...[]byte) {
		var buf bytes.Buffer
		if err := writeFrame(&buf, op, flags, id, parts...); err != nil {
			panic(err)
		}
		out = append(out, struct {
			name  string
			frame []byte
		}{name, buf.Bytes()})
	}
	for i, r := range allRequests() {
		fixed := AppendRequestFixed(nil, r)
		add(fmt.Sprintf("request %s #%d", r.Op, i), r.Op, 0, uint64(i+1), fixed, r.Data)
	}
	info := torus.SegmentInfo{ID: testSeg, Length: 10, Synced: 5}
	for i, r := range []struct {
		op Op
		r  Response
	}{
		{OpAppend, Response{}},
		{OpAppend, Response{Status: StatusFenced, Msg: "fenced"}},
		{OpSync, Response{Synced: 4096}},
		{OpReadAt, Response{Data: []byte("data")}},
		{OpReadAt, Response{Status: StatusEOF, Msg: "short", Data: []byte("xy")}},
		{OpStat, Response{Info: info}},
		{OpList, Response{List: []torus.SegmentInfo{info, info}, More: true}},
		{OpDelete, Response{Status: StatusNotExist, Msg: "gone"}},
		{OpFence, Response{}},
		{OpUsage, Response{Usage: torus.Usage{Used: 1, Capacity: 2}}},
	} {
		add(fmt.Sprintf("response %s #%d", r.op, i), r.op, FlagResponse, uint64(100+i), AppendResponse(nil, r.op, r.r))
	}
	return out
}

// TestGoldenFrames pins the version-2 frame format byte for byte: a change
// to how any frame is encoded must come with a new Version and a new golden
// file (go test ./peer -run TestGoldenFrames -update-golden), reviewed as a
// diff. Every golden frame also decodes.
func TestGoldenFrames(t *testing.T) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# peer protocol version %d frames (TestGoldenFrames): name, then hex\n", 2)
	for _, f := range goldenFrames() {
		if _, _, rest, err := DecodeFrame(f.frame, MaxBody); err != nil || len(rest) != 0 {
			t.Fatalf("%s does not decode: %v", f.name, err)
		}
		fmt.Fprintf(&b, "%s\n%s\n", f.name, hex.EncodeToString(f.frame))
	}
	path := filepath.Join("testdata", "frames-v2.golden")
	if *updateGolden {
		if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update-golden to create it)", err)
	}
	if !bytes.Equal(b.Bytes(), want) {
		t.Fatalf("frames differ from %s: a format change needs a new Version and golden file\n got:\n%s", path, b.String())
	}
}
