package life

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/internal/tlsconfig"
	metaetcd "github.com/torus-storage/torus/metadata/etcd"
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

// etcdctl runs Debian's etcdctl against c's etcd; a failure fails the test.
func etcdctl(t *testing.T, c *proccluster.Cluster, args ...string) string {
	t.Helper()
	bin := testutil.RequireBinary(t, "etcdctl")
	cmd := exec.Command(bin, append([]string{"--endpoints", c.EtcdURL}, args...)...)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("etcdctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestEtcdAuth: etcd with authentication on and the role of
// docs/security.md (readwrite on /torus/ only), created with etcdctl
// before `torusctl init`. Three torusd, torusblk and torusctl run as that
// user (TORUS_ETCD_USER, TORUS_ETCD_PASSWORD_FILE): writes and flushes
// through NBD verify. Refused, each classified as torus.ErrPermission
// (errors.Is, through metadata/etcd as every binary uses it): a user
// without the role, the right user with a wrong password, no user at all,
// and the right user on another prefix; torusctl as the user without the
// role exits non-zero saying permission denied and naming the user, and
// torusd as that user exits at once.
func TestEtcdAuth(t *testing.T) {
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "torus.pw")
	if err := os.WriteFile(pwFile, []byte("torus-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	nobodyFile := filepath.Join(dir, "nobody.pw")
	if err := os.WriteFile(nobodyFile, []byte("nobody-pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	setup := func(c *proccluster.Cluster) {
		// The commands of docs/security.md.
		etcdctl(t, c, "user", "add", "root", "--new-user-password=root-pw")
		etcdctl(t, c, "role", "add", "torus")
		etcdctl(t, c, "role", "grant-permission", "torus", "readwrite", "--prefix=true", "/torus/")
		etcdctl(t, c, "user", "add", "torus", "--new-user-password=torus-pw")
		etcdctl(t, c, "user", "grant-role", "torus", "torus")
		etcdctl(t, c, "user", "add", "nobody", "--new-user-password=nobody-pw")
		etcdctl(t, c, "auth", "enable")
		c.EtcdEnv = append(c.EtcdEnv, "TORUS_ETCD_USER=torus", "TORUS_ETCD_PASSWORD_FILE="+pwFile)
	}
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2, EtcdSetup: setup})
	if out := etcdctl(t, c, "--user", "root:root-pw", "auth", "status"); !strings.Contains(out, "true") {
		t.Fatalf("etcd authentication is not on: %s", out)
	}
	const vol, blocks = "auth", 2048
	createVolume(t, c, vol, "8MiB", 0)
	_, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)
	w := newWorkload(m, uint64(m.seed), "etcd auth writer")
	for i := 0; i < 200; i++ {
		if err := w.step(nc); err != nil {
			t.Fatalf("workload as etcd user torus: %v", err)
		}
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatal(err)
	}
	mustVerify(t, nc, m, "as etcd user torus")
	ps, err := peerList(c)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 3 {
		t.Fatalf("peer list as torus: %s", peerStates(ps))
	}

	for _, tc := range []struct {
		name string
		cfg  metaetcd.Config
	}{
		{"user without the role", metaetcd.Config{Username: "nobody", Password: "nobody-pw"}},
		{"wrong password", metaetcd.Config{Username: "torus", Password: "guess"}},
		{"no user", metaetcd.Config{}},
		{"another prefix", metaetcd.Config{Username: "torus", Password: "torus-pw", Prefix: "/other/"}},
	} {
		cfg := tc.cfg
		cfg.Endpoints = []string{c.EtcdURL}
		cfg.DialTimeout = 5 * time.Second
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		md, err := metaetcd.New(ctx, cfg)
		cancel()
		if err == nil {
			md.Close()
			t.Errorf("%s: connected to an etcd with authentication", tc.name)
			continue
		}
		if !errors.Is(err, torus.ErrPermission) || errors.Is(err, torus.ErrUnavailable) {
			t.Errorf("%s: %v, want torus.ErrPermission (not ErrUnavailable)", tc.name, err)
		}
		t.Logf("%s: %v", tc.name, err)
	}
	out, err := ctlWithEnv(t, c, []string{"TORUS_ETCD_USER=nobody", "TORUS_ETCD_PASSWORD_FILE=" + nobodyFile}, "volume", "list")
	if err == nil || !strings.Contains(out, "permission denied") || !strings.Contains(out, "nobody") || strings.Contains(out, vol) {
		t.Errorf("torusctl as nobody: %v, want a failure saying permission denied for nobody:\n%s", err, out)
	}
	// A torusd as nobody exits at once instead of waiting for etcd.
	d := &proccluster.Proc{Name: "torusd-nobody", Args: []string{proccluster.Bin(t, "torusd"), "--etcd", c.EtcdURL,
		"--data-dir", filepath.Join(dir, "dn"), "--peer-address", "127.0.0.31:0", "--http", ""},
		Env: []string{"TORUS_ETCD_USER=nobody", "TORUS_ETCD_PASSWORD_FILE=" + nobodyFile}}
	d.Start(t)
	t.Cleanup(func() { d.Kill(t) })
	eventually(t, 20*time.Second, 100*time.Millisecond, "torusd as nobody exits", func() (bool, string) {
		return !d.Running(), d.Output()
	})
	if d.ExitCode() == 0 || !strings.Contains(d.Output(), "permission denied") {
		t.Errorf("torusd as nobody: exit %d, want non-zero saying permission denied:\n%s", d.ExitCode(), d.Output())
	}
}

// TestEtcdCertRotation: the etcd client certificate of running torusd and
// torusblk processes is rotated under write load, and the old certificate
// then expires; every process keeps working with the new one. The cluster
// (3 TLS etcd members with --client-cert-auth, 2 torusd, torusblk) starts
// with a client certificate "torus" that expires about 30 s later. A
// writer keeps writing through NBD while the certificate files are
// replaced by a long-lived certificate and every Torus process gets
// SIGHUP. Once the old certificate has expired (etcd refuses it: torusctl
// with a saved copy cannot list volumes), every etcd member is restarted
// in turn, so every Torus process must connect to etcd again, which only
// the new certificate allows. Then: no write or flush failed, both
// daemons are still up in `peer list` past their heartbeat TTL, and
// everything flushed verifies.
func TestEtcdCertRotation(t *testing.T) {
	const life = 30 * time.Second
	var expires time.Time
	var oldFiles []string
	saved := t.TempDir()
	c := startCluster(t, proccluster.Options{Daemons: 2, Replication: 2, EtcdMembers: 3, EtcdTLS: true,
		EtcdSetup: func(c *proccluster.Cluster) {
			// Reissue "torus" to expire soon, before any Torus process
			// starts, and keep a copy.
			now := time.Now()
			expires = now.Add(life)
			o := tlsconfig.IssueOptions{Overwrite: true, Lifetime: time.Hour, Now: func() time.Time { return now.Add(life - time.Hour) }}
			if err := tlsconfig.IssueClient(c.EtcdCerts, "torus", o); err != nil {
				t.Fatal(err)
			}
			f := tlsconfig.ClientFiles(c.EtcdCerts, "torus")
			for _, p := range []string{f.Cert, f.Key} {
				dst := filepath.Join(saved, filepath.Base(p))
				if err := os.WriteFile(dst, mustReadFile(t, p), 0o600); err != nil {
					t.Fatal(err)
				}
				oldFiles = append(oldFiles, dst)
			}
		}})
	const vol, blocks = "erot", 2048 // 8 MiB
	createVolume(t, c, vol, "8MiB", 0)
	blk, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)
	w := newWorkload(m, uint64(m.seed), "rotation writer")
	stop := w.background(nc)
	defer stop()

	if time.Until(expires) < 5*time.Second {
		t.Fatalf("the cluster took too long to start: the short-lived certificate expires in %v", time.Until(expires))
	}
	if err := tlsconfig.IssueClient(c.EtcdCerts, "torus", tlsconfig.IssueOptions{Overwrite: true}); err != nil {
		t.Fatal(err)
	}
	for _, d := range c.Daemons {
		d.Signal(t, syscall.SIGHUP)
	}
	blk.Signal(t, syscall.SIGHUP)
	t.Logf("rotated the etcd client certificate; the old one expires in %v", time.Until(expires).Round(time.Second))
	time.Sleep(time.Until(expires) + time.Second)

	ca := "TORUS_ETCD_CA=" + filepath.Join(c.EtcdCerts, "ca.crt")
	if out, err := ctlWithEnv(t, c, []string{ca, "TORUS_ETCD_CERT=" + oldFiles[0], "TORUS_ETCD_KEY=" + oldFiles[1]}, "volume", "list"); err == nil {
		t.Fatalf("etcd accepted the expired client certificate:\n%s", out)
	}
	for i, e := range c.EtcdMembers {
		e.Kill(t)
		e.Start(t)
		c.WaitEtcd(c.EtcdURLs[i], 30*time.Second)
		t.Logf("restarted etcd member e%d", i)
		time.Sleep(time.Second)
	}
	time.Sleep(heartbeatTTL + downGrace + detectSlack)
	stop()
	if we, fe, log := w.errors(); we+fe > 0 {
		t.Errorf("%d failed writes, %d failed flushes through the rotation and etcd restarts:\n%s", we, fe, strings.Join(log, "\n"))
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatalf("flush after the etcd restarts: %v", err)
	}
	ps, err := peerList(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if p.State != torus.PeerUp {
			t.Fatalf("after the rotation and etcd restarts: %s", peerStates(ps))
		}
	}
	if len(ps) != 2 {
		t.Fatalf("peer list: %s", peerStates(ps))
	}
	mustVerify(t, nc, m, "after the rotation")
	for _, d := range c.Daemons {
		if out := d.Output(); strings.Contains(out, "certificate has expired") || strings.Contains(out, "expired certificate") {
			t.Errorf("a torusd presented the expired certificate to etcd:\n%s", tail(out, 30))
		}
	}
}

func mustReadFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
