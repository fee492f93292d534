package main

import (
	"bytes"
	"context"
	"encoding/json"
	"github.com/torus-storage/torus/internal/testutil"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/cmd/torusctl/internal/cli"
	"github.com/torus-storage/torus/internal/testcluster"
	"github.com/torus-storage/torus/report"
	"github.com/torus-storage/torus/server"
	"github.com/torus-storage/torus/volume"
)

// ctl runs torusctl (with main's dependencies) against the cluster.
func ctl(t *testing.T, c *testcluster.Cluster, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	args = append([]string{"--etcd", strings.Join(c.Endpoints, ","), "--etcd-prefix", "/torus/"}, args...)
	code = cli.Main(args, &out, &errOut, deps())
	return out.String(), errOut.String(), code
}

func mustCtl(t *testing.T, c *testcluster.Cluster, args ...string) string {
	t.Helper()
	out, errOut, code := ctl(t, c, args...)
	if code != 0 {
		t.Fatalf("torusctl %v: exit %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
	}
	return out
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7+i/4096)
	}
	return b
}

func writeVolume(t *testing.T, c *testcluster.Cluster, name string, off int64, data []byte) {
	t.Helper()
	ctx := context.Background()
	v, err := c.Open(ctx, name, volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WriteAt(ctx, data, off, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func readVolume(t *testing.T, c *testcluster.Cluster, name string, opt volume.Options, off int64, n int) []byte {
	t.Helper()
	ctx := context.Background()
	opt.ReadOnly = true
	v, err := c.Open(ctx, name, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	b := make([]byte, n)
	if err := v.ReadAt(ctx, b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSnapshotClosedVolume runs `torusctl snapshot create` on a volume
// without a writer against real daemons: torusctl opens the volume itself,
// and the snapshot keeps the data of that moment.
func TestSnapshotClosedVolume(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 2, Replication: 1})
	c.CreateVolume("vol", 8<<20)
	old := pattern(3<<20, 1)
	writeVolume(t, c, "vol", 4096, old)

	out := mustCtl(t, c, "snapshot", "create", "vol@s1")
	if !strings.Contains(out, "created snapshot vol@s1") {
		t.Fatalf("snapshot create printed %q", out)
	}
	if _, ok, err := c.Meta.Writer(context.Background(), "vol"); err != nil || ok {
		t.Fatalf("torusctl left a writer behind: %v %v", ok, err)
	}
	// The same name again fails; a bad spec fails; nothing else changes.
	if _, errOut, code := ctl(t, c, "snapshot", "create", "vol@s1"); code == 0 || !strings.Contains(errOut, "already exists") {
		t.Fatalf("second create: exit %d, %q", code, errOut)
	}
	if _, errOut, code := ctl(t, c, "snapshot", "create", "nope@s1"); code == 0 || !strings.Contains(errOut, "does not exist") {
		t.Fatalf("create on a missing volume: exit %d, %q", code, errOut)
	}

	// Overwrite the volume; the snapshot still reads the old data.
	writeVolume(t, c, "vol", 4096, pattern(3<<20, 99))
	if got := readVolume(t, c, "vol", volume.Options{Snapshot: "s1"}, 4096, len(old)); !bytes.Equal(got, old) {
		t.Fatal("snapshot s1 does not read back the data written before it")
	}
	if got := readVolume(t, c, "vol", volume.Options{}, 4096, 3<<20); !bytes.Equal(got, pattern(3<<20, 99)) {
		t.Fatal("volume does not read back the data written after the snapshot")
	}
	list := mustCtl(t, c, "snapshot", "list", "vol")
	if !strings.Contains(list, "vol@s1") {
		t.Fatalf("snapshot list: %q", list)
	}
}

type volRow struct {
	Name            string  `json:"name"`
	Used            *int64  `json:"used"`
	Health          *string `json:"health"`
	UnderReplicated *int    `json:"under_replicated"`
	PendingBytes    *int64  `json:"pending_bytes"`
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestPeerLifecycle adds a peer that did not auto-join, drains and removes
// a peer gracefully while real daemons move its data, and force-removes a
// dead one, checking volume list, status and the data on the way.
func TestPeerLifecycle(t *testing.T) {
	testutil.SkipShort(t, "starts a cluster and waits for data to move")
	c := testcluster.New(t, testcluster.Options{Daemons: 3, Replication: 2, Server: func(i int, cfg *server.Config) {
		cfg.AutoJoin = i != 2
	}})
	ctx := context.Background()
	newID := c.Daemons[2].ID()
	out := mustCtl(t, c, "peer", "list")
	if !strings.Contains(out, newID) || !strings.Contains(out, " new ") {
		t.Fatalf("peer list before add:\n%s", out)
	}
	out = mustCtl(t, c, "peer", "add", c.Daemons[2].PeerAddr())
	if !strings.Contains(out, "added "+newID) {
		t.Fatalf("peer add printed %q", out)
	}
	if _, errOut, code := ctl(t, c, "peer", "add", newID); code == 0 || !strings.Contains(errOut, "already in the ring") {
		t.Fatalf("peer add twice: %d %q", code, errOut)
	}

	c.CreateVolume("vol", 16<<20)
	data := pattern(5<<20, 3)
	writeVolume(t, c, "vol", 0, data)

	// The daemons publish statuses: volume list shows them.
	waitFor(t, "a healthy status with space used", 30*time.Second, func() bool {
		out, _, _ := ctl(t, c, "-o", "json", "volume", "list")
		var rows []volRow
		_ = json.Unmarshal([]byte(out), &rows)
		return len(rows) == 1 && rows[0].Health != nil && *rows[0].Health == "healthy" && *rows[0].Used >= 4<<20
	})
	out = mustCtl(t, c, "volume", "list")
	if !regexp.MustCompile(`vol +16MiB +5\.0MiB +- +default +healthy +0 +\S+B`).MatchString(out) {
		t.Fatalf("volume list:\n%s", out)
	}

	// Graceful removal of daemon 0: it drains, then leaves.
	goneID := c.Daemons[0].ID()
	out = mustCtl(t, c, "peer", "remove", goneID, "--timeout", "90s", "--interval", "200ms")
	t.Logf("peer remove:\n%s", out)
	if !strings.Contains(out, "removed "+goneID) || !strings.Contains(out, "draining "+goneID+": 0B left") {
		t.Fatalf("peer remove printed:\n%s", out)
	}
	ring, err := c.Meta.Ring(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ring.Members {
		if m.ID == goneID {
			t.Fatalf("%s still in ring %+v", goneID, ring)
		}
	}
	c.Stop(0)
	if got := readVolume(t, c, "vol", volume.Options{}, 0, len(data)); !bytes.Equal(got, data) {
		t.Fatal("data lost by a graceful removal")
	}

	// Forced removal: refused while the peer is up, allowed once it is dead.
	deadID := c.Daemons[1].ID()
	if _, errOut, code := ctl(t, c, "peer", "remove", "--force", deadID); code == 0 || !strings.Contains(errOut, "refusing --force") {
		t.Fatalf("--force on an up peer: %d %q", code, errOut)
	}
	c.Stop(1)
	_, errOut, code := ctl(t, c, "peer", "remove", "--force", deadID)
	if code != 0 || !strings.Contains(errOut, "fewer than replication 2") {
		t.Fatalf("--force on a dead peer: %d %q", code, errOut)
	}
	if got := readVolume(t, c, "vol", volume.Options{}, 0, len(data)); !bytes.Equal(got, data) {
		t.Fatal("data unreadable from the remaining copy")
	}
	out = mustCtl(t, c, "-o", "json", "status")
	var st report.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	if st.RingMembers != 1 || st.Peers[torus.PeerUp] != 1 || len(st.Peers) != 1 {
		t.Fatalf("status after removals: %+v", st)
	}
	// The last peer holds every segment once: the volume is degraded.
	waitFor(t, "a degraded status", 30*time.Second, func() bool {
		out, _, _ := ctl(t, c, "-o", "json", "status")
		var st report.Status
		_ = json.Unmarshal([]byte(out), &st)
		return st.VolumeHealth["degraded"] == 1 && st.UnderReplicated > 0
	})
}
