package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
)

// The FlexVolume tests install the driver as the kubelet would find it,
// PLUGINDIR/torus~torus/torus, a wrapper script that runs this test binary
// as the driver (TestFlexDriverProcess) with the loop attach backend below
// in place of the production one, and call it with the arguments and JSON
// the kubelet passes.

const flexTestEnv = "TORUS_FLEX_TEST_LOOPDIR"

// TestFlexDriverProcess is not a test: it is the driver when the test
// binary is started by the wrapper script (flexTestEnv set); otherwise it
// does nothing.
func TestFlexDriverProcess(t *testing.T) {
	dir := os.Getenv(flexTestEnv)
	if dir == "" {
		return
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	root := &cobra.Command{Use: "torusblk", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(newFlex(&globals{etcd: "http://127.0.0.1:2379"}, func(context.Context, flexBackendConfig) (flexAttacher, error) {
		return loopFlex{dir: dir}, nil
	}))
	root.SetArgs(append([]string{"flex"}, args...))
	if err := root.Execute(); err != nil {
		fmt.Println(`{"status":"Failure","message":"test driver: ` + err.Error() + `"}`)
		os.Exit(1)
	}
	os.Exit(0) // before the testing package prints anything to stdout
}

// loopFlex attaches volume V as a loop device (direct I/O) over the sparse
// file DIR/V.img (64 MiB, made on first use). Volume "unreadable" attaches
// as a directory, which opens but cannot be read. It keeps no state: every
// call is a new process.
type loopFlex struct{ dir string }

func (l loopFlex) Attach(ctx context.Context, volume string, ro bool) (string, error) {
	if volume == "unreadable" {
		d := filepath.Join(l.dir, "unreadable.dev")
		return d, os.MkdirAll(d, 0o700)
	}
	file := filepath.Join(l.dir, volume+".img")
	if _, err := os.Stat(file); errors.Is(err, os.ErrNotExist) {
		f, err := os.Create(file)
		if err != nil {
			return "", err
		}
		if err := f.Truncate(64 << 20); err != nil {
			f.Close()
			return "", err
		}
		f.Close()
	}
	if dev := loopOf(ctx, file); dev != "" {
		return dev, nil
	}
	args := []string{"--find", "--show", "--direct-io=on"}
	if ro {
		args = append(args, "--read-only")
	}
	out, err := exec.CommandContext(ctx, "losetup", append(args, file)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("losetup: %w: %s", err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

func (l loopFlex) Detach(ctx context.Context, volume, device string) error {
	if volume == "unreadable" {
		return nil
	}
	if loopOf(ctx, filepath.Join(l.dir, volume+".img")) == "" {
		return nil
	}
	if out, err := exec.CommandContext(ctx, "losetup", "-d", device).CombinedOutput(); err != nil {
		return fmt.Errorf("losetup -d: %w: %s", err, out)
	}
	return nil
}

func (loopFlex) Close() error { return nil }

// loopOf is the loop device over file ("" when none).
func loopOf(ctx context.Context, file string) string {
	out, _ := exec.CommandContext(ctx, "losetup", "-j", file, "-O", "NAME", "-n").Output()
	return strings.TrimSpace(string(out))
}

type flexEnv struct {
	t        *testing.T
	driver   string // PLUGINDIR/torus~torus/torus
	loopDir  string
	stateDir string
}

func needFlexTools(t *testing.T) {
	t.Helper()
	testutil.Require(t, "root (loop devices, mounts)", testutil.Root())
	for _, p := range []string{"losetup", "blkid", "mkfs.ext4", "mkfs.xfs"} {
		testutil.RequireBinary(t, p)
	}
}

func newFlexEnv(t *testing.T) *flexEnv {
	t.Helper()
	needFlexTools(t)
	base := t.TempDir()
	e := &flexEnv{t: t, loopDir: filepath.Join(base, "loop"), stateDir: filepath.Join(base, "state")}
	plugin := filepath.Join(base, "volume-plugins", "torus~torus")
	for _, d := range []string{e.loopDir, plugin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e.driver = filepath.Join(plugin, "torus")
	script := fmt.Sprintf("#!/bin/sh\nexport %s=%q TORUS_FLEX_STATE_DIR=%q\nexec %q -test.run='^TestFlexDriverProcess$' -- \"$@\"\n", flexTestEnv, e.loopDir, e.stateDir, self)
	if err := os.WriteFile(e.driver, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		imgs, _ := filepath.Glob(filepath.Join(e.loopDir, "*.img"))
		for _, img := range imgs {
			if d := loopOf(context.Background(), img); d != "" {
				_ = exec.Command("losetup", "-d", d).Run()
			}
		}
	})
	return e
}

// mountDir is a new mount directory, unmounted at the end of the test
// whatever happens.
func (e *flexEnv) mountDir(name string) string {
	d := filepath.Join(e.t.TempDir(), name)
	e.t.Cleanup(func() {
		for isMountPoint(d) {
			if err := unix.Unmount(d, 0); err != nil {
				e.t.Errorf("cleanup: unmount %s: %v", d, err)
				return
			}
		}
	})
	return d
}

// call runs the driver as the kubelet does and decodes its answer; the
// whole output (stdout and stderr, as the kubelet reads them) must be one
// JSON object.
func (e *flexEnv) call(args ...string) flexResponse {
	e.t.Helper()
	out, err := exec.Command(e.driver, args...).CombinedOutput()
	var r flexResponse
	d := json.NewDecoder(bytes.NewReader(out))
	d.DisallowUnknownFields()
	if derr := d.Decode(&r); derr != nil || d.More() {
		e.t.Fatalf("%v: output is not one JSON answer (%v, exit %v):\n%s", args, derr, err, out)
	}
	if (r.Status == flexSuccess) != (err == nil) {
		e.t.Fatalf("%v: status %q with exit %v", args, r.Status, err)
	}
	return r
}

func (e *flexEnv) ok(args ...string) {
	e.t.Helper()
	if r := e.call(args...); r.Status != flexSuccess {
		e.t.Fatalf("%v: %+v", args, r)
	}
}

// fail calls and wants Failure with a message containing want.
func (e *flexEnv) fail(want string, args ...string) {
	e.t.Helper()
	r := e.call(args...)
	if r.Status != flexFailure || !strings.Contains(r.Message, want) {
		e.t.Fatalf("%v: %+v, want Failure with %q", args, r, want)
	}
	e.t.Logf("%s: %s", args[0], r.Message)
}

func kubeletOptions(volume, fs, rw string) string {
	b, _ := json.Marshal(map[string]string{
		"volume": volume, "kubernetes.io/fsType": fs, "kubernetes.io/readwrite": rw,
		"kubernetes.io/pod.name": "web-0", "kubernetes.io/pod.namespace": "default",
		"kubernetes.io/pod.uid": "8d7b9c0e", "kubernetes.io/serviceAccount.name": "default",
	})
	return string(b)
}

func (e *flexEnv) formats() int {
	b, _ := os.ReadFile(filepath.Join(e.stateDir, "flex.log"))
	return strings.Count(string(b), "formatting an empty volume")
}

func (e *flexEnv) states() int {
	m, _ := filepath.Glob(filepath.Join(e.stateDir, "mounts", "*.json"))
	return len(m)
}

// TestFlexLifecycle: init; mount formats an empty volume (once) and mounts
// it; mount again is idempotent; unmount unmounts and detaches; a second
// mount finds the filesystem and the data (no mkfs); unmount twice is
// success; read-only mounts.
func TestFlexLifecycle(t *testing.T) {
	e := newFlexEnv(t)
	r := e.call("init")
	if r.Status != flexSuccess || r.Capabilities == nil || r.Capabilities.Attach {
		t.Fatalf("init: %+v", r)
	}
	if r := e.call("getvolumename", "{}"); r.Status != flexNotSupported {
		t.Fatalf("getvolumename: %+v", r)
	}
	mnt := e.mountDir("data")
	opts := kubeletOptions("v1", "ext4", "rw")
	e.ok("mount", mnt, opts)
	if !isMountPoint(mnt) {
		t.Fatal("not mounted after mount")
	}
	if n := e.formats(); n != 1 {
		t.Fatalf("%d formats after the first mount, want 1", n)
	}
	if err := os.WriteFile(filepath.Join(mnt, "hello"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	e.ok("mount", mnt, opts) // the kubelet retries: idempotent
	e.ok("unmount", mnt)
	if isMountPoint(mnt) {
		t.Fatal("still mounted after unmount")
	}
	if d := loopOf(context.Background(), filepath.Join(e.loopDir, "v1.img")); d != "" {
		t.Fatalf("%s still attached after unmount", d)
	}
	if n := e.states(); n != 0 {
		t.Fatalf("%d state files after unmount", n)
	}
	e.ok("unmount", mnt) // again: success

	mnt2 := e.mountDir("data")
	e.ok("mount", mnt2, opts)
	if n := e.formats(); n != 1 {
		t.Fatalf("%d formats after the second mount, want 1 (mkfs ran again)", n)
	}
	if b, err := os.ReadFile(filepath.Join(mnt2, "hello")); err != nil || string(b) != "kept" {
		t.Fatalf("data after remount: %q %v", b, err)
	}
	// The same volume at another directory of this node: one writer.
	e.fail("already mounted on this node at "+mnt2, "mount", mnt, opts)
	e.ok("unmount", mnt2)

	ro := e.mountDir("ro")
	e.ok("mount", ro, kubeletOptions("v1", "ext4", "ro"))
	if err := os.WriteFile(filepath.Join(ro, "x"), nil, 0o644); err == nil {
		t.Fatal("wrote to a read-only mount")
	}
	if b, err := os.ReadFile(filepath.Join(ro, "hello")); err != nil || string(b) != "kept" {
		t.Fatalf("read-only mount: %q %v", b, err)
	}
	e.ok("unmount", ro)
}

// TestFlexFailures: every refusal is a Failure with the reason, leaves no
// device attached and no state file, and never formats data.
func TestFlexFailures(t *testing.T) {
	e := newFlexEnv(t)
	mnt := e.mountDir("data")
	e.fail("not a JSON object", "mount", mnt, `{"volume":`)
	e.fail("not a JSON object", "mount", mnt, `{"volume":1}`)
	e.fail(`option "volume" is missing`, "mount", mnt, `{"kubernetes.io/fsType":"ext4"}`)
	e.fail("unknown option volumeName", "mount", mnt, `{"volume":"v1","volumeName":"v1"}`)
	e.fail(`fsType "ntfs"`, "mount", mnt, kubeletOptions("v1", "ntfs", "rw"))
	e.fail("mount takes MOUNTDIR OPTIONS, got 1", "mount", mnt)
	e.fail("not absolute", "mount", "data", kubeletOptions("v1", "ext4", "rw"))

	// Empty and read-only: nothing to mount, and not formatted.
	e.fail("empty and attached read-only", "mount", mnt, kubeletOptions("v1", "ext4", "ro"))
	// A device that cannot be read is never taken for empty.
	e.fail("not formatting a device that cannot be read", "mount", mnt, kubeletOptions("unreadable", "ext4", "rw"))
	// Data blkid cannot name is left alone, byte for byte.
	junk := make([]byte, 4096)
	if _, err := rand.Read(junk); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(e.loopDir, "v1.img")
	if err := os.WriteFile(img, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	e.fail("holds data but blkid finds no signature", "mount", mnt, kubeletOptions("v1", "ext4", "rw"))
	if b, _ := os.ReadFile(img); !bytes.Equal(b[:4096], junk) {
		t.Fatal("the device's data changed")
	}
	// A filesystem of another type than asked is not reformatted.
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	e.fail("holds a ext4 filesystem, fsType asks for xfs", "mount", mnt, kubeletOptions("v1", "xfs", "rw"))
	if e.formats() != 0 {
		t.Fatal("a failed mount formatted")
	}
	if d := loopOf(context.Background(), img); d != "" {
		t.Fatalf("%s left attached by a failed mount", d)
	}
	if n := e.states(); n != 0 {
		t.Fatalf("%d state files left by failed mounts", n)
	}
	if isMountPoint(mnt) {
		t.Fatal("a failed mount mounted")
	}
}

func TestFlexArgs(t *testing.T) {
	for _, c := range []struct {
		argv []string
		want []string
		ok   bool
	}{
		{[]string{"/usr/libexec/kubernetes/kubelet-plugins/volume/exec/torus~torus/torus", "init"}, []string{"flex", "init"}, true},
		{[]string{"torus", "mount", "/m", "{}"}, []string{"flex", "mount", "/m", "{}"}, true},
		{[]string{"/usr/local/bin/torusblk", "flex", "init"}, nil, false},
		// The attach backend starts the driver binary itself as torusblk.
		{[]string{"/x/torus~torus/torus", "--etcd", "http://e:2379", "fuse", "v", "/f"}, nil, false},
		{nil, nil, false},
	} {
		got, ok := flexArgs(c.argv)
		if ok != c.ok || strings.Join(got, " ") != strings.Join(c.want, " ") {
			t.Errorf("flexArgs(%q) = %q %v, want %q %v", c.argv, got, ok, c.want, c.ok)
		}
	}
}

func TestParseFlexOptions(t *testing.T) {
	o, err := parseFlexOptions(`{"volume":"db","etcd":"http://e:2379","kubernetes.io/fsType":"xfs","kubernetes.io/readwrite":"ro","trim":"true","writeLevel":"all","kubernetes.io/secret/x":"eA=="}`)
	if err != nil {
		t.Fatal(err)
	}
	if o != (flexOptions{Volume: "db", Etcd: "http://e:2379", FSType: "xfs", ReadOnly: true, Trim: true}) {
		t.Fatalf("%+v", o)
	}
	if o, err := parseFlexOptions(`{"volume":"db"}`); err != nil || o.FSType != "ext4" || o.ReadOnly {
		t.Fatalf("defaults: %+v %v", o, err)
	}
	for _, bad := range []string{`{"volume":"Bad Name"}`, `{"volume":"db","kubernetes.io/readwrite":"rx"}`, `{"volume":"db","trim":"yes"}`, `[]`} {
		if _, err := parseFlexOptions(bad); !errors.Is(err, torus.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", bad, err)
		}
	}
}

// TestFlexAttachBackendFlag: an unknown --attach-backend is refused,
// classified, before the backend reaches for the cluster.
func TestFlexAttachBackendFlag(t *testing.T) {
	_, err := attachBackend(&globals{})(context.Background(), flexBackendConfig{Etcd: "http://127.0.0.1:1", StateDir: t.TempDir(), Backend: "loop"})
	if !errors.Is(err, torus.ErrInvalid) {
		t.Fatalf("--attach-backend loop: %v, want ErrInvalid", err)
	}
}
