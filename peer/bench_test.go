package peer

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// echoBaseline times n round trips of a raw TCP exchange over loopback:
// the client sends size bytes, the server reads them and answers with a
// 24-byte ack (what a peer Append needs at the least). It returns ns/op.
func echoBaseline(b *testing.B, size, n int) float64 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, size)
		ack := make([]byte, HeaderSize)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(ack); err != nil {
				return
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, size)
	ack := make([]byte, HeaderSize)
	start := time.Now()
	for range n {
		if _, err := c.Write(payload); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, ack); err != nil {
			b.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	c.Close()
	<-done
	return float64(elapsed.Nanoseconds()) / float64(n)
}

// benchAppend measures sequential Append round trips of size bytes to a
// service that discards them, and reports the raw TCP baseline measured in
// the same run and the ratio peer/baseline ("x-echo", 1.0 = no overhead).
func benchAppend(b *testing.B, size int) {
	echoNs := echoBaseline(b, size, b.N)
	_, addr := startServer(b, &errService{}, ServerConfig{})
	c := dialT(b, addr, ClientConfig{})
	ctx := context.Background()
	payload := make([]byte, size)
	s := seg(1, 1, 1)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := c.Append(ctx, 1, s, 0, payload); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	peerNs := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(echoNs, "echo-ns/op")
	b.ReportMetric(peerNs/echoNs, "x-echo")
}

func BenchmarkAppend4K(b *testing.B) { benchAppend(b, 4<<10) }

func BenchmarkAppend1M(b *testing.B) { benchAppend(b, 1<<20) }

// BenchmarkAppend4KParallel shows many callers multiplexed on one
// connection (ordered ops run one at a time on the server).
func BenchmarkAppend4KParallel(b *testing.B) {
	_, addr := startServer(b, &errService{}, ServerConfig{})
	c := dialT(b, addr, ClientConfig{})
	payload := make([]byte, 4<<10)
	b.SetBytes(int64(len(payload)))
	b.SetParallelism(8)
	b.ResetTimer()
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
	_, addr := startServer(b, &errService{n: 4 << 10}, ServerConfig{})
	c := dialT(b, addr, ClientConfig{})
	b.SetBytes(4 << 10)
	b.SetParallelism(8)
	b.ResetTimer()
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
