package main

// The Ceph RBD baseline (-ceph): Debian's Ceph (16.2 on bookworm), one
// monitor and three BlueStore OSDs whose block devices are sparse files in
// the scratch directory (bluestore_block_path: no loop devices), all on
// 127.0.0.1, cephx with keys made for the run, no manager (I/O does not
// need one). Two pools hold one image each: size 1 for TargetCeph1 and size
// 2 for TargetCeph2. fio reaches them with its rbd engine.

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrCephMissing is returned when the Ceph programs are missing and could
// not be installed.
var ErrCephMissing = errors.New("bench: ceph not installed")

// CephPrograms maps each program the Ceph baseline runs to its Debian
// package.
var CephPrograms = map[string]string{
	"ceph-mon":      "ceph-mon",
	"ceph-osd":      "ceph-osd",
	"monmaptool":    "ceph-base",
	"ceph":          "ceph-common",
	"ceph-authtool": "ceph-common",
	"rbd":           "ceph-common",
}

// MissingCephPackages returns the Debian packages of the Ceph programs
// that lookPath cannot find, sorted, without duplicates.
func MissingCephPackages(lookPath func(string) (string, error)) []string {
	var pkgs []string
	for prog, pkg := range CephPrograms {
		if _, err := lookPath(prog); err != nil && !slices.Contains(pkgs, pkg) {
			pkgs = append(pkgs, pkg)
		}
	}
	slices.Sort(pkgs)
	return pkgs
}

// EnsureCeph installs the missing Ceph packages with apt-get (as root, or
// through sudo), without recommended packages.
func EnsureCeph(ctx context.Context, logger *slog.Logger) error {
	pkgs := MissingCephPackages(exec.LookPath)
	if len(pkgs) == 0 {
		return nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("%w: missing Debian packages %s and no apt-get", ErrCephMissing, strings.Join(pkgs, " "))
	}
	var prefix []string
	if os.Geteuid() != 0 {
		prefix = []string{"sudo", "-n"}
	}
	logger.Info("installing Ceph", "packages", pkgs)
	env := []string{"DEBIAN_FRONTEND=noninteractive"}
	if _, err := RunCmdEnv(ctx, 10*time.Minute, env, append(prefix, "apt-get", "update", "-q")...); err != nil {
		return fmt.Errorf("%w: %w", ErrCephMissing, err)
	}
	argv := append(prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300")
	if _, err := RunCmdEnv(ctx, 20*time.Minute, env, append(argv, pkgs...)...); err != nil {
		return fmt.Errorf("%w: %w", ErrCephMissing, err)
	}
	if still := MissingCephPackages(exec.LookPath); len(still) > 0 {
		return fmt.Errorf("%w: still missing after apt-get: %s", ErrCephMissing, strings.Join(still, " "))
	}
	return nil
}

// CephOSDs is the number of OSDs of the baseline cluster.
const CephOSDs = 3

// CephPool is one pool of the baseline with its image.
type CephPool struct {
	Target string
	Name   string
	Size   int
}

// CephPools are the baseline's pools, one per Ceph target.
func CephPools() []CephPool {
	return []CephPool{
		{Target: TargetCeph1, Name: "bench1", Size: 1},
		{Target: TargetCeph2, Name: "bench2", Size: 2},
	}
}

// CephConf returns ceph.conf for a cluster in dir with one monitor "a" on
// 127.0.0.1:monPort and OSDs on files of blockSize bytes. Paths use Ceph's
// $id and $name metavariables.
func CephConf(dir, fsid string, monPort int, blockSize int64) string {
	lines := []string{
		"[global]",
		"fsid = " + fsid,
		fmt.Sprintf("mon_host = v1:127.0.0.1:%d", monPort),
		"mon_initial_members = a",
		"public_addr = 127.0.0.1",
		"ms_bind_ipv4 = true",
		"ms_bind_ipv6 = false",
		"run_dir = " + filepath.Join(dir, "run"),
		"admin_socket = " + filepath.Join(dir, "run", "$name.asok"),
		"pid_file = " + filepath.Join(dir, "run", "$name.pid"),
		"log_file = " + filepath.Join(dir, "log", "$name.log"),
		"keyring = " + filepath.Join(dir, "keyring"),
		"mon_data = " + filepath.Join(dir, "mon.$id"),
		// One host: replicas go to different OSDs, not hosts.
		"osd_crush_chooseleaf_type = 0",
		"osd_pool_default_size = 1",
		"osd_pool_default_min_size = 1",
		"osd_pool_default_pg_autoscale_mode = off",
		"mon_allow_pool_size_one = true",
		"mon_warn_on_pool_no_redundancy = false",
		// The scratch disk may be fuller than Ceph likes; only a truly full
		// one (below 2 %) stops the monitor.
		"mon_data_avail_warn = 5",
		"mon_data_avail_crit = 2",
		"",
		"[osd]",
		"osd_data = " + filepath.Join(dir, "osd.$id"),
		"keyring = " + filepath.Join(dir, "osd.$id", "keyring"),
		"osd_objectstore = bluestore",
		// A file outside the OSD's directory: BlueStore links block to it.
		"bluestore_block_path = " + filepath.Join(dir, "block.$id"),
		"bluestore_block_create = true",
		"bluestore_block_size = " + strconv.FormatInt(blockSize, 10),
		// Three OSDs on a shared machine: about 900 MiB each, not 4 GiB.
		"osd_memory_target = 939524096",
		"",
	}
	return strings.Join(lines, "\n")
}

// CephBlockSize is each OSD's block file: 8 GiB (sparse), or room for
// twice the data set per OSD when that is more.
func CephBlockSize(dataSet int64) int64 {
	return max(8<<30, 2*dataSet)
}

// OSDsUp reads num_up_osds from `ceph osd stat -f json`.
func OSDsUp(data []byte) (int, error) {
	var st struct {
		Up *int `json:"num_up_osds"`
	}
	if err := json.Unmarshal(data, &st); err != nil || st.Up == nil {
		return 0, fmt.Errorf("bench: ceph osd stat: no num_up_osds in %q", oneLine(string(data), 200))
	}
	return *st.Up, nil
}

// CephCluster is the running baseline cluster. Its processes and
// directory belong to the Procs group it was started in.
type CephCluster struct {
	Dir  string
	Conf string
	Mon  *Proc
	OSDs []*Proc
}

// Endpoint is the image of pool p.
func (c *CephCluster) Endpoint(p CephPool) Endpoint {
	return Endpoint{RBD: p.Name + "/" + ExportName, CephConf: c.Conf}
}

// Watched are the cluster's processes, for CPU and memory.
func (c *CephCluster) Watched() []*Watched {
	w := []*Watched{{Name: "ceph-mon", Proc: c.Mon}}
	for i, p := range c.OSDs {
		w = append(w, &Watched{Name: fmt.Sprintf("ceph-osd-%d", i), Proc: p})
	}
	return w
}

// Alive returns an error when a Ceph daemon exited.
func (c *CephCluster) Alive() error {
	for _, p := range append([]*Proc{c.Mon}, c.OSDs...) {
		if err := exited(p); err != nil {
			return err
		}
	}
	return nil
}

func (c *CephCluster) ceph(ctx context.Context, args ...string) ([]byte, error) {
	return RunCmd(ctx, 2*time.Minute, append([]string{"ceph", "-c", c.Conf, "--connect-timeout", "30"}, args...)...)
}

// uuid returns a random RFC 4122 version 4 UUID.
func uuid() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:]), nil
}

// StartCeph bootstraps the baseline cluster in a directory of g and
// creates the pools of CephPools with an image of imageSize each. Every
// step that fails names itself and carries the command's output or the
// daemon's log tail. On error the caller closes g, which stops the daemons
// and removes the directory.
func StartCeph(ctx context.Context, g *Procs, imageSize int64) (*CephCluster, error) {
	dir, err := g.TempDir("ceph-*")
	if err != nil {
		return nil, err
	}
	for _, d := range []string{"run", "log", "mon.a"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	fsid, err := uuid()
	if err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	c := &CephCluster{Dir: dir, Conf: filepath.Join(dir, "ceph.conf")}
	if err := os.WriteFile(c.Conf, []byte(CephConf(dir, fsid, port, CephBlockSize(imageSize))), 0o644); err != nil {
		return nil, err
	}
	keyring := filepath.Join(dir, "keyring")
	monmap := filepath.Join(dir, "monmap")
	steps := []struct {
		what string
		argv []string
	}{
		{"monitor key", []string{"ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"}},
		{"admin key", []string{"ceph-authtool", keyring, "--gen-key", "-n", "client.admin",
			"--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"}},
		{"monmap", []string{"monmaptool", "--create", "--addv", "a", fmt.Sprintf("[v1:127.0.0.1:%d]", port), "--fsid", fsid, monmap}},
		{"ceph-mon --mkfs", []string{"ceph-mon", "-c", c.Conf, "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", keyring}},
	}
	for _, s := range steps {
		if _, err := RunCmd(ctx, time.Minute, s.argv...); err != nil {
			return nil, fmt.Errorf("ceph bootstrap, %s: %w", s.what, err)
		}
	}
	if c.Mon, err = g.Start("ceph-mon", "ceph-mon", "-c", c.Conf, "-f", "-i", "a"); err != nil {
		return nil, err
	}
	err = WaitReady(ctx, c.Mon, readyTimeout, "ceph-mon", func(ctx context.Context) error {
		_, err := RunCmd(ctx, 15*time.Second, "ceph", "-c", c.Conf, "--connect-timeout", "5", "mon", "stat")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ceph bootstrap: %w", err)
	}
	for i := range CephOSDs {
		osdUUID, err := uuid()
		if err != nil {
			return nil, err
		}
		out, err := c.ceph(ctx, "osd", "new", osdUUID)
		if err != nil {
			return nil, fmt.Errorf("ceph bootstrap, osd new: %w", err)
		}
		id := strings.TrimSpace(string(out))
		if _, err := strconv.Atoi(id); err != nil {
			return nil, fmt.Errorf("ceph bootstrap, osd new: id %q", oneLine(id, 100))
		}
		osdDir := filepath.Join(dir, "osd."+id)
		if err := os.Mkdir(osdDir, 0o755); err != nil {
			return nil, err
		}
		if _, err := c.ceph(ctx, "auth", "get-or-create", "osd."+id, "mon", "allow profile osd", "mgr", "allow profile osd",
			"osd", "allow *", "-o", filepath.Join(osdDir, "keyring")); err != nil {
			return nil, fmt.Errorf("ceph bootstrap, osd.%s key: %w", id, err)
		}
		if _, err := RunCmd(ctx, 2*time.Minute, "ceph-osd", "-c", c.Conf, "-i", id, "--mkfs", "--osd-uuid", osdUUID); err != nil {
			return nil, fmt.Errorf("ceph bootstrap, ceph-osd -i %s --mkfs (log %s): %w", id, filepath.Join(dir, "log", "osd."+id+".log"), err)
		}
		p, err := g.Start(fmt.Sprintf("ceph-osd-%d", i), "ceph-osd", "-c", c.Conf, "-f", "-i", id)
		if err != nil {
			return nil, err
		}
		c.OSDs = append(c.OSDs, p)
	}
	err = WaitReady(ctx, nil, 2*readyTimeout, "ceph OSDs up", func(ctx context.Context) error {
		if err := c.Alive(); err != nil {
			return err
		}
		out, err := c.ceph(ctx, "osd", "stat", "-f", "json")
		if err != nil {
			return err
		}
		n, err := OSDsUp(out)
		if err == nil && n < CephOSDs {
			err = fmt.Errorf("%d of %d OSDs up", n, CephOSDs)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("ceph bootstrap: %w", err)
	}
	for _, p := range CephPools() {
		size := strconv.Itoa(p.Size)
		cmds := [][]string{
			{"osd", "pool", "create", p.Name, "32", "32"},
			{"osd", "pool", "set", p.Name, "size", size, "--yes-i-really-mean-it"},
			{"osd", "pool", "set", p.Name, "min_size", "1"},
			{"osd", "pool", "application", "enable", p.Name, "rbd"},
		}
		for _, args := range cmds {
			if _, err := c.ceph(ctx, args...); err != nil {
				return nil, fmt.Errorf("ceph bootstrap, pool %s: %w", p.Name, err)
			}
		}
		if _, err := RunCmd(ctx, 2*time.Minute, "rbd", "-c", c.Conf, "create", "--size", strconv.FormatInt(imageSize>>20, 10),
			p.Name+"/"+ExportName); err != nil {
			return nil, fmt.Errorf("ceph bootstrap, rbd create %s/%s: %w", p.Name, ExportName, err)
		}
	}
	return c, nil
}

// cephWanted reports whether the Ceph target runs: with -ceph, or when
// -targets names it.
func (b *bench) cephWanted(target string) bool {
	return b.cfg.ceph || contains(splitList(b.cfg.targets), target)
}

// ceph runs the Ceph targets that are wanted on one cluster, bootstrapped
// for them and torn down after them (daemons stopped, directory with the
// block files removed).
func (b *bench) ceph(ctx context.Context) {
	var pools []CephPool
	var idx []int
	for _, p := range CephPools() {
		if b.cephWanted(p.Target) {
			pools = append(pools, p)
			b.addTarget(TargetStatus{Name: p.Target, Baseline: true,
				Desc: fmt.Sprintf("Ceph RBD (Debian's ceph): 1 monitor, %d BlueStore OSDs on sparse files, pool size %d, fio's rbd engine", CephOSDs, p.Size)})
			idx = append(idx, len(b.rep.Targets)-1)
		}
	}
	if len(pools) == 0 {
		return
	}
	fail := func(err error) {
		b.logger.Error("ceph baseline failed", "err", err)
		for _, i := range idx {
			b.rep.Targets[i].Error = err.Error()
		}
	}
	if err := EnsureCeph(ctx, b.logger); err != nil {
		fail(err)
		return
	}
	g := NewProcs(b.logger, b.runDir)
	defer func() {
		if err := g.Close(); err != nil {
			b.logger.Warn("ceph teardown", "err", err)
		}
	}()
	b.logger.Info("bootstrapping Ceph", "osds", CephOSDs)
	t0 := time.Now()
	c, err := StartCeph(ctx, g, b.settings.Size)
	if err != nil {
		fail(err)
		return
	}
	b.logger.Info("Ceph up", "after", time.Since(t0).Round(time.Second))
	watched := c.Watched()
	for i, p := range pools {
		t := &b.rep.Targets[idx[i]]
		ep := c.Endpoint(p)
		b.logger.Info("prefilling", "target", p.Target, "size", FormatSize(b.settings.Size))
		if err := b.prefill(ctx, p.Target, ep); err != nil {
			if aerr := c.Alive(); aerr != nil {
				err = fmt.Errorf("%w; %w", err, aerr)
			}
			t.Error = err.Error()
			continue
		}
		b.runJobs(ctx, p.Target, ep, []string{c.Dir}, watched, c.Alive)
	}
	for _, w := range watched {
		w.Sample()
		b.rep.Procs = append(b.rep.Procs, ProcResources{Target: "ceph", Name: w.Name, PID: w.Proc.PID(),
			PeakRSSBytes: w.Last.PeakRSSBytes, CPUSeconds: w.Last.CPUSeconds, IdleCPUPercent: -1})
	}
}
