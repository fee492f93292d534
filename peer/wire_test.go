package peer

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"reflect"
	"testing"

	"github.com/torus-storage/torus"
)

var testSeg = torus.SegmentID{Volume: 7, Epoch: 3, Seq: 42, Kind: torus.KindCheckpoint}

func allRequests() []Request {
	return []Request{
		{Op: OpAppend, Epoch: 9, Seg: testSeg, Off: 4096, Data: []byte("hello")},
		{Op: OpAppend, Epoch: 9, Seg: testSeg, Off: 0, Data: []byte{}},
		{Op: OpSync, Epoch: 9, Seg: testSeg},
		{Op: OpReadAt, Seg: testSeg, Off: 1 << 40, Length: 4096},
		{Op: OpStat, Seg: testSeg},
		{Op: OpList, Volume: 7},
		{Op: OpDelete, Seg: testSeg},
		{Op: OpFence, Volume: 7, Epoch: 1<<64 - 1},
		{Op: OpUsage},
	}
}

func TestRequestRoundTrip(t *testing.T) {
	for _, r := range allRequests() {
		t.Run(r.Op.String(), func(t *testing.T) {
			b := EncodeRequest(r)
			fr := frame(r.Op, 0, 99, b)
			h, body, rest, err := DecodeFrame(fr, MaxBody)
			if err != nil {
				t.Fatal(err)
			}
			if h.Op != r.Op || h.ID != 99 || h.Response() || len(rest) != 0 {
				t.Fatalf("header %+v rest %d", h, len(rest))
			}
			got, err := DecodeRequest(r.Op, body)
			if err != nil {
				t.Fatal(err)
			}
			if r.Op == OpAppend && len(r.Data) == 0 {
				got.Data, r.Data = nil, nil
			}
			if !reflect.DeepEqual(got, r) {
				t.Fatalf("got %+v, want %+v", got, r)
			}
		})
	}
}

func TestResponseRoundTrip(t *testing.T) {
	info := torus.SegmentInfo{ID: testSeg, Length: 100, Synced: 50}
	cases := []struct {
		op Op
		r  Response
	}{
		{OpAppend, Response{}},
		{OpAppend, Response{Status: StatusFenced, Msg: "fenced at 9"}},
		{OpSync, Response{Status: StatusNotExist, Msg: "no"}},
		{OpSync, Response{Synced: 1 << 33}},
		{OpReadAt, Response{Data: []byte("abc")}},
		{OpReadAt, Response{Status: StatusEOF, Msg: "EOF", Data: []byte("ab")}},
		{OpStat, Response{Info: info}},
		{OpList, Response{List: []torus.SegmentInfo{info, {ID: torus.SegmentID{Volume: 1}}}}},
		{OpList, Response{List: []torus.SegmentInfo{}}},
		{OpDelete, Response{}},
		{OpFence, Response{Status: StatusGeneric, Msg: "boom"}},
		{OpUsage, Response{Usage: torus.Usage{Used: 5, Capacity: 1 << 40}}},
	}
	for i, c := range cases {
		t.Run(fmt.Sprintf("%d-%s", i, c.op), func(t *testing.T) {
			b := AppendResponse(nil, c.op, c.r)
			got, err := DecodeResponse(c.op, b)
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Data) == 0 && len(c.r.Data) == 0 {
				got.Data, c.r.Data = nil, nil
			}
			if !reflect.DeepEqual(got, c.r) {
				t.Fatalf("got %+v, want %+v", got, c.r)
			}
		})
	}
}

// TestSyncGolden pins the version-2 Sync and List frames byte for byte: the
// Sync response carries the durable length, List is paged.
func TestSyncGolden(t *testing.T) {
	seg := torus.SegmentID{Volume: 1, Epoch: 2, Seq: 3, Kind: torus.KindData}
	req := EncodeRequest(Request{Op: OpSync, Epoch: 2, Seg: seg})
	resp := AppendResponse(nil, OpSync, Response{Synced: 0x0102030405})
	frame := frame(OpSync, FlagResponse, 7, resp)
	for _, c := range []struct{ name, got, want string }{
		{"request", hex.EncodeToString(req),
			"0200000000000000" + "0100000000000000" + "0200000000000000" + "0300000000000000" + "00"},
		{"response", hex.EncodeToString(resp), "000000" + "0504030201000000"},
		{"list request", hex.EncodeToString(EncodeRequest(Request{Op: OpList, Volume: 1, After: seg, Limit: 2})),
			"0100000000000000" + "0100000000000000" + "0200000000000000" + "0300000000000000" + "00" + "02000000"},
		{"list response", hex.EncodeToString(AppendResponse(nil, OpList, Response{List: []torus.SegmentInfo{{ID: seg, Length: 5, Synced: 4}}, More: true})),
			"000000" + "01000000" + "0100000000000000" + "0200000000000000" + "0300000000000000" + "00" + "0500000000000000" + "0400000000000000" + "01"},
		{"frame header", hex.EncodeToString(frame[:HeaderSize]),
			"54525350" + "02" + "02" + "0100" + "0700000000000000" + "0b000000" + hex.EncodeToString(binary.LittleEndian.AppendUint32(nil, crc32.Checksum(resp, castagnoli)))},
	} {
		if c.got != c.want {
			t.Errorf("%s: %s, want %s", c.name, c.got, c.want)
		}
	}
	if _, err := DecodeResponse(OpSync, resp[:len(resp)-1]); !errors.Is(err, torus.ErrInvalid) {
		t.Errorf("short Sync response: %v, want ErrInvalid", err)
	}
}

// TestPermissionGolden pins the version-2 permission status (15, added in
// the same unreleased cycle as the Sync durable length): a refused request
// is answered with status 15 and the daemon's message, and the client's
// error matches torus.ErrPermission.
func TestPermissionGolden(t *testing.T) {
	resp := AppendResponse(nil, OpDelete, Response{Status: StatusPermission, Msg: "no"})
	if got, want := hex.EncodeToString(resp), "0f"+"0200"+"6e6f"; got != want {
		t.Fatalf("response %s, want %s", got, want)
	}
	r, err := DecodeResponse(OpDelete, resp)
	if err != nil || r.Status != StatusPermission || r.Msg != "no" {
		t.Fatalf("decoded %+v, %v", r, err)
	}
	re := &RemoteError{Addr: "a", Op: OpDelete, Status: r.Status, Msg: r.Msg}
	if !errors.Is(re, torus.ErrPermission) || errors.Is(re, torus.ErrUnavailable) {
		t.Fatalf("%v does not classify as permission denied only", re)
	}
}

func TestResponseMessageTruncated(t *testing.T) {
	long := string(bytes.Repeat([]byte("x"), 3*MaxMessage))
	got, err := DecodeResponse(OpSync, AppendResponse(nil, OpSync, Response{Status: StatusInvalid, Msg: long}))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Msg) != MaxMessage {
		t.Fatalf("message of %d bytes", len(got.Msg))
	}
}

func TestStatusMapping(t *testing.T) {
	sentinels := []error{io.EOF, torus.ErrFenced, torus.ErrNoSpace, torus.ErrNotExist, torus.ErrConflict,
		torus.ErrCorrupt, torus.ErrInvalid, torus.ErrClosed, torus.ErrUnavailable, torus.ErrExist,
		torus.ErrOutOfRange, torus.ErrReadOnly, torus.ErrLocked, torus.ErrInUse, torus.ErrPermission}
	seen := map[Status]bool{}
	for _, s := range sentinels {
		wrapped := fmt.Errorf("ctx: %w", s)
		st := StatusOf(wrapped)
		if seen[st] || st == StatusOK || st == StatusGeneric {
			t.Fatalf("%v -> status %d (duplicate or unclassified)", s, st)
		}
		seen[st] = true
		if st.Err() != s {
			t.Fatalf("status %d -> %v, want %v", st, st.Err(), s)
		}
	}
	if StatusOf(nil) != StatusOK || StatusOK.Err() != nil {
		t.Fatal("nil must map to OK")
	}
	if StatusOf(errors.New("x")) != StatusGeneric || !errors.Is(StatusGeneric.Err(), ErrRemote) {
		t.Fatal("unclassified errors must map to generic")
	}
	if !errors.Is(Status(200).Err(), ErrRemote) {
		t.Fatal("unknown status must map to ErrRemote")
	}
	if StatusOf(context.Canceled) != StatusUnavailable || StatusOf(fmt.Errorf("x: %w", context.DeadlineExceeded)) != StatusUnavailable {
		t.Fatal("context errors must map to unavailable")
	}
	le := &torus.LockedError{Volume: "v", InUse: true}
	if StatusOf(le) != StatusInUse {
		t.Fatal("LockedError(InUse) must map to in-use")
	}
}

func TestParseHeaderErrors(t *testing.T) {
	good := frame(OpSync, 0, 5, EncodeRequest(Request{Op: OpSync, Seg: testSeg}))
	mut := func(f func(b []byte)) []byte {
		b := bytes.Clone(good)
		f(b)
		return b
	}
	cases := []struct {
		name    string
		b       []byte
		fatal   bool
		wantErr error
	}{
		{"short", good[:10], false, torus.ErrInvalid},
		{"magic", mut(func(b []byte) { b[0] ^= 1 }), true, torus.ErrInvalid},
		{"flags", mut(func(b []byte) { b[7] = 0x80 }), true, torus.ErrInvalid},
		{"version-1", mut(func(b []byte) { b[4] = 1 }), false, torus.ErrInvalid},
		{"op", mut(func(b []byte) { b[5] = 0 }), false, torus.ErrInvalid},
		{"op-high", mut(func(b []byte) { b[5] = 9 }), false, torus.ErrInvalid},
		{"length", mut(func(b []byte) { b[19] = 0xff }), false, torus.ErrInvalid},
		{"crc", mut(func(b []byte) { b[20] ^= 1 }), false, torus.ErrCorrupt},
		{"truncated", good[:len(good)-1], false, torus.ErrInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, _, _, err := DecodeFrame(c.b, MaxBody)
			if !errors.Is(err, c.wantErr) {
				t.Fatalf("err %v, want %v", err, c.wantErr)
			}
			if fatalHeaderError(err) != c.fatal {
				t.Fatalf("fatal = %v for %v", !c.fatal, err)
			}
			if !c.fatal && c.name != "short" && h.ID != 5 {
				t.Fatalf("answerable header lost its id: %+v", h)
			}
		})
	}
}

func TestDecodeRequestErrors(t *testing.T) {
	for _, r := range allRequests() {
		b := EncodeRequest(r)
		if r.Op != OpAppend {
			if _, err := DecodeRequest(r.Op, append(bytes.Clone(b), 0)); !errors.Is(err, torus.ErrInvalid) {
				t.Errorf("%s with a trailing byte: %v", r.Op, err)
			}
		}
		if len(b) > 0 {
			if _, err := DecodeRequest(r.Op, b[:len(b)-len(r.Data)-1]); !errors.Is(err, torus.ErrInvalid) {
				t.Errorf("%s short by one: %v", r.Op, err)
			}
		}
	}
	neg := EncodeRequest(Request{Op: OpReadAt, Seg: testSeg, Off: -1, Length: 1})
	if _, err := DecodeRequest(OpReadAt, neg); !errors.Is(err, torus.ErrInvalid) {
		t.Errorf("negative offset: %v", err)
	}
	big := EncodeRequest(Request{Op: OpReadAt, Seg: testSeg, Length: MaxData + 1})
	if _, err := DecodeRequest(OpReadAt, big); !errors.Is(err, torus.ErrInvalid) {
		t.Errorf("oversized read: %v", err)
	}
	if _, err := DecodeRequest(Op(99), nil); !errors.Is(err, torus.ErrInvalid) {
		t.Errorf("unknown op: %v", err)
	}
}

func TestDecodeResponseErrors(t *testing.T) {
	cases := []struct {
		op Op
		b  []byte
	}{
		{OpSync, nil},
		{OpSync, []byte{0, 5, 0, 'a'}},                          // message longer than body
		{OpSync, []byte{0, 0, 0, 1}},                            // payload on a sync
		{OpStat, []byte{0, 0, 0, 1, 2}},                         // short info
		{OpList, []byte{0, 0, 0, 1, 0, 0, 0}},                   // short count
		{OpList, []byte{0, 0, 0, 0xff, 0xff, 0xff, 0xff}},       // count larger than payload
		{OpUsage, []byte{0, 0, 0, 1, 2, 3}},                     // short usage
		{OpFence, []byte{2, 0, 0, 1}},                           // payload on an error
		{Op(0), []byte{0, 0, 0}},                                // unknown op
		{OpSync, []byte{0, 0xff, 0xff}},                         // message over the limit
		{OpAppend, append([]byte{0, 0, 0}, make([]byte, 1)...)}, // payload on append
	}
	for i, c := range cases {
		if _, err := DecodeResponse(c.op, c.b); !errors.Is(err, torus.ErrInvalid) {
			t.Errorf("case %d (%s % x): err %v", i, c.op, c.b, err)
		}
	}
}

func TestReadFrame(t *testing.T) {
	var buf bytes.Buffer
	bodies := [][]byte{EncodeRequest(Request{Op: OpUsage}), EncodeRequest(Request{Op: OpAppend, Data: []byte("xyz")})}
	ops := []Op{OpUsage, OpAppend}
	for i, b := range bodies {
		if err := writeFrame(&buf, ops[i], 0, uint64(i), b[:len(b)/2], b[len(b)/2:]); err != nil {
			t.Fatal(err)
		}
	}
	hdr := make([]byte, HeaderSize)
	for i, want := range bodies {
		h, body, err := ReadFrame(&buf, hdr, MaxBody)
		if err != nil || h.ID != uint64(i) || h.Op != ops[i] || !bytes.Equal(body, want) {
			t.Fatalf("frame %d: %+v %q %v", i, h, body, err)
		}
	}
	if _, _, err := ReadFrame(&buf, hdr, MaxBody); err != io.EOF {
		t.Fatalf("at end: %v", err)
	}
	// A header promising more than arrives.
	fr := frame(OpUsage, 0, 1, []byte("abcdef"))
	if _, _, err := ReadFrame(bytes.NewReader(fr[:len(fr)-2]), hdr, MaxBody); err != io.ErrUnexpectedEOF {
		t.Fatalf("truncated: %v", err)
	}
	// A body over the limit is refused before it is allocated.
	if _, _, err := ReadFrame(bytes.NewReader(fr), hdr, 3); !errors.Is(err, torus.ErrInvalid) {
		t.Fatalf("over limit: %v", err)
	}
	if err := writeFrame(io.Discard, OpAppend, 0, 1, make([]byte, MaxBody+1)); !errors.Is(err, torus.ErrInvalid) {
		t.Fatalf("oversized write: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	if (ServerConfig{}).Validate() != nil || (ClientConfig{}).Validate() != nil {
		t.Fatal("zero configs must be valid")
	}
	bad := []error{
		ServerConfig{MaxInflightBytes: -1}.Validate(),
		ServerConfig{MaxConcurrentReads: -1}.Validate(),
		ServerConfig{RequestTimeout: -1}.Validate(),
		ClientConfig{DialTimeout: -1}.Validate(),
	}
	for i, err := range bad {
		if !errors.Is(err, torus.ErrInvalid) {
			t.Errorf("case %d: %v", i, err)
		}
	}
	var c ServerConfig
	c.EnsureDefaults()
	if c.MaxInflightBytes != DefaultMaxInflightBytes || c.MaxConcurrentReads != DefaultMaxConcurrentReads {
		t.Fatalf("defaults %+v", c)
	}
}
