package peer

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
)

func TestLocalFencing(t *testing.T) {
	ctx := context.Background()
	l := NewLocal(newFakeStore(0), testutil.Logger(t))
	s := func(epoch, seq uint64) torus.SegmentID { return seg(3, epoch, seq) }

	if err := l.Append(ctx, 5, s(5, 1), 0, []byte("a")); err != nil {
		t.Fatal(err)
	}
	if got := l.MinEpoch(3); got != 5 {
		t.Fatalf("an append at 5 left the minimum at %d", got)
	}
	// An older writer is fenced by the newer one's append, for appends
	// and syncs, with an error naming the volume and both epochs.
	err := l.Append(ctx, 4, s(4, 1), 0, []byte("b"))
	if !errors.Is(err, torus.ErrFenced) {
		t.Fatalf("append at 4: %v", err)
	}
	for _, want := range []string{"volume 3", "epoch 4", "epoch 5"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if _, err := l.Sync(ctx, 4, s(5, 1)); !errors.Is(err, torus.ErrFenced) {
		t.Fatalf("sync at 4: %v", err)
	}
	if _, err := l.Stat(ctx, s(4, 1)); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("a fenced append reached the store: %v", err)
	}
	// The current epoch works; repair is never fenced; other volumes are
	// not affected.
	if _, err := l.Sync(ctx, 5, s(5, 1)); err != nil {
		t.Fatal(err)
	}
	if err := l.Append(ctx, torus.RepairEpoch, s(2, 9), 0, []byte("r")); err != nil {
		t.Fatalf("repair append: %v", err)
	}
	if _, err := l.Sync(ctx, torus.RepairEpoch, s(2, 9)); err != nil {
		t.Fatalf("repair sync: %v", err)
	}
	if err := l.Append(ctx, 1, seg(4, 1, 1), 0, []byte("o")); err != nil {
		t.Fatalf("other volume: %v", err)
	}
	// A sync does not raise the minimum.
	if _, err := l.Sync(ctx, 6, s(5, 1)); err != nil {
		t.Fatal(err)
	}
	if got := l.MinEpoch(3); got != 5 {
		t.Fatalf("a sync raised the minimum to %d", got)
	}

	// Fence raises; lowering is a no-op.
	if err := l.Fence(ctx, 3, 7); err != nil {
		t.Fatal(err)
	}
	if err := l.Fence(ctx, 3, 2); err != nil || l.MinEpoch(3) != 7 {
		t.Fatalf("lowering fence: %v, min %d", err, l.MinEpoch(3))
	}
	if err := l.Append(ctx, 5, s(5, 1), 1, []byte("late")); !errors.Is(err, torus.ErrFenced) {
		t.Fatalf("append after fence: %v", err)
	}
	if err := l.Append(ctx, 7, s(7, 1), 0, []byte("new")); err != nil {
		t.Fatal(err)
	}

	// SetEpochs raises from metadata, never lowers.
	l.SetEpochs(map[uint64]uint64{3: 6, 4: 10, 8: 1})
	if l.MinEpoch(3) != 7 || l.MinEpoch(4) != 10 || l.MinEpoch(8) != 1 || l.MinEpoch(99) != 0 {
		t.Fatalf("after SetEpochs: %d %d %d", l.MinEpoch(3), l.MinEpoch(4), l.MinEpoch(8))
	}
	if err := l.Append(ctx, 9, seg(4, 9, 1), 0, []byte("x")); !errors.Is(err, torus.ErrFenced) {
		t.Fatalf("append below the etcd epoch: %v", err)
	}

	// Usage and the rest delegate.
	u, err := l.Usage(ctx)
	if err != nil || u.Used != 6 {
		t.Fatalf("usage %+v %v", u, err)
	}
	if err := l.Delete(ctx, s(7, 1)); err != nil {
		t.Fatal(err)
	}
	list, err := l.List(ctx, 3)
	if err != nil || len(list) != 2 {
		t.Fatalf("list %+v %v", list, err)
	}
}

// TestLocalFenceWaitsForRunningAppends: once Fence returns, no append of a
// lower epoch is still running.
func TestLocalFenceWaitsForRunningAppends(t *testing.T) {
	ctx := context.Background()
	store, blocked, release := blockingStore("append")
	l := NewLocal(store, testutil.Logger(t))
	appended := make(chan error, 1)
	go func() { appended <- l.Append(ctx, 3, seg(1, 3, 1), 0, []byte("old")) }()
	waitFor(t, "append to block", func() bool { return blocked.Load() == 1 })

	// A fence at the same epoch does not wait for it.
	if err := l.Fence(ctx, 1, 3); err != nil {
		t.Fatal(err)
	}
	// A higher fence waits, within its ctx.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := l.Fence(short, 1, 4); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("fence with an append running: %v", err)
	}
	if l.MinEpoch(1) != 4 {
		t.Fatal("the minimum was not raised at once")
	}
	fenced := make(chan error, 1)
	go func() { fenced <- l.Fence(ctx, 1, 4) }()
	select {
	case err := <-fenced:
		t.Fatalf("fence returned %v while the append runs", err)
	case <-time.After(30 * time.Millisecond):
	}
	close(release)
	if err := <-appended; err != nil {
		t.Fatal(err)
	}
	if err := <-fenced; err != nil {
		t.Fatal(err)
	}
	// Repair appends are not tracked: a fence never waits for them.
	store2, blocked2, release2 := blockingStore("append")
	l2 := NewLocal(store2, testutil.Logger(t))
	go l2.Append(ctx, torus.RepairEpoch, seg(1, 1, 1), 0, []byte("r"))
	waitFor(t, "repair to block", func() bool { return blocked2.Load() == 1 })
	if err := l2.Fence(ctx, 1, 9); err != nil {
		t.Fatal(err)
	}
	close(release2)
}
