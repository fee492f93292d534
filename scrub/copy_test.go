package scrub_test

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/scrub"
)

// dstBytes reads the destination's whole copy of seg.
func (f *copyFixture) dstBytes(t *testing.T, seg torus.SegmentID) []byte {
	t.Helper()
	ctx := context.Background()
	info, err := f.dst.Stat(ctx, seg)
	if errors.Is(err, torus.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, info.Length)
	if _, err := f.dst.ReadAt(ctx, seg, p, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

// failingDst fails every append at or past failAt, and counts the appends
// started and the waits called (each wait must be called exactly once).
type failingDst struct {
	torus.PeerService
	failAt          int64
	started, waited atomic.Int64
}

func (d *failingDst) Append(ctx context.Context, epoch uint64, seg torus.SegmentID, off int64, p []byte) error {
	return d.AppendAsync(ctx, epoch, seg, off, p)()
}

func (d *failingDst) AppendAsync(ctx context.Context, epoch uint64, seg torus.SegmentID, off int64, p []byte) func() error {
	d.started.Add(1)
	var wait func() error
	if off+int64(len(p)) > d.failAt {
		wait = func() error { return torus.ErrNoSpace }
	} else {
		wait = d.PeerService.AppendAsync(ctx, epoch, seg, off, p)
	}
	var once atomic.Bool
	return func() error {
		if !once.CompareAndSwap(false, true) {
			panic("wait called twice")
		}
		d.waited.Add(1)
		return wait()
	}
}

// TestCopy: scrub.Copy over the real peer protocol to an on-disk store
// copies every byte, durably; resumes a prefix; sends nothing past a bad
// record of the source (though it streams: what verified before it is
// sent); and a failing destination fails the copy with every append
// answered.
func TestCopy(t *testing.T) {
	ctx := context.Background()
	f := newCopyFixture(t, 8<<20, 40<<20)
	if len(f.segs) < 2 {
		t.Fatalf("%d sealed segments, want 2", len(f.segs))
	}
	s := f.segs[0]
	src := f.c.locals[s.holder]
	want := f.c.copyBytes(s.holder, s.id, s.length)

	t.Run("full", func(t *testing.T) {
		var copied atomic.Int64
		n, err := scrub.Copy(ctx, src, f.dst, s.id, s.length, f.nblocks, scrub.CopyOptions{Copied: func(n int64) { copied.Add(n) }})
		if err != nil || n != s.length || copied.Load() != s.length {
			t.Fatalf("Copy = %d, %v (copied %d), want %d", n, err, copied.Load(), s.length)
		}
		if got := f.dstBytes(t, s.id); !bytes.Equal(got, want) {
			t.Fatalf("destination holds %d bytes, not the source's %d", len(got), len(want))
		}
		info, err := f.dst.Stat(ctx, s.id)
		if err != nil || info.Synced < s.length {
			t.Fatalf("destination synced to %d (%v), want %d", info.Synced, err, s.length)
		}
	})
	t.Run("resume", func(t *testing.T) {
		if err := f.dst.Delete(ctx, s.id); err != nil {
			t.Fatal(err)
		}
		have := s.length/3 + 7
		if err := f.dst.Append(ctx, torus.RepairEpoch, s.id, 0, want[:have]); err != nil {
			t.Fatal(err)
		}
		n, err := scrub.Copy(ctx, src, f.dst, s.id, s.length, f.nblocks, scrub.CopyOptions{})
		if err != nil || n != s.length-have {
			t.Fatalf("Copy = %d, %v, want %d", n, err, s.length-have)
		}
		if got := f.dstBytes(t, s.id); !bytes.Equal(got, want) {
			t.Fatal("resumed copy differs from the source")
		}
	})
	t.Run("failing destination", func(t *testing.T) {
		if err := f.dst.Delete(ctx, s.id); err != nil {
			t.Fatal(err)
		}
		d := &failingDst{PeerService: f.dst, failAt: s.length / 2}
		n, err := scrub.Copy(ctx, src, d, s.id, s.length, f.nblocks, scrub.CopyOptions{})
		if !errors.Is(err, torus.ErrNoSpace) || n > s.length/2 {
			t.Fatalf("Copy = %d, %v, want at most %d and ErrNoSpace", n, err, s.length/2)
		}
		if d.started.Load() == 0 || d.started.Load() != d.waited.Load() {
			t.Fatalf("%d appends started, %d answered", d.started.Load(), d.waited.Load())
		}
		if got := f.dstBytes(t, s.id); !bytes.Equal(got, want[:len(got)]) {
			t.Fatal("the destination's prefix differs from the source")
		}
	})
	t.Run("bad source", func(t *testing.T) {
		b := f.segs[1]
		bad := b.length * 3 / 4
		f.c.flip(b.holder, b.id, bad)
		_, err := scrub.Copy(ctx, f.c.locals[b.holder], f.dst, b.id, b.length, f.nblocks, scrub.CopyOptions{})
		var ce *scrub.CopyError
		if !errors.As(err, &ce) || ce.Destination || !errors.Is(err, torus.ErrCorrupt) {
			t.Fatalf("Copy of a bad source = %v, want a source *CopyError", err)
		}
		got := f.dstBytes(t, b.id)
		if int64(len(got)) > bad {
			t.Fatalf("destination holds %d bytes, past the bad byte at %d", len(got), bad)
		}
		if len(got) == 0 {
			t.Fatal("nothing sent: the verified prefix before the bad record should stream")
		}
		if !bytes.Equal(got, f.c.copyBytes(b.holder, b.id, int64(len(got)))) {
			t.Fatal("the destination's prefix differs from the source")
		}
	})
	t.Run("checkpoint", func(t *testing.T) {
		// A checkpoint verifies only whole: nothing is sent before the
		// end, then all of it.
		if len(f.ckpts) == 0 {
			t.Fatal("the volume has no checkpoint segment")
		}
		k := f.ckpts[0]
		n, err := scrub.Copy(ctx, f.c.locals[k.holder], f.dst, k.id, k.length, f.nblocks, scrub.CopyOptions{})
		if err != nil || n != k.length {
			t.Fatalf("Copy of a checkpoint = %d, %v, want %d", n, err, k.length)
		}
		if got := f.dstBytes(t, k.id); !bytes.Equal(got, f.c.copyBytes(k.holder, k.id, k.length)) {
			t.Fatal("the checkpoint's copy differs")
		}
	})
	t.Run("check missing", func(t *testing.T) {
		missing := torus.SegmentID{Volume: s.id.Volume, Kind: torus.KindData, Seq: 1 << 40}
		c, err := scrub.Check(ctx, f.dst, missing, 1<<20, f.nblocks, nil)
		if err != nil || c.OK() || c.Length != 0 {
			t.Fatalf("Check of a missing copy = %+v, %v; want an empty, incomplete copy", c, err)
		}
	})
}
