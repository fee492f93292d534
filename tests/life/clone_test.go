package life

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/proccluster"
)

// TestCloneSurvivesSourceDeletion, with real processes: a clone of
// src@s (made with torusctl volume clone) keeps reading back exactly the
// snapshot's data after the source is overwritten, its snapshot and the
// source itself are deleted, every daemon is SIGKILLed and restarted, and
// GC has run (it removed the source's unshared segments: the source's
// segment files shrink, but the ones the clone names stay).
func TestCloneSurvivesSourceDeletion(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2, DaemonArgs: []string{"--gc-interval", "1s"}})
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(uint64(seed(t)), 9))
	img := make([]byte, 3<<20)
	for i := range img {
		img[i] = byte(r.Uint32())
	}
	orig, other := filepath.Join(dir, "orig"), filepath.Join(dir, "other")
	if err := os.WriteFile(orig, img, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, bytes.Repeat([]byte{0x5A}, 3<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	c.Ctl("volume", "create", "src", "8MiB")
	c.Ctl("volume", "import", "src", orig)
	c.Ctl("snapshot", "create", "src@s")
	c.Ctl("volume", "clone", "src@s", "c1")
	c.Ctl("volume", "import", "src", other) // the source moves on
	var rows []volumeRow
	if err := c.CtlJSON(&rows, "volume", "list"); err != nil {
		t.Fatal(err)
	}
	var srcID uint64
	for _, row := range rows {
		if row.Name == "src" {
			srcID = row.ID
		}
	}
	if srcID == 0 {
		t.Fatalf("no src in %+v", rows)
	}
	files := func() int {
		n := 0
		for _, d := range c.Daemons {
			segs, err := d.Segments(srcID)
			if err != nil {
				t.Fatal(err)
			}
			n += len(segs)
		}
		return n
	}
	before := files()
	c.Ctl("snapshot", "delete", "src@s")
	c.Ctl("volume", "delete", "src")

	for _, d := range c.Daemons {
		d.Kill(t)
	}
	for _, d := range c.Daemons {
		d.Start(t)
	}
	for _, d := range c.Daemons {
		if took, ok, last := poll(30*time.Second, 100*time.Millisecond, func() (bool, string) { return ready(d.HTTPAddr) }); !ok {
			t.Fatalf("daemon %s not ready after %v: %s", d.HTTPAddr, took, last)
		}
	}
	eventually(t, time.Minute, 500*time.Millisecond, "GC removes the source's unshared segments", func() (bool, string) {
		n := files()
		return n < before && n > 0, fmt.Sprintf("source segment files: %d of %d", n, before)
	})
	time.Sleep(3 * time.Second) // a few more GC passes
	after := files()
	out := filepath.Join(dir, "out")
	c.Ctl("volume", "export", "c1", out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 8<<20 || !bytes.Equal(got[:len(img)], img) || !bytes.Equal(got[len(img):], make([]byte, len(got)-len(img))) {
		t.Fatalf("clone c1 does not read back the snapshot's data (%d bytes)", len(got))
	}
	t.Logf("source segment files: %d before its deletion, %d kept for the clone after GC; clone intact", before, after)
}

// TestVolumeReplicationProcesses, with real processes: on 3 daemons of
// cluster replication 2, `volume create --replication 1` and
// `--replication 3` give every segment file of the volume exactly 1 and 3
// holders (counted in the data directories), stably across GC and healing
// passes; --replication 3 is refused while the rule is host (one host),
// --replication 4 always, naming the ring's 3 peers.
func TestVolumeReplicationProcesses(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2, DaemonArgs: []string{"--gc-interval", "1s"}})
	// The daemons share one host (and have a zone each): with the default
	// host rule, 3 copies would share a domain beyond the ring's own 2.
	if out, err := c.CtlErr("volume", "create", "r3", "8MiB", "--replication", "3"); err == nil || !strings.Contains(out, "1 host failure domains") {
		t.Fatalf("replication 3 on one host: %v: %s", err, out)
	}
	c.Ctl("ring", "set-rule", "--failure-domain", "zone")
	if out, err := c.CtlErr("volume", "create", "r4", "8MiB", "--replication", "4"); err == nil || !strings.Contains(out, "the ring has 3 peers") {
		t.Fatalf("replication 4 on 3 peers: %v: %s", err, out)
	}
	img := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(img, bytes.Repeat([]byte{0x77}, 3<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	ids := map[string]uint64{}
	for _, name := range []string{"r1", "r3"} {
		c.Ctl("volume", "create", name, "8MiB", "--replication", name[1:])
		c.Ctl("volume", "import", name, img)
		r, err := volumeInfo(c, name)
		if err != nil {
			t.Fatal(err)
		}
		ids[name] = r.ID
	}
	holders := func(vol uint64) map[string]int {
		out := map[string]int{}
		for _, d := range c.Daemons {
			segs, err := d.Segments(vol)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range segs {
				out[s.ID.String()]++
			}
		}
		return out
	}
	exact := func(name string, n int) (bool, string) {
		h := holders(ids[name])
		if len(h) == 0 {
			return false, name + ": no segment files"
		}
		for id, k := range h {
			if k != n {
				return false, fmt.Sprintf("%s: segment %s has %d holders, want %d", name, id, k, n)
			}
		}
		return true, ""
	}
	for name, n := range map[string]int{"r1": 1, "r3": 3} {
		eventually(t, 30*time.Second, 200*time.Millisecond, name+" at its own replication", func() (bool, string) { return exact(name, n) })
	}
	time.Sleep(4 * time.Second) // GC and healing passes
	for name, n := range map[string]int{"r1": 1, "r3": 3} {
		if ok, why := exact(name, n); !ok {
			t.Fatalf("after maintenance passes: %s", why)
		}
	}
}
