package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/etcdtest"
	"github.com/torus-storage/torus/metadata/etcd"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"torusctl": main,
	})
}

// TestScripts runs testdata/*.txtar against the real binary and one
// embedded etcd; each script gets its own key prefix, passed with
// TORUS_ETCD and TORUS_ETCD_PREFIX.
func TestScripts(t *testing.T) {
	eps := etcdtest.Start(t)
	var n atomic.Int64
	testscript.Run(t, testscript.Params{
		Dir: "testdata",
		Setup: func(env *testscript.Env) error {
			env.Setenv("TORUS_ETCD", eps[0])
			env.Setenv("TORUS_ETCD_PREFIX", fmt.Sprintf("/script%d/", n.Add(1)))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"fakepeer": cmdFakePeer,
			"writer":   cmdWriter,
			"publish":  cmdPublish,
		},
	})
}

func openStore(ts *testscript.TestScript) *etcd.Store {
	s, err := etcd.New(context.Background(), etcd.Config{
		Endpoints: []string{ts.Getenv("TORUS_ETCD")},
		Prefix:    ts.Getenv("TORUS_ETCD_PREFIX"),
	})
	ts.Check(err)
	ts.Defer(func() { _ = s.Close() })
	return s
}

// fakepeer ID up|down|new|drains [USED]: registers a peer (address
// ID:4000, zone z1, capacity 1GiB). All but "new" add it to the ring. "up"
// heartbeats once with USED (default 4096) bytes; "drains" heartbeats every
// 100 ms until the script ends, reporting USED until it is marked draining
// and 0 after, as a daemon that moves its data off would.
func cmdFakePeer(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 || len(args) > 3 {
		ts.Fatalf("usage: fakepeer ID up|down|new|drains [USED]")
	}
	ctx := context.Background()
	s := openStore(ts)
	id, mode := args[0], args[1]
	used := int64(4096)
	if len(args) == 3 {
		n, err := strconv.ParseInt(args[2], 10, 64)
		ts.Check(err)
		used = n
	}
	ts.Check(s.PutPeer(ctx, torus.PeerInfo{ID: id, Address: id + ":4000", Capacity: 1 << 30, Zone: "z1", Host: "h-" + id}))
	if mode != "new" {
		ring, err := s.Ring(ctx)
		ts.Check(err)
		ring.Version++
		ring.Members = append(ring.Members, torus.RingMember{ID: id, Zone: "z1", Host: "h-" + id, Weight: 1 << 30})
		ts.Check(s.SetRing(ctx, ring))
	}
	if mode == "down" {
		return
	}
	ses, err := s.NewSession(ctx, 10*time.Second)
	ts.Check(err)
	ts.Check(s.Heartbeat(ctx, ses, id, torus.Beat{Used: used}))
	if mode != "drains" {
		ts.Defer(func() { _ = ses.Close(context.Background()) })
		return
	}
	bctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-bctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			u := used
			if peers, err := s.Peers(bctx); err == nil {
				for _, p := range peers {
					if p.ID == id && p.State == torus.PeerDraining {
						u = 0
					}
				}
			}
			_ = s.Heartbeat(bctx, ses, id, torus.Beat{Used: u})
		}
	}()
	ts.Defer(func() {
		cancel()
		wg.Wait()
		_ = ses.Close(context.Background())
	})
}

// publish VOLUME HEALTH USED UNDER PENDING: publishes a volume status as
// the daemons' maintenance would.
func cmdPublish(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 5 {
		ts.Fatalf("usage: publish VOLUME HEALTH USED UNDER PENDING")
	}
	var n [3]int64
	for i, a := range args[2:] {
		v, err := strconv.ParseInt(a, 10, 64)
		ts.Check(err)
		n[i] = v
	}
	s := openStore(ts)
	ts.Check(s.PutVolumeStatuses(context.Background(), []torus.VolumeStatus{{
		Volume: args[0], Health: torus.VolumeHealth(args[1]), Used: n[0], Stored: 2 * n[0],
		UnderReplicated: int(n[1]), PendingBytes: n[2], Reporter: "script", Updated: time.Now().UTC(),
	}}))
}

// writer VOLUME OWNER answer|fail|silent: locks the volume as a writer
// until the script ends and answers snapshot requests: "answer" takes
// them, "fail" reports a failure, "silent" ignores them.
func cmdWriter(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: writer VOLUME OWNER answer|fail|silent")
	}
	vol, owner, mode := args[0], args[1], args[2]
	ctx, cancel := context.WithCancel(context.Background())
	s := openStore(ts)
	ses, err := s.NewSession(ctx, 10*time.Second)
	ts.Check(err)
	epoch, err := s.Lock(ctx, ses, vol, torus.WriterInfo{Owner: owner})
	ts.Check(err)
	ts.Check(s.CommitHead(ctx, vol, epoch, torus.Head{Epoch: epoch, Sealed: []torus.SegmentRef{
		{ID: torus.SegmentID{Volume: 1, Epoch: epoch, Seq: 1}, Length: 4096}}, NextSeq: 2}))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		changes := s.Watch(ctx)
		for {
			reqs, _ := s.SnapshotRequests(ctx, vol)
			for _, name := range reqs {
				switch mode {
				case "answer":
					h, err := s.Head(ctx, vol)
					if err == nil {
						h.Open = nil
						err = s.CreateSnapshot(ctx, epoch, torus.Snapshot{Volume: vol, Name: name, Head: h})
					}
					failure := ""
					if err != nil {
						failure = err.Error()
					}
					_ = s.DoneSnapshotRequest(ctx, vol, name, failure)
				case "fail":
					_ = s.DoneSnapshotRequest(ctx, vol, name, "injected failure")
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-changes:
			case <-time.After(time.Second):
			}
		}
	}()
	ts.Defer(func() {
		cancel()
		wg.Wait()
		_ = ses.Close(context.Background())
	})
	ts.Logf("writer %s holds %s at epoch %s", owner, vol, strconv.FormatUint(epoch, 10))
}
