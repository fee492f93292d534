package csi_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	"github.com/onsi/gomega"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/csi"
	"github.com/torus-storage/torus/internal/attach"
	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testcluster"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/volume"
)

// notRun are the csi-sanity specs this driver does not run yet, each with
// the reason, matched against the spec's full text. Ginkgo skips them by
// filter (no t.Skip), and the test lists every one in its output.
var notRun = []struct{ re, reason string }{}

// report is the suite's report, captured for TestSanity's summary.
var report types.Report

var _ = ginkgo.ReportAfterSuite("torus csi sanity summary", func(r ginkgo.Report) { report = r })

// sanityAccessEnv selects the access type of one csi-sanity run (mount or
// block) in the child process TestSanity starts for it: Ginkgo runs a
// suite once per process.
const sanityAccessEnv = "TORUS_CSI_SANITY_ACCESS"

// sanityAttacherEnv selects the attacher of one run: "loop" (the test's
// loopAttacher, a loop device over a sparse file) or "fuse" (the
// production internal/attach: a real torusblk fuse process serving the
// volume from the cluster, and a loop device over its file).
const sanityAttacherEnv = "TORUS_CSI_SANITY_ATTACHER"

// TestSanity runs csi-sanity (github.com/kubernetes-csi/csi-test/v5: the
// Identity, Controller and Node specs) four times: filesystem volumes and
// raw block volumes, each with the test's loop-device attacher
// (loopAttacher: subtests mount and block) and with the production
// attacher (internal/attach: a real torusblk fuse process per attached
// volume and a direct-I/O loop device over its file, so every byte goes
// through Torus; subtests mount-fuse and block-fuse). Each run is a child
// process (this test binary again, with TORUS_CSI_SANITY_ACCESS and
// TORUS_CSI_SANITY_ATTACHER set) serving the driver in mode "all" on a
// unix socket over an in-process cluster (embedded etcd and one storage
// daemon), with a real NodeStage: attach, mkfs, mount and bind mounts. It
// fails if any spec fails; it logs the pass/fail/skip counts of each run
// and every spec not run, with its reason.
func TestSanity(t *testing.T) {
	if access := os.Getenv(sanityAccessEnv); access != "" {
		runSanity(t, access, os.Getenv(sanityAttacherEnv))
		return
	}
	testutil.SkipShort(t, "csi-sanity needs an in-process cluster and real mounts (about 30 s)")
	testutil.Require(t, "root (loop devices, mounts)", testutil.Root())
	for _, b := range []string{"losetup", "blkid", "mkfs.ext4", "mkfs.xfs", "xfs_growfs"} {
		testutil.RequireBinary(t, b)
	}
	for _, run := range []struct{ name, access, attacher string }{
		{"mount", "mount", "loop"}, {"block", "block", "loop"},
		{"mount-fuse", "mount", "fuse"}, {"block-fuse", "block", "fuse"},
	} {
		access := run.access
		t.Run(run.name, func(t *testing.T) {
			if run.attacher == "fuse" {
				_, err := os.Stat("/dev/fuse")
				testutil.Require(t, "/dev/fuse (the torusblk fuse attacher)", err)
			}
			args := []string{"-test.run=^TestSanity$", "-test.count=1", "-test.v"}
			if d, ok := t.Deadline(); ok {
				args = append(args, "-test.timeout="+time.Until(d).Round(time.Second).String())
			}
			cmd := exec.Command(os.Args[0], args...)
			cmd.Env = append(os.Environ(), sanityAccessEnv+"="+access, sanityAttacherEnv+"="+run.attacher)
			out, err := cmd.CombinedOutput()
			summary := ""
			for _, l := range strings.Split(string(out), "\n") {
				_, r, ok := strings.Cut(l, reportPrefix)
				if !ok {
					continue
				}
				t.Log(r)
				if strings.HasPrefix(r, "csi-sanity:") {
					summary = r
				}
			}
			if err != nil {
				t.Errorf("csi-sanity (%s volumes, %s attacher) failed: %v\n%s", access, run.attacher, err, tail(string(out), 60))
			}
			if summary == "" {
				t.Errorf("csi-sanity (%s volumes, %s attacher) printed no summary", access, run.attacher)
			}
		})
	}
}

// reportPrefix marks the child's report lines, which the parent relays.
const reportPrefix = "sanity-report: "

// tail is the last n lines of s.
func tail(s string, n int) string {
	ls := strings.Split(s, "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

// runSanity is one csi-sanity run, in the child process.
func runSanity(t *testing.T, access, attacher string) {
	c := testcluster.New(t, testcluster.Options{Daemons: 1, Replication: 1})
	// ext4 grows online only with CAP_SYS_RESOURCE (a privileged node
	// plugin has it; some sandboxes do not): without it, mount volumes
	// default to XFS, which grows online with CAP_SYS_ADMIN.
	fs := "ext4"
	if !hasCap(unix.CAP_SYS_RESOURCE) {
		fs = "xfs"
	}
	var att csi.Attacher
	switch attacher {
	case "fuse":
		a, err := attach.New(attach.Options{Bin: proccluster.Bin(t, "torusblk"), StateDir: t.TempDir(), Meta: c.Meta, Logger: c.Log,
			Args: []string{"--etcd", strings.Join(c.Endpoints, ",")}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			list, _ := a.List()
			for _, at := range list {
				if err := a.Detach(context.Background(), at.Volume); err != nil {
					t.Errorf("detach %s after the suite: %v", at.Volume, err)
				}
			}
		})
		att = a.CSI()
		t.Logf(reportPrefix+"%s volumes: default filesystem %s (CAP_SYS_RESOURCE %v); attacher: torusblk fuse + direct-I/O loop device (internal/attach)", access, fs, hasCap(unix.CAP_SYS_RESOURCE))
	default:
		att = newLoopAttacher(t, c.Meta, "sanity-node")
		t.Logf(reportPrefix+"%s volumes: default filesystem %s (CAP_SYS_RESOURCE %v); attacher: loop device over a sparse file (loopAttacher)", access, fs, hasCap(unix.CAP_SYS_RESOURCE))
	}
	sock := filepath.Join(t.TempDir(), "csi.sock")
	d, err := csi.New(csi.Config{Endpoint: "unix://" + sock, Mode: csi.ModeAll, NodeID: "sanity-node", SnapshotTimeout: 10 * time.Second,
		StateDir: t.TempDir(), DefaultFSType: fs},
		csi.Deps{
			Meta: c.Meta,
			SnapshotClosed: func(ctx context.Context, md torus.Metadata, vol, name string) error {
				return volume.SnapshotClosed(ctx, volume.Deps{Meta: md, Peers: c.Pool, Logger: c.Log}, vol, name)
			},
			Attacher: att,
			Logger:   c.Log,
		})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	waitReady(t, d.Endpoint())

	cfg := sanity.NewTestConfig()
	cfg.Address = d.Endpoint()
	cfg.IdempotentCount = 2
	cfg.TestVolumeAccessType = access
	cfg.TestVolumeSize = 512 << 20 // XFS needs 300 MiB; the loop files are sparse
	cfg.TestVolumeExpandSize = 1 << 30
	root := t.TempDir()
	t.Cleanup(func() { unmountUnder(t, root) })
	cfg.TargetPath = filepath.Join(root, "target")
	cfg.StagingPath = filepath.Join(root, "staging")
	sc := sanity.GinkgoTest(&cfg)
	defer sc.Finalize()

	suite, rep := ginkgo.GinkgoConfiguration()
	for _, n := range notRun {
		suite.SkipStrings = append(suite.SkipStrings, n.re)
	}
	suite.Timeout = 10 * time.Minute
	rep.Succinct = true
	gomega.RegisterFailHandler(ginkgo.Fail)
	start := time.Now()
	ok := ginkgo.RunSpecs(t, "Torus CSI sanity", suite, rep)
	took := time.Since(start)

	var passed, failed, skipped, pending int
	for _, s := range report.SpecReports {
		if s.LeafNodeType != types.NodeTypeIt {
			continue
		}
		switch {
		case s.State == types.SpecStatePassed:
			passed++
		case s.State.Is(types.SpecStateFailureStates):
			failed++
			t.Errorf(reportPrefix+"FAILED: %s: %s", s.FullText(), s.Failure.Message)
		case s.State == types.SpecStatePending:
			pending++
			t.Logf(reportPrefix+"pending (disabled upstream with XIt): %s", s.FullText())
		case s.State == types.SpecStateSkipped:
			skipped++
			t.Logf(reportPrefix+"skipped: %s: %s", s.FullText(), skipReason(s))
		}
	}
	t.Logf(reportPrefix+"csi-sanity: %s volumes, %s attacher: %d passed, %d failed, %d skipped, %d pending in %v", access, attacher, passed, failed, skipped, pending, took.Round(time.Second))
	if !ok && failed == 0 {
		t.Error("csi-sanity suite failed outside any spec (see the ginkgo output)")
	}
	if passed == 0 {
		t.Error("csi-sanity ran no spec")
	}
}

// skipReason is why a spec was skipped: ours for a spec we filter out,
// else the message of the Skip the spec called (a capability the driver
// does not advertise).
func skipReason(s types.SpecReport) string {
	for _, n := range notRun {
		if regexp.MustCompile(n.re).MatchString(s.FullText()) {
			return "not run by this driver: " + n.reason
		}
	}
	if m := strings.TrimSpace(s.Failure.Message); m != "" {
		return "the spec skipped itself: " + m
	}
	return "skipped (no reason given)"
}

// hasCap reports whether the process has capability c in its effective set.
func hasCap(c int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && n&(1<<uint(c)) != 0
		}
	}
	return false
}

// waitReady waits until the driver's Probe says ready (the daemon's first
// heartbeat has landed).
func waitReady(t *testing.T, endpoint string) {
	t.Helper()
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	id := csipb.NewIdentityClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		r, err := id.Probe(ctx, &csipb.ProbeRequest{})
		cancel()
		if err == nil && r.GetReady().GetValue() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("driver not ready after 30 s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
