package storage_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/storage"
	"github.com/torus-storage/torus/storage/storagetest"
)

func TestMemoryConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T, capacity int64) torus.Store {
		return storage.NewMemory(capacity)
	})
}

func TestMemoryUnlimited(t *testing.T) {
	m := storage.NewMemory(0)
	defer m.Close()
	if u := m.Usage(); u.Capacity <= 1<<62 {
		t.Fatalf("Usage of an unlimited store = %+v; want a huge capacity", u)
	}
	if err := m.Append(context.Background(), torus.SegmentID{Volume: 1}, 0, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
}

func TestMemoryCrash(t *testing.T) {
	ctx := context.Background()
	m := storage.NewMemory(1 << 20)
	defer m.Close()
	synced := torus.SegmentID{Volume: 1, Seq: 1}
	partly := torus.SegmentID{Volume: 1, Seq: 2}
	never := torus.SegmentID{Volume: 2, Seq: 1}

	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(m.Append(ctx, synced, 0, []byte("durable")))
	_, err := m.Sync(ctx, synced)
	must(err)
	must(m.Append(ctx, partly, 0, []byte("kept")))
	_, err = m.Sync(ctx, partly)
	must(err)
	must(m.Append(ctx, partly, 4, []byte("-lost")))
	must(m.Append(ctx, never, 0, []byte("gone")))
	if u := m.Usage(); u.Used != 7+9+4 {
		t.Fatalf("Used before crash = %d; want 20", u.Used)
	}

	m.Crash()

	read := func(id torus.SegmentID) string {
		t.Helper()
		info, err := m.Stat(ctx, id)
		must(err)
		p := make([]byte, info.Length)
		_, err = m.ReadAt(ctx, id, p, 0)
		must(err)
		return string(p)
	}
	for _, id := range []torus.SegmentID{synced, partly} {
		if info, err := m.Stat(ctx, id); err != nil || info.Synced != info.Length {
			t.Fatalf("after crash %s: %+v, %v; want Synced = Length", id, info, err)
		}
	}
	if got := read(synced); got != "durable" {
		t.Fatalf("synced segment after crash = %q; want %q", got, "durable")
	}
	if got := read(partly); got != "kept" {
		t.Fatalf("partly synced segment after crash = %q; want %q", got, "kept")
	}
	if _, err := m.Stat(ctx, never); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("never-synced segment after crash: %v; want ErrNotExist", err)
	}
	if u := m.Usage(); u.Used != 7+4 {
		t.Fatalf("Used after crash = %d; want 11", u.Used)
	}
	// Writing resumes at the surviving length, and the lost bytes do not
	// reappear.
	if err := m.Append(ctx, partly, 9, []byte("x")); !errors.Is(err, torus.ErrConflict) {
		t.Fatalf("append at the pre-crash length: %v; want ErrConflict", err)
	}
	must(m.Append(ctx, partly, 4, []byte("!")))
	if got := read(partly); got != "kept!" {
		t.Fatalf("after crash and append = %q; want %q", got, "kept!")
	}
}

func TestMemoryFault(t *testing.T) {
	ctx := context.Background()
	m := storage.NewMemory(1 << 20)
	defer m.Close()
	id := torus.SegmentID{Volume: 3, Seq: 1}
	boom := errors.New("boom")
	var calls []string
	m.SetFault(func(op string, seg torus.SegmentID) error {
		calls = append(calls, op+" "+seg.String())
		if op == storage.OpAppend && seg == id {
			return boom
		}
		return nil
	})
	if err := m.Append(ctx, id, 0, []byte("abc")); !errors.Is(err, boom) {
		t.Fatalf("Append with a fault: %v; want the injected error", err)
	}
	if _, err := m.Stat(ctx, id); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("a failed append created the segment: Stat = %v", err)
	}
	if u := m.Usage(); u.Used != 0 {
		t.Fatalf("Used after failed append = %d", u.Used)
	}
	other := torus.SegmentID{Volume: 3, Seq: 2}
	if err := m.Append(ctx, other, 0, []byte("abc")); err != nil {
		t.Fatalf("Append to another segment: %v", err)
	}
	if _, err := m.List(ctx, 3); err != nil {
		t.Fatal(err)
	}
	want := []string{"append " + id.String(), "stat " + id.String(), "append " + other.String(), "list v3-e0-s0-k0"}
	if len(calls) != len(want) {
		t.Fatalf("fault hook calls = %q; want %q", calls, want)
	}
	for i := range want {
		if calls[i] != want[i] {
			t.Fatalf("fault hook calls = %q; want %q", calls, want)
		}
	}

	// Each operation can be failed.
	for _, op := range []string{storage.OpSync, storage.OpRead, storage.OpStat, storage.OpList, storage.OpDelete} {
		m.SetFault(func(o string, _ torus.SegmentID) error {
			if o == op {
				return boom
			}
			return nil
		})
		var err error
		switch op {
		case storage.OpSync:
			_, err = m.Sync(ctx, other)
		case storage.OpRead:
			_, err = m.ReadAt(ctx, other, make([]byte, 3), 0)
		case storage.OpStat:
			_, err = m.Stat(ctx, other)
		case storage.OpList:
			_, err = m.List(ctx, 0)
		case storage.OpDelete:
			err = m.Delete(ctx, other)
		}
		if !errors.Is(err, boom) {
			t.Errorf("%s with a fault: %v; want the injected error", op, err)
		}
	}
	// A failed Delete deleted nothing.
	m.SetFault(nil)
	p := make([]byte, 3)
	if _, err := m.ReadAt(ctx, other, p, 0); err != nil || !bytes.Equal(p, []byte("abc")) {
		t.Fatalf("after failed Delete: ReadAt = %q, %v", p, err)
	}
}

// TestMemoryCrashTorn: after a torn crash every synced byte is intact, a
// segment is never longer than before, anything that differs from what was
// appended lies past the synced length, Synced = Length, Usage matches, the
// same seed gives the same outcome, and over the seeds the unsynced tails
// are dropped, kept in part, zeroed and filled with garbage.
func TestMemoryCrashTorn(t *testing.T) {
	ctx := context.Background()
	ids := []torus.SegmentID{
		{Volume: 1, Epoch: 1, Seq: 1}, {Volume: 1, Epoch: 1, Seq: 2}, {Volume: 2, Epoch: 3, Seq: 1},
		{Volume: 2, Epoch: 3, Seq: 1, Kind: torus.KindCheckpoint},
	}
	// Segment i: synced[i] bytes synced, then 1000 more appended.
	synced := []int{0, 500, 1000, 4096}
	build := func() *storage.Memory {
		m := storage.NewMemory(0)
		for i, id := range ids {
			if synced[i] > 0 {
				if err := m.Append(ctx, id, 0, storagetest.Pattern(id.Seq, 0, synced[i])); err != nil {
					t.Fatal(err)
				}
				if _, err := m.Sync(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			if err := m.Append(ctx, id, int64(synced[i]), storagetest.Pattern(id.Seq, int64(synced[i]), 1000)); err != nil {
				t.Fatal(err)
			}
		}
		return m
	}
	contents := func(m *storage.Memory) map[torus.SegmentID][]byte {
		out := map[torus.SegmentID][]byte{}
		var total int64
		for _, id := range ids {
			info, err := m.Stat(ctx, id)
			if errors.Is(err, torus.ErrNotExist) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			if info.Synced != info.Length {
				t.Fatalf("%s after a torn crash: %+v; want Synced = Length", id, info)
			}
			p := make([]byte, info.Length)
			if _, err := m.ReadAt(ctx, id, p, 0); err != nil {
				t.Fatal(err)
			}
			out[id] = p
			total += info.Length
		}
		if u := m.Usage(); u.Used != total {
			t.Fatalf("Usage after a torn crash = %+v; want Used %d", u, total)
		}
		return out
	}
	outcomes := map[string]bool{}
	for seed := range uint64(100) {
		m := build()
		m.CrashTorn(seed)
		got := contents(m)
		n := build()
		n.CrashTorn(seed)
		again := contents(n)
		for i, id := range ids {
			p, ok := got[id]
			if !bytes.Equal(p, again[id]) || ok != (again[id] != nil) {
				t.Fatalf("seed %d: %s differs between two crashes with the same seed", seed, id)
			}
			if !ok {
				if synced[i] > 0 {
					t.Fatalf("seed %d: %s lost; %d bytes were synced", seed, id, synced[i])
				}
				outcomes["dropped"] = true
				continue
			}
			want := storagetest.Pattern(id.Seq, 0, synced[i]+1000)
			if len(p) < synced[i] || len(p) > len(want) {
				t.Fatalf("seed %d: %s has %d bytes; want %d..%d", seed, id, len(p), synced[i], len(want))
			}
			if !bytes.Equal(p[:synced[i]], want[:synced[i]]) {
				t.Fatalf("seed %d: %s: synced bytes changed", seed, id)
			}
			tail, appended := p[synced[i]:], want[synced[i]:len(p)]
			switch {
			case len(tail) == 0:
				outcomes["dropped"] = true
			case bytes.Equal(tail, appended):
				outcomes["partial"] = true
			case tail[len(tail)-1] == 0 && appended[len(tail)-1] != 0:
				outcomes["zeros"] = true
			default:
				outcomes["garbage"] = true
			}
		}
	}
	if len(outcomes) != 4 {
		t.Fatalf("tails over 100 seeds: %v; want dropped, partial, zeros and garbage", outcomes)
	}
	// The store goes on after the crash.
	m := build()
	m.CrashTorn(7)
	info, err := m.Stat(ctx, ids[2])
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Append(ctx, ids[2], info.Length, []byte("more")); err != nil {
		t.Fatalf("Append after a torn crash: %v", err)
	}
}
