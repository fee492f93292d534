package life

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/peer"
)

// writeRange writes blocks [first, first+n) through nc in 64 KiB writes.
func writeRange(t *testing.T, nc *nbdClient, m *model, first, n int64, note string) {
	t.Helper()
	const per = 16
	for b := first; b < first+n; b += per {
		k := min(per, first+n-b)
		id, p := m.newWrite(b, k, note, false)
		err := nc.WriteAt(p, b*blockSize, false)
		m.done(id, err)
		if err != nil {
			t.Fatalf("%s: write of blocks [%d,+%d): %v", note, b, k, err)
		}
	}
}

// segmentSizes maps each segment file of vol on d to its size.
// syncedLengths asks a running daemon (over the peer protocol) how much of
// each of the volume's segment files is fsynced: exactly what a power loss
// keeps. The writer syncs more than the client's FLUSHes (every segment is
// synced when it is sealed), so file sizes at a FLUSH would be the wrong
// model.
func syncedLengths(t *testing.T, d *proccluster.Daemon, vol uint64) map[string]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := peer.Dial(ctx, d.PeerAddr, peer.ClientConfig{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	segs, err := c.List(ctx, vol)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, s := range segs {
		out[d.SegmentPath(s.ID)] = s.Synced
	}
	return out
}

// powerLoss does to a stopped daemon's files what a power loss does: every
// segment file longer than its synced length (recorded just before the
// daemon stopped; 0 for files not listed) is cut back to it and gets a torn
// tail of garbage. It returns a description of what it did.
func powerLoss(t *testing.T, d *proccluster.Daemon, vol uint64, flushed map[string]int64) []string {
	t.Helper()
	fs, err := d.Segments(vol)
	if err != nil {
		t.Fatal(err)
	}
	var did []string
	for _, f := range fs {
		keep := flushed[f.Path]
		if f.Size <= keep {
			continue
		}
		garbage := make([]byte, 3000+int(f.Size)%2000)
		rand.Read(garbage)
		if err := os.Truncate(f.Path, keep); err != nil {
			t.Fatal(err)
		}
		fh, err := os.OpenFile(f.Path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fh.Write(garbage); err != nil {
			t.Fatal(err)
		}
		if err := fh.Close(); err != nil {
			t.Fatal(err)
		}
		did = append(did, fmt.Sprintf("%s: %d -> %d + %d bytes of garbage", f.ID, f.Size, keep, len(garbage)))
	}
	return did
}

// openReader replaces the writer of vol: the old torusblk is killed, the
// lock forced away, and a new torusblk attached as a writer; when no
// writer can open (too few daemons up to place a new segment), a
// read-only torusblk is used instead. It returns the client, its torusblk
// and what it is.
func openReader(t *testing.T, c *proccluster.Cluster, old *proccluster.Proc, vol string, size int64) (*nbdClient, *proccluster.Proc, string) {
	t.Helper()
	if old != nil {
		old.Kill(t)
	}
	c.Ctl("volume", "unlock", vol, "--force")
	p, addr := c.StartNBD()
	var nc *nbdClient
	took, ok, last := poll(20*time.Second, 300*time.Millisecond, func() (bool, string) {
		var err error
		nc, err = tryAttach(nil, addr, vol)
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	if ok {
		t.Cleanup(func() { nc.Abort() })
		t.Logf("a new writer attached after %v", took.Round(time.Millisecond))
		return nc, p, "a new writer"
	}
	t.Logf("no new writer could attach within %v (%s); reading through a read-only torusblk", took.Round(time.Millisecond), last)
	p.Kill(t)
	ro, roAddr := c.StartNBD("--read-only")
	nc = reattach(t, c, nil, roAddr, vol, size, 20*time.Second)
	return nc, ro, "a read-only reader"
}

// TestPowerLossReplica (issue 8, second case, end to end): replication 2
// over 2 daemons. 4 MiB are written and flushed, 4 MiB more written and
// not flushed. Daemon 0 then loses power: SIGKILL, every segment file cut
// back to its length at the FLUSH, a torn tail of garbage appended. It
// restarts, and the writer FLUSHes. That FLUSH may fail (the replica lost
// what it needs), but if it succeeds the second 4 MiB are durable on both
// daemons: daemon 1 is killed, the writer replaced, and every block must
// read back from daemon 0 alone. (Checkpoints are off, so nothing but the
// client's FLUSH syncs: the lengths at that FLUSH are what survives.)
func TestPowerLossReplica(t *testing.T) {
	// No checkpoints: the writer flushes before writing one, and then
	// more than the client's FLUSH would be durable on daemon 0 than the
	// lengths recorded here (a power loss keeps what was synced).
	c := startCluster(t, proccluster.Options{Daemons: 2, Replication: 2, InitArgs: []string{"--checkpoint-every", "64"}})
	md := metaClient(t, c)
	const vol, blocks = "pl", 4096 // 16 MiB
	createVolume(t, c, vol, "16MiB", 0)
	nbdProc, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	vi, err := md.Volume(ctx, vol)
	cancel()
	if err != nil {
		t.Fatal(err)
	}

	writeRange(t, nc, m, 0, 1024, "first 4 MiB")
	if err := nc.Flush(); err != nil {
		t.Fatalf("first FLUSH: %v", err)
	}
	m.flushed()
	victim, other := c.Daemons[0], c.Daemons[1]
	writeRange(t, nc, m, 1024, 1024, "second 4 MiB, not flushed")

	synced := syncedLengths(t, victim, vi.ID)
	victim.Kill(t)
	did := powerLoss(t, victim, vi.ID, synced)
	t.Logf("power loss of daemon 0: %d segment files torn:\n%s", len(did), strings.Join(did, "\n"))
	if len(did) == 0 {
		t.Fatalf("no segment file of daemon 0 grew after the FLUSH: the test cannot tear anything")
	}
	victim.Start(t)
	c.WaitHTTP("http://"+victim.HTTPAddr+"/readyz", 30*time.Second)

	ferr := nc.Flush()
	if ferr == nil {
		m.flushed()
		t.Logf("FLUSH after daemon 0's power loss succeeded: the second 4 MiB must now be on both daemons")
	} else {
		t.Logf("FLUSH after daemon 0's power loss failed (allowed: it lost the unflushed tail): %v", ferr)
	}

	other.Kill(t)
	nc.Abort()
	nc2, _, what := openReader(t, c, nbdProc, vol, blocks*blockSize)
	if _, err := verify(nc2, m); err != nil {
		if ferr == nil {
			t.Fatalf("acknowledged FLUSH lost: through %s with daemon 1 dead: %v", what, err)
		}
		t.Fatalf("through %s with daemon 1 dead: %v", what, err)
	}
	t.Logf("every block verified through %s from daemon 0 alone (FLUSH error: %v)", what, ferr)
}

// TestCorruptHeaderReplica (issue 8, third case): replication 2 over 3
// daemons, 1 MiB segments, checkpoints every 64 seals (so the volume is
// all sealed segments, replayed on open). 8 MiB of random data are written
// with `nbdcopy --flush` and torusblk is stopped. Then, for each daemon in
// turn (one daemon only at a time), one byte inside the first record header
// (offset 9, the block number) of every sealed data segment file it holds
// is flipped, torusblk is started again and the volume read back with
// nbdcopy: it must equal what was flushed, since the other replica of every
// segment is intact. The flipped bytes are restored before the next daemon.
func TestCorruptHeaderReplica(t *testing.T) {
	nbdcopy := testutil.RequireBinary(t, "nbdcopy")
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2, SegmentSize: "1MiB",
		InitArgs: []string{"--checkpoint-every", "64"}})
	md := metaClient(t, c)
	const vol, size = "ch", 8 << 20
	createVolume(t, c, vol, "8MiB", 0)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	want := make([]byte, size)
	rand.Read(want)
	if err := os.WriteFile(src, want, 0o644); err != nil {
		t.Fatal(err)
	}
	p, addr := c.StartNBD()
	mustRun(t, 60*time.Second, nbdcopy, "--flush", src, "nbd://"+addr+"/"+vol)
	p.Signal(t, syscall.SIGTERM) // a clean detach: flush, seal, unlock

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	head, err := md.Head(ctx, vol)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	if head.Checkpoint != nil {
		t.Fatalf("head has a checkpoint (%v): the volume would not be replayed from its segments", head.Checkpoint.ID)
	}
	var sealed []torus.SegmentID
	for _, s := range head.Sealed {
		if s.ID.Kind == torus.KindData && s.Length > 0 {
			sealed = append(sealed, s.ID)
		}
	}
	t.Logf("head: %d sealed data segments", len(sealed))
	// Group commit may put up to 4 MiB into one segment (a batch goes
	// whole into a fresh segment), so 8 MiB make 2 to 8 segments.
	if len(sealed) < 2 {
		t.Fatalf("only %d sealed data segments after 8 MiB with 1 MiB segments", len(sealed))
	}
	flipped := 0
	defer func() {
		if flipped == 0 && !t.Failed() {
			t.Error("no daemon held a sealed segment to flip: the test proved nothing")
		}
	}()

	for i, d := range c.Daemons {
		t.Run(fmt.Sprintf("daemon%d", i), func(t *testing.T) {
			type flip struct {
				path string
				old  byte
			}
			var flips []flip
			for _, id := range sealed {
				path := d.SegmentPath(id)
				f, err := os.OpenFile(path, os.O_RDWR, 0)
				if os.IsNotExist(err) {
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				var b [1]byte
				if _, err := f.ReadAt(b[:], 9); err != nil {
					f.Close()
					t.Fatalf("%s: %v", path, err)
				}
				if _, err := f.WriteAt([]byte{b[0] ^ 0x40}, 9); err != nil {
					f.Close()
					t.Fatal(err)
				}
				f.Close()
				flips = append(flips, flip{path, b[0]})
				flipped++
			}
			defer func() {
				for _, f := range flips {
					fh, err := os.OpenFile(f.path, os.O_RDWR, 0)
					if err != nil {
						t.Fatal(err)
					}
					fh.WriteAt([]byte{f.old}, 9)
					fh.Close()
				}
			}()
			t.Logf("flipped byte 9 of %d of %d sealed data segment files on daemon %d only", len(flips), len(sealed), i)
			p.Start(t)
			c.WaitTCP(addr, 30*time.Second)
			defer p.Signal(t, syscall.SIGTERM)
			out := filepath.Join(dir, fmt.Sprintf("out%d.img", i))
			var copyOut string
			_, ok, last := poll(20*time.Second, 300*time.Millisecond, func() (bool, string) {
				var err error
				copyOut, err = runCmd(60*time.Second, nbdcopy, "nbd://"+addr+"/"+vol, out)
				if err != nil {
					return false, fmt.Sprintf("%v: %s", err, strings.TrimSpace(copyOut))
				}
				return true, ""
			})
			if !ok {
				t.Fatalf("reading the volume back with nbdcopy: %s", last)
			}
			got, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				first, differ := -1, 0
				for j := range want {
					if j >= len(got) || got[j] != want[j] {
						if first < 0 {
							first = j
						}
						differ++
					}
				}
				zeros := 0
				for j := first - first%blockSize; j < len(got); j += blockSize {
					if isZero(got[j:min(j+blockSize, len(got))]) {
						zeros++
					}
				}
				t.Errorf("volume read back differs from what was flushed, with one replica's record headers corrupt: first at byte %d (block %d), %d bytes differ, %d blocks from there on are zeros; flushed data reverted",
					first, first/blockSize, differ, zeros)
			}
		})
	}
}
