package csi

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/torus-storage/torus"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files of csi")

// goldenState is the state of testdata/nodestate-v1.json.
var goldenState = nodeState{
	Version:     nodeStateVersion,
	Volume:      "csi-pvc-1234-0123456789abcdef",
	StagingPath: "/var/lib/kubelet/plugins/kubernetes.io/csi/csi.torus.io/abc/globalmount",
	FSType:      "ext4",
	MountFlags:  []string{"noatime"},
	Device:      "/dev/loop3",
	Staged:      true,
	Targets: []target{
		{Path: "/var/lib/kubelet/pods/p1/volumes/kubernetes.io~csi/pvc-1234/mount"},
		{Path: "/var/lib/kubelet/pods/p2/volumes/kubernetes.io~csi/pvc-1234/mount", ReadOnly: true},
	},
}

// TestNodeStateGolden pins the node state file format (version 1): the
// encoding of a known state is the golden file byte for byte, the golden
// file decodes to that state, and another version or a broken file is
// ErrCorrupt.
func TestNodeStateGolden(t *testing.T) {
	path := filepath.Join("testdata", "nodestate-v1.json")
	b, err := encodeNodeState(goldenState)
	if err != nil {
		t.Fatal(err)
	}
	if *updateGolden {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != string(want) {
		t.Fatalf("encoding changed (a format change needs a new version):\n got %s\nwant %s", b, want)
	}
	got, err := decodeNodeState(want)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, goldenState) {
		t.Fatalf("decoded %+v\nwant %+v", got, goldenState)
	}
	for name, in := range map[string]string{
		"version 2":  `{"version":2,"volume":"v","staging_path":"/s"}`,
		"no version": `{"volume":"v","staging_path":"/s"}`,
		"bad volume": `{"version":1,"volume":"../x","staging_path":"/s"}`,
		"truncated":  `{"version":1,"vol`,
		"no staging": `{"version":1,"volume":"v"}`,
	} {
		if _, err := decodeNodeState([]byte(in)); !errors.Is(err, torus.ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
}

// TestStateStore: save, load, targets kept sorted, remove; a missing file
// is ok=false; a file naming another volume is ErrCorrupt.
func TestStateStore(t *testing.T) {
	st := stateStore{dir: t.TempDir()}
	if _, ok, err := st.load("v"); ok || err != nil {
		t.Fatalf("load of nothing: %v %v", ok, err)
	}
	s := nodeState{Volume: "v", StagingPath: "/s"}
	s.setTarget(target{Path: "/b"})
	s.setTarget(target{Path: "/a", ReadOnly: true})
	s.setTarget(target{Path: "/b", ReadOnly: true})
	if err := st.save(s); err != nil {
		t.Fatal(err)
	}
	got, ok, err := st.load("v")
	if err != nil || !ok {
		t.Fatalf("load: %v %v", ok, err)
	}
	if want := []target{{Path: "/a", ReadOnly: true}, {Path: "/b", ReadOnly: true}}; !reflect.DeepEqual(got.Targets, want) {
		t.Fatalf("targets %+v, want %+v", got.Targets, want)
	}
	if err := os.Rename(st.path("v"), st.path("w")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.load("w"); !errors.Is(err, torus.ErrCorrupt) {
		t.Fatalf("load of a file naming another volume: %v", err)
	}
	if err := st.remove("w"); err != nil {
		t.Fatal(err)
	}
	if err := st.remove("w"); err != nil {
		t.Fatalf("second remove: %v", err)
	}
	if _, ok, _ := st.load("w"); ok {
		t.Fatal("state still there after remove")
	}
}
