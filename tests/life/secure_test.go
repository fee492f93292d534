package life

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
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
	"github.com/torus-storage/torus/peer"
)

// refusedTotal sums torus_peer_refused_total over the running daemons (0
// while none was refused: the counter is exported once it counts).
func refusedTotal(c *proccluster.Cluster) (float64, string) {
	var sum float64
	var desc []string
	for i, d := range c.Daemons {
		if !d.Running() {
			continue
		}
		v, err := metric(d.HTTPAddr, "torus_peer_refused_total")
		if err != nil && !strings.Contains(err.Error(), "not exported") {
			desc = append(desc, fmt.Sprintf("d%d: %v", i, err))
			continue
		}
		sum += v
		desc = append(desc, fmt.Sprintf("d%d: %v", i, v))
	}
	return sum, strings.Join(desc, ", ")
}

// TestSecureCluster: three torusd with mutual TLS on the peer port and a
// torusblk with a client certificate. Writes and flushes through NBD work;
// a replica is killed and healing (daemon certificates, RepairEpoch
// copies between daemons) restores redundancy with not one request
// refused; everything flushed verifies through a fresh torusblk. A
// torusblk without certificates cannot read a byte, and its refusal is
// counted with role "plain". /debug/pprof is off (no --pprof).
func TestSecureCluster(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2, Secure: true})
	const vol, blocks = "sec", 2048 // 8 MiB
	createVolume(t, c, vol, "8MiB", 0)
	c.Ctl("volume", "set", vol, "min-replicas=1")
	_, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)
	w := newWorkload(m, uint64(m.seed), "secure writer")
	for i := 0; i < 200; i++ {
		if err := w.step(nc); err != nil {
			t.Fatalf("workload over TLS: %v", err)
		}
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatalf("flush over TLS: %v", err)
	}
	mustVerify(t, nc, m, "after writing over TLS")

	for _, d := range c.Daemons {
		resp, err := http.Get("http://" + d.HTTPAddr + "/debug/pprof/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("/debug/pprof/ without --pprof: %d, want 404", resp.StatusCode)
		}
	}

	// Kill the daemon holding the most segment files of the volume, keep
	// writing, and wait for healing.
	victim, most := 0, -1
	for i, d := range c.Daemons {
		segs, _ := d.Segments(1)
		if len(segs) > most {
			victim, most = i, len(segs)
		}
	}
	w.lo = blocks * 3 / 4
	stop := w.background(nc)
	defer stop()
	copiedBefore := healCopied(t, c)
	c.Daemons[victim].Kill(t)
	t.Logf("killed daemon %d (%d segment files)", victim, most)
	eventually(t, 90*time.Second, 500*time.Millisecond, "healing over TLS", func() (bool, string) {
		copied := healCopied(t, c) - copiedBefore
		r, err := volumeInfo(c, vol)
		if err != nil {
			return false, err.Error()
		}
		h := healthOf(r)
		return copied > 0 && h == "healthy", fmt.Sprintf("health %s, %d bytes copied", h, copied)
	})
	stop()
	if we, fe, log := w.errors(); we+fe > 0 {
		t.Errorf("%d failed writes, %d failed flushes over TLS with a replica down:\n%s", we, fe, strings.Join(log, "\n"))
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatalf("flush after healing: %v", err)
	}
	if n, desc := refusedTotal(c); n != 0 {
		t.Fatalf("daemons or torusblk were refused %v requests (%s): roles are wrong", n, desc)
	}
	mustVerify(t, nc, m, "after healing")
	nc.Abort()
	c.NBD[0].Signal(t, syscall.SIGTERM) // flushes and releases the volume

	// A torusblk without certificates reaches etcd but no daemon.
	plain, plainAddr := c.StartNBDEnv(nil)
	pc, err := tryAttach(nil, plainAddr, vol)
	if err == nil {
		buf := make([]byte, blockSize)
		err = pc.ReadAt(buf, 0)
		pc.Abort()
	}
	if err == nil {
		t.Fatal("a torusblk without certificates read from a TLS cluster")
	}
	eventually(t, 10*time.Second, 200*time.Millisecond, "the plain torusblk's refusal counted", func() (bool, string) {
		n, desc := refusedTotal(c)
		return n > 0, desc
	})
	if out := plain.Output(); !strings.Contains(out, "requires mutual TLS") {
		t.Errorf("the plain torusblk's log does not say TLS is required:\n%s", tail(out, 40))
	}
	plain.Signal(t, syscall.SIGTERM)

	_, addr2 := c.StartNBD()
	mustVerify(t, reattach(t, c, nil, addr2, vol, blocks*blockSize, 30*time.Second), m, "through a fresh torusblk")
}

// segmentDigests hashes every segment file in the daemon's data
// directory, by path, and returns one segment's ID.
func segmentDigests(t *testing.T, d *proccluster.Daemon) (map[string][32]byte, torus.SegmentID) {
	t.Helper()
	out := map[string][32]byte{}
	var some torus.SegmentID
	root := filepath.Join(d.DataDir, "segments")
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		id, perr := torus.ParseSegmentID(e.Name())
		if perr != nil {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[p] = sha256.Sum256(b)
		if id.Kind == torus.KindData {
			some = id
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 || some.Volume == 0 {
		t.Fatalf("no data segment under %s", root)
	}
	return out, some
}

// TestSecurePeerRefusals: a running torusd with mutual TLS on its peer
// port, holding a volume's segments, refuses each of these callers, each a
// subtest: no certificate, a certificate of another CA, an expired
// certificate of the cluster CA, a certificate of the cluster CA with no
// Torus role (an etcd member's), and a client-role certificate asking
// what only daemons may (Delete, Append and Sync at RepairEpoch). After
// each, every segment file on the daemon's disk is unchanged byte for byte
// (SHA-256 of each), and the daemon counted the refusal.
func TestSecurePeerRefusals(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 1, Replication: 1, Secure: true})
	const vol, blocks = "refuse", 1024 // 4 MiB
	createVolume(t, c, vol, "4MiB", 0)
	blk, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)
	w := newWorkload(m, uint64(m.seed), "writer")
	for i := 0; i < 100; i++ {
		if err := w.step(nc); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatal(err)
	}
	nc.Abort()
	blk.Signal(t, syscall.SIGTERM) // flushes and releases: nothing else writes
	d := c.Daemons[0]
	before, seg := segmentDigests(t, d)

	other := t.TempDir()
	if err := tlsconfig.InitCA(other, tlsconfig.IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := tlsconfig.IssueClient(other, "blk", tlsconfig.IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	past := func() time.Time { return time.Now().Add(-48 * time.Hour) }
	if err := tlsconfig.IssueClient(c.Certs, "expired", tlsconfig.IssueOptions{Lifetime: 24 * time.Hour, Now: past}); err != nil {
		t.Fatal(err)
	}
	if err := tlsconfig.IssueEtcd(c.Certs, "stray", []string{"127.0.0.1"}, tlsconfig.IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(c.Certs, tlsconfig.CACert)
	withCA := func(f tlsconfig.Files) *tlsconfig.Files { f.CA = ca; return &f }
	ctx := context.Background()
	refused := func() float64 { n, _ := refusedTotal(c); return n }
	for _, tc := range []struct {
		name  string
		files *tlsconfig.Files // nil: plain
		// try makes the refused requests; each must fail.
		try func(cl *peer.Client) []error
	}{
		{"no certificate", nil, nil},
		{"another CA", withCA(tlsconfig.ClientFiles(other, "blk")), nil},
		{"expired", withCA(tlsconfig.ClientFiles(c.Certs, "expired")), nil},
		{"no role", withCA(tlsconfig.EtcdFiles(c.Certs, "stray")), func(cl *peer.Client) []error {
			_, err := cl.Usage(ctx)
			return []error{err, cl.Delete(ctx, seg)}
		}},
		{"client role", withCA(tlsconfig.ClientFiles(c.Certs, "blk")), func(cl *peer.Client) []error {
			_, serr := cl.Sync(ctx, torus.RepairEpoch, seg)
			return []error{cl.Delete(ctx, seg), cl.Append(ctx, torus.RepairEpoch, seg, 0, []byte("evil")), serr}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n0 := refused()
			cfg := peer.ClientConfig{RequestTimeout: 10 * time.Second}
			if tc.files != nil {
				r, err := tlsconfig.New("test client", *tc.files, nil)
				if err != nil {
					t.Fatal(err)
				}
				cfg.TLS = r.Client
			}
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			cl, err := peer.Dial(dctx, d.PeerAddr, cfg, nil)
			if err == nil {
				defer cl.Close()
				try := tc.try
				if try == nil {
					try = func(cl *peer.Client) []error {
						return []error{cl.Delete(ctx, seg), cl.Append(ctx, torus.RepairEpoch, seg, 0, []byte("evil"))}
					}
				}
				for i, err := range try(cl) {
					if err == nil {
						t.Fatalf("request %d was served", i)
					}
					if tc.try != nil && !errors.Is(err, torus.ErrPermission) {
						t.Errorf("request %d: %v, want ErrPermission", i, err)
					}
				}
			}
			after, _ := segmentDigests(t, d)
			if len(after) != len(before) {
				t.Fatalf("%d segment files before, %d after", len(before), len(after))
			}
			for p, h := range before {
				if after[p] != h {
					t.Fatalf("%s changed", p)
				}
			}
			eventually(t, 10*time.Second, 100*time.Millisecond, "the refusal counted", func() (bool, string) {
				n := refused()
				return n > n0, fmt.Sprintf("torus_peer_refused_total %v, was %v", n, n0)
			})
		})
	}
	// The daemon still serves: a fresh torusblk reads everything back.
	_, addr2 := c.StartNBD()
	mustVerify(t, reattach(t, c, nil, addr2, vol, blocks*blockSize, 30*time.Second), m, "after the refusals")
}

// rotateCA replaces the CA of c.Certs by a new one and reissues every
// certificate with it (daemon for 127.0.0.11-40, clients blk and ctl);
// ca.crt becomes the bundle of both CAs, so that connections made with
// either side's old certificate still verify while the rotation goes on.
// It returns the old CA's PEM.
func rotateCA(t *testing.T, c *proccluster.Cluster) []byte {
	t.Helper()
	caPath := filepath.Join(c.Certs, tlsconfig.CACert)
	old := mustReadFile(t, caPath)
	o := tlsconfig.IssueOptions{Overwrite: true}
	if err := tlsconfig.InitCA(c.Certs, o); err != nil {
		t.Fatal(err)
	}
	var hosts []string
	for i := 0; i < 30; i++ {
		hosts = append(hosts, fmt.Sprintf("127.0.0.%d", 11+i))
	}
	if err := tlsconfig.IssueDaemon(c.Certs, hosts, o); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"blk", "ctl"} {
		if err := tlsconfig.IssueClient(c.Certs, n, o); err != nil {
			t.Fatal(err)
		}
	}
	bundle := append(mustReadFile(t, caPath), old...)
	writeAtomically(t, caPath, bundle)
	return old
}

// writeAtomically replaces path by data through a rename, as `torusctl
// certs` does, so a reloading process never reads half a file.
func writeAtomically(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestSecureRotationUnderFio: every certificate of a mutual-TLS cluster
// (3 torusd, replication 2, torusblk) is replaced, CA included, while fio
// writes through torusblk with crc32c verify and an fsync every 32 writes.
// The new CA is added to the bundle, every daemon and client certificate
// is reissued by it, every process gets SIGHUP, and then every daemon is
// restarted in turn, so every peer connection (torusblk to daemons,
// daemons to daemons) is made again with the new certificates. fio must
// exit 0 (no I/O error, no verify error) and no request may be refused.
// Then the old CA is dropped from the bundle and SIGHUP sent again: a
// client certificate of the old CA is refused, and a fresh torusblk with
// the new one reads the volume.
func TestSecureRotationUnderFio(t *testing.T) {
	fio := testutil.RequireBinary(t, "fio")
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2, Secure: true})
	const vol = "rot"
	createVolume(t, c, vol, "64MiB", 0)
	blk, addr := c.StartNBD()
	oldClient := t.TempDir()
	for _, f := range []string{"client.blk.crt", "client.blk.key"} {
		writeAtomically(t, filepath.Join(oldClient, f), mustReadFile(t, filepath.Join(c.Certs, f)))
	}
	const runtime = 25 * time.Second
	args := []string{"--name=rotation", "--ioengine=nbd", "--uri=nbd://" + addr + "/" + vol,
		"--rw=randwrite", "--bs=64k", "--size=32M", "--loops=100000", fmt.Sprintf("--runtime=%d", int(runtime.Seconds())),
		"--iodepth=4", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--fsync=32", "--randrepeat=0"}
	ctx, cancel := context.WithTimeout(context.Background(), runtime+90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, fio, args...)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	time.Sleep(3 * time.Second)

	oldCA := rotateCA(t, c)
	for _, d := range c.Daemons {
		d.Signal(t, syscall.SIGHUP)
	}
	blk.Signal(t, syscall.SIGHUP)
	t.Logf("rotated every certificate at %v", time.Since(start).Round(time.Millisecond))
	time.Sleep(time.Second)
	rollingRestart(t, c, time.Second, syscall.SIGTERM)
	restartDone := time.Since(start)
	var err error
	select {
	case err = <-exited:
	case <-ctx.Done():
		err = <-exited
	}
	t.Logf("fio exited after %v (rotation and rolling restart over at %v): %v", time.Since(start).Round(time.Millisecond), restartDone.Round(time.Millisecond), err)
	if err != nil {
		t.Fatalf("fio --verify=crc32c --fsync=32 failed during the rotation: %v\n%s\n...\n%s", err, errLines(out.String(), 10), tail(out.String(), 15))
	}
	if time.Since(start) < restartDone {
		t.Fatal("fio ended before the rotation did")
	}
	if n, desc := refusedTotal(c); n != 0 {
		t.Fatalf("%v requests refused during the rotation (%s)", n, desc)
	}
	// The served daemon certificate is the new one.
	df := tlsconfig.DaemonFiles(c.Certs)
	pair, err := tls.LoadX509KeyPair(df.Cert, df.Key)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", c.Daemons[0].PeerAddr, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	served := conn.ConnectionState().PeerCertificates[0].Raw
	conn.Close()
	if !bytes.Equal(served, pair.Certificate[0]) {
		t.Fatal("a restarted daemon serves a certificate other than the reissued one")
	}

	// Drop the old CA.
	caPath := filepath.Join(c.Certs, tlsconfig.CACert)
	bundle := mustReadFile(t, caPath)
	writeAtomically(t, caPath, bytes.TrimSuffix(bundle, oldCA))
	for _, d := range c.Daemons {
		d.Signal(t, syscall.SIGHUP)
	}
	blk.Signal(t, syscall.SIGHUP)
	old := tlsconfig.Files{Cert: filepath.Join(oldClient, "client.blk.crt"), Key: filepath.Join(oldClient, "client.blk.key"), CA: caPath}
	eventually(t, 15*time.Second, 200*time.Millisecond, "the old CA's client certificate refused", func() (bool, string) {
		r, err := tlsconfig.New("old client", old, nil)
		if err != nil {
			return false, err.Error()
		}
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		cl, err := peer.Dial(dctx, c.Daemons[0].PeerAddr, peer.ClientConfig{TLS: r.Client, RequestTimeout: 5 * time.Second}, nil)
		if err != nil {
			return true, err.Error()
		}
		defer cl.Close()
		_, err = cl.Usage(dctx)
		return err != nil, fmt.Sprint(err)
	})
	blk.Signal(t, syscall.SIGTERM)
	_, addr2 := c.StartNBD()
	nc := reattach(t, c, nil, addr2, vol, 64<<20, 30*time.Second)
	buf := make([]byte, blockSize)
	if err := nc.ReadAt(buf, 0); err != nil {
		t.Fatalf("a torusblk with the new certificates cannot read: %v", err)
	}
}

// TestWriterLockIdentity: on a TLS cluster a client certificate may write
// to a volume only at an epoch whose writer lock names it. torusblk (client
// certificate "blk") holds the volume; another valid client certificate
// ("intruder") appends at the writer's epoch, syncs, and fences a higher
// epoch: each is refused with ErrPermission and counted, nothing is
// stored, and the real writer goes on writing and flushing at its epoch.
func TestWriterLockIdentity(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 1, Replication: 1, Secure: true})
	md := metaClient(t, c)
	const vol, blocks = "owned", 1024
	createVolume(t, c, vol, "4MiB", 0)
	_, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)
	w := newWorkload(m, uint64(m.seed), "writer")
	for i := 0; i < 50; i++ {
		if err := w.step(nc); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	vi, err := md.Volume(ctx, vol)
	if err != nil {
		t.Fatal(err)
	}
	wi, ok, err := md.Writer(ctx, vol)
	if err != nil || !ok || wi.Identity != "blk" {
		t.Fatalf("writer lock %+v %v %v, want identity \"blk\" (torusblk's client certificate)", wi, ok, err)
	}
	if err := tlsconfig.IssueClient(c.Certs, "intruder", tlsconfig.IssueOptions{}); err != nil {
		t.Fatal(err)
	}
	files := tlsconfig.ClientFiles(c.Certs, "intruder")
	files.CA = filepath.Join(c.Certs, tlsconfig.CACert)
	r, err := tlsconfig.New("intruder", files, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := c.Daemons[0]
	cl, err := peer.Dial(ctx, d.PeerAddr, peer.ClientConfig{TLS: r.Client, RequestTimeout: 10 * time.Second}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	head, err := md.Head(ctx, vol)
	if err != nil || len(head.Sealed) == 0 {
		t.Fatalf("head %+v %v: want sealed segments", head, err)
	}
	n0, _ := refusedTotal(c)
	planted := torus.SegmentID{Volume: vi.ID, Epoch: wi.Epoch, Seq: 9999}
	_, serr := cl.Sync(ctx, wi.Epoch, head.Sealed[0].ID)
	for i, err := range []error{
		cl.Append(ctx, wi.Epoch, planted, 0, []byte("evil")),
		serr,
		cl.Fence(ctx, vi.ID, wi.Epoch+1),
	} {
		if !errors.Is(err, torus.ErrPermission) {
			t.Errorf("intruder request %d: %v, want ErrPermission", i, err)
		}
	}
	if _, err := os.Stat(d.SegmentPath(planted)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the intruder's segment %s exists on the daemon: %v", planted, err)
	}
	eventually(t, 10*time.Second, 100*time.Millisecond, "the refusals counted", func() (bool, string) {
		n, _ := refusedTotal(c)
		return n >= n0+3, fmt.Sprintf("torus_peer_refused_total %v, was %v", n, n0)
	})
	// The holder was not fenced by the intruder's attempt.
	for i := 0; i < 50; i++ {
		if err := w.step(nc); err != nil {
			t.Fatalf("the writer after the intruder: %v", err)
		}
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatalf("flush after the intruder: %v", err)
	}
	mustVerify(t, nc, m, "after the intruder")
}
