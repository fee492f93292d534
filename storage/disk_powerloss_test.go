package storage_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/vfs"
	"github.com/torus-storage/torus/storage/storagetest"
)

// powerModel is what a segment must hold: content is the exact bytes the
// store should return, synced how many of them must survive a power loss.
type powerModel struct {
	content []byte
	synced  int
	deleted bool // deleted and not appended to since: must stay missing
}

// TestDiskPowerLoss runs random appends, syncs and deletes on a Disk over a
// MemFS and cuts the power now and then (MemFS.Crash, sometimes keeping
// torn unsynced tails). After each crash the store is reopened: every
// synced byte must be in place, deleted segments must stay deleted, and
// Usage must match the segments found.
func TestDiskPowerLoss(t *testing.T) {
	for seed := range uint64(20) {
		powerLossRun(t, seed, false)
		if t.Failed() {
			return
		}
	}
}

// TestDiskPowerLossTorn is TestDiskPowerLoss with every power loss a torn
// one (MemFS.CrashTorn): unsynced tails come back dropped, cut, zeroed or
// full of garbage. Every synced byte must be intact, a segment's length
// after reopen at least its synced length and at most its length before
// the crash (garbage is at most what was unsynced; the writer's record CRCs
// reject it), and the store must serve what it found, durably.
func TestDiskPowerLossTorn(t *testing.T) {
	var garbage int
	for seed := range uint64(20) {
		garbage += powerLossRun(t, seed, true)
		if t.Failed() {
			return
		}
	}
	if garbage == 0 {
		t.Fatal("no torn crash left bytes that differ from the appended ones: the torn mode was not exercised")
	}
	t.Logf("%d bytes past the synced length came back different from what was appended", garbage)
}

// powerLossRun runs one random history and returns how many bytes past
// the synced lengths came back different from what was appended.
func powerLossRun(t *testing.T, seed uint64, torn bool) int {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 99))
	fsys := vfs.NewMemFS()
	const dir = "/data"
	d := openDiskFS(t, fsys, dir, 1<<30)
	ids := []torus.SegmentID{
		{Volume: 1, Epoch: 1, Seq: 1}, {Volume: 1, Epoch: 1, Seq: 2}, {Volume: 1, Epoch: 2, Seq: 3},
		{Volume: 2, Epoch: 1, Seq: 1}, {Volume: 2, Epoch: 1, Seq: 1, Kind: torus.KindCheckpoint},
		{Volume: 3, Epoch: 7, Seq: 9},
	}
	garbage := 0
	model := map[torus.SegmentID]*powerModel{}
	for _, id := range ids {
		model[id] = &powerModel{}
	}
	for step := range 300 {
		id := ids[rng.IntN(len(ids))]
		m := model[id]
		switch r := rng.IntN(100); {
		case r < 55:
			off := len(m.content)
			p := storagetest.Pattern(id.Seq+uint64(id.Kind)<<8, int64(off), 1+rng.IntN(9000))
			if err := d.Append(ctx, id, int64(off), p); err != nil {
				t.Fatalf("seed %d step %d: Append(%s, %d): %v", seed, step, id, off, err)
			}
			m.content = append(m.content, p...)
			m.deleted = false
		case r < 80:
			_, err := d.Sync(ctx, id)
			if len(m.content) == 0 {
				if !errors.Is(err, torus.ErrNotExist) {
					t.Fatalf("seed %d step %d: Sync of missing %s: %v", seed, step, id, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("seed %d step %d: Sync(%s): %v", seed, step, id, err)
			}
			m.synced = len(m.content)
		case r < 88:
			if err := d.Delete(ctx, id); err != nil {
				t.Fatalf("seed %d step %d: Delete(%s): %v", seed, step, id, err)
			}
			*m = powerModel{deleted: true}
		default:
			if torn {
				fsys.CrashTorn(rng.Uint64())
			} else {
				var crashRNG *rand.Rand
				if rng.IntN(3) > 0 {
					crashRNG = rng
				}
				fsys.Crash(crashRNG) // d is abandoned, as by a power loss
			}
			d = openDiskFS(t, fsys, dir, 1<<30)
			garbage += verifyAfterPowerLoss(t, seed, step, d, ids, model)
			if t.Failed() {
				return garbage
			}
		}
	}
	_ = d.Close()
	return garbage
}

// verifyAfterPowerLoss checks d against the model after a power loss and
// returns how many bytes past the synced lengths differ from the model.
func verifyAfterPowerLoss(t *testing.T, seed uint64, step int, d torus.Store, ids []torus.SegmentID, model map[torus.SegmentID]*powerModel) int {
	t.Helper()
	ctx := context.Background()
	var total int64
	garbage := 0
	for _, id := range ids {
		m := model[id]
		info, err := d.Stat(ctx, id)
		if errors.Is(err, torus.ErrNotExist) {
			if m.synced > 0 {
				t.Fatalf("seed %d step %d: %s lost after power loss; %d bytes were synced", seed, step, id, m.synced)
			}
			*m = powerModel{}
			continue
		}
		if err != nil {
			t.Fatalf("seed %d step %d: Stat(%s): %v", seed, step, id, err)
		}
		if m.deleted {
			t.Fatalf("seed %d step %d: deleted segment %s is back after power loss", seed, step, id)
		}
		if info.Length < int64(m.synced) || info.Length > int64(len(m.content)) || info.Synced != info.Length {
			t.Fatalf("seed %d step %d: %s after power loss: %+v; want %d (synced) <= Length <= %d (appended) and Synced = Length",
				seed, step, id, info, m.synced, len(m.content))
		}
		got := make([]byte, info.Length)
		if n, err := d.ReadAt(ctx, id, got, 0); err != nil || n != len(got) {
			t.Fatalf("seed %d step %d: ReadAt(%s) = %d, %v", seed, step, id, n, err)
		}
		if !bytes.Equal(got[:m.synced], m.content[:m.synced]) {
			t.Fatalf("seed %d step %d: %s: synced bytes changed by the power loss", seed, step, id)
		}
		for i := m.synced; i < len(got); i++ {
			if got[i] != m.content[i] {
				garbage++
			}
		}
		// What is there now is what the segment holds (a torn unsynced
		// tail included: the volume layer's checksums deal with it), and
		// the store made it durable at open.
		m.content = got
		m.synced = len(got)
		total += info.Length
	}
	if u := d.Usage(); u.Used != total {
		t.Fatalf("seed %d step %d: Usage after reopen = %+v; want Used %d", seed, step, u, total)
	}
	return garbage
}
