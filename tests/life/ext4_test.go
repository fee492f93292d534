package life

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testutil"
)

// The ext4 tests put a kernel file system on a Torus volume the way a VM
// host would: torusblk serves the volume over NBD, nbdfuse turns the export
// into a file, a loop device (direct I/O when the kernel allows it) turns
// the file into a block device, and ext4 goes on top. The kernel is the
// strictest client there is: one failed fsync and it remounts read-only.

// fsTools are the programs the ext4 tests run.
type fsTools struct {
	nbdfuse, losetup, mkfs, fsck, fusermount, mount, umount, dd string
}

// requireFS returns the tools, and fails (TORUS_REQUIRE_TOOLS=1) or skips
// without them, without root or without /dev/fuse.
func requireFS(t *testing.T) fsTools {
	t.Helper()
	ft := fsTools{
		nbdfuse:    testutil.RequireBinary(t, "nbdfuse"),
		losetup:    testutil.RequireBinary(t, "losetup"),
		mkfs:       testutil.RequireBinary(t, "mkfs.ext4"),
		fsck:       testutil.RequireBinary(t, "fsck.ext4"),
		fusermount: testutil.RequireBinary(t, "fusermount3"),
		mount:      testutil.RequireBinary(t, "mount"),
		umount:     testutil.RequireBinary(t, "umount"),
		dd:         testutil.RequireBinary(t, "dd"),
	}
	testutil.Require(t, "root (losetup, mount)", testutil.Root())
	_, err := os.Stat("/dev/fuse")
	testutil.Require(t, "/dev/fuse", err)
	return ft
}

// runCmd runs a program with a timeout and returns its combined output.
func runCmd(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (timed out after %v)", err, timeout)
	}
	return string(out), err
}

func mustRun(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := runCmd(timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// ext4Disk is a volume attached as a loop device through nbdfuse.
type ext4Disk struct {
	t      *testing.T
	ft     fsTools
	dir    string // scratch directory (fuse mount points, pid files)
	mnt    string // where the file system is mounted
	addr   string // torusblk
	vol    string
	size   int64
	n      int
	loop   string
	dio    bool
	fuse   *exec.Cmd
	fdir   string
	fout   *strings.Builder
	fdone  chan error
	fuseUp bool
	looped bool
	mnted  bool
}

func newExt4Disk(t *testing.T, ft fsTools, addr, vol string, size int64) *ext4Disk {
	dir := t.TempDir()
	d := &ext4Disk{t: t, ft: ft, dir: dir, mnt: filepath.Join(dir, "mnt"), addr: addr, vol: vol, size: size}
	if err := os.Mkdir(d.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	// Undo everything even when the test fails half-way; a lazy unmount
	// and killing nbdfuse (which aborts its FUSE connection) free a loop
	// device whose I/O is stuck.
	t.Cleanup(func() {
		if d.mnted {
			runCmd(30*time.Second, ft.umount, "-l", d.mnt)
			d.mnted = false
		}
		d.detach()
	})
	return d
}

// attach starts nbdfuse on the export (retrying while the previous writer's
// detach is in progress) and puts a loop device on its file.
func (d *ext4Disk) attach() {
	t := d.t
	t.Helper()
	d.n++
	d.fdir = filepath.Join(d.dir, fmt.Sprintf("fuse%d", d.n))
	if err := os.Mkdir(d.fdir, 0o755); err != nil {
		t.Fatal(err)
	}
	pidfile := filepath.Join(d.dir, fmt.Sprintf("nbdfuse%d.pid", d.n))
	deadline := time.Now().Add(30 * time.Second)
	for try := 1; ; try++ {
		d.fout = &strings.Builder{}
		d.fuse = exec.Command(d.ft.nbdfuse, "-P", pidfile, filepath.Join(d.fdir, "disk"), "nbd://"+d.addr+"/"+d.vol)
		d.fuse.Stdout, d.fuse.Stderr = d.fout, d.fout
		if err := d.fuse.Start(); err != nil {
			t.Fatal(err)
		}
		d.fdone = make(chan error, 1)
		go func(c *exec.Cmd, done chan error) { done <- c.Wait() }(d.fuse, d.fdone)
		d.fuseUp = true
		up := false
		for !up {
			if _, err := os.Stat(pidfile); err == nil {
				up = true
				break
			}
			select {
			case err := <-d.fdone:
				d.fdone <- err
				d.fuseUp = false
			case <-time.After(20 * time.Millisecond):
			}
			if !d.fuseUp {
				break
			}
		}
		if up {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdfuse did not start (%d tries); last output:\n%s", try, d.fout)
		}
		time.Sleep(300 * time.Millisecond)
	}
	disk := filepath.Join(d.fdir, "disk")
	if st, err := os.Stat(disk); err != nil || st.Size() != d.size {
		t.Fatalf("nbdfuse file: %v %v, want size %d", st, err, d.size)
	}
	out, err := runCmd(20*time.Second, d.ft.losetup, "--find", "--show", "--direct-io=on", disk)
	if err != nil {
		t.Logf("losetup --direct-io=on: %v (%s); without direct I/O", err, strings.TrimSpace(out))
		out = mustRun(t, 20*time.Second, d.ft.losetup, "--find", "--show", disk)
	}
	f := strings.Fields(out) // warnings first, the device last
	if len(f) == 0 {
		t.Fatalf("losetup printed no device")
	}
	d.loop = f[len(f)-1]
	d.looped = true
	dio, _ := runCmd(10*time.Second, d.ft.losetup, "--list", "--noheadings", "--output", "DIO", d.loop)
	d.dio = strings.TrimSpace(dio) == "1"
	t.Logf("attach %d: %s on %s (direct I/O %v)", d.n, d.loop, disk, d.dio)
}

// detach removes the loop device and stops nbdfuse (torusblk then flushes
// and closes the volume).
func (d *ext4Disk) detach() {
	if d.looped {
		d.looped = false
		if out, err := runCmd(20*time.Second, d.ft.losetup, "-d", d.loop); err != nil {
			d.t.Logf("losetup -d %s: %v %s", d.loop, err, out)
		}
	}
	if d.fuseUp {
		d.fuseUp = false
		runCmd(20*time.Second, d.ft.fusermount, "-u", d.fdir)
		select {
		case <-d.fdone:
		case <-time.After(20 * time.Second):
			d.fuse.Process.Kill()
			<-d.fdone
			runCmd(10*time.Second, d.ft.fusermount, "-u", "-z", d.fdir)
		}
	}
}

func (d *ext4Disk) mount() {
	d.t.Helper()
	mustRun(d.t, 60*time.Second, d.ft.mount, "-t", "ext4", d.loop, d.mnt)
	d.mnted = true
}

func (d *ext4Disk) umount() {
	d.t.Helper()
	mustRun(d.t, 60*time.Second, d.ft.umount, d.mnt)
	d.mnted = false
}

// mountOptions is the option field of the file system's /proc/mounts line.
func (d *ext4Disk) mountOptions() string {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return "? " + err.Error()
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[1] == d.mnt {
			return f[3]
		}
	}
	return "(not mounted)"
}

// kmsg reads the kernel log; ok is false when it cannot be read (then the
// test relies on /proc/mounts and the exit status of every dd).
func kmsg() ([]string, bool) {
	out, err := runCmd(10*time.Second, "dmesg")
	if err != nil {
		return nil, false
	}
	return strings.Split(strings.TrimRight(out, "\n"), "\n"), true
}

// kmsgSince returns the kernel log lines after the ones in before that
// mention the loop device or an ext4 error.
func kmsgSince(before []string, loop string) []string {
	now, ok := kmsg()
	if !ok {
		return nil
	}
	start := 0
	if len(before) > 0 {
		last := before[len(before)-1]
		for i := len(now) - 1; i >= 0; i-- {
			if now[i] == last {
				start = i + 1
				break
			}
		}
	}
	dev := filepath.Base(loop)
	var out []string
	for _, l := range now[start:] {
		if strings.Contains(l, dev) || strings.Contains(l, "Remounting filesystem read-only") ||
			(strings.Contains(l, "EXT4-fs") && strings.Contains(strings.ToLower(l), "error")) {
			out = append(out, l)
		}
	}
	return out
}

// ddWrite is one file written by the workload.
type ddWrite struct {
	name string
	sum  [32]byte
	at   time.Time
	took time.Duration
	err  error
	out  string
}

// ddLoop writes 2 MiB files of random data with `dd conv=fsync` (cycling
// over 16 names per writer) from writers goroutines at once until stop is
// called; stop returns every write. Two writers keep unflushed data in
// flight most of the time, so a fault rarely falls between two fsyncs.
func ddLoop(t *testing.T, ft fsTools, mnt string, writers int) (stop func() []ddWrite) {
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var res []ddWrite
	var wg sync.WaitGroup
	for k := 0; k < writers; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := filepath.Join(t.TempDir(), "src")
			buf := make([]byte, 2<<20)
			for i := 0; ctx.Err() == nil; i++ {
				rand.Read(buf)
				w := ddWrite{name: fmt.Sprintf("%c%02d", 'a'+k, i%16), sum: sha256.Sum256(buf), at: time.Now()}
				if err := os.WriteFile(src, buf, 0o644); err != nil {
					w.err = err
				} else {
					w.out, w.err = runCmd(90*time.Second, ft.dd, "if="+src, "of="+filepath.Join(mnt, w.name), "bs=1M", "count=2", "conv=fsync", "status=none")
				}
				w.took = time.Since(w.at)
				mu.Lock()
				res = append(res, w)
				mu.Unlock()
				if w.err != nil {
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	}
	return func() []ddWrite {
		cancel()
		wg.Wait()
		mu.Lock()
		defer mu.Unlock()
		sort.SliceStable(res, func(i, j int) bool { return res[i].at.Before(res[j].at) })
		return res
	}
}

// ext4Run is the set-up both ext4 tests share.
type ext4Run struct {
	t     *testing.T
	c     *proccluster.Cluster
	disk  *ext4Disk
	ft    fsTools
	kbase []string
	start time.Time
}

func startExt4(t *testing.T, vol string) *ext4Run {
	ft := requireFS(t)
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2, SegmentSize: "4MiB"})
	const size = 256 << 20
	createVolume(t, c, vol, "256MiB", 0)
	_, addr := c.StartNBD()
	d := newExt4Disk(t, ft, addr, vol, size)
	d.attach()
	mustRun(t, 120*time.Second, ft.mkfs, "-q", "-F", d.loop)
	d.mount()
	kbase, ok := kmsg()
	if !ok {
		t.Logf("kernel log not readable: checking /proc/mounts and dd exit status only")
	}
	return &ext4Run{t: t, c: c, disk: d, ft: ft, kbase: kbase, start: time.Now()}
}

// check asserts what both tests promise: every dd succeeded, the file
// system stayed writable, the kernel logged no I/O error on the device,
// fsck finds it clean after a detach, and every file reads back as last
// written.
func (r *ext4Run) check(ws []ddWrite) {
	t, d := r.t, r.disk
	t.Helper()
	var failed []string
	var maxTook time.Duration
	final := map[string][32]byte{}
	for _, w := range ws {
		maxTook = max(maxTook, w.took)
		if w.err != nil {
			failed = append(failed, fmt.Sprintf("%6.2fs dd of=%s: %v %s", w.at.Sub(r.start).Seconds(), w.name, w.err, strings.TrimSpace(w.out)))
			delete(final, w.name) // contents undefined
			continue
		}
		final[w.name] = w.sum
	}
	t.Logf("%d files of 2 MiB written with dd conv=fsync, %d failed; slowest %v", len(ws), len(failed), maxTook.Round(time.Millisecond))
	if len(failed) > 0 {
		t.Errorf("%d of %d dd conv=fsync failed:\n%s", len(failed), len(ws), strings.Join(failed[:min(10, len(failed))], "\n"))
	}
	opts := d.mountOptions()
	if !strings.HasPrefix(opts, "rw") {
		t.Errorf("file system no longer writable: /proc/mounts options %q", opts)
	}
	if lines := kmsgSince(r.kbase, d.loop); len(lines) > 0 {
		t.Errorf("kernel log about %s since the workload began:\n%s", d.loop, strings.Join(lines[:min(20, len(lines))], "\n"))
	}
	d.umount()
	d.detach()
	d.attach()
	if out, err := runCmd(120*time.Second, r.ft.fsck, "-fn", d.loop); err != nil {
		t.Errorf("fsck.ext4 -fn: %v\n%s", err, out)
	} else {
		t.Logf("fsck.ext4 -fn clean: %s", lastLine(out))
	}
	d.mount()
	var bad []string
	seen := 0
	err := filepath.WalkDir(d.mnt, func(p string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(d.mnt, p)
		if strings.HasPrefix(rel, "lost+found") {
			return nil
		}
		want, ok := final[rel]
		if !ok {
			return nil // its last write failed
		}
		b, err := os.ReadFile(p)
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", rel, err))
			return nil
		}
		seen++
		if sha256.Sum256(b) != want {
			bad = append(bad, fmt.Sprintf("%s: checksum differs from the last write (%d bytes)", rel, len(b)))
		}
		return nil
	})
	if err != nil {
		t.Errorf("walking the remounted file system: %v", err)
	}
	if seen != len(final) {
		var names []string
		for n := range final {
			if _, err := os.Stat(filepath.Join(d.mnt, n)); err != nil {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		t.Errorf("%d of %d files found after remount; missing: %v", seen, len(final), names)
	}
	if len(bad) > 0 {
		t.Errorf("files differ after remount:\n%s", strings.Join(bad, "\n"))
	} else {
		t.Logf("%d files verified after detach, fsck and remount", seen)
	}
	d.umount()
}

func lastLine(s string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	last := ""
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			last = l
		}
	}
	return last
}

// openHolder returns a running daemon holding the volume's open segment
// (killing it is what hurts the writer), or -1.
func openHolder(t *testing.T, c *proccluster.Cluster, vol string) int {
	t.Helper()
	md := metaClient(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, err := md.Head(ctx, vol)
	if err != nil || h.Open == nil {
		t.Logf("head of %s: %v (open %v)", vol, err, h.Open)
		return -1
	}
	for i, d := range c.Daemons {
		if _, err := os.Stat(d.SegmentPath(*h.Open)); err == nil && d.Running() {
			return i
		}
	}
	return -1
}

// TestExt4ReplicaKill (issue 8, first case): replication 2 over 3 daemons,
// the default policy (min-replicas = 2), ext4 on the volume with an
// fsync-heavy workload; a daemon holding the open segment is SIGKILLed 3 s
// in and the workload goes on for 10 s more. Two daemons are left, so
// nothing may fail: every dd conv=fsync succeeds, the file system stays
// writable and clean, and every file reads back.
func TestExt4ReplicaKill(t *testing.T) {
	r := startExt4(t, "fs")
	stop := ddLoop(t, r.ft, r.disk.mnt, 2)
	time.Sleep(3 * time.Second)
	victim := openHolder(t, r.c, "fs")
	if victim < 0 {
		victim = 0
	}
	t.Logf("SIGKILL daemon %d (%s) at %.1fs", victim, r.c.Daemons[victim].PeerAddr, time.Since(r.start).Seconds())
	r.c.Daemons[victim].Kill(t)
	time.Sleep(10 * time.Second)
	ws := stop()
	r.check(ws)
}

// TestExt4RollingRestart (issue 8, fourth case, with a kernel client): the
// same set-up through a rolling restart, each daemon in turn SIGTERMed and
// started again 1 s later, the next only once it is ready. No fsync may
// fail; the file system stays writable and clean.
func TestExt4RollingRestart(t *testing.T) {
	r := startExt4(t, "fs")
	stop := ddLoop(t, r.ft, r.disk.mnt, 2)
	time.Sleep(3 * time.Second)
	rollingRestart(t, r.c, time.Second, syscall.SIGTERM)
	time.Sleep(5 * time.Second)
	ws := stop()
	r.check(ws)
}
