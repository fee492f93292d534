package main

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/proccluster"
)

// TestNBDWithoutModule runs the built torusblk nbd where the kernel has no
// nbd module (this CI machine): it must fail at once, before reaching for
// etcd (pointed at a closed port here), exit non-zero and say why and what
// to do instead. Where the module is loaded the netlink step passes, and
// the command must instead fail on the unreachable etcd, not on netlink.
func TestNBDWithoutModule(t *testing.T) {
	bin := proccluster.Bin(t, "torusblk")
	cmd := exec.Command(bin, "--etcd", "http://127.0.0.1:1", "nbd", "--state-dir", t.TempDir(), "pv1")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	if err == nil {
		t.Fatalf("torusblk nbd succeeded:\n%s", out)
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() == 0 {
		t.Fatalf("torusblk nbd: %v, want a non-zero exit", err)
	}
	const msg = "torusblk: kernel NBD netlink family not available: load the nbd module or use torusblk fuse"
	if _, statErr := os.Stat("/sys/module/nbd"); statErr == nil {
		if strings.Contains(string(out), msg) {
			t.Fatalf("the nbd module is loaded, yet:\n%s", out)
		}
		return
	}
	if strings.TrimSpace(string(out)) != msg {
		t.Fatalf("output %q, want %q", out, msg)
	}
	if took > 5*time.Second {
		t.Fatalf("took %v to fail; it must fail before any network I/O", took)
	}
}
