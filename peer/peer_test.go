package peer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
)

func startServer(t testing.TB, svc torus.PeerService, cfg ServerConfig) (*Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveOn(t, svc, cfg, ln), ln.Addr().String()
}

func serveOn(t testing.TB, svc torus.PeerService, cfg ServerConfig, ln net.Listener) *Server {
	t.Helper()
	srv := NewServer(svc, cfg, testutil.Logger(t))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, torus.ErrClosed) {
			t.Errorf("Serve returned %v, want ErrClosed", err)
		}
	})
	return srv
}

func dialT(t testing.TB, addr string, cfg ClientConfig) *Client {
	t.Helper()
	c, err := Dial(context.Background(), addr, cfg, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func seg(vol, epoch, seq uint64) torus.SegmentID {
	return torus.SegmentID{Volume: vol, Epoch: epoch, Seq: seq}
}

// TestRoundTripAllOps drives every PeerService method through a real TCP
// connection into Local over the fake store.
func TestRoundTripAllOps(t *testing.T) {
	ctx := context.Background()
	store := newFakeStore(1 << 30)
	local := NewLocal(store, testutil.Logger(t))
	_, addr := startServer(t, local, ServerConfig{})
	c := dialT(t, addr, ClientConfig{})
	s := seg(1, 5, 1)

	data := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	if err := c.Append(ctx, 5, s, 0, data[:10000]); err != nil {
		t.Fatal(err)
	}
	if err := c.Append(ctx, 5, s, 10000, data[10000:]); err != nil {
		t.Fatal(err)
	}
	if err := c.Append(ctx, 5, s, 5, data[5:20]); err != nil {
		t.Fatalf("retried append: %v", err)
	}
	if _, err := c.Sync(ctx, 5, s); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 100)
	if n, err := c.ReadAt(ctx, s, p, 50); err != nil || n != 100 || !bytes.Equal(p, data[50:150]) {
		t.Fatalf("ReadAt: %d %v", n, err)
	}
	n, err := c.ReadAt(ctx, s, p, int64(len(data))-30)
	if err != io.EOF || n != 30 || !bytes.Equal(p[:30], data[len(data)-30:]) {
		t.Fatalf("short ReadAt: %d %v", n, err)
	}
	if n, err := c.ReadAt(ctx, s, nil, 0); err != nil || n != 0 {
		t.Fatalf("empty ReadAt: %d %v", n, err)
	}
	info, err := c.Stat(ctx, s)
	if err != nil || info != (torus.SegmentInfo{ID: s, Length: int64(len(data)), Synced: int64(len(data))}) {
		t.Fatalf("Stat: %+v %v", info, err)
	}
	if err := c.Append(ctx, 5, seg(2, 5, 1), 0, []byte("x")); err != nil {
		t.Fatal(err)
	}
	list, err := c.List(ctx, 1)
	if err != nil || len(list) != 1 || list[0].ID != s {
		t.Fatalf("List(1): %+v %v", list, err)
	}
	all, err := c.List(ctx, 0)
	if err != nil || len(all) != 2 {
		t.Fatalf("List(0): %+v %v", all, err)
	}
	empty, err := c.List(ctx, 99)
	if err != nil || len(empty) != 0 {
		t.Fatalf("List(99): %+v %v", empty, err)
	}
	u, err := c.Usage(ctx)
	if err != nil || u != (torus.Usage{Used: int64(len(data)) + 1, Capacity: 1 << 30}) {
		t.Fatalf("Usage: %+v %v", u, err)
	}
	if err := c.Fence(ctx, 1, 6); err != nil {
		t.Fatal(err)
	}
	if local.MinEpoch(1) != 6 {
		t.Fatalf("min epoch %d after fence", local.MinEpoch(1))
	}
	if err := c.Append(ctx, 5, s, int64(len(data)), []byte("late")); !errors.Is(err, torus.ErrFenced) {
		t.Fatalf("append after fence: %v", err)
	}
	if err := c.Delete(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stat(ctx, s); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("Stat after delete: %v", err)
	}
	if _, err := c.ReadAt(ctx, s, p, 0); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("ReadAt after delete: %v", err)
	}
}

// errService returns err from every method (and n bytes from ReadAt).
type errService struct {
	mu  sync.Mutex
	err error
	n   int
}

func (e *errService) set(err error, n int) {
	e.mu.Lock()
	e.err, e.n = err, n
	e.mu.Unlock()
}

func (e *errService) get() (error, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.err, e.n
}

func (e *errService) Append(context.Context, uint64, torus.SegmentID, int64, []byte) error {
	err, _ := e.get()
	return err
}
func (e *errService) AppendAsync(ctx context.Context, epoch uint64, seg torus.SegmentID, off int64, p []byte) func() error {
	err := e.Append(ctx, epoch, seg, off, p)
	return func() error { return err }
}
func (e *errService) Sync(context.Context, uint64, torus.SegmentID) (int64, error) {
	err, _ := e.get()
	return 0, err
}
func (e *errService) ReadAt(_ context.Context, _ torus.SegmentID, p []byte, _ int64) (int, error) {
	err, n := e.get()
	n = min(n, len(p))
	copy(p, bytes.Repeat([]byte{'z'}, n))
	return n, err
}
func (e *errService) Stat(context.Context, torus.SegmentID) (torus.SegmentInfo, error) {
	err, _ := e.get()
	return torus.SegmentInfo{}, err
}
func (e *errService) List(context.Context, uint64) ([]torus.SegmentInfo, error) {
	err, _ := e.get()
	return nil, err
}
func (e *errService) Delete(context.Context, torus.SegmentID) error {
	err, _ := e.get()
	return err
}
func (e *errService) Fence(context.Context, uint64, uint64) error {
	err, _ := e.get()
	return err
}
func (e *errService) Usage(context.Context) (torus.Usage, error) {
	err, _ := e.get()
	return torus.Usage{}, err
}

// TestErrorClassesCrossTheWire checks errors.Is on the client for every
// class, from every method.
func TestErrorClassesCrossTheWire(t *testing.T) {
	ctx := context.Background()
	svc := &errService{}
	_, addr := startServer(t, svc, ServerConfig{})
	c := dialT(t, addr, ClientConfig{})
	classes := []error{torus.ErrFenced, torus.ErrNoSpace, torus.ErrNotExist, torus.ErrConflict,
		torus.ErrCorrupt, torus.ErrInvalid, torus.ErrClosed, torus.ErrUnavailable, torus.ErrExist,
		torus.ErrOutOfRange, torus.ErrReadOnly, torus.ErrLocked, torus.ErrInUse, ErrRemote,
		context.Canceled}
	s := seg(1, 1, 1)
	for _, class := range classes {
		svc.set(fmt.Errorf("store says: %w", class), 0)
		if class == ErrRemote {
			svc.set(errors.New("disk on fire"), 0)
		}
		want := class
		if class == context.Canceled {
			want = torus.ErrUnavailable
		}
		calls := map[string]error{
			"append": c.Append(ctx, 1, s, 0, []byte("x")),
			"delete": c.Delete(ctx, s),
			"fence":  c.Fence(ctx, 1, 1),
		}
		_, calls["readat"] = c.ReadAt(ctx, s, make([]byte, 8), 0)
		_, calls["stat"] = c.Stat(ctx, s)
		_, calls["list"] = c.List(ctx, 1)
		_, calls["usage"] = c.Usage(ctx)
		_, calls["sync"] = c.Sync(ctx, 1, s)
		for op, err := range calls {
			if !errors.Is(err, want) {
				t.Errorf("%s with %v: client got %v", op, class, err)
			}
			var re *RemoteError
			if !errors.As(err, &re) || re.Addr != addr {
				t.Errorf("%s: %v is not a RemoteError naming %s", op, err, addr)
			}
			if errors.Is(err, io.EOF) {
				t.Errorf("%s: %v must not look like EOF", op, err)
			}
		}
	}
	// io.EOF with a short count.
	svc.set(io.EOF, 3)
	p := make([]byte, 8)
	n, err := c.ReadAt(ctx, s, p, 0)
	if err != io.EOF || n != 3 || string(p[:3]) != "zzz" {
		t.Fatalf("EOF read: %d %v %q", n, err, p)
	}
	// Another error with a partial count keeps both.
	svc.set(fmt.Errorf("half: %w", torus.ErrCorrupt), 2)
	n, err = c.ReadAt(ctx, s, p, 0)
	if !errors.Is(err, torus.ErrCorrupt) || n != 2 {
		t.Fatalf("partial read: %d %v", n, err)
	}
}

// TestConcurrentCalls runs many goroutines through one client.
func TestConcurrentCalls(t *testing.T) {
	ctx := context.Background()
	store := newFakeStore(0)
	_, addr := startServer(t, NewLocal(store, testutil.Logger(t)), ServerConfig{})
	c := dialT(t, addr, ClientConfig{})
	const workers, ops = 16, 30
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := seg(uint64(w%4+1), 1, uint64(w))
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			var want []byte
			for i := range ops {
				p := make([]byte, 1+rng.IntN(8000))
				for j := range p {
					p[j] = byte(rng.Uint32())
				}
				if err := c.Append(ctx, 1, s, int64(len(want)), p); err != nil {
					errs <- fmt.Errorf("worker %d op %d: %w", w, i, err)
					return
				}
				want = append(want, p...)
				off := rng.IntN(len(want))
				got := make([]byte, min(len(want)-off, 16<<10))
				if n, err := c.ReadAt(ctx, s, got, int64(off)); err != nil || n != len(got) || !bytes.Equal(got, want[off:off+len(got)]) {
					errs <- fmt.Errorf("worker %d read %d: n=%d %v", w, i, n, err)
					return
				}
				if i%10 == 0 {
					if _, err := c.Sync(ctx, 1, s); err != nil {
						errs <- err
						return
					}
					if info, err := c.Stat(ctx, s); err != nil || info.Length != int64(len(want)) {
						errs <- fmt.Errorf("stat: %+v %v", info, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// orderService records the order in which ordered ops execute, with random
// delays, and blocks ReadAt until released.
type orderService struct {
	errService
	mu      sync.Mutex
	order   []uint64 // Off of each append / epoch of sync, in execution order
	running atomic.Int32
	overlap atomic.Bool
	release chan struct{}
	reading chan struct{}
}

func (o *orderService) record(v uint64) {
	if o.running.Add(1) > 1 {
		o.overlap.Store(true)
	}
	time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
	o.mu.Lock()
	o.order = append(o.order, v)
	o.mu.Unlock()
	o.running.Add(-1)
}

func (o *orderService) Append(_ context.Context, _ uint64, _ torus.SegmentID, off int64, _ []byte) error {
	o.record(uint64(off))
	return nil
}
func (o *orderService) Sync(_ context.Context, e uint64, _ torus.SegmentID) (int64, error) {
	o.record(e)
	return 0, nil
}
func (o *orderService) ReadAt(ctx context.Context, _ torus.SegmentID, p []byte, _ int64) (int, error) {
	o.reading <- struct{}{}
	select {
	case <-o.release:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return len(p), nil
}

// TestOrderedOpsExecuteInArrivalOrder pipelines frames on one raw
// connection: the ordered ops run one at a time in arrival order, while a
// blocked read does not hold them up, and responses come back by ID.
func TestOrderedOpsExecuteInArrivalOrder(t *testing.T) {
	svc := &orderService{release: make(chan struct{}), reading: make(chan struct{}, 1)}
	_, addr := startServer(t, svc, ServerConfig{})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// First a read that blocks in the service.
	rd := EncodeRequest(Request{Op: OpReadAt, Seg: testSeg, Length: 8})
	if err := writeFrame(conn, OpReadAt, 0, 1000, rd); err != nil {
		t.Fatal(err)
	}
	<-svc.reading
	const n = 200
	var want []uint64
	var buf bytes.Buffer
	for i := range n {
		v := uint64(i)
		if i%5 == 4 {
			writeFrame(&buf, OpSync, 0, v, EncodeRequest(Request{Op: OpSync, Epoch: v, Seg: testSeg}))
		} else {
			writeFrame(&buf, OpAppend, 0, v, EncodeRequest(Request{Op: OpAppend, Seg: testSeg, Off: int64(v), Data: []byte("d")}))
		}
		want = append(want, v)
	}
	if _, err := conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, HeaderSize)
	got := map[uint64]bool{}
	for range n {
		h, body, err := ReadFrame(conn, hdr, MaxBody)
		if err != nil {
			t.Fatal(err)
		}
		r, err := DecodeResponse(h.Op, body)
		if err != nil || r.Status != StatusOK || !h.Response() {
			t.Fatalf("response %+v %+v %v", h, r, err)
		}
		got[h.ID] = true
	}
	if len(got) != n || got[1000] {
		t.Fatalf("answered %d ids (read answered: %v)", len(got), got[1000])
	}
	close(svc.release)
	h, _, err := ReadFrame(conn, hdr, MaxBody)
	if err != nil || h.ID != 1000 {
		t.Fatalf("read response: %+v %v", h, err)
	}
	svc.mu.Lock()
	defer svc.mu.Unlock()
	if fmt.Sprint(svc.order) != fmt.Sprint(want) {
		t.Fatalf("execution order %v, want %v", svc.order, want)
	}
	if svc.overlap.Load() {
		t.Fatal("ordered ops overlapped")
	}
}

// countConn counts the bytes written through it.
type countConn struct {
	net.Conn
	written *atomic.Int64
}

func (c countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.written.Add(int64(n))
	return n, err
}

// TestClientAppendOrderOnOneConnection pipelines appends to one segment
// through the client: each call starts once the previous call's frame is on
// the wire, without waiting for its answer, and the store (which demands
// off == length, with random delays) accepts every one.
func TestClientAppendOrderOnOneConnection(t *testing.T) {
	ctx := context.Background()
	store := newFakeStore(0)
	store.setHook(func(ctx context.Context, op string, _ torus.SegmentID) error {
		time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
		return nil
	})
	_, addr := startServer(t, NewLocal(store, testutil.Logger(t)), ServerConfig{})
	var written atomic.Int64
	c := dialT(t, addr, ClientConfig{Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, network, addr)
		return countConn{nc, &written}, err
	}})
	s := seg(1, 1, 1)
	const n, size = 100, 10
	const frameSize = HeaderSize + 8 + segIDSize + 8 + size
	errs := make([]error, n)
	var wg sync.WaitGroup
	var maxPending int
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.Append(ctx, 1, s, int64(i*size), bytes.Repeat([]byte{byte(i)}, size))
		}()
		deadline := time.Now().Add(10 * time.Second)
		for written.Load() < int64((i+1)*frameSize) {
			if time.Now().After(deadline) {
				t.Fatalf("frame %d not sent", i)
			}
			runtime.Gosched()
		}
		c.mu.Lock()
		cc := c.cc
		c.mu.Unlock()
		cc.mu.Lock()
		maxPending = max(maxPending, len(cc.pending))
		cc.mu.Unlock()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	p := make([]byte, n*size)
	if _, err := c.ReadAt(ctx, s, p, 0); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if p[i*size] != byte(i) {
			t.Fatalf("byte %d is %d", i*size, p[i*size])
		}
	}
	if maxPending < 2 {
		t.Logf("appends were never pipelined (max %d pending); ordering was not really exercised", maxPending)
	}
}
