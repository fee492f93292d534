package nbd

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
)

// The transmission benchmarks drive an NBD connection over loopback TCP at
// a queue depth, the way fio's nbd engine and the kernel do: one goroutine
// sends requests while at most qd are unanswered, another reads the
// replies. The baseline, run in the same benchmark alternately with the
// server in chunks of ops so that both see the same machine load, is a
// raw TCP peer that reads exactly each request's bytes and answers exactly
// its reply's bytes, one request at a time: what the least NBD server
// would cost without a device behind it. The NBD side serves a memdev
// device (a map of 4 KiB blocks under a lock), so it also pays one copy
// per byte into or out of the device.
//
// Metrics: nbd-ns/op and raw-ns/op per request, x-raw = nbd time / raw time
// (1.0: no overhead over raw TCP), nbd-MB/s and raw-MB/s.

// benchSpan is the range of the device the benchmarks touch.
const benchSpan = 64 << 20

type loadSpec struct {
	typ  uint16 // cmdRead or cmdWrite
	size int    // bytes per request
	qd   int    // requests in flight
	reqs int    // requests per chunk (alternating raw and NBD)
	deep bool   // serve a deepDevice
}

// deepExports serves its exports as deepDevices.
type deepExports struct{ *memExports }

func (e deepExports) Open(ctx context.Context, name string, readOnly bool) (torus.Device, error) {
	d, err := e.memExports.Open(ctx, name, readOnly)
	if err != nil {
		return nil, err
	}
	return deepDevice{d}, nil
}

// drive runs n requests of spec over conn at spec.qd and returns how long
// it took. Requests go out with one writev (header and payload); replies
// are read whole (simple reply header, and the data for reads).
func drive(b *testing.B, conn net.Conn, spec loadSpec, first, n int, payload []byte) time.Duration {
	replyLen := 16
	if spec.typ == cmdRead {
		replyLen += spec.size
	}
	sem := make(chan struct{}, spec.qd)
	errc := make(chan error, 1)
	start := time.Now()
	go func() {
		hdr := make([]byte, 0, requestLen)
		for i := first; i < first+n; i++ {
			sem <- struct{}{}
			off := uint64(i*spec.size) % benchSpan
			hdr = request{typ: spec.typ, handle: uint64(i), offset: off, length: uint32(spec.size)}.encode(hdr[:0])
			bufs := net.Buffers{hdr}
			if spec.typ == cmdWrite {
				bufs = append(bufs, payload)
			}
			if _, err := bufs.WriteTo(conn); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	reply := make([]byte, replyLen)
	for i := 0; i < n; i++ {
		if _, err := io.ReadFull(conn, reply); err != nil {
			b.Fatalf("reply %d: %v", i, err)
		}
		<-sem
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// rawPeer is the baseline server: it reads each request's bytes and
// answers its reply's bytes.
func rawPeer(b *testing.B, spec loadSpec) net.Conn {
	ln, addr := listen(b)
	reqLen, replyLen := requestLen, 16
	if spec.typ == cmdWrite {
		reqLen += spec.size
	} else {
		replyLen += spec.size
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		defer c.Close()
		req, reply := make([]byte, reqLen), make([]byte, replyLen)
		for {
			if _, err := io.ReadFull(c, req); err != nil {
				return
			}
			if _, err := c.Write(reply); err != nil {
				return
			}
		}
	}()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close(); <-done })
	return conn
}

// deepDevice is a memdev device whose writes and reads first use stackUse
// bytes of goroutine stack, as a call through volume, peer and storage
// does (a fresh goroutine starts with 8 KiB and copies its stack each time
// it doubles).
type deepDevice struct {
	torus.Device
}

const stackUse = 32 << 10

//go:noinline
func useStack(depth int) byte {
	var frame [1024]byte
	if depth <= 0 {
		return frame[0]
	}
	frame[depth%len(frame)] = byte(depth)
	return useStack(depth-1) + frame[0]
}

func (d deepDevice) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	useStack(stackUse / 1024)
	return d.Device.WriteAt(ctx, p, off, fua)
}

func (d deepDevice) ReadAt(ctx context.Context, p []byte, off int64) error {
	useStack(stackUse / 1024)
	return d.Device.ReadAt(ctx, p, off)
}

// syscw returns the process's write system calls so far (/proc/self/io;
// writev counts once), or 0 where that file is missing. Unlike times, the
// count does not depend on the machine's load.
func syscw() int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "syscw: "); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

func benchTransmission(b *testing.B, spec loadSpec) {
	exports := newMemExports()
	dev := exports.add("bench", benchSpan)
	payload := make([]byte, spec.size)
	for i := range payload {
		payload[i] = byte(i*7 + 1)
	}
	// Fill the span so that reads copy real blocks.
	for off := int64(0); off < benchSpan; off += int64(len(zeroBuf)) {
		if err := dev.WriteAt(b.Context(), zeroBuf, off, false); err != nil {
			b.Fatal(err)
		}
	}
	var ex Exports = exports
	if spec.deep {
		ex = deepExports{exports}
	}
	_, addr := startServer(b, Config{}, ex)
	c := dialRaw(b, addr)
	c.conn.SetDeadline(time.Time{})
	c.goExport("bench", false, false)
	raw := rawPeer(b, spec)

	b.ReportAllocs()
	b.ResetTimer()
	var rawT, nbdT time.Duration
	var writes int64
	for done := 0; done < b.N; {
		n := min(spec.reqs, b.N-done)
		rawT += drive(b, raw, spec, done, n, payload)
		w0 := syscw()
		nbdT += drive(b, c.conn, spec, done, n, payload)
		writes += syscw() - w0
		done += n
	}
	b.StopTimer()
	if writes > 0 {
		// Write system calls of the whole process while the NBD side ran:
		// the client's (one writev per request) and the server's replies.
		b.ReportMetric(float64(writes)/float64(b.N), "nbd-writes/op")
	}
	bytes := float64(spec.size) * float64(b.N)
	b.ReportMetric(float64(nbdT.Nanoseconds())/float64(b.N), "nbd-ns/op")
	b.ReportMetric(float64(rawT.Nanoseconds())/float64(b.N), "raw-ns/op")
	b.ReportMetric(float64(nbdT)/float64(rawT), "x-raw")
	b.ReportMetric(bytes/nbdT.Seconds()/1e6, "nbd-MB/s")
	b.ReportMetric(bytes/rawT.Seconds()/1e6, "raw-MB/s")
}

// BenchmarkTransmission runs the jobs of make bench (docs/benchmarks.md)
// that stress the transmission phase: 1 MiB sequential at QD 8, 4 KiB at
// QD 16, and 4 KiB writes one at a time; the -deep variants serve a
// device that uses 32 KiB of stack per call, as the real call path does.
func BenchmarkTransmission(b *testing.B) {
	for _, s := range []loadSpec{
		{typ: cmdWrite, size: 1 << 20, qd: 8, reqs: 32},
		{typ: cmdRead, size: 1 << 20, qd: 8, reqs: 32},
		{typ: cmdWrite, size: 4 << 10, qd: 16, reqs: 512},
		{typ: cmdRead, size: 4 << 10, qd: 16, reqs: 512},
		{typ: cmdWrite, size: 4 << 10, qd: 1, reqs: 128},
		{typ: cmdWrite, size: 4 << 10, qd: 16, reqs: 512, deep: true},
		{typ: cmdRead, size: 4 << 10, qd: 16, reqs: 512, deep: true},
	} {
		name := "read"
		if s.typ == cmdWrite {
			name = "write"
		}
		name = fmt.Sprintf("%s-%dK-qd%d", name, s.size>>10, s.qd)
		if s.deep {
			name += "-deep"
		}
		b.Run(name, func(b *testing.B) { benchTransmission(b, s) })
	}
}
