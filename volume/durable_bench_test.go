package volume

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/metadata"
	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/storage"
)

// wireCluster is the whole data path in one process: peers daemons' disk
// stores (storage.Disk in dir) each behind a peer.Server on loopback TCP,
// reached through a peer.Pool, and metadata.Memory. It is what a torusblk
// and its torusd daemons run, without the NBD layer and without etcd.
type wireCluster struct {
	meta  *metadata.Memory
	pool  *peer.Pool
	addrs map[string]string
}

func newWireCluster(b testing.TB, dir string, memory bool, peers, replication int) *wireCluster {
	return newWireClusterConfig(b, dir, memory, peers, replication, peer.ClientConfig{})
}

// newWireClusterConfig is newWireCluster with the pool's client config.
func newWireClusterConfig(b testing.TB, dir string, memory bool, peers, replication int, cc peer.ClientConfig) *wireCluster {
	b.Helper()
	ctx := context.Background()
	log := testutil.Logger(b)
	c := &wireCluster{meta: metadata.NewMemory(), addrs: map[string]string{}}
	b.Cleanup(func() { c.meta.Close() })
	if err := c.meta.InitCluster(ctx, torus.ClusterConfig{Replication: replication, SegmentSize: 32 << 20}); err != nil {
		b.Fatal(err)
	}
	spec, err := c.meta.Ring(ctx)
	if err != nil {
		b.Fatal(err)
	}
	s, err := c.meta.NewSession(ctx, time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	for i := range peers {
		id := fmt.Sprintf("peer-%d", i)
		var d interface {
			torus.Store
			Close() error
		}
		if memory {
			d = storage.NewMemory(1 << 40)
		} else {
			var err error
			if d, err = storage.OpenDisk(ctx, storage.DiskConfig{Dir: filepath.Join(dir, id), Capacity: 1 << 40, Logger: log}); err != nil {
				b.Fatal(err)
			}
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := peer.NewServer(peer.NewLocal(d, log), peer.ServerConfig{}, log)
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ln) }()
		b.Cleanup(func() {
			srv.Close()
			<-done
			d.Close()
		})
		c.addrs[id] = ln.Addr().String()
		if err := c.meta.PutPeer(ctx, torus.PeerInfo{ID: id, Address: c.addrs[id], Capacity: 1 << 40}); err != nil {
			b.Fatal(err)
		}
		if err := c.meta.Heartbeat(ctx, s, id, torus.Beat{}); err != nil {
			b.Fatal(err)
		}
		spec.Members = append(spec.Members, torus.RingMember{ID: id, Weight: 1 << 30})
	}
	spec.Version++
	if err := c.meta.SetRing(ctx, spec); err != nil {
		b.Fatal(err)
	}
	c.pool = peer.NewPool(func(_ context.Context, id string) (string, error) {
		a, ok := c.addrs[id]
		if !ok {
			return "", fmt.Errorf("no peer %s", id)
		}
		return a, nil
	}, cc, log)
	b.Cleanup(func() { c.pool.Close() })
	return c
}

// BenchmarkDurableWrite4K is fio's durable-write-4K-qd1 job without NBD:
// one caller writes 4 KiB at a random aligned offset and flushes, over and
// over, to a volume of replication 2 on 3 disk stores behind the peer
// protocol on loopback TCP. The baseline, timed in the same loop on
// alternate iterations, is a plain file's pwrite + fdatasync of 4 KiB in the
// same directory (the disk's durable-write latency: what nbdkit file does).
// It reports vol-ns/op (of which write-ns/op in WriteAt and flush-ns/op in
// Flush) and base-ns/op per durable write, their ratio
// (vol/base; issue 11's aim is ≤ 2), the volume's durable writes/s and
// vol-cpu-ns/op, the CPU time (user and system, client and servers) the
// process spent per durable write while the volume's half ran, and the
// replica Syncs sent per durable write (2 at replication 2 when each FLUSH
// is served by one round of syncs).
// Set TORUS_BENCH_DIR to measure a particular disk. The sub-benchmark
// "memory" runs the same path over in-memory stores (Sync costs nothing):
// its vol-ns/op is the software's share of a durable write.
func BenchmarkDurableWrite4K(b *testing.B) {
	b.Run("disk", func(b *testing.B) { benchDurableWrite(b, false) })
	b.Run("memory", func(b *testing.B) { benchDurableWrite(b, true) })
}

func benchDurableWrite(b *testing.B, memory bool) {
	ctx := context.Background()
	dir := b.TempDir()
	if d := os.Getenv("TORUS_BENCH_DIR"); d != "" {
		var err error
		if dir, err = os.MkdirTemp(d, "volume-bench-"); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
	}
	c := newWireCluster(b, dir, memory, 3, 2)
	const size = 1 << 30
	if _, err := c.meta.CreateVolume(ctx, torus.VolumeInfo{Name: "vol", Size: size}); err != nil {
		b.Fatal(err)
	}
	v, err := Open(ctx, Deps{Meta: c.meta, Peers: c.pool, Logger: testutil.Logger(b)}, "vol", Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close(ctx)
	f, err := os.OpenFile(filepath.Join(dir, "plain"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, torus.BlockSize)
	var tw time.Duration // the WriteAt part of volOp
	volOp := func(i int) {
		buf[0] = byte(i)
		off := int64((uint64(i)*2654435761)%(size/torus.BlockSize)) * torus.BlockSize
		t0 := time.Now()
		if err := v.WriteAt(ctx, buf, off, false); err != nil {
			b.Fatal(err)
		}
		tw += time.Since(t0)
		if err := v.Flush(ctx); err != nil {
			b.Fatal(err)
		}
	}
	baseOp := func(i int) {
		if _, err := f.WriteAt(buf, int64(i%(64<<10))*torus.BlockSize); err != nil {
			b.Fatal(err)
		}
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			b.Fatal(err)
		}
	}
	for i := range 64 { // warm up: connections, the first segment, file pages
		volOp(i)
		baseOp(i)
	}
	b.ReportAllocs()
	var tv, tb, cpu time.Duration
	tw = 0
	syncs0 := v.Stats().Syncs
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			c0, t0 := cpuTime(b), time.Now()
			volOp(i)
			c1, t1 := cpuTime(b), time.Now()
			baseOp(i)
			tv, tb, cpu = tv+t1.Sub(t0), tb+time.Since(t1), cpu+c1-c0
		} else {
			t0 := time.Now()
			baseOp(i)
			c1, t1 := cpuTime(b), time.Now()
			volOp(i)
			tb, tv, cpu = tb+t1.Sub(t0), tv+time.Since(t1), cpu+cpuTime(b)-c1
		}
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(tv.Nanoseconds())/n, "vol-ns/op")
	b.ReportMetric(float64(tw.Nanoseconds())/n, "write-ns/op")
	b.ReportMetric(float64((tv-tw).Nanoseconds())/n, "flush-ns/op")
	b.ReportMetric(float64(tb.Nanoseconds())/n, "base-ns/op")
	b.ReportMetric(float64(tv)/float64(tb), "vol/base")
	b.ReportMetric(n/tv.Seconds(), "vol-writes/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/n, "vol-cpu-ns/op")
	b.ReportMetric(float64(v.Stats().Syncs-syncs0)/n, "syncs/op")
}

// cpuTime is the process's CPU time so far (user and system, every thread).
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
