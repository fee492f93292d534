// Package storagetest is the conformance suite for torus.Store. Every store
// implementation runs it from its own tests:
//
//	func TestConformance(t *testing.T) {
//		storagetest.Run(t, func(t *testing.T, capacity int64) torus.Store {
//			return storage.NewMemory(capacity)
//		})
//	}
//
// The suite pins every outcome the contract documents: offsets and retries
// of Append (ErrConflict), short reads (io.EOF with n), missing segments
// (ErrNotExist), List per volume and for all, idempotent Delete, capacity
// (ErrNoSpace with nothing written), Close (ErrClosed), cancelled contexts,
// and concurrent use (run it with -race).
package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"
	"testing"

	"github.com/torus-storage/torus"
)

// NewStore returns a fresh, empty store holding at most capacity bytes
// (capacity is always > 0). The suite closes every store it gets, so any
// cleanup newStore registers must tolerate a closed store.
type NewStore func(t *testing.T, capacity int64) torus.Store

// DefaultCapacity is the capacity the suite asks for when a test does not
// exercise the limit.
const DefaultCapacity = 64 << 20

// Run runs the whole suite against stores made by newStore, each test in a
// subtest with its own store.
func Run(t *testing.T, newStore NewStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, newStore NewStore)
	}{
		{"AppendAndRead", testAppendAndRead},
		{"AppendWrongOffset", testAppendWrongOffset},
		{"AppendRetry", testAppendRetry},
		{"AppendEmpty", testAppendEmpty},
		{"AppendDoesNotRetainBuffer", testAppendDoesNotRetainBuffer},
		{"NegativeOffset", testNegativeOffset},
		{"ReadPastEnd", testReadPastEnd},
		{"MissingSegment", testMissingSegment},
		{"Sync", testSync},
		{"List", testList},
		{"Delete", testDelete},
		{"Capacity", testCapacity},
		{"Close", testClose},
		{"CancelledContext", testCancelledContext},
		{"ExtremeIDs", testExtremeIDs},
		{"ConcurrentAppendsAndReads", testConcurrent},
		{"RacingAppendsOneSegment", testRacingAppends},
		{"ConcurrentDeletes", testConcurrentDeletes},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore) })
	}
}

func open(t *testing.T, newStore NewStore, capacity int64) torus.Store {
	t.Helper()
	s := newStore(t, capacity)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func seg(vol, seq uint64) torus.SegmentID {
	return torus.SegmentID{Volume: vol, Epoch: 1, Seq: seq, Kind: torus.KindData}
}

// Pattern returns n deterministic bytes for (seed, off): the byte at
// position i is a function of seed and off+i, so any slice of a segment
// written with Pattern can be checked on its own.
func Pattern(seed uint64, off int64, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		x := uint64(off+int64(i))*0x9e3779b97f4a7c15 ^ seed*0xbf58476d1ce4e5b9
		x ^= x >> 29
		p[i] = byte(x)
	}
	return p
}

func mustAppend(t *testing.T, s torus.Store, id torus.SegmentID, off int64, p []byte) {
	t.Helper()
	if err := s.Append(context.Background(), id, off, p); err != nil {
		t.Fatalf("Append(%s, %d, %d bytes): %v", id, off, len(p), err)
	}
}

func readAll(t *testing.T, s torus.Store, id torus.SegmentID) []byte {
	t.Helper()
	info, err := s.Stat(context.Background(), id)
	if err != nil {
		t.Fatalf("Stat(%s): %v", id, err)
	}
	p := make([]byte, info.Length)
	n, err := s.ReadAt(context.Background(), id, p, 0)
	if err != nil || n != len(p) {
		t.Fatalf("ReadAt(%s, %d bytes at 0) = %d, %v; want %d, nil", id, len(p), n, err, len(p))
	}
	return p
}

func wantLength(t *testing.T, s torus.Store, id torus.SegmentID, want int64) {
	t.Helper()
	info, err := s.Stat(context.Background(), id)
	if err != nil {
		t.Fatalf("Stat(%s): %v", id, err)
	}
	if info.Length != want || info.ID != id {
		t.Fatalf("Stat(%s) = %+v; want ID %s, Length %d", id, info, id, want)
	}
}

func wantNotExist(t *testing.T, s torus.Store, id torus.SegmentID) {
	t.Helper()
	if info, err := s.Stat(context.Background(), id); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("Stat(%s) = %+v, %v; want ErrNotExist", id, info, err)
	}
}

func wantUsed(t *testing.T, s torus.Store, want int64) {
	t.Helper()
	if u := s.Usage(); u.Used != want {
		t.Fatalf("Usage().Used = %d; want %d (usage %+v)", u.Used, want, u)
	}
}

func testAppendAndRead(t *testing.T, newStore NewStore) {
	s := open(t, newStore, DefaultCapacity)
	ctx := context.Background()
	id := seg(1, 1)
	var want []byte
	for i, n := range []int{1, 4095, 4096, 100000, 7} {
		p := Pattern(1, int64(len(want)), n)
		mustAppend(t, s, id, int64(len(want)), p)
		want = append(want, p...)
		wantLength(t, s, id, int64(len(want)))
		if got := readAll(t, s, id); !bytes.Equal(got, want) {
			t.Fatalf("after append %d: segment content differs from what was appended", i)
		}
	}
	// A read in the middle.
	p := make([]byte, 5000)
	n, err := s.ReadAt(ctx, id, p, 3000)
	if err != nil || n != len(p) || !bytes.Equal(p, want[3000:8000]) {
		t.Fatalf("ReadAt(5000 bytes at 3000) = %d, %v (equal %v); want 5000, nil, equal",
			n, err, bytes.Equal(p, want[3000:8000]))
	}
	wantUsed(t, s, int64(len(want)))
	if u := s.Usage(); u.Capacity != DefaultCapacity {
		t.Fatalf("Usage().Capacity = %d; want %d", u.Capacity, DefaultCapacity)
	}
}

func testAppendWrongOffset(t *testing.T, newStore NewStore) {
	s := open(t, newStore, DefaultCapacity)
	ctx := context.Background()
	id := seg(1, 1)

	// The first append to a new segment must be at 0.
	if err := s.Append(ctx, id, 10, []byte("x")); !errors.Is(err, torus.ErrConflict) {
		t.Fatalf("Append at 10 to a new segment: %v; want ErrConflict", err)
	}
	wantNotExist(t, s, id)
	wantUsed(t, s, 0)

	mustAppend(t, s, id, 0, []byte("hello"))
	for _, off := range []int64{6, 100, math.MaxInt64 - 10} {
		if err := s.Append(ctx, id, off, []byte("x")); !errors.Is(err, torus.ErrConflict) {
			t.Fatalf("Append at %d past the end (length 5): %v; want ErrConflict", off, err)
		}
	}
	wantLength(t, s, id, 5)
	if got := readAll(t, s, id); string(got) != "hello" {
		t.Fatalf("content %q; want %q", got, "hello")
	}
}

func testAppendRetry(t *testing.T, newStore NewStore) {
	s := open(t, newStore, DefaultCapacity)
	ctx := context.Background()
	id := seg(1, 1)
	mustAppend(t, s, id, 0, []byte("hello"))
	mustAppend(t, s, id, 5, []byte(" world"))

	// Byte-identical retries of stored ranges succeed and change nothing.
	for _, r := range []struct {
		off int64
		p   string
	}{{0, "hello"}, {5, " world"}, {0, "hello world"}, {3, "lo w"}, {10, "d"}} {
		if err := s.Append(ctx, id, r.off, []byte(r.p)); err != nil {
			t.Fatalf("identical retry Append(%d, %q): %v; want nil", r.off, r.p, err)
		}
	}
	// A retry with different bytes, or one that runs past the end of the
	// stored bytes, is a conflict.
	for _, r := range []struct {
		off int64
		p   string
	}{{0, "HELLO"}, {5, " there"}, {10, "D"}, {6, "world!"}, {0, "hello world and more"}} {
		if err := s.Append(ctx, id, r.off, []byte(r.p)); !errors.Is(err, torus.ErrConflict) {
			t.Fatalf("Append(%d, %q) over %q: %v; want ErrConflict", r.off, r.p, "hello world", err)
		}
	}
	wantLength(t, s, id, 11)
	wantUsed(t, s, 11)
	if got := readAll(t, s, id); string(got) != "hello world" {
		t.Fatalf("content %q; want %q", got, "hello world")
	}
	// Appending continues at the end.
	mustAppend(t, s, id, 11, []byte("!"))
	if got := readAll(t, s, id); string(got) != "hello world!" {
		t.Fatalf("content %q; want %q", got, "hello world!")
	}
}

func testAppendEmpty(t *testing.T, newStore NewStore) {
	s := open(t, newStore, DefaultCapacity)
	ctx := context.Background()
	id := seg(1, 1)
	// An empty append creates nothing: a segment exists once something has
	// been appended to it.
	if err := s.Append(ctx, id, 0, nil); err != nil {
		t.Fatalf("empty Append to a new segment: %v", err)
	}
	wantNotExist(t, s, id)
	if l, err := s.List(ctx, 0); err != nil || len(l) != 0 {
		t.Fatalf("List after empty append = %v, %v; want nothing", l, err)
	}
	mustAppend(t, s, id, 0, []byte("abc"))
	for _, off := range []int64{0, 2, 3} {
		if err := s.Append(ctx, id, off, nil); err != nil {
			t.Fatalf("empty Append at %d (length 3): %v; want nil", off, err)
		}
	}
	if err := s.Append(ctx, id, 4, nil); !errors.Is(err, torus.ErrConflict) {
		t.Fatalf("empty Append at 4 (length 3): %v; want ErrConflict", err)
	}
	wantLength(t, s, id, 3)
}

func testAppendDoesNotRetainBuffer(t *testing.T, newStore NewStore) {
	s := open(t, newStore, DefaultCapacity)
	ctx := context.Background()
	id := seg(1, 1)
	p := []byte("original")
	mustAppend(t, s, id, 0, p)
	copy(p, "XXXXXXXX")
	if got := readAll(t, s, id); string(got) != "original" {
		t.Fatalf("content after the caller reused its buffer: %q; want %q", got, "original")
	}
	q := make([]byte, 8)
	if _, err := s.ReadAt(ctx, id, q, 0); err != nil {
		t.Fatal(err)
	}
	copy(q, "YYYYYYYY")
	if got := readAll(t, s, id); string(got) != "original" {
		t.Fatalf("content after the caller changed a read buffer: %q; want %q", got, "original")
	}
}

func testNegativeOffset(t *testing.T, newStore NewStore) {
	s := open(t, newStore, DefaultCapacity)
	ctx := context.Background()
	id := seg(1, 1)
	mustAppend(t, s, id, 0, []byte("abc"))
	if err := s.Append(ctx, id, -1, []byte("x")); !errors.Is(err, torus.ErrInvalid) {
		t.Fatalf("Append at -1: %v; want ErrInvalid", err)
	}
	if n, err := s.ReadAt(ctx, id, make([]byte, 1), -1); !errors.Is(err, torus.ErrInvalid) || n != 0 {
		t.Fatalf("ReadAt at -1 = %d, %v; want 0, ErrInvalid", n, err)
	}
	wantLength(t, s, id, 3)
}

func testReadPastEnd(t *testing.T, newStore NewStore) {
	s := open(t, newStore, DefaultCapacity)
	ctx := context.Background()
	id := seg(1, 1)
	data := Pattern(7, 0, 10000)
	mustAppend(t, s, id, 0, data)

	for _, r := range []struct {
		off   int64
		size  int
		wantN int
		eof   bool
	}{
		{0, 10000, 10000, false}, // exactly to the end
		{9000, 1000, 1000, false},
		{9000, 2000, 1000, true}, // straddles the end
		{0, 20000, 10000, true},
		{9999, 2, 1, true},
		{10000, 1, 0, true}, // at the end
		{10001, 10, 0, true},
		{1 << 40, 10, 0, true},
		{5000, 0, 0, false}, // empty read inside
	} {
		p := make([]byte, r.size)
		n, err := s.ReadAt(ctx, id, p, r.off)
		if n != r.wantN {
			t.Fatalf("ReadAt(%d bytes at %d) n = %d; want %d", r.size, r.off, n, r.wantN)
		}
		if r.eof && err != io.EOF {
			t.Fatalf("ReadAt(%d bytes at %d) err = %v; want io.EOF", r.size, r.off, err)
		}
		if !r.eof && err != nil {
			t.Fatalf("ReadAt(%d bytes at %d) err = %v; want nil", r.size, r.off, err)
		}
		if n > 0 && !bytes.Equal(p[:n], data[r.off:r.off+int64(n)]) {
			t.Fatalf("ReadAt(%d bytes at %d): wrong bytes", r.size, r.off)
		}
	}
}

func testMissingSegment(t *testing.T, newStore NewStore) {
	s := open(t, newStore, DefaultCapacity)
	ctx := context.Background()
	mustAppend(t, s, seg(1, 1), 0, []byte("abc"))
	for _, id := range []torus.SegmentID{seg(1, 2), seg(2, 1), {Volume: 1, Epoch: 1, Seq: 1, Kind: torus.KindCheckpoint}, {Volume: 1, Epoch: 2, Seq: 1}} {
		if n, err := s.ReadAt(ctx, id, make([]byte, 3), 0); !errors.Is(err, torus.ErrNotExist) || n != 0 {
			t.Errorf("ReadAt(%s) = %d, %v; want 0, ErrNotExist", id, n, err)
		}
		if _, err := s.Stat(ctx, id); !errors.Is(err, torus.ErrNotExist) {
			t.Errorf("Stat(%s): %v; want ErrNotExist", id, err)
		}
		if _, err := s.Sync(ctx, id); !errors.Is(err, torus.ErrNotExist) {
			t.Errorf("Sync(%s): %v; want ErrNotExist", id, err)
		}
	}
}

func testSync(t *testing.T, newStore NewStore) {
	s := open(t, newStore, DefaultCapacity)
	ctx := context.Background()
	id := seg(1, 1)
	mustAppend(t, s, id, 0, Pattern(1, 0, 1000))
	info, err := s.Stat(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if info.Synced < 0 || info.Synced > info.Length {
		t.Fatalf("Stat before Sync = %+v; want 0 <= Synced <= Length", info)
	}
	if n, err := s.Sync(ctx, id); err != nil || n != 1000 {
		t.Fatalf("Sync = %d, %v; want the durable length 1000", n, err)
	}
	if info, err := s.Stat(ctx, id); err != nil || info.Synced != 1000 || info.Length != 1000 {
		t.Fatalf("Stat after Sync = %+v, %v; want Length = Synced = 1000", info, err)
	}
	mustAppend(t, s, id, 1000, Pattern(1, 1000, 500))
	if info, err := s.Stat(ctx, id); err != nil || info.Synced < 1000 || info.Synced > 1500 || info.Length != 1500 {
		t.Fatalf("Stat after another append = %+v, %v; want Length 1500, Synced in [1000, 1500]", info, err)
	}
	// Sync twice is fine.
	for range 2 {
		if n, err := s.Sync(ctx, id); err != nil || n != 1500 {
			t.Fatalf("Sync = %d, %v; want the durable length 1500", n, err)
		}
	}
	if info, err := s.Stat(ctx, id); err != nil || info.Synced != 1500 {
		t.Fatalf("Stat after second Sync = %+v, %v; want Synced 1500", info, err)
	}
	l, err := s.List(ctx, 1)
	if err != nil || len(l) != 1 || l[0].Synced != 1500 || l[0].Length != 1500 {
		t.Fatalf("List(1) = %+v, %v; want one segment with Length = Synced = 1500", l, err)
	}
}

func sortInfos(l []torus.SegmentInfo) {
	slices.SortFunc(l, func(a, b torus.SegmentInfo) int {
		return compareIDs(a.ID, b.ID)
	})
}

func compareIDs(a, b torus.SegmentID) int {
	for _, d := range [][2]uint64{{a.Volume, b.Volume}, {a.Epoch, b.Epoch}, {a.Seq, b.Seq}, {uint64(a.Kind), uint64(b.Kind)}} {
		if d[0] != d[1] {
			if d[0] < d[1] {
				return -1
			}
			return 1
		}
	}
	return 0
}

func testList(t *testing.T, newStore NewStore) {
	s := open(t, newStore, DefaultCapacity)
	ctx := context.Background()
	if l, err := s.List(ctx, 0); err != nil || len(l) != 0 {
		t.Fatalf("List(0) of an empty store = %v, %v; want nothing", l, err)
	}
	want := map[uint64][]torus.SegmentInfo{}
	var all []torus.SegmentInfo
	n := 0
	for _, id := range []torus.SegmentID{
		{Volume: 1, Epoch: 1, Seq: 1},
		{Volume: 1, Epoch: 1, Seq: 2},
		{Volume: 1, Epoch: 1, Seq: 2, Kind: torus.KindCheckpoint},
		{Volume: 1, Epoch: 3, Seq: 3},
		{Volume: 2, Epoch: 1, Seq: 1},
		{Volume: 12, Epoch: 1, Seq: 1},
	} {
		n++
		mustAppend(t, s, id, 0, Pattern(uint64(n), 0, n*10))
		info := torus.SegmentInfo{ID: id, Length: int64(n * 10)}
		want[id.Volume] = append(want[id.Volume], info)
		all = append(all, info)
	}
	check := func(vol uint64, want []torus.SegmentInfo) {
		t.Helper()
		got, err := s.List(ctx, vol)
		if err != nil {
			t.Fatalf("List(%d): %v", vol, err)
		}
		sortInfos(got)
		sortInfos(want)
		if len(got) != len(want) {
			t.Fatalf("List(%d) = %+v; want %+v", vol, got, want)
		}
		for i := range got {
			if got[i].ID != want[i].ID || got[i].Length != want[i].Length ||
				got[i].Synced < 0 || got[i].Synced > got[i].Length {
				t.Fatalf("List(%d)[%d] = %+v; want %+v", vol, i, got[i], want[i])
			}
		}
	}
	check(0, all)
	check(1, want[1])
	check(2, want[2])
	check(12, want[12])
	check(3, nil)
}

func testDelete(t *testing.T, newStore NewStore) {
	s := open(t, newStore, DefaultCapacity)
	ctx := context.Background()
	a, b := seg(1, 1), seg(1, 2)
	mustAppend(t, s, a, 0, Pattern(1, 0, 3000))
	mustAppend(t, s, b, 0, Pattern(2, 0, 1000))
	if _, err := s.Sync(ctx, a); err != nil {
		t.Fatal(err)
	}
	wantUsed(t, s, 4000)

	if err := s.Delete(ctx, a); err != nil {
		t.Fatalf("Delete(%s): %v", a, err)
	}
	wantNotExist(t, s, a)
	if n, err := s.ReadAt(ctx, a, make([]byte, 10), 0); !errors.Is(err, torus.ErrNotExist) || n != 0 {
		t.Fatalf("ReadAt after Delete = %d, %v; want 0, ErrNotExist", n, err)
	}
	wantUsed(t, s, 1000)
	if l, err := s.List(ctx, 0); err != nil || len(l) != 1 || l[0].ID != b {
		t.Fatalf("List(0) after Delete = %+v, %v; want only %s", l, err, b)
	}
	// Deleting again, or deleting what never existed, is not an error.
	for _, id := range []torus.SegmentID{a, seg(1, 99), seg(5, 1)} {
		if err := s.Delete(ctx, id); err != nil {
			t.Fatalf("Delete(%s) of a missing segment: %v; want nil", id, err)
		}
	}
	wantUsed(t, s, 1000)
	// The other segment is untouched.
	if got := readAll(t, s, b); !bytes.Equal(got, Pattern(2, 0, 1000)) {
		t.Fatalf("segment %s changed by deleting %s", b, a)
	}
	// A deleted segment can be written again from offset 0 only.
	if err := s.Append(ctx, a, 3000, []byte("x")); !errors.Is(err, torus.ErrConflict) {
		t.Fatalf("Append at the old length after Delete: %v; want ErrConflict", err)
	}
	mustAppend(t, s, a, 0, []byte("new"))
	if got := readAll(t, s, a); string(got) != "new" {
		t.Fatalf("recreated segment holds %q; want %q", got, "new")
	}
	wantUsed(t, s, 1003)
}

func testCapacity(t *testing.T, newStore NewStore) {
	const capacity = 10000
	s := open(t, newStore, capacity)
	ctx := context.Background()
	a, b := seg(1, 1), seg(1, 2)
	if u := s.Usage(); u.Capacity != capacity || u.Used != 0 {
		t.Fatalf("Usage() = %+v; want {0 %d}", u, capacity)
	}
	mustAppend(t, s, a, 0, Pattern(1, 0, 6000))

	// Too big for what is left: nothing is written.
	if err := s.Append(ctx, a, 6000, Pattern(1, 6000, 4001)); !errors.Is(err, torus.ErrNoSpace) {
		t.Fatalf("Append of 4001 bytes with 4000 free: %v; want ErrNoSpace", err)
	}
	wantLength(t, s, a, 6000)
	wantUsed(t, s, 6000)
	if err := s.Append(ctx, b, 0, Pattern(2, 0, 5000)); !errors.Is(err, torus.ErrNoSpace) {
		t.Fatalf("Append of 5000 bytes to a new segment with 4000 free: %v; want ErrNoSpace", err)
	}
	wantNotExist(t, s, b)
	wantUsed(t, s, 6000)
	if got := readAll(t, s, a); !bytes.Equal(got, Pattern(1, 0, 6000)) {
		t.Fatal("content changed by a failed append")
	}
	if err := s.Append(ctx, a, 0, Pattern(1, 0, 1<<20)); !errors.Is(err, torus.ErrConflict) && !errors.Is(err, torus.ErrNoSpace) {
		t.Fatalf("oversized retry at 0: %v; want ErrConflict or ErrNoSpace", err)
	}

	// Exactly filling the store works.
	mustAppend(t, s, b, 0, Pattern(2, 0, 4000))
	wantUsed(t, s, capacity)
	if err := s.Append(ctx, b, 4000, []byte{1}); !errors.Is(err, torus.ErrNoSpace) {
		t.Fatalf("Append of 1 byte to a full store: %v; want ErrNoSpace", err)
	}
	// A retry of stored bytes needs no space and succeeds when full.
	if err := s.Append(ctx, b, 0, Pattern(2, 0, 4000)); err != nil {
		t.Fatalf("identical retry on a full store: %v; want nil", err)
	}
	// An empty append needs no space either.
	if err := s.Append(ctx, b, 4000, nil); err != nil {
		t.Fatalf("empty append on a full store: %v; want nil", err)
	}
	wantUsed(t, s, capacity)

	// Deleting frees space.
	if err := s.Delete(ctx, a); err != nil {
		t.Fatal(err)
	}
	wantUsed(t, s, 4000)
	mustAppend(t, s, b, 4000, Pattern(2, 4000, 6000))
	wantUsed(t, s, capacity)
	if got := readAll(t, s, b); !bytes.Equal(got, Pattern(2, 0, 10000)) {
		t.Fatal("content of b wrong after filling the store")
	}
}

func testClose(t *testing.T, newStore NewStore) {
	s := newStore(t, DefaultCapacity)
	ctx := context.Background()
	id := seg(1, 1)
	mustAppend(t, s, id, 0, []byte("abc"))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	checks := map[string]error{
		"Append": s.Append(ctx, id, 3, []byte("d")),
		"Delete": s.Delete(ctx, id),
		"Close":  s.Close(),
	}
	_, checks["Sync"] = s.Sync(ctx, id)
	_, checks["ReadAt"] = s.ReadAt(ctx, id, make([]byte, 3), 0)
	_, checks["Stat"] = s.Stat(ctx, id)
	_, checks["List"] = s.List(ctx, 0)
	for op, err := range checks {
		if !errors.Is(err, torus.ErrClosed) {
			t.Errorf("%s after Close: %v; want ErrClosed", op, err)
		}
	}
	_ = s.Usage() // must not panic
}

func testCancelledContext(t *testing.T, newStore NewStore) {
	s := open(t, newStore, DefaultCapacity)
	id := seg(1, 1)
	mustAppend(t, s, id, 0, []byte("abc"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Append(ctx, id, 3, []byte("def")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Append with a cancelled context: %v; want context.Canceled", err)
	}
	if err := s.Append(ctx, seg(1, 2), 0, []byte("def")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Append to a new segment with a cancelled context: %v; want context.Canceled", err)
	}
	wantLength(t, s, id, 3)
	wantNotExist(t, s, seg(1, 2))
	wantUsed(t, s, 3)
	if _, err := s.ReadAt(ctx, id, make([]byte, 3), 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("ReadAt with a cancelled context: %v; want context.Canceled", err)
	}
}

func testExtremeIDs(t *testing.T, newStore NewStore) {
	s := open(t, newStore, DefaultCapacity)
	ctx := context.Background()
	ids := []torus.SegmentID{
		{Volume: math.MaxUint64, Epoch: math.MaxUint64, Seq: math.MaxUint64, Kind: 255},
		{Volume: 1, Epoch: 0, Seq: 0, Kind: 0},
		{Volume: 1, Epoch: 0, Seq: 0, Kind: 1},
	}
	for i, id := range ids {
		mustAppend(t, s, id, 0, Pattern(uint64(i), 0, 100+i))
	}
	for i, id := range ids {
		if got := readAll(t, s, id); !bytes.Equal(got, Pattern(uint64(i), 0, 100+i)) {
			t.Fatalf("segment %s: wrong content", id)
		}
	}
	l, err := s.List(ctx, math.MaxUint64)
	if err != nil || len(l) != 1 || l[0].ID != ids[0] {
		t.Fatalf("List(MaxUint64) = %+v, %v; want just %s", l, err, ids[0])
	}
	if l, err := s.List(ctx, 0); err != nil || len(l) != 3 {
		t.Fatalf("List(0) = %+v, %v; want 3 segments", l, err)
	}
}

// testConcurrent appends to many segments in parallel while other
// goroutines read, stat, list and sync them; every read must see a prefix
// of what is being written.
func testConcurrent(t *testing.T, newStore NewStore) {
	s := open(t, newStore, DefaultCapacity)
	ctx := context.Background()
	const (
		writers = 8
		appends = 40
		chunk   = 3001
	)
	var wg sync.WaitGroup
	errc := make(chan error, 4*writers)
	done := make(chan struct{})
	for w := range writers {
		id := seg(uint64(w%3+1), uint64(w))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range appends {
				off := int64(i * chunk)
				if err := s.Append(ctx, id, off, Pattern(uint64(w), off, chunk)); err != nil {
					errc <- fmt.Errorf("writer %d: Append at %d: %w", w, off, err)
					return
				}
				if i%10 == 9 {
					if _, err := s.Sync(ctx, id); err != nil {
						errc <- fmt.Errorf("writer %d: Sync: %w", w, err)
						return
					}
				}
			}
		}()
	}
	var readers sync.WaitGroup
	for r := range writers {
		id := seg(uint64(r%3+1), uint64(r))
		readers.Add(1)
		go func() {
			defer readers.Done()
			buf := make([]byte, 2*chunk)
			for k := 0; ; k++ {
				select {
				case <-done:
					return
				default:
				}
				info, err := s.Stat(ctx, id)
				if errors.Is(err, torus.ErrNotExist) {
					continue
				}
				if err != nil {
					errc <- fmt.Errorf("reader %d: Stat: %w", r, err)
					return
				}
				off := int64(k*977) % (info.Length + 1)
				n, err := s.ReadAt(ctx, id, buf, off)
				if err != nil && err != io.EOF {
					errc <- fmt.Errorf("reader %d: ReadAt: %w", r, err)
					return
				}
				if int64(n) < min(int64(len(buf)), info.Length-off) {
					errc <- fmt.Errorf("reader %d: ReadAt at %d read %d bytes of a segment of length >= %d", r, off, n, info.Length)
					return
				}
				if !bytes.Equal(buf[:n], Pattern(uint64(r), off, n)) {
					errc <- fmt.Errorf("reader %d: ReadAt at %d: wrong bytes", r, off)
					return
				}
				if k%16 == 0 {
					if _, err := s.List(ctx, 0); err != nil {
						errc <- fmt.Errorf("reader %d: List: %w", r, err)
						return
					}
					_ = s.Usage()
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	readers.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	for w := range writers {
		id := seg(uint64(w%3+1), uint64(w))
		if got := readAll(t, s, id); !bytes.Equal(got, Pattern(uint64(w), 0, appends*chunk)) {
			t.Fatalf("segment %s: wrong content after concurrent appends", id)
		}
	}
	wantUsed(t, s, writers*appends*chunk)
	l, err := s.List(ctx, 0)
	if err != nil || len(l) != writers {
		t.Fatalf("List(0) = %d segments, %v; want %d", len(l), err, writers)
	}
}

// testRacingAppends sends two different appends for the same offsets of one
// segment at once: for each offset exactly one must win, the other must get
// ErrConflict, and the stored bytes are the winner's.
func testRacingAppends(t *testing.T, newStore NewStore) {
	s := open(t, newStore, DefaultCapacity)
	ctx := context.Background()
	id := seg(1, 1)
	const rounds, size = 50, 512
	var off int64
	for i := range rounds {
		var wg sync.WaitGroup
		errs := make([]error, 3)
		bufs := [][]byte{Pattern(1, off, size), Pattern(2, off, size), Pattern(1, off, size)}
		for j := range bufs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[j] = s.Append(ctx, id, off, bufs[j])
			}()
		}
		wg.Wait()
		got := make([]byte, size)
		if n, err := s.ReadAt(ctx, id, got, off); err != nil || n != size {
			t.Fatalf("round %d: ReadAt = %d, %v", i, n, err)
		}
		// Writers 0 and 2 send the same bytes; writer 1 different ones.
		winner1 := bytes.Equal(got, bufs[1])
		if !winner1 && !bytes.Equal(got, bufs[0]) {
			t.Fatalf("round %d: stored bytes are neither writer's", i)
		}
		for j, err := range errs {
			wins := (j == 1) == winner1
			if wins && err != nil {
				t.Fatalf("round %d: writer %d whose bytes were stored got %v", i, j, err)
			}
			if !wins && !errors.Is(err, torus.ErrConflict) {
				t.Fatalf("round %d: writer %d whose bytes lost got %v; want ErrConflict", i, j, err)
			}
		}
		off += size
	}
	wantLength(t, s, id, off)
	wantUsed(t, s, off)
}

// testConcurrentDeletes appends to, reads, syncs and deletes the same few
// segments from several goroutines. Every call must end in one of its
// documented outcomes, and afterwards Usage must equal the sum of the
// segments' lengths and every segment must hold a prefix of what was
// appended.
func testConcurrentDeletes(t *testing.T, newStore NewStore) {
	s := open(t, newStore, DefaultCapacity)
	ctx := context.Background()
	const workers, ops, segs = 6, 150, 3
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 700)
			for k := range ops {
				id := seg(1, uint64((w+k)%segs))
				var err error
				switch (w + k*7) % 5 {
				case 0, 1:
					var off int64
					if info, serr := s.Stat(ctx, id); serr == nil {
						off = info.Length
					}
					err = s.Append(ctx, id, off, Pattern(id.Seq, off, 300+k))
					if errors.Is(err, torus.ErrConflict) {
						err = nil // lost a race with another append or a delete
					}
				case 2:
					_, err = s.ReadAt(ctx, id, buf, int64(k%3)*100)
					if err == io.EOF {
						err = nil
					}
				case 3:
					_, err = s.Sync(ctx, id)
				case 4:
					if k%3 == 0 {
						err = s.Delete(ctx, id)
					}
				}
				if errors.Is(err, torus.ErrNotExist) {
					err = nil
				}
				if err != nil {
					errc <- fmt.Errorf("worker %d op %d on %s: %w", w, k, id, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	l, err := s.List(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, info := range l {
		sum += info.Length
		if got := readAll(t, s, info.ID); !bytes.Equal(got, Pattern(info.ID.Seq, 0, len(got))) {
			t.Errorf("segment %s: content is not what was appended", info.ID)
		}
	}
	wantUsed(t, s, sum)
}
