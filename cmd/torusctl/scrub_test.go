package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/cmd/torusctl/internal/cli"
	"github.com/torus-storage/torus/internal/testcluster"
	"github.com/torus-storage/torus/scrub"
	"github.com/torus-storage/torus/storage"
	"github.com/torus-storage/torus/volume"
)

// flipCopy flips one bit at off in every running daemon's copy of seg
// whose index is in which (a daemon index into the sorted holders).
func flipCopies(t *testing.T, c *testcluster.Cluster, seg torus.SegmentID, off int64, holders int) {
	t.Helper()
	flipped := 0
	for _, d := range c.Daemons {
		if flipped == holders {
			return
		}
		if _, err := d.Store().Stat(context.Background(), seg); err != nil {
			continue
		}
		dir := d.Store().(*storage.Disk).Dir()
		path := filepath.Join(dir, "segments", fmt.Sprintf("v%d", seg.Volume), seg.String())
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		if _, err := f.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		b[0] ^= 1
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
		f.Close()
		flipped++
	}
	if flipped < holders {
		t.Fatalf("flipped %d copies of %s, want %d", flipped, seg, holders)
	}
}

// TestVolumeScrub runs `torusctl volume scrub` against real daemons: a
// clean volume (exit 0), one bad copy (repaired, exit 0; --check alone
// exits 1), and the same block bad on both copies (exit 2, naming it).
func TestVolumeScrub(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 3, Replication: 2})
	mustCtl(t, c, "volume", "create", "vol", "8MiB")
	writeVolume(t, c, "vol", 0, pattern(3<<20, 5))

	out := mustCtl(t, c, "volume", "scrub", "vol")
	if !strings.Contains(out, "VOLUME") || !strings.Contains(out, "REPAIRED") || strings.Contains(out, "PEER") {
		t.Fatalf("clean scrub output:\n%s", out)
	}
	lens, err := volume.LiveSegmentLengths(context.Background(), c.Meta, c.Pool, "vol", nil)
	if err != nil {
		t.Fatal(err)
	}
	var seg torus.SegmentID
	for id, n := range lens {
		if id.Kind == torus.KindData && n > 512<<10 {
			seg = id
			break
		}
	}
	recs, _ := volume.ScanRecords(readCopy(t, c, seg, lens[seg]), 0)
	dataOff := recs[0].DataOffset + 100 // in the first block of the first record
	block := recs[0].Block

	flipCopies(t, c, seg, dataOff, 1)
	_, errOut, code := ctl(t, c, "volume", "scrub", "--check", "vol")
	if code != cli.ExitIncomplete || !strings.Contains(errOut, "not every copy") {
		t.Fatalf("--check with a bad copy: exit %d, stderr %s", code, errOut)
	}
	out, errOut, code = ctl(t, c, "-o", "json", "volume", "scrub", "vol")
	if code != 0 {
		t.Fatalf("repair: exit %d\n%s\n%s", code, out, errOut)
	}
	var reps []scrub.Report
	if err := json.Unmarshal([]byte(out), &reps); err != nil {
		t.Fatal(err)
	}
	if len(reps) != 1 || reps[0].Bad != 1 || reps[0].Repaired != 1 || reps[0].Findings[0].Action != scrub.ActionRepaired ||
		len(reps[0].Findings[0].BadBlocks) != 1 || reps[0].Findings[0].BadBlocks[0] != block {
		t.Fatalf("repair report: %s", out)
	}
	mustCtl(t, c, "volume", "scrub", "--all")

	flipCopies(t, c, seg, dataOff, 2)
	out, errOut, code = ctl(t, c, "volume", "scrub", "vol")
	if code != cli.ExitUnrepairable || !strings.Contains(errOut, fmt.Sprintf("blocks %d", block)) ||
		!strings.Contains(out, "unrepairable") {
		t.Fatalf("unrepairable: exit %d\nstdout:\n%s\nstderr: %s", code, out, errOut)
	}
	t.Logf("torusctl volume scrub vol (exit %d):\n%s%s", code, out, errOut)
	if _, _, code := ctl(t, c, "volume", "scrub"); code != 1 {
		t.Fatalf("scrub without a name: exit %d", code)
	}
}

func readCopy(t *testing.T, c *testcluster.Cluster, seg torus.SegmentID, n int64) []byte {
	t.Helper()
	for _, d := range c.Daemons {
		p := make([]byte, n)
		if _, err := d.Store().ReadAt(context.Background(), seg, p, 0); err == nil {
			return p
		}
	}
	t.Fatalf("no copy of %s", seg)
	return nil
}
