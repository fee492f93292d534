package peer

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
)

// scriptedPeer accepts one connection, reads one request frame and calls
// answer with the request's ID to write whatever it likes back.
func scriptedPeer(t *testing.T, answer func(c net.Conn, id uint64)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		hdr := make([]byte, HeaderSize)
		h, _, err := ReadFrame(c, hdr, MaxBody)
		if err != nil {
			return
		}
		answer(c, h.ID)
		io.Copy(io.Discard, c) // until the client hangs up
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// TestReadAtCancelledMidBody: a ReadAt whose ctx ends while its response's
// data is being read into the caller's buffer returns only once the reader
// is done with that buffer (the race detector sees any later write).
func TestReadAtCancelledMidBody(t *testing.T) {
	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = byte(i)
	}
	const stall = 200 * time.Millisecond
	addr := scriptedPeer(t, func(c net.Conn, id uint64) {
		f := frame(OpReadAt, FlagResponse, id, AppendResponse(nil, OpReadAt, Response{Data: data}))
		half := HeaderSize + 3 + len(data)/2
		c.Write(f[:half])
		time.Sleep(stall)
		c.Write(f[half:])
	})
	c := dialT(t, addr, ClientConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	p := make([]byte, len(data))
	start := time.Now()
	_, err := c.ReadAt(ctx, seg(1, 1, 1), p, 0)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled read: %v", err)
	}
	if took := time.Since(start); took < stall-20*time.Millisecond {
		t.Fatalf("returned after %v, before the response's data was in (%v)", took, stall)
	}
	for i := range p {
		p[i] = 0 // a write by the reader after ReadAt returned races with this
	}
}

// TestReadAtMoreDataThanAsked: a response carrying more data than the
// request's buffer is a protocol error that ends the connection; nothing is
// written past the buffer.
func TestReadAtMoreDataThanAsked(t *testing.T) {
	addr := scriptedPeer(t, func(c net.Conn, id uint64) {
		c.Write(frame(OpReadAt, FlagResponse, id, AppendResponse(nil, OpReadAt, Response{Data: make([]byte, 200)})))
	})
	c, err := Dial(context.Background(), addr, ClientConfig{}, testutil.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 200)
	_, err = c.ReadAt(context.Background(), seg(1, 1, 1), buf[:100], 0)
	if !errors.Is(err, torus.ErrUnavailable) {
		t.Fatalf("oversized answer: %v", err)
	}
	for i, b := range buf {
		if b != 0 {
			t.Fatalf("byte %d written", i)
		}
	}
}

// TestReadAtStatusAndData: an EOF answer with part of the data fills that
// part of the buffer straight from the connection and reports io.EOF.
func TestReadAtStatusAndData(t *testing.T) {
	addr := scriptedPeer(t, func(c net.Conn, id uint64) {
		c.Write(frame(OpReadAt, FlagResponse, id, AppendResponse(nil, OpReadAt,
			Response{Status: StatusEOF, Msg: "short segment", Data: []byte("abc")})))
	})
	c := dialT(t, addr, ClientConfig{})
	p := make([]byte, 10)
	n, err := c.ReadAt(context.Background(), seg(1, 1, 1), p, 0)
	if n != 3 || !errors.Is(err, io.EOF) || string(p[:3]) != "abc" {
		t.Fatalf("short read: %d %q %v", n, p[:n], err)
	}
}
