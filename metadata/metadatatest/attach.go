package metadatatest

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
)

// testAttachments: PutAttachment stores once and then returns the holder;
// DeleteAttachment removes only the named node's record, and with it the
// writer lock, so the next Lock fences the old writer; DeleteVolume drops
// the record.
func testAttachments(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	createVolume(t, m, "v", 1<<20)

	wantErr(t, m.RegisterNode(ctx, ""), torus.ErrInvalid, "RegisterNode of an empty ID")
	wantErr(t, m.RegisterNode(ctx, "a/b"), torus.ErrInvalid, "RegisterNode of an ID with '/'")
	if ok, err := m.NodeRegistered(ctx, "node-a"); err != nil || ok {
		t.Fatalf("NodeRegistered before RegisterNode = %v, %v", ok, err)
	}
	_, err := m.PutAttachment(ctx, torus.VolumeAttachment{Volume: "v", Node: "node-a"})
	wantErr(t, err, torus.ErrNotExist, "PutAttachment to a node never registered")
	must(t, m.RegisterNode(ctx, "node-a"), "RegisterNode")
	must(t, m.RegisterNode(ctx, "node-a"), "RegisterNode again")
	must(t, m.RegisterNode(ctx, "node-b"), "RegisterNode b")
	if ok, err := m.NodeRegistered(ctx, "node-a"); err != nil || !ok {
		t.Fatalf("NodeRegistered after RegisterNode = %v, %v", ok, err)
	}

	_, err = m.PutAttachment(ctx, torus.VolumeAttachment{Volume: "nope", Node: "node-a"})
	wantErr(t, err, torus.ErrNotExist, "PutAttachment of a missing volume")
	_, err = m.PutAttachment(ctx, torus.VolumeAttachment{Volume: "v", Node: ""})
	wantErr(t, err, torus.ErrInvalid, "PutAttachment with an empty node")
	_, err = m.PutAttachment(ctx, torus.VolumeAttachment{Volume: "v", Node: "a b"})
	wantErr(t, err, torus.ErrInvalid, "PutAttachment with a space in the node")
	_, _, err = m.Attachment(ctx, "nope")
	wantErr(t, err, torus.ErrNotExist, "Attachment of a missing volume")
	if _, ok, err := m.Attachment(ctx, "v"); err != nil || ok {
		t.Fatalf("Attachment before any = ok %v, %v; want none", ok, err)
	}

	before := time.Now().Add(-time.Second)
	a, err := m.PutAttachment(ctx, torus.VolumeAttachment{Volume: "v", Node: "node-a", ReadOnly: true})
	must(t, err, "PutAttachment")
	if a.Node != "node-a" || !a.ReadOnly || a.Volume != "v" || a.Since.Before(before) {
		t.Fatalf("PutAttachment = %+v", a)
	}
	got, ok, err := m.Attachment(ctx, "v")
	must(t, err, "Attachment")
	if !ok || got.Node != "node-a" || !got.ReadOnly || !got.Since.Equal(a.Since) {
		t.Fatalf("Attachment = %+v ok=%v, want %+v", got, ok, a)
	}
	// Another node, or the same node with other flags: the stored one back.
	cur, err := m.PutAttachment(ctx, torus.VolumeAttachment{Volume: "v", Node: "node-b"})
	must(t, err, "PutAttachment by another node")
	if cur.Node != "node-a" || !cur.ReadOnly {
		t.Fatalf("PutAttachment by another node = %+v, want node-a's", cur)
	}

	// A writer of node-a holds the volume.
	s := newSession(t, m, 10*time.Second)
	e1, err := m.Lock(ctx, s, "v", torus.WriterInfo{Owner: "node-a writer"})
	must(t, err, "Lock")

	removed, err := m.DeleteAttachment(ctx, "v", "node-b")
	must(t, err, "DeleteAttachment of another node")
	if removed {
		t.Fatal("DeleteAttachment of node-b removed node-a's attachment")
	}
	if _, ok, _ := m.Writer(ctx, "v"); !ok {
		t.Fatal("DeleteAttachment of another node removed the writer")
	}
	removed, err = m.DeleteAttachment(ctx, "v", "node-a")
	must(t, err, "DeleteAttachment")
	if !removed {
		t.Fatal("DeleteAttachment of node-a: not removed")
	}
	if _, ok, _ := m.Attachment(ctx, "v"); ok {
		t.Fatal("attachment still there after DeleteAttachment")
	}
	if _, ok, _ := m.Writer(ctx, "v"); ok {
		t.Fatal("writer lock still there after DeleteAttachment")
	}
	err = m.CommitHead(ctx, "v", e1, sampleHead(e1))
	wantErr(t, err, torus.ErrFenced, "CommitHead of the detached node's writer")
	removed, err = m.DeleteAttachment(ctx, "v", "node-a")
	if err != nil || removed {
		t.Fatalf("second DeleteAttachment = %v, %v; want false, nil", removed, err)
	}
	if removed, err := m.DeleteAttachment(ctx, "nope", "node-a"); err != nil || removed {
		t.Fatalf("DeleteAttachment of a missing volume = %v, %v; want false, nil", removed, err)
	}

	// node-b takes over: its Lock gets a newer epoch.
	b, err := m.PutAttachment(ctx, torus.VolumeAttachment{Volume: "v", Node: "node-b"})
	must(t, err, "PutAttachment after detach")
	if b.Node != "node-b" || b.ReadOnly {
		t.Fatalf("PutAttachment after detach = %+v", b)
	}
	s2 := newSession(t, m, 10*time.Second)
	e2, err := m.Lock(ctx, s2, "v", torus.WriterInfo{Owner: "node-b writer"})
	must(t, err, "Lock by node-b")
	if e2 <= e1 {
		t.Fatalf("node-b's epoch %d not above node-a's %d", e2, e1)
	}
	must(t, m.Unlock(ctx, "v", e2), "Unlock")

	must(t, m.DeleteVolume(ctx, "v"), "DeleteVolume")
	createVolume(t, m, "v", 1<<20)
	if _, ok, err := m.Attachment(ctx, "v"); err != nil || ok {
		t.Fatalf("Attachment of a recreated volume = ok %v, %v; want none", ok, err)
	}
}

// testAttachRace: controllers racing to publish a volume to different
// nodes; exactly one wins and every caller sees the winner.
func testAttachRace(t *testing.T, m torus.Metadata) {
	ctx := ctxT(t)
	initCluster(t, m)
	createVolume(t, m, "v", 1<<20)
	const n = 6
	for i := range n {
		must(t, m.RegisterNode(ctx, string(rune('a'+i))), "RegisterNode")
	}
	var wg sync.WaitGroup
	got := make([]torus.VolumeAttachment, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = m.PutAttachment(ctx, torus.VolumeAttachment{Volume: "v", Node: string(rune('a' + i))})
		}()
	}
	wg.Wait()
	winner := ""
	for i := range n {
		if errs[i] != nil {
			if errors.Is(errs[i], torus.ErrConflict) {
				continue // lost between the compare and the read: allowed, the caller retries
			}
			t.Fatalf("PutAttachment %d: %v", i, errs[i])
		}
		if winner == "" {
			winner = got[i].Node
		}
		if got[i].Node != winner {
			t.Fatalf("two winners: %q and %q", winner, got[i].Node)
		}
	}
	a, ok, err := m.Attachment(ctx, "v")
	must(t, err, "Attachment")
	if !ok || a.Node != winner {
		t.Fatalf("stored attachment %+v, want node %q", a, winner)
	}
}
