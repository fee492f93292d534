package attach

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/attach/nbdnl"
	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testcluster"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/volume"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the golden files in testdata")

// TestStateGolden pins the state file format (testdata/state-v2.json for
// a fuse attachment, state-v2-nbd.json for an nbd one), reads the version
// before (state-v1.json) as a fuse attachment, and checks that a file of
// another version, naming no process or with a bad backend is refused.
func TestStateGolden(t *testing.T) {
	for _, tc := range []struct {
		golden string
		s      state
	}{
		{"state-v2.json", state{Attachment: Attachment{Volume: "pv1", Backend: BackendFUSE, File: "/var/lib/torus-csi/attach/pv1.fuse", Device: "/dev/loop3", PID: 4242, ReadOnly: true, Alive: true}, StartTime: 123456}},
		{"state-v2-nbd.json", state{Attachment: Attachment{Volume: "pv1", Backend: BackendNBD, Device: "/dev/nbd3", PID: 4242}, StartTime: 123456}},
	} {
		s := tc.s
		b, err := encodeState(s)
		if err != nil {
			t.Fatal(err)
		}
		golden := filepath.Join("testdata", tc.golden)
		if *rewrite {
			if err := os.WriteFile(golden, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, want) {
			t.Fatalf("encoded state differs from %s (run with -rewrite and review the diff):\n%s", golden, b)
		}
		got, err := decodeState(want)
		if err != nil {
			t.Fatal(err)
		}
		s.Version, s.Alive = StateVersion, false // Alive is never stored
		if got != s {
			t.Fatalf("decoded %+v, want %+v", got, s)
		}
		for _, bad := range []string{
			strings.Replace(string(want), `"version": 2`, `"version": 3`, 1),
			strings.Replace(string(want), `"pid": 4242`, `"pid": 0`, 1),
			strings.Replace(string(want), `"volume": "pv1"`, `"volume": "../x"`, 1),
			strings.Replace(string(want), `"backend": "`+string(s.Backend)+`"`, `"backend": "iscsi"`, 1),
			strings.Replace(string(want), `"device": "/dev/nbd3"`, `"device": "/dev/sda"`, 1),
			strings.Replace(string(want), `"file": "/var/lib/torus-csi/attach/pv1.fuse",`, ``, 1),
			`{`,
		} {
			if bad == string(want) {
				continue // a replacement that does not apply to this backend
			}
			if _, err := decodeState([]byte(bad)); !errors.Is(err, torus.ErrCorrupt) {
				t.Errorf("decode %q: %v, want ErrCorrupt", bad, err)
			}
		}
	}
	v1, err := os.ReadFile(filepath.Join("testdata", "state-v1.json"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeState(v1)
	want := state{Version: StateVersion, Attachment: Attachment{Volume: "pv1", Backend: BackendFUSE, File: "/var/lib/torus-csi/attach/pv1.fuse", Device: "/dev/loop3", PID: 4242, ReadOnly: true}, StartTime: 123456}
	if err != nil || got != want {
		t.Fatalf("version 1: %+v, %v; want %+v", got, err, want)
	}
}

// TestChooseBackend: auto is nbd where the kernel has the NBD netlink
// interface and fuse otherwise; nbd without it fails, classified; fuse is
// fuse.
func TestChooseBackend(t *testing.T) {
	for _, tc := range []struct {
		want  Backend
		probe error
		got   Backend
		err   error
	}{
		{BackendAuto, nil, BackendNBD, nil},
		{BackendAuto, nbdnl.ErrNoFamily, BackendFUSE, nil},
		{BackendNBD, nil, BackendNBD, nil},
		{BackendNBD, nbdnl.ErrNoFamily, "", torus.ErrUnavailable},
		{BackendFUSE, nil, BackendFUSE, nil},
		{BackendFUSE, nbdnl.ErrNoFamily, BackendFUSE, nil},
		{"iscsi", nil, "", torus.ErrInvalid},
	} {
		got, err := chooseBackend(tc.want, tc.probe)
		if got != tc.got || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
			t.Errorf("chooseBackend(%q, %v) = %q, %v; want %q, %v", tc.want, tc.probe, got, err, tc.got, tc.err)
		}
	}
	for s, want := range map[string]Backend{"": BackendAuto, "auto": BackendAuto, "nbd": BackendNBD, "fuse": BackendFUSE} {
		if got, err := ParseBackend(s); err != nil || got != want {
			t.Errorf("ParseBackend(%q) = %q, %v", s, got, err)
		}
	}
	if _, err := ParseBackend("loop"); !errors.Is(err, torus.ErrInvalid) {
		t.Errorf("ParseBackend(loop): %v", err)
	}
}

// TestNewChoosesBackend: New probes the kernel (here: a fake probe, and
// this machine's real one) and records the choice; a fuse backend is
// never probed.
func TestNewChoosesBackend(t *testing.T) {
	dir := t.TempDir()
	meta := metaStub{}
	for _, tc := range []struct {
		want  Backend
		probe error
		got   Backend
	}{
		{BackendAuto, nil, BackendNBD},
		{BackendAuto, nbdnl.ErrNoFamily, BackendFUSE},
		{BackendFUSE, errors.New("must not be probed"), BackendFUSE},
	} {
		probed := false
		a, err := New(Options{Bin: "/bin/true", StateDir: dir, Meta: meta, Backend: tc.want,
			ProbeKernelNBD: func(context.Context) error { probed = true; return tc.probe }})
		if err != nil || a.Backend() != tc.got {
			t.Fatalf("New(%q, probe %v): %v, %v; want %q", tc.want, tc.probe, a, err, tc.got)
		}
		if tc.want == BackendFUSE && probed {
			t.Fatal("the fuse backend probed the kernel")
		}
	}
	if _, err := New(Options{Bin: "/bin/true", StateDir: dir, Meta: meta, Backend: BackendNBD,
		ProbeKernelNBD: func(context.Context) error { return nbdnl.ErrNoFamily }}); !errors.Is(err, nbdnl.ErrNoFamily) {
		t.Fatalf("nbd without the module: %v", err)
	}
	// This machine's kernel.
	a, err := New(Options{Bin: "/bin/true", StateDir: dir, Meta: meta})
	if err != nil {
		t.Fatal(err)
	}
	want := BackendFUSE
	if ProbeKernelNBD(context.Background()) == nil {
		want = BackendNBD
	}
	if a.Backend() != want {
		t.Fatalf("auto here chose %q, want %q", a.Backend(), want)
	}
}

// metaStub is a torus.Metadata that New only stores.
type metaStub struct{ torus.Metadata }

// requireTools skips (fails under TORUS_REQUIRE_TOOLS=1) without root,
// /dev/fuse or losetup.
func requireTools(t *testing.T) { requireToolsB(t) }

func requireToolsB(t testing.TB) {
	t.Helper()
	testutil.SkipShort(t, "attach tests run torusblk fuse processes and loop devices")
	testutil.Require(t, "root (FUSE mounts, loop devices)", testutil.Root())
	_, err := os.Stat("/dev/fuse")
	testutil.Require(t, "/dev/fuse", err)
	testutil.RequireBinary(t, "losetup")
}

func newAttacher(t testing.TB, c *testcluster.Cluster, dir string) *Attacher {
	t.Helper()
	a, err := New(Options{Bin: proccluster.Bin(t, "torusblk"), StateDir: dir, Meta: c.Meta, Logger: c.Log, Backend: BackendFUSE,
		Args: []string{"--etcd", strings.Join(c.Endpoints, ","), "--log-level", "debug"}})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func devSize(t *testing.T, dev string) int64 {
	t.Helper()
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
	if err != nil {
		t.Fatal(err)
	}
	return int64(n)
}

// TestAttachWriteDetach: a real cluster (embedded etcd, one daemon) and the
// real torusblk binary. Attach starts a detached torusblk fuse process (its
// own session) and a loop device of the volume's size in direct-I/O mode
// (/sys/block/loopN/loop/dio); data
// written and fsynced through the loop device is read back through a new
// Attacher on the same state directory (a restarted caller), which finds
// the attachment alive; a resize of the volume reaches the loop device;
// Detach stops the process, frees the device and removes the state, twice
// without error; and the data reads back through the volume API.
func TestAttachWriteDetach(t *testing.T) {
	requireTools(t)
	c := testcluster.New(t, testcluster.Options{Daemons: 1, Replication: 1})
	c.CreateVolume("vol1", 64<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	a := newAttacher(t, c, dir)
	at, err := a.Attach(ctx, "vol1", false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Detach(context.Background(), "vol1") })
	if sid, err := unix.Getsid(at.PID); err != nil || sid != at.PID {
		t.Errorf("torusblk fuse (pid %d) session %d, %v: want its own session", at.PID, sid, err)
	}
	if dio, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(at.Device), "loop", "dio")); err != nil || strings.TrimSpace(string(dio)) != "1" {
		t.Errorf("loop device %s direct I/O: %q %v, want 1", at.Device, dio, err)
	}
	if got := devSize(t, at.Device); got != 64<<20 {
		t.Fatalf("device %s has %d bytes, want %d", at.Device, got, 64<<20)
	}
	if again, err := a.Attach(ctx, "vol1", false); err != nil || again != at {
		t.Fatalf("second Attach: %+v, %v; want %+v", again, err, at)
	}

	data := make([]byte, 1<<20)
	_, _ = rand.Read(data)
	const off = 5 << 20
	f, err := os.OpenFile(at.Device, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync of the loop device: %v", err)
	}
	f.Close()

	// A restarted caller: a new Attacher on the same state directory.
	b := newAttacher(t, c, dir)
	got, ok, err := b.Get("vol1")
	if err != nil || !ok || got.PID != at.PID || got.Device != at.Device {
		t.Fatalf("Get after restart: %+v %v %v; want %+v", got, ok, err, at)
	}
	list, err := b.List()
	if err != nil || len(list) != 1 || !list[0].Alive || list[0].Device != at.Device {
		t.Fatalf("List after restart: %+v, %v", list, err)
	}

	v, err := c.Meta.Volume(ctx, "vol1")
	if err != nil {
		t.Fatal(err)
	}
	v.Size = 96 << 20
	if err := c.Meta.UpdateVolume(ctx, v); err != nil {
		t.Fatal(err)
	}
	if err := b.Resize(ctx, "vol1"); err != nil {
		t.Fatal(err)
	}
	if got := devSize(t, at.Device); got != 96<<20 {
		t.Fatalf("device has %d bytes after resize, want %d", got, 96<<20)
	}

	if err := b.Detach(ctx, "vol1"); err != nil {
		t.Fatal(err)
	}
	if err := b.Detach(ctx, "vol1"); err != nil {
		t.Fatalf("second Detach: %v", err)
	}
	if err := syscall.Kill(at.PID, 0); err == nil {
		if s, _, _ := procStat(at.PID); s != 'Z' {
			t.Errorf("torusblk fuse (pid %d) still runs after Detach", at.PID)
		}
	}
	if back := loopBacking(at.Device); back == at.File {
		t.Errorf("%s still backs %s", at.File, at.Device)
	}
	if _, ok, _ := b.Get("vol1"); ok {
		t.Error("Get after Detach: still attached")
	}
	if _, err := os.Stat(b.statePath("vol1")); !os.IsNotExist(err) {
		t.Errorf("state file after Detach: %v", err)
	}

	vol, err := c.Open(ctx, "vol1", volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close(ctx)
	back := make([]byte, len(data))
	if err := vol.ReadAt(ctx, back, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, data) {
		t.Fatal("data written through the loop device does not read back through the volume")
	}
	if vol.Size() != 96<<20 {
		t.Errorf("volume size %d", vol.Size())
	}
}

// TestAttachAfterProcessDeath: when the torusblk fuse process dies
// (SIGKILL), Get no longer reports the attachment and List shows it dead;
// the next Attach cleans up the stale loop device and FUSE mount, waits
// for the dead writer's lease (torusblk --lock-wait) and attaches again
// with a new process; data fsynced before the death reads back.
func TestAttachAfterProcessDeath(t *testing.T) {
	requireTools(t)
	c := testcluster.New(t, testcluster.Options{Daemons: 1, Replication: 1})
	c.CreateVolume("vol1", 32<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	a := newAttacher(t, c, t.TempDir())
	at, err := a.Attach(ctx, "vol1", false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Detach(context.Background(), "vol1") })
	data := make([]byte, 256<<10)
	_, _ = rand.Read(data)
	f, err := os.OpenFile(at.Device, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()

	if err := syscall.Kill(at.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, ok, err := a.Get("vol1")
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Get still reports the attachment 10 s after its process was killed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if list, err := a.List(); err != nil || len(list) != 1 || list[0].Alive {
		t.Fatalf("List after the kill: %+v, %v; want one dead attachment", list, err)
	}

	start := time.Now()
	again, err := a.Attach(ctx, "vol1", false)
	if err != nil {
		t.Fatalf("Attach after the process died: %v", err)
	}
	t.Logf("re-attached in %v (waiting for the dead writer's lease)", time.Since(start).Round(time.Millisecond))
	if again.PID == at.PID {
		t.Fatalf("re-attach kept the dead process %d", at.PID)
	}
	f, err = os.Open(again.Device)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	back := make([]byte, len(data))
	if _, err := f.ReadAt(back, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back, data) {
		t.Fatal("data fsynced before the process died does not read back after the re-attach")
	}
}

// TestAttachParallel: calls for different volumes run in parallel, calls
// for one volume are serialized (three racing Attach calls of a volume
// start one process).
func TestAttachParallel(t *testing.T) {
	requireTools(t)
	c := testcluster.New(t, testcluster.Options{Daemons: 1, Replication: 1})
	c.CreateVolume("va", 16<<20)
	c.CreateVolume("vb", 16<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a := newAttacher(t, c, t.TempDir())
	type res struct {
		at  Attachment
		err error
	}
	out := make(chan res, 6)
	for _, v := range []string{"va", "vb", "va", "vb", "va", "vb"} {
		go func() {
			at, err := a.Attach(ctx, v, false)
			out <- res{at, err}
		}()
	}
	pids := map[string]map[int]bool{"va": {}, "vb": {}}
	for range 6 {
		r := <-out
		if r.err != nil {
			t.Fatal(r.err)
		}
		pids[r.at.Volume][r.at.PID] = true
	}
	t.Cleanup(func() {
		_ = a.Detach(context.Background(), "va")
		_ = a.Detach(context.Background(), "vb")
	})
	if len(pids["va"]) != 1 || len(pids["vb"]) != 1 {
		t.Fatalf("processes per volume: %v, want one each", pids)
	}
	list, err := a.List()
	if err != nil || len(list) != 2 || !list[0].Alive || !list[1].Alive {
		t.Fatalf("List: %+v %v", list, err)
	}
	errs := make(chan error, 2)
	for _, v := range []string{"va", "vb"} {
		go func() { errs <- a.Detach(ctx, v) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if list, _ := a.List(); len(list) != 0 {
		t.Fatalf("List after Detach: %+v", list)
	}
}

// TestReviveAllNothingHeld: ReviveAll leaves alone what the kernel does
// not hold: a fuse attachment, an nbd one whose device is gone (here: no
// nbd module at all), and files that are not state files.
func TestReviveAllNothingHeld(t *testing.T) {
	dir := t.TempDir()
	a, err := New(Options{Bin: "/bin/false", StateDir: dir, Meta: metaStub{}, Backend: BackendFUSE})
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []state{
		{Attachment: Attachment{Volume: "pv1", Backend: BackendFUSE, File: filepath.Join(dir, "pv1.fuse"), Device: "/dev/loop9", PID: 1 << 22}, StartTime: 1},
		{Attachment: Attachment{Volume: "pv2", Backend: BackendNBD, Device: "/dev/nbd9", PID: 1 << 22}, StartTime: 1},
	} {
		if err := a.save(st); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "not a volume.json"), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	revived, err := a.ReviveAll(context.Background())
	if err != nil || len(revived) != 0 {
		t.Fatalf("ReviveAll: %+v, %v; want nothing", revived, err)
	}
	for _, v := range []string{"pv1", "pv2"} {
		if _, ok, err := a.load(v); !ok || err != nil {
			t.Fatalf("state of %s after ReviveAll: %v, %v", v, ok, err)
		}
	}
}
