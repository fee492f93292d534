package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/memdev"
)

func TestUnknownOptionsGetUnsup(t *testing.T) {
	ex := newMemExports()
	ex.add("vol", 1<<20)
	_, addr := startServer(t, Config{}, ex)
	c := dialRaw(t, addr)
	c.greet(flagCFixedNewstyle)
	for _, code := range []uint32{0, optPeekExport, optExtendedHeaders, 12, 0x1234, 0xffffffff} {
		c.expectOpt(code, []byte("some data"), repErrUnsup)
	}
	// An unknown option with an oversized payload is still answered.
	c.expectOpt(0x4242, make([]byte, maxOptionLen+1), repErrUnsup)
	c.goExport2("vol")
	if c.size != 1<<20 {
		t.Fatalf("size %d", c.size)
	}
}

// goExport2 sends GO on an already greeted connection.
func (c *rawClient) goExport2(name string) {
	c.t.Helper()
	c.sendOpt(optGo, appendInfoRequest(nil, infoRequest{name: name}))
	for {
		r := c.readOptReply()
		switch {
		case r.typ == repAck:
			return
		case r.typ == repInfo && binary.BigEndian.Uint16(r.data) == infoExport:
			c.size = int64(binary.BigEndian.Uint64(r.data[2:10]))
			c.flags = binary.BigEndian.Uint16(r.data[10:12])
		case r.typ != repInfo:
			c.t.Fatalf("go: %#x %q", r.typ, r.data)
		}
	}
}

func TestOptionErrors(t *testing.T) {
	ex := newMemExports()
	ex.add("vol", 1<<20)
	ex.add("vol@snap", 1<<20)
	ex.desc["vol"] = "a test volume"
	_, addr := startServer(t, Config{}, ex)
	c := dialRaw(t, addr)
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	c.expectOpt(optList, []byte{1}, repErrInvalid)
	c.expectOpt(optStructuredReply, []byte{1}, repErrInvalid)
	c.expectOpt(optStartTLS, nil, repErrUnsup)
	c.expectOpt(optSetMetaContext, appendMetaRequest(nil, metaRequest{name: "vol", queries: []string{metaAllocCtx}}), repErrInvalid)
	c.expectOpt(optInfo, []byte{0, 0, 0, 9, 'x'}, repErrInvalid)
	c.expectOpt(optInfo, appendInfoRequest(nil, infoRequest{name: "nope"}), repErrUnknown)
	c.expectOpt(optGo, appendInfoRequest(nil, infoRequest{name: "nope"}), repErrUnknown)
	c.expectOpt(optGo, appendInfoRequest(nil, infoRequest{name: ""}), repErrUnknown) // no default
	c.expectOpt(optGo, appendInfoRequest(nil, infoRequest{name: "bad\x00name"}), repErrInvalid)
	c.expectOpt(optInfo, make([]byte, maxOptionLen+10), repErrTooBig)

	// LIST: one REP_SERVER per export, then ACK.
	c.sendOpt(optList, nil)
	var names []string
	for {
		r := c.readOptReply()
		if r.typ == repAck {
			break
		}
		if r.typ != repServer {
			t.Fatalf("list reply %#x", r.typ)
		}
		n := binary.BigEndian.Uint32(r.data)
		names = append(names, string(r.data[4:4+n])+"|"+string(r.data[4+n:]))
	}
	if got := strings.Join(names, ","); got != "vol|a test volume,vol@snap|" {
		t.Fatalf("list: %s", got)
	}

	// INFO on a snapshot: read-only flags, block sizes, name, description.
	c.sendOpt(optInfo, appendInfoRequest(nil, infoRequest{name: "vol@snap", infos: []uint16{infoName, infoBlockSize, infoDescription, 77}}))
	var sawBS, sawName bool
	for {
		r := c.readOptReply()
		if r.typ == repAck {
			break
		}
		switch binary.BigEndian.Uint16(r.data) {
		case infoExport:
			if f := binary.BigEndian.Uint16(r.data[10:]); f&tflagReadOnly == 0 || f&tflagSendTrim != 0 {
				t.Fatalf("snapshot flags %#x", f)
			}
		case infoBlockSize:
			sawBS = true
			if !bytes.Equal(r.data[2:], []byte{0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0}) {
				t.Fatalf("block size %x", r.data[2:])
			}
		case infoName:
			sawName = string(r.data[2:]) == "vol@snap"
		}
	}
	if !sawBS || !sawName {
		t.Fatalf("info: block size %v name %v", sawBS, sawName)
	}
	if ex.openCount("vol@snap") != 0 {
		t.Fatal("NBD_OPT_INFO opened the export")
	}

	// LIST_META_CONTEXT after structured replies.
	c.expectOpt(optStructuredReply, nil, repAck)
	c.sendOpt(optListMetaContext, appendMetaRequest(nil, metaRequest{name: "vol", queries: []string{"base:", "qemu:dirty-bitmap:x"}}))
	if r := c.readOptReply(); r.typ != repMetaContext || string(r.data[4:]) != metaAllocCtx {
		t.Fatalf("list meta: %#x %q", r.typ, r.data)
	}
	c.expectOptFinal(repAck)
	// A query for an unknown context selects nothing.
	c.expectOpt(optSetMetaContext, appendMetaRequest(nil, metaRequest{name: "vol", queries: []string{"qemu:allocation-depth"}}), repAck)
	// The connection is still fine: go.
	c.goExport2("vol")
	if c.flags&tflagSendDF == 0 || c.flags&tflagCanMultiConn == 0 || c.flags&tflagReadOnly != 0 {
		t.Fatalf("flags %#x", c.flags)
	}
	// No meta context was selected: BLOCK_STATUS is refused.
	c.send(cmdBlockStatus, 0, 1, 0, 4096, nil)
	if r := c.anyReply(); r.errno != errInval {
		t.Fatalf("block status without context: %+v", r)
	}
}

func (c *rawClient) expectOptFinal(want uint32) {
	c.t.Helper()
	if r := c.readOptReply(); r.typ != want {
		c.t.Fatalf("reply %#x, want %#x", r.typ, want)
	}
}

func TestBadClientFlagsHangUp(t *testing.T) {
	ex := newMemExports()
	_, addr := startServer(t, Config{}, ex)
	c := dialRaw(t, addr)
	c.greet(1 << 5)
	var b [1]byte
	if _, err := c.conn.Read(b[:]); err != io.EOF {
		t.Fatalf("read after bad flags: %v, want EOF", err)
	}
}

func TestBadOptionMagicHangsUp(t *testing.T) {
	_, addr := startServer(t, Config{}, newMemExports())
	c := dialRaw(t, addr)
	c.greet(flagCFixedNewstyle)
	c.write(make([]byte, 16))
	var b [1]byte
	if _, err := c.conn.Read(b[:]); err != io.EOF {
		t.Fatalf("read after bad magic: %v, want EOF", err)
	}
}

func TestAbort(t *testing.T) {
	_, addr := startServer(t, Config{}, newMemExports())
	c := dialRaw(t, addr)
	c.greet(flagCFixedNewstyle)
	c.expectOpt(optAbort, nil, repAck)
	var b [1]byte
	if _, err := c.conn.Read(b[:]); err != io.EOF {
		t.Fatalf("read after abort: %v", err)
	}
}

func TestExportNameDefault(t *testing.T) {
	for _, noZeroes := range []bool{false, true} {
		ex := newMemExports()
		ex.add("vol", 3<<20)
		ex.def = "vol"
		_, addr := startServer(t, Config{}, ex)
		c := dialRaw(t, addr)
		flags := uint32(flagCFixedNewstyle)
		if noZeroes {
			flags |= flagCNoZeroes
		}
		c.greet(flags)
		c.sendOpt(optExportName, nil)
		n := 10
		if !noZeroes {
			n += handshakeZeroesLen
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(c.conn, b); err != nil {
			t.Fatal(err)
		}
		if size := binary.BigEndian.Uint64(b); size != 3<<20 {
			t.Fatalf("size %d", size)
		}
		want := uint16(tflagHasFlags | tflagSendFlush | tflagSendFUA | tflagSendTrim | tflagSendWriteZeroes | tflagSendCache | tflagCanMultiConn | tflagSendFastZero)
		if f := binary.BigEndian.Uint16(b[8:]); f != want {
			t.Fatalf("flags %#x, want %#x", f, want)
		}
		if !bytes.Equal(b[10:], make([]byte, n-10)) {
			t.Fatal("padding not zero")
		}
		// Simple replies: write then read.
		c.send(cmdWrite, 0, 7, 100, 5, []byte("hello"))
		if h, e, _ := c.simpleReply(0); h != 7 || e != 0 {
			t.Fatalf("write reply %d %d", h, e)
		}
		c.send(cmdRead, 0, 8, 100, 5, nil)
		if h, e, d := c.simpleReply(5); h != 8 || e != 0 || string(d) != "hello" {
			t.Fatalf("read reply %d %d %q", h, e, d)
		}
		c.send(cmdDisc, 0, 9, 0, 0, nil)
	}
}

func TestExportNameUnknownHangsUp(t *testing.T) {
	_, addr := startServer(t, Config{}, newMemExports())
	c := dialRaw(t, addr)
	c.greet(flagCFixedNewstyle)
	c.sendOpt(optExportName, []byte("nope"))
	var b [1]byte
	if _, err := c.conn.Read(b[:]); err != io.EOF {
		t.Fatalf("read: %v, want EOF", err)
	}
}

func TestRequestErrors(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(map[bool]string{false: "simple", true: "structured"}[structured], func(t *testing.T) {
			ex := newMemExports()
			dev := ex.add("vol", 1<<20)
			ex.add("vol@s", 1<<20)
			_, addr := startServer(t, Config{}, ex)
			c := dialRaw(t, addr)
			c.goExport("vol", structured, false)
			expect := func(typ, flags uint16, off uint64, n uint32, payload []byte, want uint32) {
				t.Helper()
				c.send(typ, flags, 42, off, n, payload)
				r := c.anyReply()
				if r.simple && r.errno == 0 && typ == cmdRead {
					io.ReadFull(c.conn, make([]byte, n))
				}
				if r.handle != 42 || r.errno != want {
					t.Fatalf("cmd %d flags %#x [%d,+%d): errno %d, want %d (%+v)", typ, flags, off, n, r.errno, want, r)
				}
				if want != 0 && structured && (r.simple || r.typ != replyTypeError || r.flags&replyFlagDone == 0 || len(r.data) <= 6) {
					t.Fatalf("structured error reply %+v", r)
				}
				if want == 0 && typ == cmdRead && structured {
					if r.typ != replyTypeOffsetData && r.typ != replyTypeNone {
						t.Fatalf("read reply %+v", r)
					}
				}
			}
			expect(cmdRead, 0, 1<<20-10, 20, nil, errInval)
			expect(cmdRead, 0, 1<<62, 1, nil, errInval)
			expect(cmdWrite, 0, 1<<20-2, 4, []byte("abcd"), errNoSpc)
			expect(cmdWriteZeroes, 0, 1<<20, 1, nil, errNoSpc)
			expect(cmdTrim, 0, 1<<20-1, 2, nil, errInval)
			expect(cmdCache, 0, 1<<20, 1, nil, errInval)
			expect(99, 0, 0, 0, nil, errInval)
			expect(cmdWrite, 1<<9, 0, 1, []byte("x"), errInval)    // unknown flag
			expect(cmdTrim, cmdFlagNoHole, 0, 1, nil, errInval)    // flag not for trim
			expect(cmdRead, 0, 0, MaxRequestSize+1, nil, errInval) // too large
			expect(cmdWrite, 0, 0, MaxRequestSize+1, make([]byte, MaxRequestSize+1), errInval)
			expect(cmdBlockStatus, 0, 0, 4096, nil, errInval) // no context
			expect(cmdWriteZeroes, cmdFlagNoHole|cmdFlagFastZero, 0, 4096, nil, errNotSup)
			// Zero-length requests succeed.
			expect(cmdRead, 0, 0, 0, nil, 0)
			expect(cmdWrite, 0, 0, 0, nil, 0)
			expect(cmdTrim, 0, 0, 0, nil, 0)
			// Device errors.
			var fault atomic.Value
			dev.SetFault(func(_ context.Context, op memdev.Op, _, _ int64) error {
				if e, ok := fault.Load().(error); ok {
					return e
				}
				return nil
			})
			fault.Store(torus.ErrNoSpace)
			expect(cmdWrite, 0, 0, 3, []byte("abc"), errNoSpc)
			fault.Store(torus.ErrFenced)
			expect(cmdWrite, 0, 0, 3, []byte("abc"), errIO)
			expect(cmdRead, 0, 0, 3, nil, errIO)
			fault.Store(torus.ErrUnavailable)
			expect(cmdFlush, 0, 0, 0, nil, errIO)
			fault.Store(torus.ErrReadOnly)
			expect(cmdTrim, cmdFlagFUA, 0, 10, nil, errPerm)
			fault.Store(errors.New("random failure"))
			expect(cmdWriteZeroes, 0, 0, 10, nil, errIO)
			dev.SetFault(nil)
			// The connection still works.
			expect(cmdWrite, cmdFlagFUA, 4096, 3, []byte("xyz"), 0)
			expect(cmdFlush, 0, 0, 0, nil, 0)
			expect(cmdRead, cmdFlagFUA, 4096, 3, nil, 0)
			c.send(cmdDisc, 0, 0, 0, 0, nil)

			// Read-only export: writes are EPERM.
			c = dialRaw(t, addr)
			c.goExport("vol@s", structured, false)
			if c.flags&tflagReadOnly == 0 || c.flags&(tflagSendTrim|tflagSendWriteZeroes|tflagSendFUA) != 0 {
				t.Fatalf("read-only flags %#x", c.flags)
			}
			expect(cmdWrite, 0, 0, 3, []byte("abc"), errPerm)
			expect(cmdTrim, 0, 0, 3, nil, errPerm)
			expect(cmdWriteZeroes, 0, 0, 3, nil, errPerm)
			expect(cmdRead, 0, 0, 3, nil, 0)
			expect(cmdFlush, 0, 0, 0, nil, 0)
		})
	}
}

func TestBadRequestMagicHangsUp(t *testing.T) {
	ex := newMemExports()
	ex.add("vol", 1<<20)
	_, addr := startServer(t, Config{}, ex)
	c := dialRaw(t, addr)
	c.goExport("vol", false, false)
	c.write(make([]byte, requestLen))
	var b [1]byte
	if _, err := c.conn.Read(b[:]); err != io.EOF {
		t.Fatalf("read after bad request magic: %v, want EOF", err)
	}
}

func TestBlockStatus(t *testing.T) {
	ex := newMemExports()
	ex.add("vol", 1<<20)
	_, addr := startServer(t, Config{}, ex)
	c := dialRaw(t, addr)
	c.goExport("vol", true, true)
	c.send(cmdWrite, 0, 1, 8192, 8192, make([]byte, 8192))
	if r := c.anyReply(); r.errno != 0 {
		t.Fatal(r)
	}
	status := func(flags uint16, off uint64, n uint32) [][2]uint32 {
		t.Helper()
		c.send(cmdBlockStatus, flags, 2, off, n, nil)
		r := c.anyReply()
		if r.typ != replyTypeBlockStatus || r.flags&replyFlagDone == 0 || binary.BigEndian.Uint32(r.data) != metaAllocID {
			t.Fatalf("block status reply %+v", r)
		}
		var out [][2]uint32
		for d := r.data[4:]; len(d) >= 8; d = d[8:] {
			out = append(out, [2]uint32{binary.BigEndian.Uint32(d), binary.BigEndian.Uint32(d[4:])})
		}
		return out
	}
	got := status(0, 0, 1<<20)
	want := [][2]uint32{{8192, 3}, {8192, 0}, {1<<20 - 16384, 3}}
	if len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
		t.Fatalf("extents %v, want %v", got, want)
	}
	if got := status(cmdFlagReqOne, 100, 20000); len(got) != 1 || got[0] != [2]uint32{8092, 3} {
		t.Fatalf("req_one extents %v", got)
	}
	c.send(cmdTrim, 0, 3, 8192, 4096, nil)
	c.anyReply()
	if got := status(0, 8192, 8192); len(got) != 2 || got[0] != [2]uint32{4096, 3} || got[1] != [2]uint32{4096, 0} {
		t.Fatalf("after trim %v", got)
	}
	// Out of range: EINVAL.
	c.send(cmdBlockStatus, 0, 4, 1<<20-1, 2, nil)
	if r := c.anyReply(); r.errno != errInval {
		t.Fatalf("out of range block status %+v", r)
	}
}

// TestOutOfOrder: a slow read does not hold up a later write's reply.
func TestOutOfOrder(t *testing.T) {
	ex := newMemExports()
	dev := ex.add("vol", 1<<20)
	release := make(chan struct{})
	dev.SetFault(func(ctx context.Context, op memdev.Op, off, _ int64) error {
		if op == memdev.OpRead && off == 0 {
			<-release
		}
		return nil
	})
	_, addr := startServer(t, Config{}, ex)
	c := dialRaw(t, addr)
	c.goExport("vol", false, false)
	c.send(cmdRead, 0, 1, 0, 4096, nil)
	c.send(cmdWrite, 0, 2, 4096, 4, []byte("abcd"))
	if h, e, _ := c.simpleReply(0); h != 2 || e != 0 {
		t.Fatalf("first reply handle %d errno %d, want the write (2)", h, e)
	}
	close(release)
	if h, e, d := c.simpleReply(4096); h != 1 || e != 0 || len(d) != 4096 {
		t.Fatalf("second reply handle %d errno %d", h, e)
	}
}

// TestInflightLimit: the server stops reading at MaxInflightRequests.
func TestInflightLimit(t *testing.T) {
	ex := newMemExports()
	dev := ex.add("vol", 1<<20)
	var cur, peak atomic.Int32
	gate := make(chan struct{})
	dev.SetFault(func(ctx context.Context, op memdev.Op, off, _ int64) error {
		n := cur.Add(1)
		defer cur.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-gate
		return nil
	})
	_, addr := startServer(t, Config{MaxInflightRequests: 3}, ex)
	c := dialRaw(t, addr)
	c.goExport("vol", false, false)
	const n = 20
	go func() {
		for i := range n {
			c.send(cmdWrite, 0, uint64(i), uint64(i)*512, 512, make([]byte, 512))
		}
	}()
	time.Sleep(200 * time.Millisecond)
	if p := peak.Load(); p != 3 {
		t.Fatalf("peak in flight %d, want 3", p)
	}
	close(gate)
	seen := map[uint64]bool{}
	for range n {
		h, e, _ := c.simpleReply(0)
		if e != 0 || seen[h] {
			t.Fatalf("reply %d errno %d", h, e)
		}
		seen[h] = true
	}
	if p := peak.Load(); p > 3 {
		t.Fatalf("peak in flight %d > 3", p)
	}
}

func TestBudget(t *testing.T) {
	b := newBudget(10, 100)
	b.acquire(80)
	done := make(chan struct{})
	go func() {
		b.acquire(30)
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("acquire over the byte budget did not block")
	case <-time.After(50 * time.Millisecond):
	}
	b.release(80)
	<-done
	b.release(30)
	b.acquire(1000) // alone, any size fits
	b.release(1000)
}

// TestDisconnectMidFlight: requests in flight when the client goes away
// complete, then the device is released (closed, being the last user).
func TestDisconnectMidFlight(t *testing.T) {
	ex := newMemExports()
	dev := ex.add("vol", 1<<20)
	entered := make(chan struct{})
	release := make(chan struct{})
	dev.SetFault(func(ctx context.Context, op memdev.Op, off, _ int64) error {
		if op == memdev.OpWrite {
			close(entered)
			<-release
		}
		return nil
	})
	_, addr := startServer(t, Config{}, ex)
	c := dialRaw(t, addr)
	c.goExport("vol", true, false)
	c.send(cmdWrite, 0, 1, 0, 5, []byte("hello"))
	<-entered
	c.conn.Close()
	time.Sleep(50 * time.Millisecond)
	if dev.IsClosed() {
		t.Fatal("device closed while a request was in flight")
	}
	close(release)
	waitFor(t, func() bool { return dev.Closes() == 1 })
	dev.SetFault(nil)
	dev.Reopen()
	buf := make([]byte, 5)
	if err := dev.ReadAt(context.Background(), buf, 0); err != nil || string(buf) != "hello" {
		t.Fatalf("in-flight write lost: %q %v", buf, err)
	}
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestSharedDevice: connections to one export share one device, opened once
// and closed after the last connection.
func TestSharedDevice(t *testing.T) {
	ex := newMemExports()
	dev := ex.add("vol", 1<<20)
	_, addr := startServer(t, Config{}, ex)
	var cs []*rawClient
	for range 4 {
		c := dialRaw(t, addr)
		c.goExport("vol", false, false)
		cs = append(cs, c)
	}
	if n := ex.openCount("vol"); n != 1 {
		t.Fatalf("opened %d times", n)
	}
	// A write on one connection is visible on another at once.
	cs[0].send(cmdWrite, 0, 1, 0, 3, []byte("abc"))
	cs[0].simpleReply(0)
	cs[3].send(cmdRead, 0, 1, 0, 3, nil)
	if _, _, d := cs[3].simpleReply(3); string(d) != "abc" {
		t.Fatalf("read on another connection: %q", d)
	}
	for i, c := range cs[:3] {
		c.send(cmdDisc, 0, 0, 0, 0, nil)
		_ = i
	}
	time.Sleep(50 * time.Millisecond)
	if dev.IsClosed() {
		t.Fatal("closed while a connection remains")
	}
	cs[3].conn.Close()
	waitFor(t, func() bool { return dev.Closes() == 1 })
	// A new connection opens it again.
	c := dialRaw(t, addr)
	c.goExport("vol", false, false)
	if n := ex.openCount("vol"); n != 2 {
		t.Fatalf("opened %d times", n)
	}
}

func TestLockedExport(t *testing.T) {
	ex := newMemExports()
	ex.add("vol", 1<<20)
	ex.openErr["vol"] = &torus.LockedError{Volume: "vol", Holder: "torusblk@otherhost", Epoch: 3}
	_, addr := startServer(t, Config{}, ex)
	c := dialRaw(t, addr)
	c.greet(flagCFixedNewstyle)
	r := c.expectOpt(optGo, appendInfoRequest(nil, infoRequest{name: "vol"}), repErrPolicy)
	if !strings.Contains(string(r.data), "torusblk@otherhost") {
		t.Fatalf("message %q does not name the holder", r.data)
	}
}

// TestShutdown: in-flight requests complete and are answered, then every
// device is flushed and closed; new connections are refused.
func TestShutdown(t *testing.T) {
	ex := newMemExports()
	dev := ex.add("vol", 1<<20)
	ln, addr := listen(t)
	srv := NewServer(Config{}, ex, nil)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	c := dialRaw(t, addr)
	c.goExport("vol", false, false)
	c.send(cmdWrite, 0, 1, 0, 3, []byte("abc"))
	c.simpleReply(0)
	entered := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	dev.SetFault(func(ctx context.Context, op memdev.Op, _, _ int64) error {
		if op == memdev.OpWrite {
			once.Do(func() { close(entered) })
			<-release
		}
		return nil
	})
	c.send(cmdWrite, 0, 2, 3, 3, []byte("def"))
	<-entered
	flushesBefore := dev.Flushes()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(context.Background()) }()
	time.Sleep(50 * time.Millisecond)
	if dev.IsClosed() {
		t.Fatal("closed before the in-flight write completed")
	}
	close(release)
	if h, e, _ := c.simpleReply(0); h != 2 || e != 0 {
		t.Fatalf("in-flight write reply %d %d", h, e)
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != ErrServerClosed {
		t.Fatalf("serve: %v", err)
	}
	if dev.Closes() != 1 || dev.Flushes() <= flushesBefore {
		t.Fatalf("closes %d flushes %d (before %d)", dev.Closes(), dev.Flushes(), flushesBefore)
	}
	var b [1]byte
	if _, err := c.conn.Read(b[:]); err != io.EOF {
		t.Fatalf("connection after shutdown: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	bad := []Config{
		{TLSRequired: true},
		{MaxInflightBytes: 1 << 20},
		{MaxInflightRequests: -1},
	}
	for _, cfg := range bad {
		cfg.EnsureDefaults()
		if err := cfg.Validate(); !errors.Is(err, torus.ErrInvalid) {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
	srv := NewServer(Config{TLSRequired: true}, newMemExports(), nil)
	ln, _ := listen(t)
	if err := srv.Serve(ln); !errors.Is(err, torus.ErrInvalid) {
		t.Fatalf("serve with bad config: %v", err)
	}
}

// TestConfigReadOnly: Config.ReadOnly opens every export read-only.
func TestConfigReadOnly(t *testing.T) {
	ex := newMemExports()
	dev := ex.add("vol", 1<<20)
	_, addr := startServer(t, Config{ReadOnly: true}, ex)
	c := dialRaw(t, addr)
	c.goExport("vol", true, true)
	if c.flags&tflagReadOnly == 0 || c.flags&tflagSendTrim != 0 {
		t.Fatalf("flags %#x", c.flags)
	}
	c.send(cmdWrite, 0, 1, 0, 3, []byte("abc"))
	if r := c.anyReply(); r.errno != errPerm {
		t.Fatalf("write on read-only server: %+v", r)
	}
	c.send(cmdRead, 0, 2, 0, 3, nil)
	if r := c.anyReply(); r.errno != 0 || r.typ != replyTypeOffsetData || !bytes.Equal(r.data[8:], []byte{0, 0, 0}) {
		t.Fatalf("read: %+v", r)
	}
	if dev.Writes() != 0 {
		t.Fatal("a write reached the device")
	}
}

// TestShutdownTimeout: when ctx ends before in-flight requests finish,
// Shutdown closes connections, cancels device I/O and returns ctx's error;
// connections still negotiating are closed.
func TestShutdownTimeout(t *testing.T) {
	ex := newMemExports()
	dev := ex.add("vol", 1<<20)
	entered := make(chan struct{})
	dev.SetFault(func(ctx context.Context, op memdev.Op, _, _ int64) error {
		if op == memdev.OpWrite {
			close(entered)
			<-ctx.Done() // stuck until cancelled
			return ctx.Err()
		}
		return nil
	})
	ln, addr := listen(t)
	srv := NewServer(Config{}, ex, nil)
	go srv.Serve(ln)
	c := dialRaw(t, addr)
	c.goExport("vol", false, false)
	c.send(cmdWrite, 0, 1, 0, 3, []byte("abc"))
	<-entered
	negotiating := dialRaw(t, addr)
	negotiating.greet(flagCFixedNewstyle)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("shutdown: %v", err)
	}
	for _, rc := range []*rawClient{c, negotiating} {
		if _, err := io.ReadAll(rc.conn); err != nil && !strings.Contains(err.Error(), "reset") {
			t.Fatalf("connection not closed: %v", err)
		}
	}
	if !dev.IsClosed() {
		t.Fatal("device not closed")
	}
}

// TestPipelinedRepliesIntact: many pipelined reads and writes of distinct
// blocks, answered by a few workers whose replies are batched into shared
// writes, each come back once, whole, with their own data.
func TestPipelinedRepliesIntact(t *testing.T) {
	ex := newMemExports()
	dev := ex.add("vol", 1<<20)
	for i := range 256 {
		b := bytes.Repeat([]byte{byte(i)}, 4096)
		if err := dev.WriteAt(context.Background(), b, int64(i)*4096, false); err != nil {
			t.Fatal(err)
		}
	}
	_, addr := startServer(t, Config{MaxInflightRequests: 4}, ex)
	c := dialRaw(t, addr)
	c.goExport("vol", true, false)
	const n = 512
	go func() {
		for i := range n {
			blk := uint64(i % 256)
			if i%3 == 2 {
				c.send(cmdWrite, 0, uint64(i), blk*4096, 4096, bytes.Repeat([]byte{byte(blk)}, 4096))
			} else {
				c.send(cmdRead, 0, uint64(i), blk*4096, 4096, nil)
			}
		}
	}()
	seen := map[uint64]bool{}
	for range n {
		ch := c.anyReply()
		if seen[ch.handle] || ch.handle >= n || (!ch.simple && ch.flags&replyFlagDone == 0) || ch.errno != 0 {
			t.Fatalf("reply %+v (seen %v)", ch, seen[ch.handle])
		}
		seen[ch.handle] = true
		if ch.handle%3 == 2 {
			if !ch.simple {
				t.Fatalf("write %d: chunk type %d, want a simple reply", ch.handle, ch.typ)
			}
			continue
		}
		blk := ch.handle % 256
		want := append(binary.BigEndian.AppendUint64(nil, blk*4096), bytes.Repeat([]byte{byte(blk)}, 4096)...)
		if ch.typ != replyTypeOffsetData || !bytes.Equal(ch.data, want) {
			t.Fatalf("read %d: type %d, %d bytes, wrong data", ch.handle, ch.typ, len(ch.data))
		}
	}
}
