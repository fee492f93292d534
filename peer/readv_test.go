package peer

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
)

func readvRequest() Request {
	return Request{Op: OpReadV, Ranges: []Range{
		{Seg: testSeg, Off: 4096, Length: 4096},
		{Seg: torus.SegmentID{Volume: 7, Epoch: 3, Seq: 43}, Off: 0, Length: 8192},
		{Seg: testSeg, Off: 1 << 40, Length: 0},
	}}
}

func TestReadVRequestRoundTrip(t *testing.T) {
	for _, r := range []Request{readvRequest(), {Op: OpReadV, Ranges: []Range{}}} {
		h, body, rest, err := DecodeFrame(frame(OpReadV, 0, 5, EncodeRequest(r)), MaxBody)
		if err != nil || h.Version != 3 || h.Op != OpReadV || len(rest) != 0 {
			t.Fatalf("header %+v, %v", h, err)
		}
		got, err := DecodeRequest(OpReadV, body)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("got %+v, want %+v", got, r)
		}
	}
}

func TestReadVResponseRoundTrip(t *testing.T) {
	for i, r := range []Response{
		{Ranges: []RangeStatus{{StatusOK, 3}, {StatusEOF, 1}, {StatusNotExist, 0}}, Data: []byte("abcd")},
		{Ranges: []RangeStatus{}, Data: []byte{}},
		{Status: StatusPermission, Msg: "no role"},
	} {
		got, err := DecodeResponse(OpReadV, AppendResponse(nil, OpReadV, r))
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("%d: got %+v, want %+v", i, got, r)
		}
	}
}

// TestReadVLimits: a request over MaxReadVRanges ranges or MaxData bytes,
// with a negative offset, or whose body is not exactly its table, is
// malformed (torus.ErrInvalid); so is a response table that cannot be.
func TestReadVLimits(t *testing.T) {
	many := Request{Op: OpReadV, Ranges: make([]Range, MaxReadVRanges+1)}
	atLimit := Request{Op: OpReadV, Ranges: make([]Range, MaxReadVRanges)}
	big := Request{Op: OpReadV, Ranges: []Range{{Length: MaxData}, {Length: 1}}}
	whole := Request{Op: OpReadV, Ranges: []Range{{Length: MaxData / 2}, {Length: MaxData / 2}}}
	neg := Request{Op: OpReadV, Ranges: []Range{{Off: -1, Length: 1}}}
	good := EncodeRequest(readvRequest())
	for _, ok := range []Request{atLimit, whole} {
		if _, err := DecodeRequest(OpReadV, EncodeRequest(ok)); err != nil {
			t.Errorf("%d ranges at the limits: %v", len(ok.Ranges), err)
		}
	}
	for name, b := range map[string][]byte{
		"too many ranges": EncodeRequest(many),
		"too many bytes":  EncodeRequest(big),
		"negative offset": EncodeRequest(neg),
		"short":           good[:len(good)-1],
		"trailing byte":   append(bytes.Clone(good), 0),
		"no count":        good[:3],
		"count over body": binary.LittleEndian.AppendUint32(nil, 2),
	} {
		if _, err := DecodeRequest(OpReadV, b); !errors.Is(err, torus.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	table := func(count uint32, ns ...uint32) []byte {
		b := binary.LittleEndian.AppendUint32([]byte{0, 0, 0}, count)
		for _, n := range ns {
			b = binary.LittleEndian.AppendUint32(append(b, 0), n)
		}
		return b
	}
	for name, b := range map[string][]byte{
		"count over limit":  table(MaxReadVRanges + 1),
		"table short":       table(2, 1),
		"data short":        append(table(1, 4), "abc"...),
		"data long":         append(table(1, 2), "abc"...),
		"bytes over limit":  table(2, MaxData, 1),
		"payload on error":  {byte(StatusInvalid), 0, 0, 1},
		"no table on OK":    {0, 0, 0},
		"message over body": {0, 9, 0, 'x'},
	} {
		if _, err := DecodeResponse(OpReadV, b); !errors.Is(err, torus.ErrInvalid) {
			t.Errorf("response %s: %v, want ErrInvalid", name, err)
		}
	}
	// A ReadV in a version-2 frame, and an old op in a version-3 one, are
	// unknown ops.
	v2 := frame(OpReadV, 0, 8, good)
	v2[4] = 2
	v3 := frame(OpSync, 0, 8, EncodeRequest(Request{Op: OpSync}))
	v3[4] = 3
	for name, f := range map[string][]byte{"readv in v2": v2, "sync in v3": v3} {
		if h, _, _, err := DecodeFrame(f, MaxBody); !errors.Is(err, torus.ErrInvalid) || h.ID != 8 {
			t.Errorf("%s: %+v %v, want ErrInvalid with the ID", name, h, err)
		}
	}
}

// TestReadVGolden pins the version-3 frames (ReadV) byte for byte, as
// TestGoldenFrames pins version 2's.
func TestReadVGolden(t *testing.T) {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# peer protocol version 3 frames (TestReadVGolden): name, then hex\n")
	add := func(name string, flags uint16, id uint64, body []byte) {
		f := frame(OpReadV, flags, id, body)
		if _, _, rest, err := DecodeFrame(f, MaxBody); err != nil || len(rest) != 0 {
			t.Fatalf("%s does not decode: %v", name, err)
		}
		fmt.Fprintf(&b, "%s\n%s\n", name, hex.EncodeToString(f))
	}
	add("request readv", 0, 1, EncodeRequest(readvRequest()))
	add("request readv probe", 0, 0, EncodeRequest(Request{Op: OpReadV}))
	add("response readv", FlagResponse, 1, AppendResponse(nil, OpReadV, Response{
		Ranges: []RangeStatus{{StatusOK, 4}, {StatusEOF, 2}, {StatusNotExist, 0}}, Data: []byte("datayz")}))
	add("response readv probe", FlagResponse, 0, AppendResponse(nil, OpReadV, Response{Ranges: []RangeStatus{}}))
	add("response readv refused", FlagResponse, 2, AppendResponse(nil, OpReadV, Response{Status: StatusPermission, Msg: "no"}))
	path := filepath.Join("testdata", "frames-v3.golden")
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

// opCounter counts a client's requests by op (ClientConfig.Observe).
type opCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (o *opCounter) observe(op string, _ time.Duration, _ error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n == nil {
		o.n = make(map[string]int)
	}
	o.n[op]++
}

func (o *opCounter) get(op string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n[op]
}

// readvFixture is a daemon over the fake store with two segments written,
// and the ranges of a read over them: whole, short, missing, empty.
func readvFixture(t *testing.T) (store *fakeStore, data []byte, ranges func() []torus.ReadRange) {
	ctx := context.Background()
	store = newFakeStore(1 << 30)
	data = bytes.Repeat([]byte("0123456789abcdef"), 1<<10)
	for i, s := range []torus.SegmentID{seg(1, 1, 1), seg(1, 1, 2)} {
		if err := store.Append(ctx, s, 0, data[i*1000:]); err != nil {
			t.Fatal(err)
		}
	}
	return store, data, func() []torus.ReadRange {
		return []torus.ReadRange{
			{Seg: seg(1, 1, 2), Off: 100, P: make([]byte, 4096)},
			{Seg: seg(1, 1, 1), Off: 8192, P: make([]byte, 4096)},
			{Seg: seg(1, 1, 1), Off: int64(len(data)) - 10, P: make([]byte, 4096)}, // short
			{Seg: seg(1, 9, 9), Off: 0, P: make([]byte, 4096)},                     // missing
			{Seg: seg(1, 1, 1), Off: 0, P: nil},                                    // empty
		}
	}
}

// checkReadV checks the outcome of readvFixture's ranges.
func checkReadV(t *testing.T, data []byte, rr []torus.ReadRange) {
	t.Helper()
	want := []struct {
		n   int
		b   []byte
		err error
	}{
		{4096, data[1000+100 : 1000+100+4096], nil},
		{4096, data[8192 : 8192+4096], nil},
		{10, data[len(data)-10:], io.EOF},
		{0, nil, torus.ErrNotExist},
		{0, nil, nil},
	}
	for i, w := range want {
		g := rr[i]
		if g.N != w.n || !bytes.Equal(g.P[:g.N], w.b) {
			t.Errorf("range %d: %d bytes, want %d (or wrong bytes)", i, g.N, w.n)
		}
		if (w.err == nil) != (g.Err == nil) || (w.err != nil && !errors.Is(g.Err, w.err)) {
			t.Errorf("range %d: err %v, want %v", i, g.Err, w.err)
		}
	}
	if rr[2].Err != io.EOF {
		t.Errorf("short range: %#v, want bare io.EOF", rr[2].Err)
	}
}

// TestReadVOverTheWire: ranges of different segments come back in one
// request, each with its own outcome (a short or missing range fails
// alone).
func TestReadVOverTheWire(t *testing.T) {
	store, data, ranges := readvFixture(t)
	_, addr := startServer(t, NewLocal(store, testutil.Logger(t)), ServerConfig{})
	var ops opCounter
	c := dialT(t, addr, ClientConfig{Observe: ops.observe})
	rr := ranges()
	if err := c.ReadV(context.Background(), rr); err != nil {
		t.Fatal(err)
	}
	checkReadV(t, data, rr)
	if got := ops.get("readv"); got != 1 {
		t.Fatalf("%d readv requests, want 1", got)
	}
	if got := ops.get("readat"); got != 0 {
		t.Fatalf("%d readat requests, want 0", got)
	}
	// ReadRanges over the in-process service (no ReadV: one ReadAt each)
	// has the same outcomes.
	rr = ranges()
	if err := ReadRanges(context.Background(), NewLocal(store, nil), rr); err != nil {
		t.Fatal(err)
	}
	checkReadV(t, data, rr)
}

// TestReadVSplitsAtLimits: more ranges than one request may carry go in
// several requests; a range over MaxData fails alone, unsent.
func TestReadVSplitsAtLimits(t *testing.T) {
	ctx := context.Background()
	store := newFakeStore(1 << 30)
	data := bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7}, 1<<20)
	s := seg(1, 1, 1)
	if err := store.Append(ctx, s, 0, data); err != nil {
		t.Fatal(err)
	}
	_, addr := startServer(t, NewLocal(store, testutil.Logger(t)), ServerConfig{})
	var ops opCounter
	c := dialT(t, addr, ClientConfig{Observe: ops.observe})
	rr := make([]torus.ReadRange, MaxReadVRanges+10)
	for i := range rr {
		rr[i] = torus.ReadRange{Seg: s, Off: int64(i * 11), P: make([]byte, 100)}
	}
	rr = append(rr, torus.ReadRange{Seg: s, P: make([]byte, MaxData+1)})
	if err := c.ReadV(ctx, rr); err != nil {
		t.Fatal(err)
	}
	for i, g := range rr[:len(rr)-1] {
		if g.Err != nil || g.N != 100 || !bytes.Equal(g.P, data[i*11:i*11+100]) {
			t.Fatalf("range %d: %d %v", i, g.N, g.Err)
		}
	}
	if last := rr[len(rr)-1]; !errors.Is(last.Err, torus.ErrInvalid) || last.N != 0 {
		t.Fatalf("oversized range: %d %v, want ErrInvalid", last.N, last.Err)
	}
	if got := ops.get("readv"); got != 2 {
		t.Fatalf("%d readv requests, want 2", got)
	}
}

// TestReadVMalformedOnTheWire: a ReadV frame over the limits is answered
// with ErrInvalid and its connection closed, like any malformed frame.
func TestReadVMalformedOnTheWire(t *testing.T) {
	_, addr := startServer(t, NewLocal(newFakeStore(1<<20), nil), ServerConfig{})
	for name, body := range map[string][]byte{
		"too many ranges": EncodeRequest(Request{Op: OpReadV, Ranges: make([]Range, MaxReadVRanges+1)}),
		"too many bytes":  EncodeRequest(Request{Op: OpReadV, Ranges: []Range{{Length: MaxData}, {Length: MaxData}}}),
		"truncated table": EncodeRequest(readvRequest())[:40],
	} {
		t.Run(name, func(t *testing.T) {
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			nc.SetDeadline(time.Now().Add(10 * time.Second))
			if err := writeFrame(nc, OpReadV, 0, 31, body); err != nil {
				t.Fatal(err)
			}
			h, rb, err := ReadFrame(nc, make([]byte, HeaderSize), MaxBody)
			if err != nil || h.ID != 31 || !h.Response() || h.Version != 3 {
				t.Fatalf("answer %+v: %v", h, err)
			}
			resp, err := DecodeResponse(OpReadV, rb)
			if err != nil || !errors.Is(resp.Status.Err(), torus.ErrInvalid) {
				t.Fatalf("answer %+v %v, want ErrInvalid", resp, err)
			}
			if _, err := nc.Read(make([]byte, 1)); err == nil {
				t.Fatal("connection still open after a malformed frame")
			}
		})
	}
}

// v2Proxy stands for a daemon that predates ReadV (protocol version 2) in
// front of a real one: it forwards frames of version 2 and answers any
// other as a version-2 server does, with ErrInvalid ("unsupported protocol
// version") in a version-2 frame, and closes the connection.
type v2Proxy struct {
	ln      net.Listener
	target  string
	refused chan struct{} // one value per refused frame
	wg      sync.WaitGroup
}

func startV2Proxy(t *testing.T, target string) *v2Proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &v2Proxy{ln: ln, target: target, refused: make(chan struct{}, 100)}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.wg.Wait()
	})
	return p
}

func (p *v2Proxy) serve(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	go func() {
		io.Copy(c, up)
		c.Close()
	}()
	hdr := make([]byte, HeaderSize)
	for {
		if _, err := io.ReadFull(c, hdr); err != nil {
			return
		}
		length := binary.LittleEndian.Uint32(hdr[16:])
		if hdr[4] != 2 {
			id := binary.LittleEndian.Uint64(hdr[8:])
			body := AppendResponse(nil, OpSync, Response{Status: StatusInvalid, Msg: "unsupported protocol version"})
			f := frame(OpSync, FlagResponse, id, body)
			f[5] = hdr[5] // the request's op, as the server echoes it
			c.Write(f)
			p.refused <- struct{}{}
			return
		}
		body := make([]byte, length)
		if _, err := io.ReadFull(c, body); err != nil {
			return
		}
		if _, err := up.Write(append(bytes.Clone(hdr), body...)); err != nil {
			return
		}
	}
}

// TestReadVOlderDaemon: against a daemon of protocol version 2, ReadV is
// found out on a connection of its own (the calls on the shared one are
// not failed) and read as one ReadAt per range, with the same outcomes;
// the daemon is asked once per connection.
func TestReadVOlderDaemon(t *testing.T) {
	store, data, ranges := readvFixture(t)
	_, addr := startServer(t, NewLocal(store, testutil.Logger(t)), ServerConfig{})
	proxy := startV2Proxy(t, addr)
	var ops opCounter
	c := dialT(t, proxy.ln.Addr().String(), ClientConfig{Observe: ops.observe})
	ctx := context.Background()
	// A call in flight on the shared connection while ReadV asks.
	if _, err := c.Stat(ctx, seg(1, 1, 1)); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		rr := ranges()
		if err := c.ReadV(ctx, rr); err != nil {
			t.Fatal(err)
		}
		checkReadV(t, data, rr)
	}
	if len(proxy.refused) != 1 {
		t.Fatalf("%d version-3 frames refused, want 1 (the probe, once)", len(proxy.refused))
	}
	if got, want := ops.get("readat"), 2*(len(ranges())-1); got != want {
		t.Fatalf("%d readat requests, want %d", got, want)
	}
	if got := ops.get("readv"); got != 0 {
		t.Fatalf("%d readv requests sent to a version-2 daemon", got)
	}
	// The shared connection survived the probe.
	c.mu.Lock()
	cc := c.cc
	c.mu.Unlock()
	if _, err := c.Stat(ctx, seg(1, 1, 1)); err != nil || !cc.alive() {
		t.Fatalf("shared connection after the probe: %v (alive %v)", err, cc.alive())
	}
}
