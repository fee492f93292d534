package storage_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/storage"
	"github.com/torus-storage/torus/storage/storagetest"
)

// crashChildEnv names the data dir of the helper process of TestDiskSIGKILL.
const crashChildEnv = "TORUS_STORAGE_CRASH_CHILD_DIR"

// crashSeedEnv seeds the helper's choice of segments and sizes.
const crashSeedEnv = "TORUS_STORAGE_CRASH_CHILD_SEED"

const crashSegments = 4

func crashSeg(i int) torus.SegmentID {
	return torus.SegmentID{Volume: 1, Epoch: 1, Seq: uint64(i)}
}

// TestDiskCrashChild is not a test: it is the process TestDiskSIGKILL
// starts and kills. It appends to a few segments forever, syncing after
// most appends and printing "synced <seq> <length>" after each Sync
// returned.
func TestDiskCrashChild(t *testing.T) {
	dir := os.Getenv(crashChildEnv)
	if dir == "" {
		t.Skip("helper process of TestDiskSIGKILL")
	}
	ctx := context.Background()
	d, err := storage.OpenDisk(ctx, storage.DiskConfig{Dir: dir, Capacity: 1 << 40})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	out := bufio.NewWriter(os.Stdout)
	seed, _ := strconv.ParseUint(os.Getenv(crashSeedEnv), 10, 64)
	rng := rand.New(rand.NewPCG(seed, 2))
	var lengths [crashSegments]int64
	deadline := time.Now().Add(time.Minute) // in case the parent dies
	for time.Now().Before(deadline) {
		i := rng.IntN(crashSegments)
		id := crashSeg(i)
		n := 1 + rng.IntN(256<<10)
		if err := d.Append(ctx, id, lengths[i], storagetest.Pattern(id.Seq, lengths[i], n)); err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		lengths[i] += int64(n)
		if rng.IntN(4) == 0 {
			continue // leave some appends unsynced
		}
		if _, err := d.Sync(ctx, id); err != nil {
			fmt.Println("error", err)
			os.Exit(2)
		}
		fmt.Fprintf(out, "synced %d %d\n", id.Seq, lengths[i])
		out.Flush()
	}
	os.Exit(0)
}

// TestDiskSIGKILL kills a process that appends and syncs, mid-way, then
// reopens its data dir: every byte reported synced must be there, intact,
// and the files must hold only what was appended.
func TestDiskSIGKILL(t *testing.T) {
	if os.Getenv(crashChildEnv) != "" {
		t.Skip("in the helper process")
	}
	dir := t.TempDir()
	for round := range 3 {
		synced := killChild(t, dir, 50+round*37, uint64(round))
		ctx := context.Background()
		d := openDisk(t, dir, 1<<40)
		for i := range crashSegments {
			id := crashSeg(i)
			info, err := d.Stat(ctx, id)
			if err != nil {
				if synced[id.Seq] == 0 {
					continue // never synced: it may not exist
				}
				t.Fatalf("round %d: Stat(%s): %v, but %d bytes were synced", round, id, err, synced[id.Seq])
			}
			if info.Length < synced[id.Seq] {
				t.Fatalf("round %d: %s has %d bytes after the crash; %d were synced", round, id, info.Length, synced[id.Seq])
			}
			p := make([]byte, info.Length)
			if _, err := d.ReadAt(ctx, id, p, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(p, storagetest.Pattern(id.Seq, 0, len(p))) {
				t.Fatalf("round %d: %s: content differs from what was appended", round, id)
			}
			t.Logf("round %d: %s synced %d, found %d", round, id, synced[id.Seq], info.Length)
		}
		// Start over, so the next child begins from empty segments.
		for i := range crashSegments {
			if err := d.Delete(ctx, crashSeg(i)); err != nil {
				t.Fatal(err)
			}
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// killChild runs the helper process on dir, SIGKILLs it after it reported
// syncs lines, and returns the highest synced length per segment seq.
func killChild(t *testing.T, dir string, syncs int, seed uint64) map[uint64]int64 {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestDiskCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+dir, fmt.Sprintf("%s=%d", crashSeedEnv, seed))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	synced := map[uint64]int64{}
	sc := bufio.NewScanner(stdout)
	lines := 0
	timeout := time.AfterFunc(30*time.Second, func() { _ = cmd.Process.Kill() })
	defer timeout.Stop()
	for lines < syncs && sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "error") {
			t.Fatalf("helper process: %s", line)
		}
		var seq uint64
		var length int64
		if n, _ := fmt.Sscanf(line, "synced %d %d", &seq, &length); n != 2 {
			continue
		}
		synced[seq] = max(synced[seq], length)
		lines++
	}
	if lines < syncs {
		t.Fatalf("helper process reported %d syncs, then stopped: %v", lines, sc.Err())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	return synced
}
