package peer_test

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/tlsconfig"
	"github.com/torus-storage/torus/peer"
)

// tlsFrame is one peer frame of request r, as a client sends it.
func tlsFrame(r peer.Request, id uint64) []byte {
	body := peer.EncodeRequest(r)
	b := make([]byte, peer.HeaderSize, peer.HeaderSize+len(body))
	peer.PutHeader(b, peer.Header{Version: peer.Version, Op: r.Op, ID: id, Length: uint32(len(body))})
	return append(b, body...)
}

// tlsFuzzSeeds are frames a client might send after the handshake: each
// op, a client's forbidden ones, a header announcing a huge body, junk.
func tlsFuzzSeeds() [][]byte {
	var out [][]byte
	for i, r := range []peer.Request{
		{Op: peer.OpUsage},
		{Op: peer.OpReadAt, Seg: tlsSeg, Off: 0, Length: 5},
		{Op: peer.OpStat, Seg: tlsSeg},
		{Op: peer.OpList},
		{Op: peer.OpDelete, Seg: tlsSeg},
		{Op: peer.OpAppend, Epoch: torus.RepairEpoch, Seg: tlsSeg, Off: 5, Data: []byte("evil")},
		{Op: peer.OpSync, Epoch: torus.RepairEpoch, Seg: tlsSeg},
	} {
		out = append(out, tlsFrame(r, uint64(i+1)))
	}
	huge := make([]byte, peer.HeaderSize)
	peer.PutHeader(huge, peer.Header{Version: peer.Version, Op: peer.OpAppend, ID: 99, Length: 1<<32 - 1})
	return append(out, huge, []byte("TRSP"), []byte{0x16, 3, 1, 0xff, 0xff}, nil)
}

// alive fails the test unless the daemon still answers a new client.
func (d *tlsDaemon) alive(t *testing.T) {
	t.Helper()
	cf := tlsconfig.ClientFiles(d.dir, "root")
	c, err := dial(t, d.addr, &cf)
	if err != nil {
		t.Fatalf("the daemon no longer accepts a client: %v", err)
	}
	defer c.Close()
	if _, err := c.Usage(context.Background()); err != nil {
		t.Fatalf("the daemon no longer answers: %v", err)
	}
}

// exchange writes data on c, half-closes it and reads until the server
// closes or 5 s pass.
func exchange(c net.Conn, data []byte) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write(data)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	io.Copy(io.Discard, c)
	c.Close()
}

// FuzzTLSFraming feeds the peer decoder through TLS: a client with a
// client-role certificate completes the handshake and sends the input as
// its frames. Whatever it sends, the daemon survives (a new client is
// served) and the client's forbidden requests change nothing: the segment
// still holds "hello" byte for byte (the seeds include Delete and
// RepairEpoch appends; a fuzzed real-epoch append may write past it, so
// only the first 5 bytes are compared).
func FuzzTLSFraming(f *testing.F) {
	for _, s := range tlsFuzzSeeds() {
		f.Add(s)
	}
	f.Add(append(tlsFuzzSeeds()[0], tlsFuzzSeeds()[4]...))
	d := startTLSDaemon(f)
	cr, err := tlsconfig.New("client", tlsconfig.ClientFiles(d.dir, "root"), nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := tls.Dial("tcp", d.addr, cr.Client("127.0.0.1"))
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		exchange(c, data)
		d.unchanged(t)
		d.alive(t)
	})
}

// FuzzTLSHandshake sends the input as the first bytes of a connection to a
// TLS daemon, where a ClientHello (or a plain frame, which is refused) is
// expected. The daemon survives every input and the segment is unchanged.
func FuzzTLSHandshake(f *testing.F) {
	for _, s := range tlsFuzzSeeds() {
		f.Add(s)
	}
	// A TLS record header announcing a full-size record, then nothing.
	f.Add([]byte{0x16, 0x03, 0x01, 0x40, 0x00, 0x01})
	d := startTLSDaemon(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := net.Dial("tcp", d.addr)
		if err != nil {
			t.Fatal(err)
		}
		exchange(c, data)
		d.unchanged(t)
		d.alive(t)
	})
}

// TestUnauthenticatedMemoryBounded: connections that never authenticate
// cost the daemon a small bounded amount of memory each, whatever they
// announce. 100 plain connections each send a frame header announcing a
// 4 GiB body and then keep streaming; 100 connections send a TLS record
// header announcing a full 16 KiB record and stall; 100 present no client
// certificate. The daemon's heap and stacks grow by well under 64 KiB per
// connection, it refuses every one, and it still serves a client.
func TestUnauthenticatedMemoryBounded(t *testing.T) {
	d := startTLSDaemon(t)
	const n = 100
	huge := make([]byte, peer.HeaderSize)
	peer.PutHeader(huge, peer.Header{Version: peer.Version, Op: peer.OpAppend, ID: 1, Length: 1<<32 - 1})
	junk := make([]byte, 64<<10)

	mem := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse + m.StackInuse
	}
	before := mem()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < n; i++ {
		p, err := net.Dial("tcp", d.addr)
		if err != nil {
			t.Fatal(err)
		}
		p.Write(huge)
		go func() {
			// Stream until the daemon closes or the test ends.
			p.SetWriteDeadline(time.Now().Add(3 * time.Second))
			for {
				if _, err := p.Write(junk); err != nil {
					return
				}
			}
		}()
		s, err := net.Dial("tcp", d.addr)
		if err != nil {
			t.Fatal(err)
		}
		s.Write([]byte{0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00})
		conns = append(conns, p, s)
	}
	// No client certificate: the handshake fails (TLS 1.3: the client
	// learns it at its first read).
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := tls.Dial("tcp", d.addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
			if err != nil {
				return
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write(tlsFrame(peer.Request{Op: peer.OpDelete, Seg: tlsSeg}, 1))
			io.Copy(io.Discard, c)
			c.Close()
		}()
	}
	wg.Wait()
	time.Sleep(500 * time.Millisecond) // the daemon has read what the stalled ones sent
	grown := int64(mem()) - int64(before)
	per := grown / (3 * n)
	t.Logf("%d unauthenticated connections (%d still open): heap+stacks grew %d KiB, %d bytes each", 3*n, len(conns), grown>>10, per)
	if per > 64<<10 {
		t.Fatalf("each unauthenticated connection costs the daemon %d bytes (%d KiB in all)", per, grown>>10)
	}
	d.unchanged(t)
	d.alive(t)
	if len(d.refusals()) == 0 {
		t.Fatal("no refusal counted")
	}
}
