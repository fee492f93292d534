package volume

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/metadata"
)

// model is a volume as a plain byte slice.
type model []byte

// workload runs random writes, zeroes, trims and flushes against v and m
// and checks reads against the model.
func workload(t *testing.T, ctx context.Context, v *Volume, m model, r *rand.Rand, ops int) {
	t.Helper()
	size := int64(len(m))
	for i := 0; i < ops; i++ {
		off := r.Int64N(size)
		if r.IntN(2) == 0 {
			off = off / torus.BlockSize * torus.BlockSize
		}
		maxLen := min(size-off, 64<<10)
		n := 1 + r.Int64N(maxLen)
		if r.IntN(2) == 0 && n > torus.BlockSize {
			n = n / torus.BlockSize * torus.BlockSize
		}
		switch k := r.IntN(10); {
		case k < 6:
			p := make([]byte, n)
			for j := range p {
				p[j] = byte(r.Uint32())
			}
			if err := v.WriteAt(ctx, p, off, r.IntN(20) == 0); err != nil {
				t.Fatalf("op %d write [%d,+%d): %v", i, off, n, err)
			}
			copy(m[off:], p)
		case k < 7:
			if err := v.Trim(ctx, off, n); err != nil {
				t.Fatalf("op %d trim: %v", i, err)
			}
			clear(m[off : off+n])
		case k < 8:
			if err := v.WriteZeroes(ctx, off, n, false); err != nil {
				t.Fatalf("op %d zero: %v", i, err)
			}
			clear(m[off : off+n])
		case k < 9:
			if err := v.Flush(ctx); err != nil {
				t.Fatalf("op %d flush: %v", i, err)
			}
		default:
			got := make([]byte, n)
			if err := v.ReadAt(ctx, got, off); err != nil {
				t.Fatalf("op %d read: %v", i, err)
			}
			if !bytes.Equal(got, m[off:off+n]) {
				t.Fatalf("op %d read [%d,+%d) differs from the model", i, off, n)
			}
		}
	}
}

// verify reads the whole volume and compares it with the model, and checks
// that Extents agree with the data.
func verify(t *testing.T, ctx context.Context, v *Volume, m model) {
	t.Helper()
	got := make([]byte, len(m))
	if err := v.ReadAt(ctx, got, 0); err != nil {
		t.Fatalf("read all: %v", err)
	}
	if !bytes.Equal(got, m) {
		for i := range got {
			if got[i] != m[i] {
				t.Fatalf("volume differs from the model at byte %d (block %d)", i, i/torus.BlockSize)
			}
		}
	}
	ext, err := v.Extents(ctx, 0, int64(len(m)))
	if err != nil {
		t.Fatal(err)
	}
	var at int64
	for _, e := range ext {
		if e.Offset != at || e.Length <= 0 {
			t.Fatalf("extent %+v at %d", e, at)
		}
		if e.Zero && !allZero(m[e.Offset:e.Offset+e.Length]) {
			t.Fatalf("extent %+v reported zero holds data", e)
		}
		at += e.Length
	}
	if at != int64(len(m)) {
		t.Fatalf("extents cover %d of %d", at, len(m))
	}
}

func allZero(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

func TestModel(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, checkpointEvery: 2})
	const size = 4 << 20
	c.create("vol", size, 0)
	v := c.open("vol", Options{Owner: "test"})
	m := make(model, size)
	r := rand.New(rand.NewPCG(1, 2))
	workload(t, ctx, v, m, r, 600)
	verify(t, ctx, v, m)
	st := v.Stats()
	if st.SegmentsSealed == 0 || st.Checkpoints == 0 {
		t.Errorf("workload did not roll segments or checkpoint: %+v", st)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// Reopen: everything is there (Close flushed).
	v = c.open("vol", Options{Owner: "test2"})
	defer v.Close(ctx)
	verify(t, ctx, v, m)
	workload(t, ctx, v, m, r, 200)
	verify(t, ctx, v, m)
	if err := v.idx.check(); err != nil {
		t.Fatal(err)
	}
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2})
	c.create("vol", 1<<20, 0)
	v := c.open("vol", Options{Owner: "alice@host pid 1"})
	defer v.Close(ctx)
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"read past end", v.ReadAt(ctx, make([]byte, 10), 1<<20-5)},
		{"read negative", v.ReadAt(ctx, make([]byte, 10), -1)},
		{"write past end", v.WriteAt(ctx, make([]byte, 4096), 1<<20, false)},
		{"trim past end", v.Trim(ctx, 0, 1<<20+1)},
		{"zero negative length", v.WriteZeroes(ctx, 10, -1, false)},
	} {
		if !errors.Is(tc.err, torus.ErrOutOfRange) {
			t.Errorf("%s: %v, want ErrOutOfRange", tc.name, tc.err)
		}
	}
	if _, err := v.Extents(ctx, 0, 1<<21); !errors.Is(err, torus.ErrOutOfRange) {
		t.Errorf("extents: %v", err)
	}
	// A second writer learns who holds the volume.
	_, err := Open(ctx, c.deps(), "vol", Options{Owner: "bob"})
	var le *torus.LockedError
	if !errors.As(err, &le) || !errors.Is(err, torus.ErrLocked) || le.Holder != "alice@host pid 1" {
		t.Fatalf("second writer: %v", err)
	}
	// Read-only opens refuse writes.
	ro := c.open("vol", Options{ReadOnly: true})
	defer ro.Close(ctx)
	if !ro.ReadOnly() {
		t.Fatal("not read-only")
	}
	for _, err := range []error{
		ro.WriteAt(ctx, make([]byte, 1), 0, false),
		ro.Trim(ctx, 0, 4096),
		ro.WriteZeroes(ctx, 0, 4096, true),
		ro.Snapshot(ctx, "s"),
	} {
		if !errors.Is(err, torus.ErrReadOnly) {
			t.Errorf("read-only write: %v", err)
		}
	}
	if _, err := Open(ctx, c.deps(), "nope", Options{}); !errors.Is(err, torus.ErrNotExist) {
		t.Errorf("missing volume: %v", err)
	}
	if err := v.Snapshot(ctx, "Bad Name"); !errors.Is(err, torus.ErrInvalid) {
		t.Errorf("bad snapshot name: %v", err)
	}
	// After Close everything fails with ErrClosed, and Close is idempotent.
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.ReadAt(ctx, make([]byte, 1), 0); !errors.Is(err, torus.ErrClosed) {
		t.Errorf("read after close: %v", err)
	}
	// The lock was released at once.
	w := c.open("vol", Options{Owner: "bob"})
	w.Close(ctx)
}

// TestGrow: a size change in the metadata reaches an open writer, which
// then accepts I/O in the new range; a reopen sees the data.
func TestGrow(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2})
	info := c.create("vol", 1<<20, 0)
	v := c.open("vol", Options{})
	defer v.Close(ctx)
	p := bytes.Repeat([]byte{9}, 4096)
	if err := v.WriteAt(ctx, p, 1<<20, false); !errors.Is(err, torus.ErrOutOfRange) {
		t.Fatalf("write past the end: %v", err)
	}
	info.Size = 2 << 20
	if err := c.meta.UpdateVolume(ctx, info); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for v.Size() != 2<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("size still %d", v.Size())
		}
		time.Sleep(time.Millisecond)
	}
	if err := v.WriteAt(ctx, p, 2<<20-4096, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	v2 := c.open("vol", Options{ReadOnly: true})
	defer v2.Close(ctx)
	got := make([]byte, 4096)
	if err := v2.ReadAt(ctx, got, 2<<20-4096); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("grown range after reopen: %v", err)
	}
}

// TestNoPeers: a cluster without ring members opens volumes, reads zeros,
// and fails writes with ErrUnavailable.
func TestNoPeers(t *testing.T) {
	ctx := context.Background()
	full := newCluster(t, clusterOpts{replication: 2})
	c := &cluster{t: t, meta: metadata.NewMemory(), locals: full.locals, stores: full.stores,
		down: map[string]bool{}, corrupt: map[string]bool{}}
	if err := c.meta.InitCluster(ctx, torus.ClusterConfig{Replication: 2, SegmentSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	c.create("vol", 1<<20, 0)
	v := c.open("vol", Options{RetryFor: 500 * time.Millisecond})
	defer v.Close(ctx)
	if err := v.ReadAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, make([]byte, 4096), 0, false); !errors.Is(err, torus.ErrUnavailable) {
		t.Fatalf("write without peers: %v", err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatalf("flush with nothing written: %v", err)
	}
}

// TestShortSessions: many open/write/close cycles keep the head small
// (checkpoints at Close when due) and the data intact.
func TestShortSessions(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2, checkpointEvery: 3})
	c.create("vol", 1<<20, 0)
	m := make(model, 1<<20)
	r := rand.New(rand.NewPCG(81, 82))
	for i := 0; i < 10; i++ {
		v := c.open("vol", Options{})
		workload(t, ctx, v, m, r, 5)
		if err := v.Close(ctx); err != nil {
			t.Fatal(err)
		}
		h, err := c.meta.Head(ctx, "vol")
		if err != nil {
			t.Fatal(err)
		}
		if len(h.Sealed) >= 3 || h.Open != nil {
			t.Fatalf("session %d: head has %d sealed segments, open %v", i, len(h.Sealed), h.Open)
		}
	}
	v := c.open("vol", Options{ReadOnly: true})
	verify(t, ctx, v, m)
	v.Close(ctx)
}
