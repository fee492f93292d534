package peer

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/torus-storage/torus"
)

// rawPair is the baseline: a raw TCP connection over loopback to a
// goroutine that reads reqSize bytes and answers respSize bytes (for an
// Append: the payload out and a 24-byte ack back, the least a peer Append
// needs).
type rawPair struct {
	c         net.Conn
	req, resp []byte
	done      chan struct{}
	ln        net.Listener
}

func newRawPair(b *testing.B, reqSize, respSize int) *rawPair {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	r := &rawPair{ln: ln, done: make(chan struct{}), req: make([]byte, reqSize), resp: make([]byte, respSize)}
	go func() {
		defer close(r.done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, reqSize)
		ans := make([]byte, respSize)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(ans); err != nil {
				return
			}
		}
	}()
	if r.c, err = net.Dial("tcp", ln.Addr().String()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(r.close)
	return r
}

func (r *rawPair) roundTrip(b *testing.B) {
	if _, err := r.c.Write(r.req); err != nil {
		b.Fatal(err)
	}
	if _, err := io.ReadFull(r.c, r.resp); err != nil {
		b.Fatal(err)
	}
}

func (r *rawPair) close() {
	r.c.Close()
	r.ln.Close()
	<-r.done
}

// nopService accepts everything and reads as whatever the buffer holds, so
// that benchmarks measure the protocol and not a store.
type nopService struct{ errService }

func (*nopService) ReadAt(_ context.Context, _ torus.SegmentID, p []byte, _ int64) (int, error) {
	return len(p), nil
}

// compare runs b.N iterations alternating a raw round trip and a peer call,
// timing each, so that both see the same machine load. It reports
// peer-ns/op, raw-ns/op and their ratio x-raw (1.0 = no overhead over raw
// TCP) and peer-MB/s. ns/op covers both halves.
func compare(b *testing.B, bytes int64, raw *rawPair, call func() error) {
	b.ReportAllocs()
	var rawT, peerT time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		raw.roundTrip(b)
		t1 := time.Now()
		if err := call(); err != nil {
			b.Fatal(err)
		}
		peerT += time.Since(t1)
		rawT += t1.Sub(t0)
	}
	b.StopTimer()
	b.ReportMetric(float64(peerT.Nanoseconds())/float64(b.N), "peer-ns/op")
	b.ReportMetric(float64(rawT.Nanoseconds())/float64(b.N), "raw-ns/op")
	b.ReportMetric(float64(peerT)/float64(rawT), "x-raw")
	b.ReportMetric(float64(bytes)*float64(b.N)/peerT.Seconds()/1e6, "peer-MB/s")
}

func benchAppend(b *testing.B, size int) {
	raw := newRawPair(b, size, HeaderSize)
	_, addr := startServer(b, &nopService{}, ServerConfig{})
	c := dialT(b, addr, ClientConfig{})
	payload := make([]byte, size)
	ctx := context.Background()
	compare(b, int64(size), raw, func() error { return c.Append(ctx, 1, seg(1, 1, 1), 0, payload) })
}

// BenchmarkAppend4K: round-trip latency of small appends.
func BenchmarkAppend4K(b *testing.B) { benchAppend(b, 4<<10) }

// BenchmarkAppend1M: throughput of sequential 1 MiB appends.
func BenchmarkAppend1M(b *testing.B) { benchAppend(b, 1<<20) }

// BenchmarkReadAt1M: throughput of sequential 1 MiB reads (baseline: a
// small request out, 1 MiB back).
func BenchmarkReadAt1M(b *testing.B) {
	const size = 1 << 20
	raw := newRawPair(b, HeaderSize+segIDSize+12, size)
	_, addr := startServer(b, &nopService{}, ServerConfig{})
	c := dialT(b, addr, ClientConfig{})
	p := make([]byte, size)
	ctx := context.Background()
	compare(b, size, raw, func() error {
		_, err := c.ReadAt(ctx, seg(1, 1, 1), p, 0)
		return err
	})
}

// BenchmarkAppend4KParallel shows many callers multiplexed on one
// connection (ordered ops run one at a time on the server).
func BenchmarkAppend4KParallel(b *testing.B) {
	_, addr := startServer(b, &nopService{}, ServerConfig{})
	c := dialT(b, addr, ClientConfig{})
	payload := make([]byte, 4<<10)
	b.SetBytes(int64(len(payload)))
	b.SetParallelism(8)
	b.ResetTimer()
	r0, w0, _ := syscalls()
	defer reportSyscalls(b, r0, w0)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := c.Append(context.Background(), 1, seg(1, 1, 1), 0, payload); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkReadAt4KParallel: concurrent reads on one connection.
func BenchmarkReadAt4KParallel(b *testing.B) {
	_, addr := startServer(b, &nopService{}, ServerConfig{})
	c := dialT(b, addr, ClientConfig{})
	b.SetBytes(4 << 10)
	b.SetParallelism(8)
	b.ResetTimer()
	r0, w0, _ := syscalls()
	defer reportSyscalls(b, r0, w0)
	b.RunParallel(func(pb *testing.PB) {
		p := make([]byte, 4<<10)
		for pb.Next() {
			if _, err := c.ReadAt(context.Background(), seg(1, 1, 1), p, 0); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// deepService is nopService whose reads first use 32 KiB of goroutine
// stack, as a read through server, storage and the file system does (a
// fresh goroutine starts with 8 KiB and copies its stack as it grows).
type deepService struct{ nopService }

//go:noinline
func useStack(depth int) byte {
	var frame [1024]byte
	if depth <= 0 {
		return frame[0]
	}
	frame[depth%len(frame)] = byte(depth)
	return useStack(depth-1) + frame[0]
}

func (d *deepService) ReadAt(ctx context.Context, s torus.SegmentID, p []byte, off int64) (int, error) {
	useStack(32)
	return d.nopService.ReadAt(ctx, s, p, off)
}

// BenchmarkReadAt4KParallelDeep: concurrent reads on one connection of a
// service with a realistic stack depth.
func BenchmarkReadAt4KParallelDeep(b *testing.B) {
	_, addr := startServer(b, &deepService{}, ServerConfig{})
	c := dialT(b, addr, ClientConfig{})
	b.SetBytes(4 << 10)
	b.SetParallelism(8)
	b.ResetTimer()
	r0, w0, _ := syscalls()
	defer reportSyscalls(b, r0, w0)
	b.RunParallel(func(pb *testing.PB) {
		p := make([]byte, 4<<10)
		for pb.Next() {
			if _, err := c.ReadAt(context.Background(), seg(1, 1, 1), p, 0); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
