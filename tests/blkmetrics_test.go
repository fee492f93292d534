package tests

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/nbd"
)

// TestBlkMetrics runs `torusblk nbdserve --http`, drives a volume with
// qemu-io over NBD (a 1 MiB write, a flush, a read and a discard), and scrapes /metrics while a client holds the export
// open: every per-volume metric is there with the counts of that workload.
func TestBlkMetrics(t *testing.T) {
	testutil.SkipShort(t, "process test")
	qemuIO := testutil.RequireBinary(t, "qemu-io")
	c := proccluster.New(t, proccluster.Options{Daemons: 1, Replication: 1})
	c.Ctl("volume", "create", "m", "16MiB")
	httpAddr := fmt.Sprintf("127.0.0.1:%d", proccluster.FreePort(t, "127.0.0.1"))
	_, addr := c.StartNBD("--http", httpAddr)
	c.WaitHTTP("http://"+httpAddr+"/healthz", 30*time.Second)

	out, err := exec.Command(qemuIO, "-f", "raw",
		"-c", "write -P 0x42 0 1M", "-c", "flush", "-c", "read -P 0x42 0 1M", "-c", "discard 1M 64k",
		"nbd://"+addr+"/m").CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
	// Hold the export open, so its writer epoch is reported.
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := nbd.ClientHandshake(ctx, conn, "m"); err != nil {
		t.Fatal(err)
	}

	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	value := func(series string) float64 {
		t.Helper()
		m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(text)
		if m == nil {
			t.Fatalf("no series %s in /metrics:\n%s", series, grepTorus(text))
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		return v
	}
	if v := value(`torus_client_bytes_total{dir="write",volume="m"}`); v != 1<<20 {
		t.Errorf("bytes written %v, want 1MiB", v)
	}
	if v := value(`torus_client_bytes_total{dir="read",volume="m"}`); v < 1<<20 {
		t.Errorf("bytes read %v, want ≥ 1MiB", v)
	}
	for _, op := range []string{"read", "write", "flush", "trim"} {
		if v := value(`torus_client_request_duration_seconds_count{op="` + op + `",volume="m"}`); v < 1 {
			t.Errorf("%s latency: %v observations", op, v)
		}
	}
	if v := value(`torus_client_writer_epoch{volume="m"}`); v < 1 {
		t.Errorf("writer epoch %v", v)
	}
	value(`torus_client_requests_in_flight{volume="m"}`)
	value(`torus_client_degraded{volume="m"}`)
	value(`torus_client_replicas_dropped_total{volume="m"}`)
	if v := value(`torus_client_errors_total{kind="unavailable",op="write",volume="m"}`); v != 0 {
		t.Errorf("%v unavailable write errors, want 0", v)
	}
}

func grepTorus(text string) string {
	var b strings.Builder
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "torus_") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}
