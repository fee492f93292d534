package lsm

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/torus-storage/torus"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// memRun is a run held in memory, read as a segment would be.
type memRun []byte

func (m memRun) ReadAt(_ context.Context, p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > int64(len(m)) {
		return fmt.Errorf("read of %d at %d past %d bytes: %w", len(p), off, len(m), torus.ErrCorrupt)
	}
	copy(p, m[off:])
	return nil
}

func seg(seq uint64) torus.SegmentID {
	return torus.SegmentID{Volume: 7, Epoch: 3, Seq: seq, Kind: torus.KindData}
}

func mapped(first uint64, count uint32, s torus.SegmentID, off int64) Extent {
	crcs := make([]uint32, count)
	for i := range crcs {
		crcs[i] = uint32(first)*2654435761 + uint32(i)
	}
	return Extent{First: first, Count: count, Seg: s, Off: off, CRCs: crcs}
}

// goldenExtents is the run pinned by testdata/run.golden: mapped extents
// in two segments, a hole, a gap, and a block far out.
func goldenExtents() []Extent {
	return []Extent{
		mapped(0, 3, seg(1), 0),
		{First: 3, Count: 5, Hole: true},
		mapped(10, 1, seg(2), 4096*9),
		mapped(11, 2, seg(1), 4096*3),
		mapped(1<<40, 1, seg(2), 1<<30),
	}
}

func TestRunGolden(t *testing.T) {
	b, err := Encode(7, goldenExtents())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "run.golden")
	if *update {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("run encoding changed (%d bytes, golden %d): a change of the run format needs a new RunVersion; rerun with -update only for a deliberate format change", len(b), len(want))
	}
	// The golden bytes decode to the extents they were made from.
	r, err := Open(context.Background(), memRun(want), int64(len(want)), 1, nil, AnyVolume)
	if err != nil {
		t.Fatal(err)
	}
	got, err := r.All(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !equalExtents(got, goldenExtents()) {
		t.Fatalf("golden run decodes to\n%v\nwant\n%v", got, goldenExtents())
	}
	if segs := r.Segments(); !slices.Equal(segs, []torus.SegmentID{seg(1), seg(2)}) {
		t.Fatalf("segment table %v", segs)
	}
	if r.Volume != 7 || r.First != 0 || r.End != 1<<40+1 || r.Extents != 5 {
		t.Fatalf("header: volume %d blocks [%d, %d) extents %d", r.Volume, r.First, r.End, r.Extents)
	}
}

func equalExtents(a, b []Extent) bool {
	return slices.EqualFunc(a, b, func(x, y Extent) bool {
		return x.First == y.First && x.Count == y.Count && x.Hole == y.Hole && x.Seg == y.Seg && x.Off == y.Off && slices.Equal(x.CRCs, y.CRCs)
	})
}

// randomExtents returns n sorted, non-overlapping extents with gaps, holes
// and long extents, so that a run of them spans several pages.
func randomExtents(rng *rand.Rand, n int, huge bool) []Extent {
	var es []Extent
	var next uint64
	for range n {
		next += uint64(rng.IntN(4))
		count := uint32(1 + rng.IntN(8))
		if huge && rng.IntN(50) == 0 {
			count = uint32(1 + rng.IntN(40000)) // larger than a page alone
		}
		if rng.IntN(5) == 0 {
			es = append(es, Extent{First: next, Count: count, Hole: true})
		} else {
			es = append(es, mapped(next, count, seg(uint64(rng.IntN(20))), int64(rng.IntN(1<<20))*BlockSize))
		}
		next += uint64(count) + 1 // +1: adjacent extents would not be joined by Encode, but keep them apart
	}
	return es
}

func TestRunRoundTrip(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 100, 20000} {
		es := randomExtents(rng, n, true)
		b, err := Encode(7, es)
		if err != nil {
			t.Fatal(err)
		}
		cache := NewCache(256 << 10) // smaller than the larger runs: evictions happen
		r, err := Open(ctx, memRun(b), int64(len(b)), uint64(n), cache, func(v uint64) bool { return v == 7 })
		if err != nil {
			t.Fatalf("%d extents: %v", n, err)
		}
		if n == 20000 && len(r.dir) < 4 {
			t.Fatalf("%d extents in %d bytes made %d pages; want several", n, len(b), len(r.dir))
		}
		got, err := r.All(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !equalExtents(got, es) {
			t.Fatalf("%d extents do not round-trip", n)
		}
		for range 2000 {
			var blk uint64
			if len(es) > 0 {
				blk = uint64(rng.Int64N(int64(es[len(es)-1].End() + 2)))
			}
			e, ok, err := r.Lookup(ctx, blk)
			if err != nil {
				t.Fatal(err)
			}
			i := slices.IndexFunc(es, func(e Extent) bool { return e.First <= blk && blk < e.End() })
			if ok != (i >= 0) || ok && !equalExtents([]Extent{e}, es[i:i+1]) {
				t.Fatalf("lookup of block %d: %v %v, want extent %d", blk, e, ok, i)
			}
		}
		if used, _, _ := cache.Stats(); used > 256<<10 {
			t.Fatalf("cache holds %d bytes, limit %d", used, 256<<10)
		}
	}
}

func TestEncodeRefusesBadExtents(t *testing.T) {
	cases := map[string][]Extent{
		"empty extent":     {{First: 1, Count: 0, Hole: true}},
		"overlap":          {mapped(0, 4, seg(1), 0), mapped(3, 1, seg(1), 0)},
		"unsorted":         {mapped(5, 1, seg(1), 0), mapped(0, 1, seg(1), 0)},
		"CRCs missing":     {{First: 0, Count: 2, Seg: seg(1), CRCs: []uint32{1}}},
		"hole with CRCs":   {{First: 0, Count: 1, Hole: true, CRCs: []uint32{1}}},
		"checkpoint named": {{First: 0, Count: 1, Seg: torus.SegmentID{Volume: 7, Seq: 1, Kind: torus.KindCheckpoint}, CRCs: []uint32{1}}},
		"negative offset":  {{First: 0, Count: 1, Seg: seg(1), Off: -4096, CRCs: []uint32{1}}},
	}
	for name, es := range cases {
		if _, err := Encode(7, es); err == nil {
			t.Errorf("%s: Encode accepted %v", name, es)
		}
	}
}

// openAll opens b as a run and reads every page: the whole of what a
// reader can be made to decode.
func openAll(b []byte) error {
	ctx := context.Background()
	r, err := Open(ctx, memRun(b), int64(len(b)), 1, nil, func(v uint64) bool { return v == 7 })
	if err != nil {
		return err
	}
	_, err = r.All(ctx)
	return err
}

// TestRunMalformed: every truncation and every flipped byte of a stored run
// is refused as corrupt, never misread and never a panic.
func TestRunMalformed(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	good, err := Encode(7, goldenExtents())
	if err != nil {
		t.Fatal(err)
	}
	// A run spanning pages, for the flips of the directory and trailers.
	many := randomExtents(rng, 6000, false)
	big, err := Encode(7, many)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range [][]byte{good, big} {
		if r, err := Open(context.Background(), memRun(b), int64(len(b)), 1, nil, AnyVolume); err != nil || len(b) > 4096 && len(r.dir) < 2 {
			t.Fatalf("the good run of %d bytes: %v", len(b), err)
		}
		if err := openAll(b); err != nil {
			t.Fatalf("the good run: %v", err)
		}
		for n := 0; n < len(b); n++ {
			if n > 4096 && n%97 != 0 {
				continue // the big run: a sample of its lengths
			}
			if err := openAll(b[:n]); !errors.Is(err, torus.ErrCorrupt) {
				t.Fatalf("run of %d bytes cut at %d: %v, want ErrCorrupt", len(b), n, err)
			}
		}
		for i := 0; i < len(b); i++ {
			if len(b) > 4096 && i > 2048 && i < len(b)-2048 && i%997 != 0 {
				continue
			}
			c := slices.Clone(b)
			c[i] ^= 1 << (i % 8)
			if err := openAll(c); !errors.Is(err, torus.ErrCorrupt) {
				t.Fatalf("run of %d bytes with byte %d flipped: %v, want ErrCorrupt", len(b), i, err)
			}
		}
	}
	// A run of another volume is refused.
	err = func() error {
		_, err := Open(context.Background(), memRun(good), int64(len(good)), 1, nil, func(v uint64) bool { return v == 8 })
		return err
	}()
	if !errors.Is(err, torus.ErrCorrupt) {
		t.Fatalf("run of volume 7 opened as volume 8's: %v", err)
	}
	// An unknown version is named.
	c := slices.Clone(good)
	c[4] = 9
	if err := openAll(c); err == nil || !bytes.Contains([]byte(err.Error()), []byte("unknown version 9")) {
		t.Fatalf("version 9: %v", err)
	}
}
