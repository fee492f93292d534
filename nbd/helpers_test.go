package nbd

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/memdev"
	"github.com/torus-storage/torus/internal/testutil"
)

// memExports serves memdev devices by name. Names with "@" are
// snapshots: read-only.
type memExports struct {
	mu      sync.Mutex
	devs    map[string]*memdev.Device
	desc    map[string]string
	def     string
	opens   map[string]int
	openErr map[string]error
}

func newMemExports() *memExports {
	return &memExports{
		devs:    make(map[string]*memdev.Device),
		desc:    make(map[string]string),
		opens:   make(map[string]int),
		openErr: make(map[string]error),
	}
}

func (m *memExports) add(name string, size int64) *memdev.Device {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := memdev.New(size, strings.Contains(name, "@"))
	m.devs[name] = d
	return d
}

func (m *memExports) Open(ctx context.Context, name string, readOnly bool) (torus.Device, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.openErr[name]; err != nil {
		return nil, err
	}
	d := m.devs[name]
	if d == nil {
		return nil, fmt.Errorf("memExports: %q: %w", name, torus.ErrNotExist)
	}
	m.opens[name]++
	d.Reopen()
	if readOnly && !d.ReadOnly() {
		return roDevice{d}, nil
	}
	return d, nil
}

func (m *memExports) List(ctx context.Context) ([]ExportInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []ExportInfo
	for name, d := range m.devs {
		out = append(out, ExportInfo{Name: name, Description: m.desc[name], Size: d.Size(), ReadOnly: d.ReadOnly()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (m *memExports) Default(ctx context.Context) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.def, nil
}

func (m *memExports) openCount(name string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.opens[name]
}

// roDevice is a read-only view of a device.
type roDevice struct{ torus.Device }

func (roDevice) ReadOnly() bool { return true }
func (roDevice) WriteAt(context.Context, []byte, int64, bool) error {
	return torus.ErrReadOnly
}
func (roDevice) Trim(context.Context, int64, int64) error { return torus.ErrReadOnly }
func (roDevice) WriteZeroes(context.Context, int64, int64, bool) error {
	return torus.ErrReadOnly
}

// startServer serves exports on 127.0.0.1:<free port> and shuts the server
// down at cleanup.
func startServer(t testing.TB, cfg Config, exports Exports) (*Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(cfg, exports, testutil.Logger(t))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; err != ErrServerClosed {
			t.Errorf("serve returned %v", err)
		}
	})
	return srv, ln.Addr().String()
}

// rawClient speaks NBD by hand, for protocol tests.
type rawClient struct {
	t    testing.TB
	conn net.Conn
	// export after go: size and flags
	size  int64
	flags uint16
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	t.Cleanup(func() { conn.Close() })
	return &rawClient{t: t, conn: conn}
}

// greet reads the server greeting and sends client flags.
func (c *rawClient) greet(clientFlags uint32) {
	c.t.Helper()
	var h [18]byte
	if _, err := io.ReadFull(c.conn, h[:]); err != nil {
		c.t.Fatalf("greeting: %v", err)
	}
	if binary.BigEndian.Uint64(h[:8]) != magicInit || binary.BigEndian.Uint64(h[8:16]) != magicOpt {
		c.t.Fatalf("bad greeting %x", h)
	}
	if f := binary.BigEndian.Uint16(h[16:]); f != flagFixedNewstyle|flagNoZeroes {
		c.t.Fatalf("handshake flags %#x", f)
	}
	c.write(binary.BigEndian.AppendUint32(nil, clientFlags))
}

func (c *rawClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawClient) sendOpt(code uint32, data []byte) {
	c.t.Helper()
	c.write(appendOption(nil, code, data))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *rawClient) readOptReply() optReply {
	c.t.Helper()
	var h [20]byte
	if _, err := io.ReadFull(c.conn, h[:]); err != nil {
		c.t.Fatalf("option reply: %v", err)
	}
	if binary.BigEndian.Uint64(h[:8]) != magicOptReply {
		c.t.Fatalf("bad option reply magic %x", h)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:12]), typ: binary.BigEndian.Uint32(h[12:16])}
	r.data = make([]byte, binary.BigEndian.Uint32(h[16:20]))
	if _, err := io.ReadFull(c.conn, r.data); err != nil {
		c.t.Fatalf("option reply data: %v", err)
	}
	return r
}

// expectOpt sends an option and checks the single reply's type.
func (c *rawClient) expectOpt(code uint32, data []byte, want uint32) optReply {
	c.t.Helper()
	c.sendOpt(code, data)
	r := c.readOptReply()
	if r.opt != code || r.typ != want {
		c.t.Fatalf("option %d: reply %#x (%q), want %#x", code, r.typ, r.data, want)
	}
	return r
}

// goExport negotiates and enters transmission.
func (c *rawClient) goExport(name string, structured, meta bool) {
	c.t.Helper()
	c.greet(flagCFixedNewstyle | flagCNoZeroes)
	if structured {
		c.expectOpt(optStructuredReply, nil, repAck)
	}
	if meta {
		c.sendOpt(optSetMetaContext, appendMetaRequest(nil, metaRequest{name: name, queries: []string{metaAllocCtx}}))
		r := c.readOptReply()
		if r.typ != repMetaContext || binary.BigEndian.Uint32(r.data) != metaAllocID || string(r.data[4:]) != metaAllocCtx {
			c.t.Fatalf("set meta context: %#x %q", r.typ, r.data)
		}
		if r := c.readOptReply(); r.typ != repAck {
			c.t.Fatalf("set meta context: final %#x", r.typ)
		}
	}
	c.sendOpt(optGo, appendInfoRequest(nil, infoRequest{name: name, infos: []uint16{infoBlockSize, infoName}}))
	for {
		r := c.readOptReply()
		switch {
		case r.typ == repAck:
			return
		case r.typ == repInfo && binary.BigEndian.Uint16(r.data) == infoExport:
			c.size = int64(binary.BigEndian.Uint64(r.data[2:10]))
			c.flags = binary.BigEndian.Uint16(r.data[10:12])
		case r.typ == repInfo:
		default:
			c.t.Fatalf("go: reply %#x %q", r.typ, r.data)
		}
	}
}

func (c *rawClient) send(typ, flags uint16, handle, off uint64, length uint32, payload []byte) {
	c.t.Helper()
	b := request{flags: flags, typ: typ, handle: handle, offset: off, length: length}.encode(nil)
	c.write(append(b, payload...))
}

// simpleReply reads one simple reply; for reads pass dataLen to read the
// payload when errno is 0.
func (c *rawClient) simpleReply(dataLen int) (handle uint64, errno uint32, data []byte) {
	c.t.Helper()
	var h [16]byte
	if _, err := io.ReadFull(c.conn, h[:]); err != nil {
		c.t.Fatalf("reply: %v", err)
	}
	if m := binary.BigEndian.Uint32(h[:4]); m != magicSimpleReply {
		c.t.Fatalf("reply magic %#x", m)
	}
	errno = binary.BigEndian.Uint32(h[4:8])
	handle = binary.BigEndian.Uint64(h[8:16])
	if errno == 0 && dataLen > 0 {
		data = make([]byte, dataLen)
		if _, err := io.ReadFull(c.conn, data); err != nil {
			c.t.Fatalf("reply data: %v", err)
		}
	}
	return handle, errno, data
}

type chunk struct {
	simple bool // a simple reply, not a chunk
	flags  uint16
	typ    uint16
	handle uint64
	errno  uint32 // simple reply error or error chunk
	data   []byte // payload
}

// anyReply reads a simple reply (no payload) or one structured chunk.
func (c *rawClient) anyReply() chunk {
	c.t.Helper()
	var m [4]byte
	if _, err := io.ReadFull(c.conn, m[:]); err != nil {
		c.t.Fatalf("reply: %v", err)
	}
	switch binary.BigEndian.Uint32(m[:]) {
	case magicSimpleReply:
		var h [12]byte
		if _, err := io.ReadFull(c.conn, h[:]); err != nil {
			c.t.Fatal(err)
		}
		return chunk{simple: true, errno: binary.BigEndian.Uint32(h[:4]), handle: binary.BigEndian.Uint64(h[4:])}
	case magicStructReply:
		var h [16]byte
		if _, err := io.ReadFull(c.conn, h[:]); err != nil {
			c.t.Fatal(err)
		}
		ch := chunk{flags: binary.BigEndian.Uint16(h[0:2]), typ: binary.BigEndian.Uint16(h[2:4]), handle: binary.BigEndian.Uint64(h[4:12])}
		ch.data = make([]byte, binary.BigEndian.Uint32(h[12:16]))
		if _, err := io.ReadFull(c.conn, ch.data); err != nil {
			c.t.Fatal(err)
		}
		if ch.typ&(1<<15) != 0 {
			ch.errno = binary.BigEndian.Uint32(ch.data)
		}
		return ch
	default:
		c.t.Fatalf("bad reply magic %x", m)
	}
	return chunk{}
}

func listen(t testing.TB) (net.Listener, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln, ln.Addr().String()
}

// idle waits until the server closed dev (its last client went away) and
// reopens it so the test can look at it directly.
func idle(t testing.TB, dev *memdev.Device) {
	t.Helper()
	waitFor(t, dev.IsClosed)
	dev.Reopen()
}
