package tests

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testutil"
	etcdmeta "github.com/torus-storage/torus/metadata/etcd"
	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/volume"
)

// TestCrashDaemonMidWrite SIGKILLs a torusd process while a writer streams
// writes and flushes, restarts it, and checks that every flushed write is
// readable, both through the running writer and after a fresh recovery.
func TestCrashDaemonMidWrite(t *testing.T) {
	testutil.SkipShort(t, "process test")
	c := proccluster.New(t, proccluster.Options{Daemons: 3, Replication: 2, SegmentSize: "1MiB"})
	const size = 32 << 20
	c.Ctl("volume", "create", "crash", "32MiB")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	log := testutil.Logger(t)
	meta, err := etcdmeta.New(ctx, etcdmeta.Config{Endpoints: []string{c.EtcdURL}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer meta.Close()
	pool := peer.NewPool(peer.NewResolver(meta, 0).Resolve, peer.ClientConfig{}, log)
	defer pool.Close()
	deps := volume.Deps{Meta: meta, Peers: pool, Logger: log}
	v, err := volume.Open(ctx, deps, "crash", volume.Options{Owner: "crash-test"})
	if err != nil {
		t.Fatal(err)
	}

	model := make([]byte, size)   // what has been written
	durable := make([]byte, size) // what was covered by a successful flush
	rng := rand.New(rand.NewPCG(7, 8))
	killed := false
	flushes, failedFlushes := 0, 0
	for i := 0; i < 600; i++ {
		if i == 200 {
			c.Daemons[1].Kill(t)
			killed = true
		}
		if i == 400 && killed {
			c.Daemons[1].Start(t)
			c.WaitHTTP("http://"+c.Daemons[1].HTTPAddr+"/readyz", 30*time.Second)
		}
		n := 4096 * (1 + rng.IntN(16))
		off := int64(rng.IntN(size/4096-16)) * 4096
		p := make([]byte, n)
		for j := range p {
			p[j] = byte(rng.Uint32())
		}
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			t.Fatalf("write %d (daemon 1 killed=%v): %v", i, killed, err)
		}
		copy(model[off:], p)
		if i%20 == 19 {
			if err := v.Flush(ctx); err != nil {
				failedFlushes++
				t.Logf("flush %d failed: %v", i, err)
				continue
			}
			flushes++
			copy(durable, model)
		}
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatalf("final flush: %v", err)
	}
	copy(durable, model)
	if flushes < 20 {
		t.Fatalf("only %d flushes succeeded (%d failed): writes did not continue after the kill", flushes, failedFlushes)
	}
	verify := func(v *volume.Volume, what string) {
		t.Helper()
		got := make([]byte, 1<<20)
		for off := 0; off < size; off += len(got) {
			if err := v.ReadAt(ctx, got, int64(off)); err != nil {
				t.Fatalf("%s: read at %d: %v", what, off, err)
			}
			if !bytes.Equal(got, durable[off:off+len(got)]) {
				t.Fatalf("%s: flushed data differs in the MiB at %d", what, off)
			}
		}
	}
	verify(v, "running writer")
	// Kill the writer's view without a clean close: SIGKILL another daemon
	// and recover from scratch after a force unlock.
	c.Daemons[2].Kill(t)
	c.Ctl("volume", "unlock", "crash", "--force")
	v2, err := volume.Open(ctx, deps, "crash", volume.Options{Owner: "crash-test-2"})
	if err != nil {
		t.Fatal(err)
	}
	verify(v2, "recovered writer")
	if err := v2.Close(ctx); err != nil {
		t.Logf("close: %v", err)
	}
	_ = v.Close(ctx) // fenced: its close may fail, and must not disturb v2's data
	v3, err := volume.Open(ctx, deps, "crash", volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	verify(v3, "read-only after the fenced writer closed")
	v3.Close(ctx)
}
