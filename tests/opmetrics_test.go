package tests

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/testcluster"
	"github.com/torus-storage/torus/volume"
)

// TestDaemonOpMetrics: every daemon's /metrics has latency histograms of
// its store's appends, syncs and reads as the peer service runs them
// (torus_store_op_duration_seconds) and of the requests it sends other
// daemons (torus_peer_rpc_duration_seconds). After a writer wrote and
// flushed 4 MiB and read it back, the daemons together observed appends,
// syncs and reads, with no store errors.
func TestDaemonOpMetrics(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 3, Replication: 2})
	c.CreateVolume("m", 16<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	v, err := c.Open(ctx, "m", volume.Options{})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0x5a}, 4<<20)
	if err := v.WriteAt(ctx, data, 0, false); err != nil {
		t.Fatal(err)
	}
	if err := v.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := v.ReadAt(ctx, got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}

	sum := map[string]float64{}
	series := regexp.MustCompile(`(?m)^(torus_store_op_duration_seconds_count|torus_store_op_errors_total|torus_peer_rpc_duration_seconds_count)\{([^}]*)\} (\S+)$`)
	op := regexp.MustCompile(`op="([a-z]+)"`)
	for i, d := range c.Daemons {
		resp, err := http.Get("http://" + d.HTTPAddr() + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !bytes.Contains(body, []byte("torus_peer_rpc_duration_seconds")) {
			t.Errorf("daemon %d: no torus_peer_rpc_duration_seconds in /metrics", i)
		}
		for _, m := range series.FindAllSubmatch(body, -1) {
			n, _ := strconv.ParseFloat(string(m[3]), 64)
			key := string(m[1])
			if o := op.FindSubmatch(m[2]); o != nil {
				key += "/" + string(o[1])
			}
			sum[key] += n
		}
	}
	t.Logf("summed over the daemons: %v", sum)
	for _, o := range []string{"append", "sync", "read"} {
		if sum["torus_store_op_duration_seconds_count/"+o] < 1 {
			t.Errorf("no %s observed by any daemon's store histogram", o)
		}
	}
	for k, n := range sum {
		if regexp.MustCompile(`^torus_store_op_errors_total`).MatchString(k) && n > 0 {
			t.Errorf("%s = %v after a clean workload", k, n)
		}
	}
}
