package peer

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
)

// leakCheck records the goroutine count; the returned func fails the test
// if the count does not come back down within a few seconds.
func leakCheck(t *testing.T) func() {
	base := runtime.NumGoroutine()
	return func() {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				t.Fatalf("%d goroutines, %d at start:\n%s", runtime.NumGoroutine(), base, buf)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// blockingStore blocks the named ops until release is closed or their ctx
// ends, counting how many are blocked.
func blockingStore(ops ...string) (*fakeStore, *atomic.Int32, chan struct{}) {
	store := newFakeStore(0)
	var blocked atomic.Int32
	release := make(chan struct{})
	store.setHook(func(ctx context.Context, op string, _ torus.SegmentID) error {
		for _, o := range ops {
			if o == op {
				blocked.Add(1)
				defer blocked.Add(-1)
				select {
				case <-release:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		return nil
	})
	return store, &blocked, release
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestServerCloseWithCallsInFlight(t *testing.T) {
	done := leakCheck(t)
	store, blocked, _ := blockingStore("readat", "append")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	srv := NewServer(NewLocal(store, testutil.Logger(t)), ServerConfig{}, testutil.Logger(t))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	c, err := Dial(context.Background(), addr, ClientConfig{}, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	const reads, appends = 10, 5
	errs := make(chan error, reads+appends)
	for range reads {
		go func() {
			_, err := c.ReadAt(context.Background(), seg(1, 1, 1), make([]byte, 10), 0)
			errs <- err
		}()
	}
	for i := range appends {
		go func() {
			errs <- c.Append(context.Background(), 1, seg(1, 1, uint64(i)), 0, []byte("x"))
		}()
	}
	// All reads and the first append run; the other appends queue.
	waitFor(t, "calls to block", func() bool { return blocked.Load() == reads+1 })
	closed := make(chan struct{})
	go func() { srv.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hung with calls in flight")
	}
	if err := <-served; !errors.Is(err, torus.ErrClosed) {
		t.Fatalf("Serve: %v", err)
	}
	for range reads + appends {
		err := <-errs
		if !errors.Is(err, torus.ErrUnavailable) {
			t.Errorf("call during close: %v", err)
		}
	}
	if srv.Close() != nil || srv.ConnCount() != 0 {
		t.Fatal("second Close or conn count")
	}
	if err := srv.Serve(ln); !errors.Is(err, torus.ErrClosed) {
		t.Fatalf("Serve after Close: %v", err)
	}
	c.Close()
	done()
}

func TestClientReconnectsAfterServerRestart(t *testing.T) {
	ctx := context.Background()
	store := newFakeStore(0)
	local := NewLocal(store, testutil.Logger(t))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	srv1 := NewServer(local, ServerConfig{}, testutil.Logger(t))
	go srv1.Serve(ln)
	c := dialT(t, addr, ClientConfig{DialTimeout: time.Second})
	s := seg(1, 1, 1)
	if err := c.Append(ctx, 1, s, 0, []byte("abc")); err != nil {
		t.Fatal(err)
	}
	srv1.Close()
	// The server is gone: calls fail as unavailable, naming the peer.
	waitFor(t, "client to notice", func() bool {
		_, err := c.Stat(ctx, s)
		if err != nil && !errors.Is(err, torus.ErrUnavailable) {
			t.Fatalf("stat while down: %v", err)
		}
		if err != nil && !strings.Contains(err.Error(), addr) {
			t.Fatalf("error %q does not name %s", err, addr)
		}
		return err != nil
	})
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", addr, err)
	}
	serveOn(t, local, ServerConfig{}, ln2)
	if err := c.Append(ctx, 1, s, 3, []byte("def")); err != nil {
		t.Fatalf("append after restart: %v", err)
	}
	p := make([]byte, 6)
	if n, err := c.ReadAt(ctx, s, p, 0); err != nil || string(p[:n]) != "abcdef" {
		t.Fatalf("read after restart: %q %v", p[:n], err)
	}
}

// rawExchange sends b on a new raw connection and returns everything the
// server sends back until it closes the connection.
func rawExchange(t *testing.T, addr string, b []byte) []byte {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	conn.(*net.TCPConn).CloseWrite()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	out, err := io.ReadAll(conn)
	if err != nil {
		t.Fatalf("server did not close the connection: %v", err)
	}
	return out
}

func TestMalformedFramesCloseOnlyThatConnection(t *testing.T) {
	ctx := context.Background()
	srv, addr := startServer(t, NewLocal(newFakeStore(0), testutil.Logger(t)), ServerConfig{})
	c := dialT(t, addr, ClientConfig{})
	if err := c.Append(ctx, 1, seg(1, 1, 1), 0, []byte("x")); err != nil {
		t.Fatal(err)
	}
	good := frame(OpSync, 0, 77, EncodeRequest(Request{Op: OpSync, Epoch: 1, Seg: seg(1, 1, 1)}))
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := []struct {
		name   string
		b      []byte
		answer Status // 0: closed without answer
	}{
		{"garbage", bytes.Repeat([]byte{0xAB}, 100), 0},
		{"bad flags", mut(func(b []byte) []byte { b[6] = 4; return b }), 0},
		{"response flag", mut(func(b []byte) []byte { b[6] = 1; return b }), StatusInvalid},
		{"bad crc", mut(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), StatusCorrupt},
		{"version", mut(func(b []byte) []byte { b[4] = 9; return b }), StatusInvalid},
		{"unknown op", mut(func(b []byte) []byte { b[5] = 200; return b }), StatusInvalid},
		{"short body", frame(OpSync, 0, 77, []byte{1, 2, 3}), StatusInvalid},
		{"oversize", mut(func(b []byte) []byte {
			PutHeader(b, Header{Version: Version, Op: OpAppend, ID: 77, Length: MaxBody + 1})
			return append(b, make([]byte, 1<<20)...)
		}), StatusInvalid},
		{"truncated", good[:len(good)-3], 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := rawExchange(t, addr, tc.b)
			if tc.answer == 0 {
				if len(out) != 0 {
					t.Fatalf("got %d bytes, want none", len(out))
				}
			} else {
				if len(out) > 5 && !Op(out[5]).Valid() {
					out[5] = byte(OpSync) // answers to unknown ops carry no payload
				}
				h, body, rest, err := DecodeFrame(out, MaxBody)
				if err != nil || h.ID != 77 || !h.Response() || len(rest) != 0 {
					t.Fatalf("answer %+v rest %d: %v", h, len(rest), err)
				}
				r, err := DecodeResponse(h.Op, body)
				if err != nil || r.Status != tc.answer {
					t.Fatalf("answer status %d (%q), want %d: %v", r.Status, r.Msg, tc.answer, err)
				}
			}
			// The server keeps serving everyone else.
			if _, err := c.Stat(ctx, seg(1, 1, 1)); err != nil {
				t.Fatalf("good client after %s: %v", tc.name, err)
			}
		})
	}
	waitFor(t, "bad connections to be dropped", func() bool { return srv.ConnCount() == 1 })
}

func TestOversizeAppendRejectedByClient(t *testing.T) {
	ctx := context.Background()
	_, addr := startServer(t, NewLocal(newFakeStore(0), testutil.Logger(t)), ServerConfig{})
	c := dialT(t, addr, ClientConfig{})
	cc := c.cc
	err := c.Append(ctx, 1, seg(1, 1, 1), 0, make([]byte, MaxData+1))
	if !errors.Is(err, torus.ErrInvalid) {
		t.Fatalf("oversize append: %v", err)
	}
	if err := c.Append(ctx, 1, seg(1, 1, 1), -1, []byte("x")); !errors.Is(err, torus.ErrInvalid) {
		t.Fatalf("negative offset: %v", err)
	}
	if _, err := c.ReadAt(ctx, seg(1, 1, 1), make([]byte, 1), -5); !errors.Is(err, torus.ErrInvalid) {
		t.Fatalf("negative read offset: %v", err)
	}
	if err := c.Append(ctx, 1, seg(1, 1, 1), 0, make([]byte, MaxData)); err != nil {
		t.Fatalf("append of MaxData: %v", err)
	}
	if c.cc != cc || !cc.alive() {
		t.Fatal("rejected calls broke the connection")
	}
}

func TestReadAtLargerThanMaxData(t *testing.T) {
	ctx := context.Background()
	store := newFakeStore(0)
	data := make([]byte, MaxData+1000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := store.Append(ctx, seg(1, 1, 1), 0, data); err != nil {
		t.Fatal(err)
	}
	_, addr := startServer(t, NewLocal(store, testutil.Logger(t)), ServerConfig{})
	c := dialT(t, addr, ClientConfig{})
	p := make([]byte, len(data)+10)
	n, err := c.ReadAt(ctx, seg(1, 1, 1), p, 0)
	if err != io.EOF || n != len(data) || !bytes.Equal(p[:n], data) {
		t.Fatalf("split read: n=%d err=%v", n, err)
	}
	n, err = c.ReadAt(ctx, seg(1, 1, 1), p[:len(data)-5], 5)
	if err != nil || n != len(data)-5 || !bytes.Equal(p[:n], data[5:]) {
		t.Fatalf("exact split read: n=%d err=%v", n, err)
	}
}

func TestContextCancelAndTimeout(t *testing.T) {
	store, blocked, release := blockingStore("readat")
	_, addr := startServer(t, NewLocal(store, testutil.Logger(t)), ServerConfig{})
	c := dialT(t, addr, ClientConfig{RequestTimeout: 200 * time.Millisecond})
	s := seg(1, 1, 1)
	if err := c.Append(context.Background(), 1, s, 0, []byte("hello")); err != nil {
		t.Fatal(err)
	}

	// The caller's cancellation.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(20*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.ReadAt(ctx, s, make([]byte, 5), 0)
	if !errors.Is(err, context.Canceled) || errors.Is(err, torus.ErrUnavailable) {
		t.Fatalf("cancelled call: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("cancel took %v", d)
	}
	// Already cancelled: fails at once.
	if _, err := c.Sync(ctx, 1, s); !errors.Is(err, context.Canceled) {
		t.Fatalf("pre-cancelled: %v", err)
	}

	// The caller's own deadline is reported as such.
	dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer dcancel()
	_, err = c.ReadAt(dctx, s, make([]byte, 5), 0)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, torus.ErrUnavailable) {
		t.Fatalf("caller deadline: %v", err)
	}

	// The abandoned reads are still blocked on the server; once released,
	// their late answers are dropped and the connection goes on.
	if blocked.Load() == 0 {
		t.Fatal("no read reached the store")
	}
	cc := c.cc
	close(release)
	p := make([]byte, 5)
	if n, err := c.ReadAt(context.Background(), s, p, 0); err != nil || string(p[:n]) != "hello" {
		t.Fatalf("read after cancellations: %q %v", p[:n], err)
	}
	if c.cc != cc {
		t.Fatal("cancellation replaced the connection")
	}
}

// TestRequestTimeout: the client's own timeout wraps ErrUnavailable and
// DeadlineExceeded; it keeps a connection that is answering other calls,
// and drops one on which nothing arrived for a whole timeout.
func TestRequestTimeout(t *testing.T) {
	store, _, release := blockingStore("readat")
	defer close(release)
	_, addr := startServer(t, NewLocal(store, testutil.Logger(t)), ServerConfig{})
	c := dialT(t, addr, ClientConfig{RequestTimeout: 300 * time.Millisecond})
	s := seg(1, 1, 1)
	if err := c.Append(context.Background(), 1, s, 0, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	cc := c.cc

	// Other calls are answered meanwhile: the connection stays.
	stop := make(chan struct{})
	traffic := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				traffic <- nil
				return
			case <-time.After(10 * time.Millisecond):
			}
			if _, err := c.Stat(context.Background(), s); err != nil {
				traffic <- err
				return
			}
		}
	}()
	_, err := c.ReadAt(context.Background(), s, make([]byte, 5), 0)
	close(stop)
	if err := <-traffic; err != nil {
		t.Fatalf("traffic: %v", err)
	}
	if !errors.Is(err, torus.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("timed out call: %v", err)
	}
	if !cc.alive() || c.cc != cc {
		t.Fatal("a timeout on a talking connection dropped it")
	}

	// Nothing else arrives: the connection is dropped and redialled.
	_, err = c.ReadAt(context.Background(), s, make([]byte, 5), 0)
	if !errors.Is(err, torus.ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("timed out call: %v", err)
	}
	if cc.alive() {
		t.Fatal("a silent connection was kept")
	}
	if _, err := c.Stat(context.Background(), s); err != nil {
		t.Fatalf("after redial: %v", err)
	}
	if c.cc == cc {
		t.Fatal("no new connection")
	}
}

func TestServerBoundsInflightBytes(t *testing.T) {
	const mib = 1 << 20
	store, blocked, release := blockingStore("readat")
	store.hook = nil
	if err := store.Append(context.Background(), seg(1, 1, 1), 0, make([]byte, 2*mib)); err != nil {
		t.Fatal(err)
	}
	var running, peak atomic.Int32
	var mu sync.Mutex
	store.setHook(func(ctx context.Context, op string, _ torus.SegmentID) error {
		if op != "readat" {
			return nil
		}
		n := running.Add(1)
		defer running.Add(-1)
		mu.Lock()
		peak.Store(max(peak.Load(), n))
		mu.Unlock()
		blocked.Add(1)
		defer blocked.Add(-1)
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	})
	// Room for three 1 MiB reads (and their small request bodies).
	_, addr := startServer(t, NewLocal(store, testutil.Logger(t)), ServerConfig{MaxInflightBytes: 3*mib + 1024})
	c := dialT(t, addr, ClientConfig{})
	const calls = 8
	errs := make(chan error, calls)
	for range calls {
		go func() {
			_, err := c.ReadAt(context.Background(), seg(1, 1, 1), make([]byte, mib), 0)
			errs <- err
		}()
	}
	waitFor(t, "three reads to run", func() bool { return running.Load() == 3 })
	time.Sleep(100 * time.Millisecond)
	if n := running.Load(); n != 3 {
		t.Fatalf("%d reads running under a budget for 3", n)
	}
	close(release)
	for range calls {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if p := peak.Load(); p != 3 {
		t.Fatalf("peak %d concurrent reads, want 3", p)
	}
	// A request larger than the whole budget still runs, alone.
	_, addr2 := startServer(t, NewLocal(store, testutil.Logger(t)), ServerConfig{MaxInflightBytes: mib / 2})
	c2 := dialT(t, addr2, ClientConfig{})
	if n, err := c2.ReadAt(context.Background(), seg(1, 1, 1), make([]byte, 2*mib), 0); err != nil || n != 2*mib {
		t.Fatalf("read over the budget: %d %v", n, err)
	}
}

func TestClientClose(t *testing.T) {
	done := leakCheck(t)
	store, blocked, _ := blockingStore("sync")
	srv, addr := startServer(t, NewLocal(store, testutil.Logger(t)), ServerConfig{})
	c, err := Dial(context.Background(), addr, ClientConfig{}, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Append(context.Background(), 1, seg(1, 1, 1), 0, []byte("x")); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := c.Sync(context.Background(), 1, seg(1, 1, 1))
		errc <- err
	}()
	waitFor(t, "sync to block", func() bool { return blocked.Load() == 1 })
	c.Close()
	if err := <-errc; !errors.Is(err, torus.ErrClosed) {
		t.Fatalf("pending call on Close: %v", err)
	}
	if _, err := c.Usage(context.Background()); !errors.Is(err, torus.ErrClosed) {
		t.Fatalf("call after Close: %v", err)
	}
	if c.Close() != nil {
		t.Fatal("second Close")
	}
	waitFor(t, "server to drop the connection", func() bool { return srv.ConnCount() == 0 })
	srv.Close()
	done()
}

func TestDialUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = Dial(context.Background(), addr, ClientConfig{DialTimeout: time.Second}, testutil.Logger(t))
	if !errors.Is(err, torus.ErrUnavailable) || !strings.Contains(err.Error(), addr) {
		t.Fatalf("dial of a closed port: %v", err)
	}
}

// TestCancelWhileWaitingToSend: a call whose ctx ends while another call
// holds the connection's write lock gives up without writing, and the
// connection survives.
func TestCancelWhileWaitingToSend(t *testing.T) {
	_, addr := startServer(t, NewLocal(newFakeStore(0), testutil.Logger(t)), ServerConfig{})
	c := dialT(t, addr, ClientConfig{})
	cc := c.cc
	cc.wmu.Lock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- c.Append(ctx, 1, seg(1, 1, 1), 0, []byte("x")) }()
	err := <-func() chan error {
		time.Sleep(60 * time.Millisecond)
		cc.wmu.Unlock()
		return errc
	}()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call cancelled while waiting: %v", err)
	}
	if !cc.alive() || c.cc != cc {
		t.Fatal("the connection was dropped")
	}
	if _, err := c.Stat(context.Background(), seg(1, 1, 1)); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("the cancelled append was sent, or the connection broke: %v", err)
	}
}

// flakyListener fails its first Accept calls with a non-closed error.
type flakyListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, errors.New("accept: too many open files")
	}
	return l.Listener.Accept()
}

func TestServeRetriesAcceptErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: ln}
	fl.fails.Store(3)
	serveOn(t, NewLocal(newFakeStore(0), testutil.Logger(t)), ServerConfig{}, fl)
	c := dialT(t, ln.Addr().String(), ClientConfig{})
	if _, err := c.Usage(context.Background()); err != nil {
		t.Fatalf("after accept errors: %v", err)
	}
	if fl.fails.Load() >= 0 {
		t.Fatal("the accept errors were not hit")
	}
}
