package metadata_test

import (
	"errors"
	"fmt"
	"reflect"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/metadata"
)

// TestAutoJoin: the ring an auto-joining peer writes adds itself and the
// live new peers asking to auto-join, and no one else; existing members
// are kept as they are.
func TestAutoJoin(t *testing.T) {
	peer := func(id string, st torus.PeerState, alive, auto bool) torus.PeerInfo {
		return torus.PeerInfo{ID: id, Zone: "z-" + id, Host: "h-" + id, Capacity: 100, State: st, Alive: alive, AutoJoin: auto}
	}
	op := torus.RingMember{ID: "op", Zone: "zop", Weight: 7}
	ring := torus.RingSpec{Version: 4, Replication: 2, VirtualNodes: 8, Format: torus.RingFormatZones,
		Members: []torus.RingMember{op, {ID: "up", Weight: 100}, {ID: "drain", Weight: 100}}}
	peers := []torus.PeerInfo{
		peer("z-self", torus.PeerNew, true, true),
		peer("b-wait", torus.PeerNew, true, true),    // added
		peer("a-wait", torus.PeerNew, true, true),    // added
		peer("c-dead", torus.PeerNew, false, true),   // registered, then died
		peer("d-manual", torus.PeerNew, true, false), // waits for torusctl peer add
		peer("e-gone", torus.PeerRemoved, true, true),
		peer("up", torus.PeerUp, true, true),
		peer("drain", torus.PeerDraining, true, true),
	}
	next, joined, err := metadata.AutoJoin(ring, peers, "z-self")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"z-self", "a-wait", "b-wait"}; !reflect.DeepEqual(joined, want) {
		t.Errorf("joined %v, want %v", joined, want)
	}
	want := ring
	want.Version = 5
	want.Members = append(ring.Members[:3:3],
		torus.RingMember{ID: "z-self", Zone: "z-z-self", Host: "h-z-self", Weight: 100},
		torus.RingMember{ID: "a-wait", Zone: "z-a-wait", Host: "h-a-wait", Weight: 100},
		torus.RingMember{ID: "b-wait", Zone: "z-b-wait", Host: "h-b-wait", Weight: 100})
	if !reflect.DeepEqual(next, want) {
		t.Errorf("next ring\n%+v\nwant\n%+v", next, want)
	}
	if len(ring.Members) != 3 {
		t.Errorf("AutoJoin changed its input ring: %+v", ring.Members)
	}

	// A member already: nothing to write.
	if got, joined, err := metadata.AutoJoin(ring, peers, "up"); err != nil || joined != nil || !reflect.DeepEqual(got, ring) {
		t.Errorf("AutoJoin of a member = %+v, %v, %v; want the ring unchanged", got, joined, err)
	}
	// Removed: not rejoining.
	if _, _, err := metadata.AutoJoin(ring, peers, "e-gone"); !errors.Is(err, metadata.ErrRemoved) {
		t.Errorf("AutoJoin of a removed peer: %v, want ErrRemoved", err)
	}
	// Forgotten: its record is gone.
	if _, _, err := metadata.AutoJoin(ring, peers, "nobody"); !errors.Is(err, torus.ErrNotExist) {
		t.Errorf("AutoJoin of a peer without a record: %v, want ErrNotExist", err)
	}
	// The first members give a formatless ring the current format.
	first, _, err := metadata.AutoJoin(torus.RingSpec{Version: 1, Replication: 2, VirtualNodes: 8}, peers[:1], "z-self")
	if err != nil || first.Format != torus.RingFormatCurrent || first.Version != 2 {
		t.Errorf("first join: %+v, %v", first, err)
	}
	// At most MaxJoinBatch, self first.
	var crowd []torus.PeerInfo
	for i := range 2 * torus.MaxJoinBatch {
		crowd = append(crowd, peer(fmt.Sprintf("p%03d", i), torus.PeerNew, true, true))
	}
	_, joined, err = metadata.AutoJoin(torus.RingSpec{Version: 1}, crowd, "p150")
	if err != nil || len(joined) != torus.MaxJoinBatch || joined[0] != "p150" || joined[1] != "p000" {
		t.Errorf("a crowd joined %v, %v; want %d, p150 then p000 first", joined, err, torus.MaxJoinBatch)
	}
}
