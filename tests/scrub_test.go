package tests

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testcluster"
	"github.com/torus-storage/torus/scrub"
	"github.com/torus-storage/torus/server"
	"github.com/torus-storage/torus/storage"
	"github.com/torus-storage/torus/volume"
)

// dataDirs returns each daemon's data directory (daemons must be running).
func dataDirs(t *testing.T, c *testcluster.Cluster) []string {
	t.Helper()
	var dirs []string
	for i, d := range c.Daemons {
		disk, ok := d.Store().(*storage.Disk)
		if !ok {
			t.Fatalf("daemon %d: store is %T", i, d.Store())
		}
		dirs = append(dirs, disk.Dir())
	}
	return dirs
}

func segPath(dir string, seg torus.SegmentID) string {
	return filepath.Join(dir, "segments", fmt.Sprintf("v%d", seg.Volume), seg.String())
}

// flipFile flips one bit of a segment file at off.
func flipFile(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// writeRandom writes n bytes of random data at 0 through a writer, flushes
// and closes, and returns them.
func writeRandom(t *testing.T, c *testcluster.Cluster, name string, n int, seed uint64) []byte {
	t.Helper()
	ctx := context.Background()
	v, err := c.Open(ctx, name, volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, n)
	r := rand.New(rand.NewPCG(seed, 9))
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	for off := 0; off < n; off += 256 << 10 {
		if err := v.WriteAt(ctx, p[off:min(off+256<<10, n)], int64(off), false); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	return p
}

func readAll(t *testing.T, c *testcluster.Cluster, name string, n int) []byte {
	t.Helper()
	ctx := context.Background()
	v, err := c.Open(ctx, name, volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	got := make([]byte, n)
	if err := v.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	return got
}

// sealedSegment returns a sealed data segment of vol with at least
// minLen bytes, and its length.
func sealedSegment(t *testing.T, c *testcluster.Cluster, vol string, minLen int64) (torus.SegmentID, int64) {
	t.Helper()
	lens, err := volume.LiveSegmentLengths(context.Background(), c.Meta, c.Pool, vol, nil)
	if err != nil {
		t.Fatal(err)
	}
	for id, n := range lens {
		if id.Kind == torus.KindData && n >= minLen {
			return id, n
		}
	}
	t.Fatalf("no sealed segment of %d bytes in %s", minLen, vol)
	return torus.SegmentID{}, 0
}

// holderIdx lists the running daemons holding seg.
func holderIdx(c *testcluster.Cluster, seg torus.SegmentID) []int {
	var out []int
	for i, d := range c.Daemons {
		if d == nil {
			continue
		}
		if _, err := d.Store().Stat(context.Background(), seg); err == nil {
			out = append(out, i)
		}
	}
	return out
}

// copyCheck verifies daemon i's copy of seg.
func copyCheck(t *testing.T, c *testcluster.Cluster, i int, seg torus.SegmentID, n int64, nblocks uint64) volume.CopyCheck {
	t.Helper()
	ck, err := scrub.Check(context.Background(), c.Daemons[i].Local(), seg, n, nblocks, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ck
}

// TestHealingDoesNotSpreadCorruption: one holder's copy of a sealed segment
// has a flipped bit and the other holder goes down past its grace period.
// Healing must not copy the bad copy to the third daemon. When the good
// holder is back, healing uses it as the source, the bad copy is replaced
// before any surplus copy is deleted, and every copy left verifies.
func TestHealingDoesNotSpreadCorruption(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 3, Replication: 2, Server: func(i int, cfg *server.Config) {
		cfg.DownGrace = 2 * time.Second
	}})
	const size = 8 << 20
	c.CreateVolume("vol", size)
	model := writeRandom(t, c, "vol", 4<<20, 1)
	seg, n := sealedSegment(t, c, "vol", 512<<10)
	info, err := c.Meta.Volume(context.Background(), "vol")
	if err != nil {
		t.Fatal(err)
	}
	nblocks := uint64(info.Size / torus.BlockSize)
	h := holderIdx(c, seg)
	if len(h) != 2 {
		t.Fatalf("holders %v", h)
	}
	bad, good := h[0], h[1]
	third := 3 - bad - good
	dirs := dataDirs(t, c)
	flipFile(t, segPath(dirs[bad], seg), n/2)
	if ck := copyCheck(t, c, bad, seg, n, nblocks); ck.OK() {
		t.Fatal("the flipped copy verifies")
	}
	c.Stop(good)
	// Healing runs every second; give it time to (wrongly) copy.
	deadline := time.Now().Add(12 * time.Second)
	for time.Now().Before(deadline) {
		if fi, err := c.Daemons[third].Store().Stat(context.Background(), seg); err == nil && fi.Length >= n {
			t.Fatalf("daemon %d got a full copy while the only up source is bad: %+v", third, copyCheck(t, c, third, seg, n, nblocks))
		}
		time.Sleep(200 * time.Millisecond)
	}
	c.Start(good)
	waitFor(t, 90*time.Second, "every copy of the segment verifies and 2 remain", func() bool {
		okCopies := 0
		for _, i := range holderIdx(c, seg) {
			ck, err := scrub.Check(context.Background(), c.Daemons[i].Local(), seg, n, nblocks, nil)
			if err != nil || !ck.OK() {
				return false
			}
			okCopies++
		}
		return okCopies == 2
	})
	if got := readAll(t, c, "vol", len(model)); !bytes.Equal(got[:len(model)], model) {
		t.Fatal("data differs")
	}
}

// TestCorruptCheckpointSkipsOnlyItsVolume: a volume whose checkpoint is
// corrupt on every copy cannot have its live set read. Maintenance skips
// that volume (none of its segments are collected) and reports it, while
// GC and healing of the other volumes go on.
func TestCorruptCheckpointSkipsOnlyItsVolume(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 3, Replication: 2, Server: func(i int, cfg *server.Config) {
		cfg.DownGrace = 2 * time.Second
		cfg.GCInterval = 2 * time.Second
	}})
	ctx := context.Background()
	c.CreateVolume("bad", 8<<20)
	c.CreateVolume("good", 8<<20)
	writeRandom(t, c, "bad", 6<<20, 2)
	model := writeRandom(t, c, "good", 6<<20, 3)
	head, err := c.Meta.Head(ctx, "bad")
	if err != nil || head.Checkpoint == nil {
		t.Fatalf("want a checkpoint: %v %+v", err, head)
	}
	goodInfo, err := c.Meta.Volume(ctx, "good")
	if err != nil {
		t.Fatal(err)
	}
	dirs := dataDirs(t, c)
	// Every daemon caches checkpoint tables: restart them all after the
	// corruption so they have to read it.
	for i := range c.Daemons {
		c.Stop(i)
	}
	badFiles := map[string]bool{}
	for _, dir := range dirs {
		p := segPath(dir, head.Checkpoint.ID)
		if _, err := os.Stat(p); err == nil {
			flipFile(t, p, head.Checkpoint.Length/2)
		}
		vdir := filepath.Dir(p)
		ents, _ := os.ReadDir(vdir)
		for _, e := range ents {
			badFiles[filepath.Join(vdir, e.Name())] = true
		}
	}
	if len(badFiles) == 0 {
		t.Fatal("no files of the bad volume")
	}
	c.Start(0)
	c.Start(1)
	// Garbage of the good volume on daemon 0: a segment no head names.
	junk := torus.SegmentID{Volume: goodInfo.ID, Epoch: 1, Seq: 999}
	if err := c.Daemons[0].Store().Append(ctx, junk, 0, []byte("junk")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "the good volume's garbage is collected", func() bool {
		_, err := c.Daemons[0].Store().Stat(ctx, junk)
		return err != nil
	})
	waitFor(t, 90*time.Second, "the good volume has 2 copies of every sealed segment on daemons 0 and 1", func() bool {
		lo, _, n := copies(t, c, "good")
		return n > 0 && lo >= 2
	})
	waitFor(t, 30*time.Second, "the bad volume is reported with its problem", func() bool {
		st, err := c.Meta.VolumeStatuses(ctx)
		return err == nil && st["bad"].Problem != "" && st["bad"].Health == torus.VolumeUnavailable
	})
	for f := range badFiles {
		if d := filepath.Dir(filepath.Dir(filepath.Dir(f))); d != dirs[0] && d != dirs[1] {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("a segment of the volume with the unreadable checkpoint was deleted: %s", f)
		}
	}
	if got := readAll(t, c, "good", len(model)); !bytes.Equal(got[:len(model)], model) {
		t.Fatal("good volume reads back wrong")
	}
}

// TestBackgroundScrubRepairs: with a short --scrub-interval, each daemon's
// background scrub finds its own corrupted copy, replaces it from the good
// holder, and counts it on /metrics.
func TestBackgroundScrubRepairs(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 3, Replication: 2, Server: func(i int, cfg *server.Config) {
		cfg.ScrubInterval = time.Second
		cfg.ScrubRate = 64 << 20
	}})
	c.CreateVolume("vol", 8<<20)
	writeRandom(t, c, "vol", 3<<20, 4)
	seg, n := sealedSegment(t, c, "vol", 512<<10)
	info, _ := c.Meta.Volume(context.Background(), "vol")
	nblocks := uint64(info.Size / torus.BlockSize)
	h := holderIdx(c, seg)
	victim := h[0]
	flipFile(t, segPath(dataDirs(t, c)[victim], seg), volume.RecordHeaderSize+5) // the first CRC array
	start := time.Now()
	waitFor(t, 60*time.Second, "the corrupted copy verifies again", func() bool {
		return copyCheck(t, c, victim, seg, n, nblocks).OK()
	})
	t.Logf("background scrub: corrupted copy of %d bytes replaced %v after the flip (interval 1s)", n, time.Since(start).Round(time.Millisecond))
	// The victim's scrub repairs its copy, unless a verified heal on
	// another daemon got there first: the repair is counted where it ran,
	// once the copy is synced and read back, which may be a little after
	// its bytes verify (the check above can see them first).
	var m float64
	waitFor(t, 10*time.Second, "the repair counted on /metrics", func() bool {
		m = 0
		for _, d := range c.Daemons {
			m += metric(t, d, "torus_repaired_bytes_total")
		}
		return m >= float64(n)
	})
	// (torus_scrub_errors_total is not asserted here: a verified heal may
	// replace the bad copy before the victim's scrub reaches it. The scrub
	// package's tests count what a scrub finds.)
	if b := metric(t, c.Daemons[victim], "torus_scrub_checked_bytes_total"); b < float64(n) {
		t.Fatalf("torus_scrub_checked_bytes_total %v", b)
	}
}

// metric reads one counter from a daemon's /metrics.
func metric(t *testing.T, d *server.Server, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + d.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + name + `\{[^}]*\} (\S+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("%s not on /metrics", name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
