package cli

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/metadata"
)

func setup(t *testing.T) (*metadata.Memory, uint64) {
	t.Helper()
	ctx := context.Background()
	m := metadata.NewMemory()
	t.Cleanup(func() { _ = m.Close() })
	if err := m.InitCluster(ctx, torus.ClusterConfig{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.CreateVolume(ctx, torus.VolumeInfo{Name: "v", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	s, err := m.NewSession(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	e, err := m.Lock(ctx, s, "v", torus.WriterInfo{Owner: "w"})
	if err != nil {
		t.Fatal(err)
	}
	return m, e
}

// answer plays the writer: it answers the first request with failure.
func answer(t *testing.T, m *metadata.Memory, epoch uint64, failure string) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done })
	ch := m.Watch(ctx)
	go func() {
		defer close(done)
		for range ch {
			reqs, _ := m.SnapshotRequests(ctx, "v")
			for _, r := range reqs {
				if failure == "" {
					_ = m.CreateSnapshot(ctx, epoch, torus.Snapshot{Volume: "v", Name: r})
				}
				_ = m.DoneSnapshotRequest(ctx, "v", r, failure)
			}
		}
	}()
}

func noClosed(t *testing.T) func(context.Context, torus.Metadata, string, string) error {
	return func(context.Context, torus.Metadata, string, string) error {
		t.Error("closed-volume hook called for an open volume")
		return nil
	}
}

func TestCreateSnapshotByWriter(t *testing.T) {
	m, e := setup(t)
	answer(t, m, e, "")
	start := time.Now()
	if err := CreateSnapshot(context.Background(), m, "v", "s", 10*time.Second, noClosed(t)); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("took %v: the watch should wake the waiter at once", took)
	}
	if _, err := m.Snapshot(context.Background(), "v", "s"); err != nil {
		t.Fatal(err)
	}
	if err := CreateSnapshot(context.Background(), m, "v", "s", time.Second, noClosed(t)); !errors.Is(err, torus.ErrExist) {
		t.Fatalf("second create: %v, want ErrExist", err)
	}
}

func TestCreateSnapshotWriterFails(t *testing.T) {
	m, e := setup(t)
	answer(t, m, e, "disk on fire")
	err := CreateSnapshot(context.Background(), m, "v", "s", 10*time.Second, noClosed(t))
	if err == nil || !strings.Contains(err.Error(), "disk on fire") || !strings.Contains(err.Error(), "writer w") {
		t.Fatalf("got %v, want the writer's failure", err)
	}
}

func TestCreateSnapshotTimeout(t *testing.T) {
	m, _ := setup(t)
	err := CreateSnapshot(context.Background(), m, "v", "s", 200*time.Millisecond, noClosed(t))
	if !errors.Is(err, ErrSnapshotTimeout) {
		t.Fatalf("got %v, want ErrSnapshotTimeout", err)
	}
	reqs, _ := m.SnapshotRequests(context.Background(), "v")
	if len(reqs) != 1 || reqs[0] != "s" {
		t.Fatalf("pending requests %v, want [s]", reqs)
	}
}

func TestCreateSnapshotClosedVolume(t *testing.T) {
	m, e := setup(t)
	if err := m.Unlock(context.Background(), "v", e); err != nil {
		t.Fatal(err)
	}
	called := false
	err := CreateSnapshot(context.Background(), m, "v", "s", time.Second,
		func(_ context.Context, _ torus.Metadata, vol, name string) error {
			called = vol == "v" && name == "s"
			return nil
		})
	if err != nil || !called {
		t.Fatalf("closed-volume hook: called=%v err=%v", called, err)
	}
	if err := snapshotClosedVolume(context.Background(), m, Global{}, "v", "s"); !errors.Is(err, errNotImplemented) {
		t.Fatalf("default hook: %v, want not implemented", err)
	}
}

// TestCommandsAgainstMemory runs a few commands in-process with an
// injected in-memory store.
func TestCommandsAgainstMemory(t *testing.T) {
	m, _ := setup(t)
	deps := Deps{
		Open:   func(context.Context, Global) (torus.Metadata, error) { return nopClose{m}, nil },
		Getenv: func(string) string { return "" },
	}
	run := func(args ...string) (string, string, int) {
		var out, errOut bytes.Buffer
		code := Main(args, &out, &errOut, deps)
		return out.String(), errOut.String(), code
	}
	out, _, code := run("volume", "list")
	if code != 0 || !strings.Contains(out, "w (epoch 1)") {
		t.Fatalf("volume list: code %d, output %q", code, out)
	}
	_, errOut, code := run("volume", "delete", "v")
	if code != 1 || !strings.Contains(errOut, "it is open by w (epoch 1)") {
		t.Fatalf("volume delete of an open volume: code %d, stderr %q", code, errOut)
	}
	out, _, code = run("-o", "json", "status")
	if code != 0 || !strings.Contains(out, `"open_volumes": 1`) {
		t.Fatalf("status -o json: code %d, output %q", code, out)
	}
}

// nopClose keeps the shared Memory open across commands.
type nopClose struct{ torus.Metadata }

func (nopClose) Close() error { return nil }
