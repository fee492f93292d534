package volume

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/volume/lsm"
)

// modelIndex is the obviously-correct index: a slice of locations.
type modelIndex []*Location

func TestIndexAgainstModel(t *testing.T) {
	const nblocks = 2000
	r := rand.New(rand.NewPCG(3, 4))
	x := NewIndex(nblocks)
	m := make(modelIndex, nblocks)
	for s := 0; s < 5; s++ {
		x.AddSegment(torus.SegmentID{Volume: 1, Epoch: 1, Seq: uint64(s)})
	}
	for op := 0; op < 3000; op++ {
		first := uint64(r.IntN(nblocks))
		n := uint64(1 + r.IntN(600))
		if first+n > nblocks {
			n = nblocks - first
		}
		if r.IntN(4) == 0 {
			x.Unmap(first, n)
			for b := first; b < first+n; b++ {
				m[b] = nil
			}
		} else {
			slot := uint32(r.IntN(5))
			off := int64(r.IntN(1000)) * 4140
			crcs := make([]uint32, n)
			for i := range crcs {
				crcs[i] = r.Uint32()
				m[first+uint64(i)] = &Location{Slot: slot, Offset: off + int64(i)*torus.BlockSize, CRC: crcs[i]}
			}
			x.Map(first, slot, off, crcs)
		}
		if op%100 == 0 {
			if err := x.check(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := x.check(); err != nil {
		t.Fatal(err)
	}
	var mapped int64
	live := make([]int64, 5)
	for b := uint64(0); b < nblocks; b++ {
		loc, ok := x.Lookup(b)
		if ok != (m[b] != nil) || ok && loc != *m[b] {
			t.Fatalf("block %d: %v %v, model %v", b, loc, ok, m[b])
		}
		if ok {
			mapped++
			live[loc.Slot]++
		}
	}
	if x.Mapped() != mapped {
		t.Fatalf("mapped %d, model %d", x.Mapped(), mapped)
	}
	lb := x.LiveBytes()
	for s := 0; s < 5; s++ {
		if lb[x.Slot(uint32(s)).Ref.ID] != live[s]*torus.BlockSize {
			t.Fatalf("slot %d live bytes %d, model %d blocks", s, lb[x.Slot(uint32(s)).Ref.ID], live[s])
		}
	}
	// Extents cover any range exactly and agree with the model.
	for i := 0; i < 200; i++ {
		first := uint64(r.IntN(nblocks))
		n := uint64(1 + r.IntN(nblocks-int(first)))
		ext := x.Extents(first, n)
		b := first
		for j, e := range ext {
			if e.First != b || e.Count == 0 {
				t.Fatalf("extent %d %+v at %d", j, e, b)
			}
			if j > 0 && ext[j-1].Mapped == e.Mapped {
				t.Fatalf("extents %d,%d not alternating", j-1, j)
			}
			for k := e.First; k < e.First+e.Count; k++ {
				if (m[k] != nil) != e.Mapped {
					t.Fatalf("extent %+v wrong at %d", e, k)
				}
			}
			b += e.Count
		}
		if b != first+n {
			t.Fatalf("extents end at %d, want %d", b, first+n)
		}
	}
}

func TestIndexLazyChunks(t *testing.T) {
	x := NewIndex(1 << 30) // 4 TiB of blocks, nothing allocated
	if len(x.chunks) != 0 {
		t.Fatal("chunks allocated up front")
	}
	s := x.AddSegment(torus.SegmentID{Volume: 1})
	x.Map(1<<29, s, 0, []uint32{1})
	if len(x.chunks) != 1 {
		t.Fatalf("%d chunks after one write", len(x.chunks))
	}
	x.Unmap(0, 1<<30)
	if len(x.chunks) != 0 || x.Mapped() != 0 {
		t.Fatalf("trim left %d chunks", len(x.chunks))
	}
	ext := x.Extents(0, 1<<20)
	if len(ext) != 1 || ext[0].Mapped || ext[0].Count != 1<<20 {
		t.Fatalf("extents %+v", ext)
	}
}

func sampleIndex() (*Index, []torus.SegmentRef) {
	x := NewIndex(5000)
	refs := []torus.SegmentRef{
		{ID: torus.SegmentID{Volume: 9, Epoch: 1, Seq: 0}, Length: 1 << 20},
		{ID: torus.SegmentID{Volume: 9, Epoch: 2, Seq: 1}, Length: 1 << 20},
		{ID: torus.SegmentID{Volume: 9, Epoch: 2, Seq: 2}, Length: 1 << 20},
	}
	for _, r := range refs {
		x.SetLength(x.AddSegment(r.ID), r.Length)
	}
	crcs := func(n int, seed uint32) []uint32 {
		c := make([]uint32, n)
		for i := range c {
			c[i] = seed + uint32(i)
		}
		return c
	}
	x.Map(0, 0, 44, crcs(10, 100))
	x.Map(5, 2, 4140*3, crcs(3, 200))     // splits the first run
	x.Map(300, 2, 8192, crcs(100, 300))   // crosses a chunk boundary
	x.Map(4999, 0, 40000, crcs(1, 400))   // last block
	x.Map(1000, 1, 0, crcs(50, 500))      // then fully overwritten:
	x.Map(1000, 2, 500000, crcs(50, 600)) // slot 1 has no live blocks
	return x, refs
}

func TestCheckpointRoundTrip(t *testing.T) {
	x, refs := sampleIndex()
	p := EncodeCheckpoint(9, 5000*torus.BlockSize, x)
	ck, err := DecodeCheckpoint(p, OnlyVolume(9), 6000)
	if err != nil {
		t.Fatal(err)
	}
	// Slot 1 had no live blocks: dropped from the table.
	if want := []torus.SegmentRef{refs[0], refs[2]}; !reflect.DeepEqual(ck.Segments, want) {
		t.Fatalf("table %v, want %v", ck.Segments, want)
	}
	if ck.Size != 5000*torus.BlockSize || ck.Index.Blocks() != 6000 {
		t.Fatalf("size %d blocks %d", ck.Size, ck.Index.Blocks())
	}
	if err := ck.Index.check(); err != nil {
		t.Fatal(err)
	}
	for b := uint64(0); b < 5000; b++ {
		a, aok := x.Lookup(b)
		c, cok := ck.Index.Lookup(b)
		if aok != cok {
			t.Fatalf("block %d mapped %v vs %v", b, aok, cok)
		}
		if !aok {
			continue
		}
		if x.Slot(a.Slot).Ref != ck.Index.Slot(c.Slot).Ref || a.Offset != c.Offset || a.CRC != c.CRC {
			t.Fatalf("block %d: %+v vs %+v", b, a, c)
		}
	}
	// Re-encoding the decoded index gives the same bytes.
	if q := EncodeCheckpoint(9, 5000*torus.BlockSize, ck.Index); !bytes.Equal(p, q) {
		t.Fatal("re-encoding differs")
	}
}

func TestCheckpointCorrupt(t *testing.T) {
	x, _ := sampleIndex()
	p := EncodeCheckpoint(9, 5000*torus.BlockSize, x)
	if _, err := DecodeCheckpoint(p, OnlyVolume(8), 6000); !errors.Is(err, torus.ErrCorrupt) {
		t.Fatalf("wrong volume: %v", err)
	}
	if _, err := DecodeCheckpoint(p, OnlyVolume(9), 4000); !errors.Is(err, torus.ErrCorrupt) {
		t.Fatalf("smaller volume: %v", err)
	}
	for i := 0; i < len(p); i += 7 {
		bad := bytes.Clone(p)
		bad[i] ^= 4
		if _, err := DecodeCheckpoint(bad, OnlyVolume(9), 6000); !errors.Is(err, torus.ErrCorrupt) {
			t.Fatalf("flip at %d: %v", i, err)
		}
	}
	for _, n := range []int{0, 10, 44, len(p) - 1} {
		if _, err := DecodeCheckpoint(p[:n], OnlyVolume(9), 6000); !errors.Is(err, torus.ErrCorrupt) {
			t.Fatalf("truncated to %d: %v", n, err)
		}
	}
}

func FuzzDecodeCheckpoint(f *testing.F) {
	x, _ := sampleIndex()
	f.Add(EncodeCheckpoint(9, 5000*torus.BlockSize, x))
	f.Add(EncodeCheckpoint(9, 0, NewIndex(0)))
	f.Add([]byte("TRSC"))
	f.Add(sampleRunCheckpoint(x))
	f.Fuzz(func(t *testing.T, p []byte) {
		ck, err := DecodeCheckpoint(p, OnlyVolume(9), 6000)
		if err != nil {
			if !errors.Is(err, torus.ErrCorrupt) {
				t.Fatalf("error not classified corrupt: %v", err)
			}
			return
		}
		if ck.Runs != nil {
			// A version 3 checkpoint re-encodes to the same bytes.
			if q := EncodeRunCheckpoint(ck.Runs); !bytes.Equal(p, q) {
				t.Fatalf("version 3 checkpoint re-encodes differently")
			}
			return
		}
		if err := ck.Index.check(); err != nil {
			t.Fatal(err)
		}
		// A decoded checkpoint re-encodes and decodes to the same index.
		q := EncodeCheckpoint(9, ck.Size, ck.Index)
		ck2, err := DecodeCheckpoint(q, OnlyVolume(9), 6000)
		if err != nil {
			t.Fatalf("re-encoded checkpoint does not decode: %v", err)
		}
		if ck2.Index.Mapped() != ck.Index.Mapped() {
			t.Fatalf("mapped %d vs %d", ck2.Index.Mapped(), ck.Index.Mapped())
		}
	})
}

func TestIndexMove(t *testing.T) {
	x := NewIndex(100)
	src := x.AddSegment(torus.SegmentID{Volume: 1, Seq: 1})
	dst := x.AddSegment(torus.SegmentID{Volume: 1, Seq: 2})
	x.Map(10, src, 1000, []uint32{1, 2, 3, 4})
	x.Map(12, dst, 0, []uint32{9}) // a later write of block 12
	moved := x.Move(10, src, 1000, dst, 5000, []uint32{1, 2, 3, 4})
	if moved != 3 {
		t.Fatalf("moved %d, want 3", moved)
	}
	for b, want := range map[uint64]Location{
		10: {dst, 5000, 1}, 11: {dst, 5000 + 4096, 2}, 12: {dst, 0, 9}, 13: {dst, 5000 + 3*4096, 4},
	} {
		if got, _ := x.Lookup(b); got != want {
			t.Fatalf("block %d: %+v, want %+v", b, got, want)
		}
	}
	if x.Slot(src).Live != 0 || x.Slot(dst).Live != 4 {
		t.Fatalf("live %d/%d", x.Slot(src).Live, x.Slot(dst).Live)
	}
	if err := x.check(); err != nil {
		t.Fatal(err)
	}
}

// sampleRunCheckpoint is x as a version 3 checkpoint with nothing below.
func sampleRunCheckpoint(x *Index) []byte {
	run, err := lsm.Encode(9, x.Delta())
	if err != nil {
		panic(err)
	}
	return EncodeRunCheckpoint(&RunCheckpoint{VolumeID: 9, Size: 5000 * torus.BlockSize, Segments: x.LiveTable(), Run: run})
}
