package life

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testutil"
)

// nbdcopyRun runs nbdcopy with args (2 minutes at most) and fails the
// test, with its output, if it does not exit 0.
func nbdcopyRun(t *testing.T, args ...string) {
	t.Helper()
	bin := testutil.RequireBinary(t, "nbdcopy")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdcopy %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("nbdcopy %s: %v", strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
}

// randomFile writes n random bytes to a new file in dir and returns its
// path and contents.
func randomFile(t *testing.T, dir, name string, n int) (string, []byte) {
	t.Helper()
	data := make([]byte, n)
	rand.NewChaCha8([32]byte{byte(time.Now().UnixNano()), byte(n)}).Read(data)
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, data
}

// etcdLeader returns the index of the etcd member that is leader, asking
// each member's /v3/maintenance/status (etcd's JSON gateway).
func etcdLeader(t *testing.T, c *proccluster.Cluster) int {
	t.Helper()
	cl := c.EtcdHTTP()
	var ids []string
	leader := ""
	for _, u := range c.EtcdURLs {
		resp, err := cl.Post(u+"/v3/maintenance/status", "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatalf("etcd status at %s: %v", u, err)
		}
		var st struct {
			Header struct {
				MemberID string `json:"member_id"`
			} `json:"header"`
			Leader string `json:"leader"`
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("etcd status at %s: %v", u, err)
		}
		ids = append(ids, st.Header.MemberID)
		leader = st.Leader
	}
	for i, id := range ids {
		if id == leader {
			return i
		}
	}
	t.Fatalf("etcd leader %s is none of the members %v", leader, ids)
	return -1
}

// ctlWithEnv runs torusctl against c with exactly env (no cluster
// defaults), returning its combined output and error.
func ctlWithEnv(t *testing.T, c *proccluster.Cluster, env []string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, proccluster.Bin(t, "torusctl"), append([]string{"--etcd", c.EtcdURL}, args...)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestEtcdTLSCluster: a 3-member Debian etcd cluster with TLS between
// members and for clients (--client-cert-auth), every certificate from
// `torusctl certs` (a CA of etcd's own, `certs etcd` per member, `certs
// client torus` for every Torus process through TORUS_ETCD_*). Three
// torusd, torusblk and torusctl run on it; nbdcopy writes 16 MiB through
// NBD; the etcd leader is SIGKILLed; nbdcopy writes another 16 MiB, the
// daemons stay up in `peer list` past their heartbeat TTL, and the volume
// reads back equal to the second file. torusctl without a client
// certificate, and with one of another CA, cannot reach etcd.
func TestEtcdTLSCluster(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2, EtcdMembers: 3, EtcdTLS: true})
	if !strings.HasPrefix(c.EtcdURLs[0], "https://") || len(c.EtcdMembers) != 3 {
		t.Fatalf("etcd is %v, want 3 https members", c.EtcdURLs)
	}
	const vol, size = "etls", 16 << 20
	createVolume(t, c, vol, "16MiB", 0)
	_, addr := c.StartNBD()
	dir := t.TempDir()
	first, _ := randomFile(t, dir, "first.img", size)
	second, want := randomFile(t, dir, "second.img", size)
	uri := "nbd://" + addr + "/" + vol
	nbdcopyRun(t, "--flush", first, uri)

	leader := etcdLeader(t, c)
	t.Logf("SIGKILL etcd leader e%d (%s)", leader, c.EtcdURLs[leader])
	c.EtcdMembers[leader].Kill(t)
	nbdcopyRun(t, "--flush", second, uri)

	// Past the heartbeat TTL and the down grace, every daemon is still up:
	// their leases were kept alive through the other two members.
	time.Sleep(heartbeatTTL + downGrace + detectSlack)
	ps, err := peerList(c)
	if err != nil {
		t.Fatal(err)
	}
	up := 0
	for _, p := range ps {
		if p.State == torus.PeerUp {
			up++
		}
	}
	if up != 3 {
		t.Fatalf("with one etcd member down: %d daemons up, want 3: %s", up, peerStates(ps))
	}

	got := filepath.Join(dir, "got.img")
	nbdcopyRun(t, uri, got)
	b, err := os.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("the volume read back (%d bytes) differs from the file written after the etcd leader died", len(b))
	}

	// Refused: no client certificate (the CA alone), and a client
	// certificate of another CA.
	ca := "TORUS_ETCD_CA=" + filepath.Join(c.EtcdCerts, "ca.crt")
	other := filepath.Join(dir, "other")
	c.Ctl("certs", "init-ca", "--certs-dir", other)
	c.Ctl("certs", "client", "--certs-dir", other, "torus")
	for name, env := range map[string][]string{
		"no certificate": {ca},
		"another CA's certificate": {ca, "TORUS_ETCD_CERT=" + filepath.Join(other, "client.torus.crt"),
			"TORUS_ETCD_KEY=" + filepath.Join(other, "client.torus.key")},
	} {
		out, err := ctlWithEnv(t, c, env, "volume", "list")
		if err == nil || strings.Contains(out, vol) {
			t.Errorf("torusctl with %s listed volumes of a --client-cert-auth etcd: %v\n%s", name, err, out)
		}
	}
	if out, err := ctlWithEnv(t, c, c.EtcdEnv, "volume", "list"); err != nil || !strings.Contains(out, vol) {
		t.Fatalf("torusctl with the etcd client certificate: %v\n%s", err, out)
	}
}
