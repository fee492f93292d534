package scrub_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/metadata"
	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/rebalance"
	"github.com/torus-storage/torus/scrub"
	"github.com/torus-storage/torus/storage"
	"github.com/torus-storage/torus/volume"
)

// cluster is three peers with on-disk stores in t.TempDir, reached
// in-process, over metadata.Memory.
type cluster struct {
	t      testing.TB
	meta   *metadata.Memory
	ids    []string
	dirs   map[string]string
	stores map[string]*storage.Disk
	locals map[string]*peer.Local
}

func newCluster(t testing.TB, segmentSize int64) *cluster {
	ctx := context.Background()
	c := &cluster{t: t, meta: metadata.NewMemory(), dirs: map[string]string{}, stores: map[string]*storage.Disk{}, locals: map[string]*peer.Local{}}
	t.Cleanup(func() { c.meta.Close() })
	if err := c.meta.InitCluster(ctx, torus.ClusterConfig{Replication: 2, SegmentSize: segmentSize, CheckpointEvery: 2}); err != nil {
		t.Fatal(err)
	}
	spec, err := c.meta.Ring(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := c.meta.NewSession(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		id := fmt.Sprintf("peer-%d", i)
		dir := t.TempDir()
		st, err := storage.OpenDisk(ctx, storage.DiskConfig{Dir: dir, Capacity: 1 << 30, Logger: testutil.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		c.ids = append(c.ids, id)
		c.dirs[id], c.stores[id], c.locals[id] = dir, st, peer.NewLocal(st, testutil.Logger(t))
		if err := c.meta.PutPeer(ctx, torus.PeerInfo{ID: id, Address: id + ":1", Capacity: 1 << 30}); err != nil {
			t.Fatal(err)
		}
		if err := c.meta.Heartbeat(ctx, sess, id, torus.Beat{}); err != nil {
			t.Fatal(err)
		}
		spec.Members = append(spec.Members, torus.RingMember{ID: id, Weight: 1 << 30})
	}
	spec.Version++
	if err := c.meta.SetRing(ctx, spec); err != nil {
		t.Fatal(err)
	}
	return c
}

// Peer implements torus.PeerPool.
func (c *cluster) Peer(ctx context.Context, id string) (torus.PeerService, error) {
	if l, ok := c.locals[id]; ok {
		return l, nil
	}
	return nil, fmt.Errorf("peer %s: %w", id, torus.ErrUnavailable)
}

func (c *cluster) deps() scrub.Deps { return scrub.Deps{Meta: c.meta, Peers: c} }

// write fills a volume of size bytes with random data in 64 KiB writes,
// flushing every 16, and returns the model.
func (c *cluster) write(name string, size int64, seed uint64, keepOpen bool) []byte {
	c.t.Helper()
	ctx := context.Background()
	if _, err := c.meta.CreateVolume(ctx, torus.VolumeInfo{Name: name, Size: size}); err != nil {
		c.t.Fatal(err)
	}
	v, err := volume.Open(ctx, volume.Deps{Meta: c.meta, Peers: c, Logger: testutil.Logger(c.t)}, name, volume.Options{Owner: "test"})
	if err != nil {
		c.t.Fatal(err)
	}
	model := make([]byte, size)
	r := rand.New(rand.NewPCG(seed, 1))
	for off := int64(0); off < size; off += 64 << 10 {
		p := make([]byte, 64<<10)
		for i := range p {
			p[i] = byte(r.Uint32())
		}
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			c.t.Fatal(err)
		}
		copy(model[off:], p)
	}
	if err := v.Flush(ctx); err != nil {
		c.t.Fatal(err)
	}
	if keepOpen {
		// A crashed writer: its open segment stays named in the head,
		// no writer holds the volume.
		if err := c.meta.ForceUnlock(ctx, name); err != nil {
			c.t.Fatal(err)
		}
		c.t.Cleanup(func() { v.Close(context.Background()) })
		return model
	}
	if err := v.Close(ctx); err != nil {
		c.t.Fatal(err)
	}
	return model
}

// holders lists the peers holding seg, sorted.
func (c *cluster) holders(seg torus.SegmentID) []string {
	var out []string
	for _, id := range c.ids {
		if _, err := c.stores[id].Stat(context.Background(), seg); err == nil {
			out = append(out, id)
		}
	}
	return out
}

// flip flips one bit of peer's file of seg at off.
func (c *cluster) flip(peerID string, seg torus.SegmentID, off int64) {
	c.t.Helper()
	path := filepath.Join(c.dirs[peerID], "segments", fmt.Sprintf("v%d", seg.Volume), seg.String())
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		c.t.Fatal(err)
	}
	b[0] ^= 0x08
	if _, err := f.WriteAt(b, off); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cluster) copyBytes(peerID string, seg torus.SegmentID, n int64) []byte {
	c.t.Helper()
	p := make([]byte, n)
	if _, err := c.stores[peerID].ReadAt(context.Background(), seg, p, 0); err != nil {
		c.t.Fatalf("reading %s on %s: %v", seg, peerID, err)
	}
	return p
}

func (c *cluster) readVolume(name string, size int64) []byte {
	c.t.Helper()
	ctx := context.Background()
	v, err := volume.Open(ctx, volume.Deps{Meta: c.meta, Peers: c, Logger: testutil.Logger(c.t)}, name, volume.Options{ReadOnly: true})
	if err != nil {
		c.t.Fatal(err)
	}
	defer v.Close(ctx)
	got := make([]byte, size)
	if err := v.ReadAt(ctx, got, 0); err != nil {
		c.t.Fatal(err)
	}
	return got
}

type corruption struct {
	what string
	seg  torus.SegmentID
	peer string
	off  int64
	n    int64 // the length that counts
}

// TestScrubRepairsEveryKind flips bits in record headers, CRC arrays and
// block data of sealed segments, in block data and a record header of the
// open segment (its writer crashed), and in a checkpoint, each on one
// replica: scrub finds each, repairs it from the good replica, and the
// copies and the volume read back right.
func TestScrubRepairsEveryKind(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 1<<20)
	const size = 6 << 20
	model := c.write("vol", size, 1, true)
	head, err := c.meta.Head(ctx, "vol")
	if err != nil {
		t.Fatal(err)
	}
	lens, err := volume.LiveSegmentLengths(ctx, c.meta, c, "vol", nil)
	if err != nil {
		t.Fatal(err)
	}
	if head.Checkpoint == nil || head.Open == nil {
		t.Fatalf("want a checkpoint and an open segment: %+v", head)
	}
	var sealed []torus.SegmentID
	for id, n := range lens {
		if id.Kind == torus.KindData && n > 1<<19 {
			sealed = append(sealed, id)
		}
	}
	slices.SortFunc(sealed, rebalance.CompareSegmentID)
	if len(sealed) < 3 {
		t.Fatalf("want 3 sealed data segments, have %d", len(sealed))
	}
	open := *head.Open
	openInfo, err := c.stores[c.holders(open)[0]].Stat(ctx, open)
	if err != nil || openInfo.Length < 3*(40+4+4096) {
		t.Fatalf("open segment too small: %+v %v", openInfo, err)
	}
	const rec = volume.RecordHeaderSize
	cs := []corruption{
		{what: "sealed record header", seg: sealed[0], off: 9},
		{what: "sealed CRC array", seg: sealed[1], off: rec + 2},
		{what: "sealed block data", seg: sealed[2], off: rec + 16*4 + 5*4096 + 77},
		{what: "open block data", seg: open, off: rec + 16*4 + 3*4096 + 1},
		{what: "checkpoint", seg: head.Checkpoint.ID, off: head.Checkpoint.Length / 2},
	}
	for i := range cs {
		h := c.holders(cs[i].seg)
		if len(h) != 2 {
			t.Fatalf("%s: %d holders", cs[i].what, len(h))
		}
		cs[i].peer = h[i%2]
		cs[i].n = lens[cs[i].seg]
		if cs[i].n < 0 {
			cs[i].n = openInfo.Length
		}
		c.flip(cs[i].peer, cs[i].seg, cs[i].off)
	}

	rep, err := scrub.Volume(ctx, c.deps(), "vol", scrub.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Bad != len(cs) || rep.Clean() || rep.Repaired != 0 {
		t.Fatalf("check only: %d bad, %d repaired, want %d bad: %+v", rep.Bad, rep.Repaired, len(cs), rep.Findings)
	}
	for _, x := range cs {
		i := slices.IndexFunc(rep.Findings, func(f scrub.Finding) bool { return f.Segment == x.seg && f.Peer == x.peer })
		if i < 0 {
			t.Fatalf("%s on %s not found: %+v", x.what, x.peer, rep.Findings)
		}
		f := rep.Findings[i]
		if f.Action != scrub.ActionFound {
			t.Fatalf("%s: action %q", x.what, f.Action)
		}
		if x.seg.Kind == torus.KindData && x.what != "sealed record header" && len(f.BadBlocks) == 0 {
			t.Fatalf("%s: no bad blocks named: %+v", x.what, f)
		}
	}

	start := time.Now()
	rep, err = scrub.Volume(ctx, c.deps(), "vol", scrub.Options{Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Bad != len(cs) || rep.Repaired != len(cs) || !rep.Clean() {
		t.Fatalf("repair: %d bad, %d repaired: %+v", rep.Bad, rep.Repaired, rep.Findings)
	}
	t.Logf("scrub with repair of %d copies: %d copies, %d bytes checked in %v", len(cs), rep.Copies, rep.CheckedBytes, time.Since(start))
	for _, x := range cs {
		h := c.holders(x.seg)
		if len(h) != 2 {
			t.Fatalf("%s: %d holders after repair", x.what, len(h))
		}
		if a, b := c.copyBytes(h[0], x.seg, x.n), c.copyBytes(h[1], x.seg, x.n); !bytes.Equal(a, b) {
			t.Fatalf("%s: copies differ after repair", x.what)
		}
	}
	rep, err = scrub.Volume(ctx, c.deps(), "vol", scrub.Options{Repair: true})
	if err != nil || rep.Bad != 0 || !rep.Clean() {
		t.Fatalf("after repair: %v %+v", err, rep)
	}
	if got := c.readVolume("vol", size); !bytes.Equal(got, model) {
		t.Fatal("volume reads back wrong after repair")
	}
}

// TestScrubUnrepairable: the same block is bad on both copies: scrub names
// it and reports the volume not clean; a bad copy is never "repaired" from
// another bad one.
func TestScrubUnrepairable(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 1<<20)
	c.write("vol", 3<<20, 2, false)
	lens, err := volume.LiveSegmentLengths(ctx, c.meta, c, "vol", nil)
	if err != nil {
		t.Fatal(err)
	}
	var seg torus.SegmentID
	for id, n := range lens {
		if id.Kind == torus.KindData && n > 1<<19 {
			seg = id
			break
		}
	}
	// The first record of a segment holds the first blocks written to it.
	recs, _ := volume.ScanRecords(c.copyBytes(c.holders(seg)[0], seg, lens[seg]), 0)
	block := recs[0].Block + 1
	for _, p := range c.holders(seg) {
		c.flip(p, seg, recs[0].DataOffset+4096+100)
	}
	rep, err := scrub.Volume(ctx, c.deps(), "vol", scrub.Options{Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Clean() || rep.Repaired != 0 || !slices.Equal(rep.Unrepairable, []uint64{block}) {
		t.Fatalf("unrepairable block %d: %+v", block, rep)
	}
	for _, f := range rep.Findings {
		if f.Action != scrub.ActionUnrepairable {
			t.Fatalf("finding %+v", f)
		}
	}
}

// TestScrubThroughput measures scrub over 32 MiB segments (the default
// size) and the time to repair one corrupted copy. Run with
//
//	go test ./scrub/ -run TestScrubThroughput -v
func TestScrubThroughput(t *testing.T) {
	testutil.SkipShort(t, "measures 128 MiB")
	ctx := context.Background()
	c := newCluster(t, 32<<20)
	const size = 128 << 20
	c.write("big", size, 3, false)
	start := time.Now()
	rep, err := scrub.Volume(ctx, c.deps(), "big", scrub.Options{})
	if err != nil || !rep.Clean() {
		t.Fatalf("%v %+v", err, rep)
	}
	d := time.Since(start)
	if rep.CheckedBytes < 2*size {
		t.Fatalf("checked %d bytes, want at least %d (2 copies)", rep.CheckedBytes, 2*size)
	}
	lens, err := volume.LiveSegmentLengths(ctx, c.meta, c, "big", nil)
	if err != nil {
		t.Fatal(err)
	}
	var seg torus.SegmentID
	for id, n := range lens {
		if id.Kind == torus.KindData && n >= 16<<20 {
			seg = id
		}
	}
	h := c.holders(seg)
	c.flip(h[1], seg, lens[seg]/2)
	info, _ := c.meta.Volume(ctx, "big")
	rstart := time.Now()
	res := scrub.Segment(ctx, c, scrub.Target{Seg: seg, Length: lens[seg], NBlocks: uint64(info.Size / torus.BlockSize), Holders: h}, scrub.Options{Repair: true})
	rd := time.Since(rstart)
	if len(res.Findings) != 1 || res.Findings[0].Action != scrub.ActionRepaired {
		t.Fatalf("repair: %+v", res)
	}
	t.Logf("scrub throughput: %d copies, %.1f MiB in %v = %.0f MiB/s (unlimited rate, on-disk stores, in-process); "+
		"repair of one corrupted %.1f MiB copy (check both copies, copy, sync, read back): %v",
		rep.Copies, float64(rep.CheckedBytes)/(1<<20), d.Round(time.Millisecond), float64(rep.CheckedBytes)/(1<<20)/d.Seconds(),
		float64(lens[seg])/(1<<20), rd.Round(time.Millisecond))
}

// TestLimiter: the limiter paces bytes to its rate.
func TestLimiter(t *testing.T) {
	l := &scrub.Limiter{Rate: 10 << 20}
	start := time.Now()
	for i := 0; i < 4; i++ {
		if err := l.Wait(context.Background(), 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	// The first MiB passes at once, the next three take 0.3 s.
	if d := time.Since(start); d < 250*time.Millisecond || d > 2*time.Second {
		t.Fatalf("4 MiB at 10 MiB/s took %v", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := l.Wait(ctx, 100<<20); err == nil {
		t.Fatal("Wait ignores a cancelled context")
	}
}

// TestScrubOpenSegmentHeader: a bad record header in the middle of one
// replica's open segment (its writer crashed) cuts that copy's valid prefix
// short of the other's: scrub reports it short and replaces it.
func TestScrubOpenSegmentHeader(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, 1<<20)
	const size = 1<<20 + 512<<10
	model := c.write("vol", size, 4, true)
	head, err := c.meta.Head(ctx, "vol")
	if err != nil || head.Open == nil {
		t.Fatalf("%v %+v", err, head)
	}
	open := *head.Open
	h := c.holders(open)
	info, err := c.stores[h[0]].Stat(ctx, open)
	if err != nil {
		t.Fatal(err)
	}
	recs, valid := volume.ScanRecords(c.copyBytes(h[0], open, info.Length), 0)
	if len(recs) < 3 || valid != info.Length {
		t.Fatalf("open segment: %d records, valid %d of %d", len(recs), valid, info.Length)
	}
	c.flip(h[0], open, recs[2].Offset+20)
	rep, err := scrub.Volume(ctx, c.deps(), "vol", scrub.Options{Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Bad != 1 || rep.Repaired != 1 || rep.Findings[0].Peer != h[0] || rep.Findings[0].Valid != recs[2].Offset {
		t.Fatalf("%+v", rep)
	}
	if a, b := c.copyBytes(h[0], open, info.Length), c.copyBytes(h[1], open, info.Length); !bytes.Equal(a, b) {
		t.Fatal("open segment copies differ after repair")
	}
	if got := c.readVolume("vol", size); !bytes.Equal(got, model) {
		t.Fatal("volume reads back wrong after repair")
	}
}
