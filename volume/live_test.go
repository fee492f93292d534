package volume

import (
	"testing"

	"github.com/torus-storage/torus"
)

// TestTableCacheLRU: past its bound the cache drops the least recently
// used tables one at a time, not everything: with 300 volumes' tables
// (more than the 256 at which the old cache cleared itself) and room for
// all, every one stays; with room for 100 references, the 10 most
// recently used tables of 10 refs stay, and a table read again is kept.
func TestTableCacheLRU(t *testing.T) {
	ck := func(i int) torus.SegmentID {
		return torus.SegmentID{Volume: uint64(i), Epoch: 1, Seq: 1, Kind: torus.KindCheckpoint}
	}
	table := make([]torus.SegmentRef, 10)
	var c TableCache
	for i := range 300 {
		c.put(ck(i), table)
	}
	if c.Len() != 300 {
		t.Fatalf("%d tables cached, want all 300", c.Len())
	}
	for i := range 300 {
		if _, ok := c.get(ck(i)); !ok {
			t.Fatalf("table %d dropped with room to spare", i)
		}
	}

	small := TableCache{MaxRefs: 100}
	for i := range 10 {
		small.put(ck(i), table)
	}
	small.get(ck(0)) // used again: the most recent
	for i := 10; i < 15; i++ {
		small.put(ck(i), table)
	}
	if small.Len() != 10 {
		t.Fatalf("%d tables cached, want 10 (100 refs)", small.Len())
	}
	for i, want := range map[int]bool{0: true, 1: false, 5: false, 6: true, 9: true, 14: true} {
		if _, ok := small.get(ck(i)); ok != want {
			t.Errorf("table %d cached = %v, want %v", i, ok, want)
		}
	}
}
