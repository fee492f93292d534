package life

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/proccluster"
)

// TestFlexVolumeReal: the real torusblk, installed as a FlexVolume driver
// (a copy named torus~torus/torus), called with the JSON arguments kubelet
// passes, against a real cluster. init answers attach:false; the first
// mount attaches the volume (torusblk fuse + loop device), formats it ext4
// and mounts it; a file written there survives unmount and a second mount
// (which must not format again); unmount detaches; a mount of a volume that
// does not exist fails with a JSON message naming it.
func TestFlexVolumeReal(t *testing.T) {
	requireAttachTools(t)
	c := startCluster(t, proccluster.Options{Daemons: 1, Replication: 1})
	createVolume(t, c, "fv", "128MiB", 0)
	dir := t.TempDir()
	plugin := filepath.Join(dir, "plugins", "torus~torus")
	if err := os.MkdirAll(plugin, 0o755); err != nil {
		t.Fatal(err)
	}
	driver := filepath.Join(plugin, "torus")
	b, err := os.ReadFile(proccluster.Bin(t, "torusblk"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(driver, b, 0o755); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(dir, "state")
	mnt := filepath.Join(dir, "pods", "p1", "volumes", "torus~torus", "fv")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	cleanupAttachments(t, mnt, filepath.Join(state, "attach"))

	call := func(args ...string) (status, message string, raw []byte) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, driver, args...)
		cmd.Env = append(append(os.Environ(), c.EtcdEnv...), "TORUS_FLEX_STATE_DIR="+state, "TORUS_ETCD="+c.EtcdURL)
		var out bytes.Buffer
		cmd.Stdout = &out
		_ = cmd.Run() // the exit status follows the JSON
		var r struct{ Status, Message string }
		if err := json.Unmarshal(bytes.TrimSpace(out.Bytes()), &r); err != nil {
			t.Fatalf("flex %v: stdout is not one JSON object: %q", args, out.String())
		}
		return r.Status, r.Message, out.Bytes()
	}
	if st, _, raw := call("init"); st != "Success" || !bytes.Contains(raw, []byte(`"attach":false`)) {
		t.Fatalf("init: %s", raw)
	}
	opts := `{"volume":"fv","etcd":"` + c.EtcdURL + `","kubernetes.io/fsType":"ext4","kubernetes.io/readwrite":"rw"}`
	if st, msg, _ := call("mount", mnt, opts); st != "Success" {
		t.Fatalf("first mount: %s %s", st, msg)
	}
	if err := os.WriteFile(filepath.Join(mnt, "hello"), []byte("torus"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("sync", "-f", filepath.Join(mnt, "hello")).CombinedOutput(); err != nil {
		t.Fatalf("sync: %v %s", err, out)
	}
	if st, msg, _ := call("unmount", mnt); st != "Success" {
		t.Fatalf("unmount: %s %s", st, msg)
	}
	if m, _ := filepath.Glob(filepath.Join(state, "attach", "*.json")); len(m) != 0 {
		t.Errorf("attachments left after unmount: %v", m)
	}
	if st, msg, _ := call("mount", mnt, opts); st != "Success" {
		t.Fatalf("second mount: %s %s", st, msg)
	}
	got, err := os.ReadFile(filepath.Join(mnt, "hello"))
	if err != nil || string(got) != "torus" {
		t.Fatalf("after a second mount: %q, %v (formatted again?)", got, err)
	}
	if st, msg, _ := call("unmount", mnt); st != "Success" {
		t.Fatalf("second unmount: %s %s", st, msg)
	}
	missing := filepath.Join(dir, "pods", "p2")
	if err := os.MkdirAll(missing, 0o755); err != nil {
		t.Fatal(err)
	}
	st, msg, _ := call("mount", missing, `{"volume":"nosuch","etcd":"`+c.EtcdURL+`"}`)
	if st != "Failure" || !strings.Contains(msg, "nosuch") {
		t.Errorf("mount of a missing volume: %s %q, want Failure naming it", st, msg)
	}
}
