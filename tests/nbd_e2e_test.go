package tests

import (
	"bytes"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testutil"
)

// TestNBDOverCluster serves a replicated volume from three torusd processes
// through `torusblk nbdserve` and drives it with real clients: nbdcopy round
// trip (four connections), qemu-img convert of a qcow2 image, nbdinfo --map,
// and a read-only snapshot export.
func TestNBDOverCluster(t *testing.T) {
	testutil.SkipShort(t, "process test")
	nbdcopy := testutil.RequireBinary(t, "nbdcopy")
	qemuImg := testutil.RequireBinary(t, "qemu-img")
	nbdinfo := testutil.RequireBinary(t, "nbdinfo")
	c := proccluster.New(t, proccluster.Options{Daemons: 3, Replication: 2, SegmentSize: "8MiB"})
	c.Ctl("volume", "create", "e2e", "128MiB")
	c.Ctl("volume", "create", "img", "64MiB")
	_, addr := c.StartNBD()
	dir := t.TempDir()
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	// nbdcopy round trip of 64 MiB of random data.
	src := filepath.Join(dir, "src")
	data := make([]byte, 64<<20)
	rand.Read(data)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	uri := "nbd://" + addr + "/e2e"
	run(nbdcopy, "--flush", src, uri)
	back := filepath.Join(dir, "back")
	run(nbdcopy, uri, back)
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 128<<20 || !bytes.Equal(got[:len(data)], data) || !bytes.Equal(got[len(data):], make([]byte, len(got)-len(data))) {
		t.Fatal("nbdcopy round trip differs")
	}
	// The second half was never written: the allocation map says so.
	m := run(nbdinfo, "--map", uri)
	if !strings.Contains(m, "hole") || !strings.Contains(m, "data") {
		t.Fatalf("nbdinfo --map shows no data/hole split:\n%s", m)
	}

	// qemu-img convert a qcow2 image into a volume and back.
	qcow := filepath.Join(dir, "disk.qcow2")
	run(qemuImg, "create", "-f", "qcow2", qcow, "64M")
	run("qemu-io", "-f", "qcow2", "-c", "write -P 0x42 1M 3M", "-c", "write -P 0x17 40M 512k", qcow)
	imgURI := "nbd://" + addr + "/img"
	run(qemuImg, "convert", "-n", "-f", "qcow2", "-O", "raw", qcow, imgURI)
	out := run(qemuImg, "compare", "-f", "qcow2", "-F", "raw", qcow, imgURI)
	if !strings.Contains(out, "identical") {
		t.Fatalf("qemu-img compare: %s", out)
	}
	// A snapshot is served read-only under vol@snap.
	c.Ctl("snapshot", "create", "e2e@s1")
	snapURI := "nbd://" + addr + "/e2e@s1"
	snapBack := filepath.Join(dir, "snap")
	run(nbdcopy, snapURI, snapBack)
	sg, _ := os.ReadFile(snapBack)
	if !bytes.Equal(sg[:len(data)], data) {
		t.Fatal("snapshot export differs from the data written before it")
	}
	if out, err := exec.Command(nbdcopy, src, snapURI).CombinedOutput(); err == nil {
		t.Fatalf("writing to a snapshot export succeeded:\n%s", out)
	}
}
