package tests

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/snapshots"
	"github.com/torus-storage/torus/internal/testcluster"
	"github.com/torus-storage/torus/server"
	"github.com/torus-storage/torus/volume"
)

// fastGC makes daemons collect garbage every second.
func fastGC(_ int, cfg *server.Config) { cfg.GCInterval = time.Second }

func closedSnap(c *testcluster.Cluster) func(ctx context.Context, md torus.Metadata, vol, name string) error {
	return func(ctx context.Context, md torus.Metadata, vol, name string) error {
		return volume.SnapshotClosed(ctx, volume.Deps{Meta: md, Peers: c.Pool, Logger: c.Log}, vol, name)
	}
}

func pat(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// writeClose opens vol as writer, writes each chunk at its offset, and
// closes it (flushing).
func writeClose(t *testing.T, ctx context.Context, c *testcluster.Cluster, vol string, writes map[int64][]byte) {
	t.Helper()
	v, err := c.Open(ctx, vol, volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for off, p := range writes {
		if err := v.WriteAt(ctx, p, off, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

// expect reads vol (read-only) and checks each range.
func expect(t *testing.T, ctx context.Context, c *testcluster.Cluster, vol string, want map[int64][]byte) {
	t.Helper()
	v, err := c.Open(ctx, vol, volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("open %s: %v", vol, err)
	}
	defer v.Close(ctx)
	for off, p := range want {
		got := make([]byte, len(p))
		if err := v.ReadAt(ctx, got, off); err != nil {
			t.Fatalf("read %s at %d: %v", vol, off, err)
		}
		if !bytes.Equal(got, p) {
			t.Fatalf("%s at %d: got %#x..., want %#x...", vol, off, got[0], p[0])
		}
	}
}

// segmentsOf lists the segments of volume id held by running daemons.
func segmentsOf(t *testing.T, c *testcluster.Cluster, id uint64) map[torus.SegmentID]bool {
	t.Helper()
	out := make(map[torus.SegmentID]bool)
	for _, d := range c.Daemons {
		if d == nil {
			continue
		}
		infos, err := d.Store().List(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		for _, si := range infos {
			out[si.ID] = true
		}
	}
	return out
}

// TestClone: a clone of a snapshot has the source's data at snapshot time
// and writes no segment of its own to get it; writes to the clone and to
// the source do not show in the other; a clone of an attached volume goes
// through the writer (implicit snapshot, deleted afterwards); after the
// snapshot and the source are deleted, GC removes the source's segments
// that no clone names and keeps the shared ones: both clones still read
// back whole, also after every daemon restarts.
func TestClone(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 3, Replication: 2, Server: fastGC})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const size = 16 << 20
	c.CreateVolume("src", size)
	a := pat(0xA1, 3<<20) // several 1 MiB segments
	writeClose(t, ctx, c, "src", map[int64][]byte{0: a})
	if err := volume.SnapshotClosed(ctx, volume.Deps{Meta: c.Meta, Peers: c.Pool, Logger: c.Log}, "src", "s1"); err != nil {
		t.Fatal(err)
	}
	src, err := c.Meta.Volume(ctx, "src")
	if err != nil {
		t.Fatal(err)
	}
	c1, err := snapshots.Clone(ctx, c.Meta, "src", "s1", torus.VolumeInfo{Name: "c1", Size: 2 * size}, time.Minute, closedSnap(c))
	if err != nil {
		t.Fatal(err)
	}
	if c1.Size != 2*size || c1.Parent == nil || c1.Parent.Snapshot != "s1" || len(c1.Shares) != 1 || c1.Shares[0] != src.ID {
		t.Fatalf("clone record %+v", c1)
	}
	if n := len(segmentsOf(t, c, c1.ID)); n != 0 {
		t.Fatalf("the clone wrote %d segments of its own before any write: not cheap", n)
	}
	expect(t, ctx, c, "c1", map[int64][]byte{0: a})

	// Copy-on-write both ways.
	b, cc := pat(0xB2, 8192), pat(0xC3, 8192)
	writeClose(t, ctx, c, "c1", map[int64][]byte{0: b, size + 4096: b})
	writeClose(t, ctx, c, "src", map[int64][]byte{1 << 20: cc})
	expect(t, ctx, c, "c1", map[int64][]byte{0: b, 8192: a[8192:], 1 << 20: a[:8192], size + 4096: b})
	expect(t, ctx, c, "src", map[int64][]byte{0: a[:8192], 1 << 20: cc, 2 << 20: a[:4096]})
	expect(t, ctx, c, "src", map[int64][]byte{0: a[:8192]})
	if _, err := c.Meta.Snapshot(ctx, "src", "s1"); err != nil {
		t.Fatalf("the snapshot cloned from: %v", err)
	}

	// A clone of the attached source: its writer takes the snapshot.
	w, err := c.Open(ctx, "src", volume.Options{Owner: "test-writer"})
	if err != nil {
		t.Fatal(err)
	}
	d := pat(0xD4, 4096)
	if err := w.WriteAt(ctx, d, 2<<20, true); err != nil {
		t.Fatal(err)
	}
	c2, err := snapshots.Clone(ctx, c.Meta, "src", "", torus.VolumeInfo{Name: "c2"}, time.Minute, closedSnap(c))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteAt(ctx, pat(0xEE, 4096), 2<<20, true); err != nil { // after the clone: not in it
		t.Fatal(err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if snaps, _ := c.Meta.Snapshots(ctx, "src"); len(snaps) != 1 {
		t.Fatalf("snapshots of src after a live clone: %+v, want only s1 (the implicit one deleted)", snaps)
	}
	if c2.Size != size {
		t.Fatalf("clone size %d, want the source's %d", c2.Size, size)
	}
	c2want := map[int64][]byte{0: a[:8192], 1 << 20: cc, 2 << 20: d, (2 << 20) + 4096: a[:4096]}
	expect(t, ctx, c, "c2", c2want)

	// Delete the snapshot, then the source: GC keeps what the clones name.
	if err := c.Meta.DeleteSnapshot(ctx, "src", "s1"); err != nil {
		t.Fatal(err)
	}
	if err := c.Meta.DeleteVolume(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	needed := make(map[torus.SegmentID]bool)
	sealed := make(map[torus.SegmentID]bool) // needed with a known length: must be held
	for _, name := range []string{"c1", "c2"} {
		live, err := volume.LiveSegmentLengths(ctx, c.Meta, c.Pool, name, nil)
		if err != nil {
			t.Fatal(err)
		}
		for id, n := range live {
			if id.Volume == src.ID {
				needed[id] = true
				if n > 0 {
					sealed[id] = true
				}
			}
		}
	}
	if len(needed) == 0 {
		t.Fatal("the clones name no segment of the source: nothing is shared")
	}
	before := len(segmentsOf(t, c, src.ID))
	waitFor(t, time.Minute, "GC of the source's unshared segments", func() bool {
		held := segmentsOf(t, c, src.ID)
		for id := range held {
			if !needed[id] {
				return false
			}
		}
		return true
	})
	held := segmentsOf(t, c, src.ID)
	for id := range sealed {
		if !held[id] {
			t.Fatalf("GC deleted %v, which a clone names", id)
		}
	}
	if len(held) >= before {
		t.Fatalf("GC deleted nothing of the source (%d segments before, %d after)", before, len(held))
	}
	t.Logf("source segments: %d before its deletion, %d kept for the clones", before, len(held))
	expect(t, ctx, c, "c1", map[int64][]byte{0: b, 8192: a[8192:], size + 4096: b})
	expect(t, ctx, c, "c2", c2want)

	// Every daemon restarts; GC runs again; the clones still read back.
	for i := range c.Daemons {
		c.Stop(i)
		c.Start(i)
	}
	time.Sleep(3 * time.Second)
	expect(t, ctx, c, "c1", map[int64][]byte{0: b, 8192: a[8192:], size + 4096: b})
	expect(t, ctx, c, "c2", c2want)
}

// TestRestore: restore makes the content the snapshot's, in one
// transaction (no segment written), is refused while the volume is
// attached (the error names the writer), and the restored volume keeps
// its content after GC has removed the dropped writes.
func TestRestore(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 3, Replication: 2, Server: fastGC})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c.CreateVolume("v", 8<<20)
	a := pat(0xA1, 2<<20)
	writeClose(t, ctx, c, "v", map[int64][]byte{0: a})
	if err := volume.SnapshotClosed(ctx, volume.Deps{Meta: c.Meta, Peers: c.Pool, Logger: c.Log}, "v", "s"); err != nil {
		t.Fatal(err)
	}
	writeClose(t, ctx, c, "v", map[int64][]byte{0: pat(0xB2, 3<<20)})
	expect(t, ctx, c, "v", map[int64][]byte{0: pat(0xB2, 3<<20)})

	w, err := c.Open(ctx, "v", volume.Options{Owner: "attached-here"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = snapshots.Restore(ctx, c.Meta, "v", "s")
	if !errors.Is(err, torus.ErrLocked) || !strings.Contains(err.Error(), "attached-here") {
		t.Fatalf("restore while attached: %v, want ErrLocked naming the writer", err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = snapshots.Restore(ctx, c.Meta, "v", "nope")
	if !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("restore of a missing snapshot: %v", err)
	}
	info, _ := c.Meta.Volume(ctx, "v")
	segsBefore := segmentsOf(t, c, info.ID)
	if _, err := snapshots.Restore(ctx, c.Meta, "v", "s"); err != nil {
		t.Fatal(err)
	}
	for id := range segmentsOf(t, c, info.ID) {
		if !segsBefore[id] {
			t.Fatalf("restore wrote segment %v: not cheap", id)
		}
	}
	want := map[int64][]byte{0: a, 2 << 20: make([]byte, 1<<20)}
	expect(t, ctx, c, "v", want)
	live, err := volume.LiveSegments(ctx, c.Meta, c.Pool, "v")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "GC of the writes dropped by the restore", func() bool {
		for id := range segmentsOf(t, c, info.ID) {
			if !live[id] {
				return false
			}
		}
		return true
	})
	expect(t, ctx, c, "v", want)
	// The restored volume is writable again.
	writeClose(t, ctx, c, "v", map[int64][]byte{4096: pat(0xC3, 4096)})
	expect(t, ctx, c, "v", map[int64][]byte{0: a[:4096], 4096: pat(0xC3, 4096), 8192: a[8192:]})
}

// TestPerVolumeReplication: on a 4-daemon cluster of replication 2, a
// volume of replication 1 and one of replication 3 have exactly that many
// full copies of every sealed segment (counted in the daemons' stores),
// also after several maintenance passes (healing keeps each at its own
// count rather than the ring's); with one daemon down past its grace the
// replication-3 volume heals back to 3 copies on the others, and once the
// daemon is back the surplus goes and it has 3 again.
func TestPerVolumeReplication(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 4, Replication: 2, Server: func(i int, cfg *server.Config) {
		cfg.DownGrace = 2 * time.Second
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, r := range []int{1, 3} {
		name := map[int]string{1: "r1", 3: "r3"}[r]
		if _, err := c.Meta.CreateVolume(ctx, torus.VolumeInfo{Name: name, Size: 16 << 20, Replication: r}); err != nil {
			t.Fatal(err)
		}
		writeClose(t, ctx, c, name, map[int64][]byte{0: pat(byte(r), 3<<20)})
	}
	exact := func(vol string, n int) func() bool {
		return func() bool {
			lo, hi, sealed := copies(t, c, vol)
			return sealed > 0 && lo == n && hi == n
		}
	}
	waitFor(t, 30*time.Second, "r1 at 1 copy", exact("r1", 1))
	waitFor(t, 30*time.Second, "r3 at 3 copies", exact("r3", 3))
	time.Sleep(4 * time.Second) // several maintenance passes
	for vol, n := range map[string]int{"r1": 1, "r3": 3} {
		if lo, hi, sealed := copies(t, c, vol); lo != n || hi != n || sealed == 0 {
			t.Fatalf("%s after maintenance: %d..%d copies of %d sealed segments, want %d", vol, lo, hi, sealed, n)
		}
	}
	c.Stop(3)
	waitFor(t, time.Minute, "r3 healed to 3 copies on the survivors", exact("r3", 3))
	c.Start(3)
	waitFor(t, time.Minute, "r3 back at exactly 3 copies after the daemon returns", exact("r3", 3))
	expect(t, ctx, c, "r3", map[int64][]byte{0: pat(3, 3<<20)})
}

// TestCloneHealsSharedSegments: healing knows segments named only by a
// clone: after the source and its snapshot are deleted and a daemon is
// lost past its grace, every sealed segment the clone names (the source's
// shared ones included) is back at 2 full copies on the survivors, and
// the clone reads back whole.
func TestCloneHealsSharedSegments(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 3, Replication: 2, Server: func(i int, cfg *server.Config) {
		cfg.GCInterval = time.Second
		cfg.DownGrace = 2 * time.Second
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c.CreateVolume("src", 8<<20)
	a := pat(0xA7, 3<<20)
	writeClose(t, ctx, c, "src", map[int64][]byte{0: a})
	if _, err := snapshots.Clone(ctx, c.Meta, "src", "", torus.VolumeInfo{Name: "c1"}, time.Minute, closedSnap(c)); err != nil {
		t.Fatal(err)
	}
	if err := c.Meta.DeleteVolume(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	lo, _, sealed := copies(t, c, "c1")
	if sealed == 0 || lo < 2 {
		t.Fatalf("before the loss: %d sealed segments, at least %d copies", sealed, lo)
	}
	c.Stop(0)
	waitFor(t, time.Minute, "the clone's segments back at 2 copies on the survivors", func() bool {
		lo, _, _ := copies(t, c, "c1")
		return lo >= 2
	})
	expect(t, ctx, c, "c1", map[int64][]byte{0: a})
}
