package tests

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testutil"
)

// TestDevMode runs what `make run` runs: torusd --dev with embedded etcd,
// then talks to volume "demo" with real NBD clients, stops it with SIGTERM,
// starts it again on the same data dir and finds the data.
func TestDevMode(t *testing.T) {
	testutil.SkipShort(t, "process test")
	nbdinfo := testutil.RequireBinary(t, "nbdinfo")
	qemuIO := testutil.RequireBinary(t, "qemu-io")
	dir := t.TempDir()
	ip := "127.0.0.1"
	nbdAddr := fmt.Sprintf("%s:%d", ip, proccluster.FreePort(t, ip))
	etcdURL := fmt.Sprintf("http://%s:%d", ip, proccluster.FreePort(t, ip))
	httpAddr := fmt.Sprintf("%s:%d", ip, proccluster.FreePort(t, ip))
	args := []string{proccluster.Bin(t, "torusd"), "--dev", "--data-dir", filepath.Join(dir, "data"),
		"--nbd-listen", nbdAddr, "--http", httpAddr,
		"--peer-address", fmt.Sprintf("%s:%d", ip, proccluster.FreePort(t, ip)),
		"--dev-etcd-client-url", etcdURL,
		"--dev-etcd-peer-url", fmt.Sprintf("http://%s:%d", ip, proccluster.FreePort(t, ip))}
	p := &proccluster.Proc{Name: "torusd-dev", Args: args}
	starts := 0
	start := func() {
		p.Start(t)
		starts++
		deadline := time.Now().Add(60 * time.Second)
		for strings.Count(p.Output(), "Torus is running") < starts {
			if time.Now().After(deadline) || !p.Running() {
				t.Fatalf("torusd --dev did not start:\n%s", p.Output())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	t.Cleanup(func() {
		p.Kill(t)
		if t.Failed() {
			t.Logf("torusd output:\n%s", p.Output())
		}
	})
	start()
	uri := "nbd://" + nbdAddr + "/demo"
	out, err := exec.Command(nbdinfo, "--json", uri).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo: %v\n%s", err, out)
	}
	var info struct {
		Exports []struct {
			Size int64 `json:"export-size"`
		} `json:"exports"`
	}
	if err := json.Unmarshal(out, &info); err != nil || len(info.Exports) != 1 || info.Exports[0].Size != 1<<30 {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	qio := func(cmds ...string) string {
		t.Helper()
		a := []string{"-f", "raw"}
		for _, c := range cmds {
			a = append(a, "-c", c)
		}
		out, err := exec.Command(qemuIO, append(a, uri)...).CombinedOutput()
		if err != nil || strings.Contains(string(out), "fail") || strings.Contains(string(out), "error") {
			t.Fatalf("qemu-io %v: %v\n%s", cmds, err, out)
		}
		return string(out)
	}
	qio("write -P 0x5a 4097 1000000", "write -P 0xa5 700000000 65536", "flush")
	// The in-process writer's client metrics are on the daemon's /metrics.
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`torus_client_bytes_total{dir="write",volume="demo"} 1.065536e+06`,
		`torus_client_request_duration_seconds_count{op="flush",volume="demo"} `, `torus_store_op_duration_seconds_count{op="append"`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("torusd --dev /metrics lacks %s:\n%s", want, grepTorus(string(body)))
		}
	}
	p.Signal(t, syscall.SIGTERM)
	if code := p.ExitCode(); code != 0 {
		t.Fatalf("torusd --dev exited %d after SIGTERM", code)
	}
	start()
	qio("read -P 0x5a 4097 1000000", "read -P 0xa5 700000000 65536", "read -P 0 0 4097")
	ctl := exec.Command(proccluster.Bin(t, "torusctl"), "--etcd", etcdURL, "volume", "list")
	out, err = ctl.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "demo") {
		t.Fatalf("torusctl volume list: %v\n%s", err, out)
	}
}
