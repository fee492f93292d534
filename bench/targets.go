package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ExportName is the NBD export every NBD target serves.
const ExportName = "bench"

// NBDURI returns fio's uri= for an export on 127.0.0.1:port.
func NBDURI(port int) string {
	return "nbd://" + Addr(port) + "/" + ExportName
}

// readyTimeout bounds the wait for a started service.
const readyTimeout = 60 * time.Second

// StartNBDKit serves file with nbdkit's file plugin (multi-threaded: the
// plugin's thread model is parallel) on a free port. Flush is fdatasync.
func StartNBDKit(ctx context.Context, g *Procs, file string) (Endpoint, *Proc, error) {
	port, err := FreePort()
	if err != nil {
		return Endpoint{}, nil, err
	}
	p, err := g.Start("nbdkit", "nbdkit", "-f", "-i", "127.0.0.1", "-p", strconv.Itoa(port),
		"file", "file="+file)
	if err != nil {
		return Endpoint{}, nil, err
	}
	if err := WaitReady(ctx, p, readyTimeout, "nbdkit", TCPCheck(Addr(port))); err != nil {
		return Endpoint{}, nil, err
	}
	return Endpoint{NBD: NBDURI(port)}, p, nil
}

// StartQemuNBD serves file with qemu-nbd on a free port, with the page cache
// (cache=writeback), which honours flush with fdatasync.
func StartQemuNBD(ctx context.Context, g *Procs, file string) (Endpoint, *Proc, error) {
	port, err := FreePort()
	if err != nil {
		return Endpoint{}, nil, err
	}
	p, err := g.Start("qemu-nbd", "qemu-nbd", "-f", "raw", "--persistent", "--shared=8",
		"-b", "127.0.0.1", "-p", strconv.Itoa(port), "-x", ExportName,
		"--cache=writeback", "--aio=threads", file)
	if err != nil {
		return Endpoint{}, nil, err
	}
	if err := WaitReady(ctx, p, readyTimeout, "qemu-nbd", TCPCheck(Addr(port))); err != nil {
		return Endpoint{}, nil, err
	}
	return Endpoint{NBD: NBDURI(port)}, p, nil
}

// TorusSpec is one Torus cluster shape.
type TorusSpec struct {
	Name        string
	Daemons     int
	Replication int
	// PeerTLS runs every torusd and torusblk with mutual TLS on the peer
	// protocol, with certificates from `torusctl certs`.
	PeerTLS bool
}

// TorusSpecs are the Torus targets, in the order they run.
func TorusSpecs() []TorusSpec {
	return []TorusSpec{
		{Name: TargetTorus1, Daemons: 1, Replication: 1},
		{Name: TargetTorus2, Daemons: 3, Replication: 2},
		{Name: TargetTorus2TLS, Daemons: 3, Replication: 2, PeerTLS: true},
		{Name: TargetTorus3, Daemons: 3, Replication: 3},
	}
}

// Desc describes the spec in words.
func (s TorusSpec) Desc() string {
	d := fmt.Sprintf("Torus, %d torusd, replication %d, torusblk nbdserve", s.Daemons, s.Replication)
	if s.PeerTLS {
		d += ", mutual TLS 1.3 on the peer protocol"
	}
	return d
}

// PeerTLSArgs issues a CA, a daemon certificate for 127.0.0.1 and a client
// certificate "blk" into dir with torusctl, and returns the peer TLS flags
// of torusd and of torusblk.
func PeerTLSArgs(ctx context.Context, binDir, dir string) (daemon, client []string, err error) {
	ctl := filepath.Join(binDir, "torusctl")
	for _, argv := range [][]string{
		{ctl, "certs", "init-ca", "--certs-dir", dir},
		{ctl, "certs", "daemon", "--certs-dir", dir, "127.0.0.1", "localhost"},
		{ctl, "certs", "client", "--certs-dir", dir, "blk"},
	} {
		if _, err := RunCmd(ctx, 30*time.Second, argv...); err != nil {
			return nil, nil, err
		}
	}
	ca := filepath.Join(dir, "ca.crt")
	daemon = []string{"--peer-cert", filepath.Join(dir, "daemon.crt"), "--peer-key", filepath.Join(dir, "daemon.key"), "--peer-ca", ca}
	client = []string{"--peer-cert", filepath.Join(dir, "client.blk.crt"), "--peer-key", filepath.Join(dir, "client.blk.key"), "--peer-ca", ca}
	return daemon, client, nil
}

// TorusBinaries are the programs a Torus target needs, in bin/.
var TorusBinaries = []string{"torusd", "torusctl", "torusblk"}

// MissingTorus returns why the Torus targets cannot run ("" when they can):
// the first Torus binary missing from binDir, or etcd missing from PATH.
func MissingTorus(binDir string) string {
	for _, b := range TorusBinaries {
		p := filepath.Join(binDir, b)
		if st, err := os.Stat(p); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			return "skipped: " + filepath.ToSlash(filepath.Join(filepath.Base(binDir), b)) + " not built"
		}
	}
	if _, err := exec.LookPath("etcd"); err != nil {
		return "skipped: etcd not installed (Debian package etcd-server)"
	}
	return ""
}

// FormatSize prints a byte count the way torusctl and torusd take sizes
// ("20GiB", "256MiB"); sizes are whole MiB.
func FormatSize(n int64) string {
	if n%(1<<30) == 0 {
		return strconv.FormatInt(n>>30, 10) + "GiB"
	}
	return strconv.FormatInt(n>>20, 10) + "MiB"
}

// Daemon is one torusd of a cluster.
type Daemon struct {
	Name    string
	Proc    *Proc
	DataDir string
	// HTTP is host:port of its health and metrics endpoint.
	HTTP string
	// PeerAddr is host:port of its peer protocol (--peer-address).
	PeerAddr string
}

// TorusCluster is a running Torus target: etcd, the daemons and torusblk.
type TorusCluster struct {
	Spec    TorusSpec
	Bin     string
	EtcdURL string
	Etcd    *Proc
	Daemons []*Daemon
	Blk     *Proc
	NBDPort int
}

// Endpoint is where fio reaches the volume.
func (c *TorusCluster) Endpoint() Endpoint { return Endpoint{NBD: NBDURI(c.NBDPort)} }

// DataDirs are the daemons' data directories.
func (c *TorusCluster) DataDirs() []string {
	var ds []string
	for _, d := range c.Daemons {
		ds = append(ds, d.DataDir)
	}
	return ds
}

// Ctl runs torusctl against the cluster and returns its output.
func (c *TorusCluster) Ctl(ctx context.Context, args ...string) ([]byte, error) {
	argv := append([]string{filepath.Join(c.Bin, "torusctl"), "--etcd", c.EtcdURL}, args...)
	return RunCmd(ctx, 60*time.Second, argv...)
}

// TorusOptions are the settings shared by the Torus targets of a run.
type TorusOptions struct {
	// Bin is the directory holding the binaries.
	Bin string
	// VolumeSize is the size of the benchmark volume.
	VolumeSize int64
	// DaemonSize is each torusd's --size.
	DaemonSize int64
	// DaemonArgs are appended to every torusd command line.
	DaemonArgs []string
}

// DaemonExtraArgs returns the arguments appended to every torusd: the
// user's (space-separated), and --down-grace when torusd's help text
// (torusdHelp) shows it has that flag and downGrace > 0, so that healing
// starts soon after the benchmark kills a daemon instead of after the
// production default (minutes). A --down-grace among the user's wins.
func DaemonExtraArgs(torusdHelp string, downGrace time.Duration, user string) []string {
	args := strings.Fields(user)
	userSet := slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--down-grace") })
	if downGrace > 0 && !userSet && strings.Contains(torusdHelp, "down-grace") {
		args = append(args, "--down-grace", downGrace.String())
	}
	return args
}

// StartTorus starts etcd, initializes the cluster, starts the daemons,
// creates the volume and serves it over NBD. Every process belongs to g;
// on error the caller closes g.
func StartTorus(ctx context.Context, g *Procs, opts TorusOptions, spec TorusSpec) (*TorusCluster, error) {
	binDir := opts.Bin
	c := &TorusCluster{Spec: spec, Bin: binDir}
	etcdDir, err := g.TempDir("etcd-*")
	if err != nil {
		return nil, err
	}
	ports, err := FreePorts(2 + 2*spec.Daemons + 1)
	if err != nil {
		return nil, err
	}
	clientURL := "http://" + Addr(ports[0])
	peerURL := "http://" + Addr(ports[1])
	c.EtcdURL = clientURL
	c.Etcd, err = g.Start(spec.Name+"-etcd", "etcd", "--name", "bench", "--data-dir", etcdDir,
		"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "bench="+peerURL)
	if err != nil {
		return nil, err
	}
	if err := WaitReady(ctx, c.Etcd, readyTimeout, "etcd", HTTPCheck(clientURL+"/health")); err != nil {
		return nil, err
	}
	if _, err := c.Ctl(ctx, "init", "--replication", strconv.Itoa(spec.Replication)); err != nil {
		return nil, err
	}
	var daemonTLS, clientTLS []string
	if spec.PeerTLS {
		dir, err := g.TempDir("certs-*")
		if err != nil {
			return nil, err
		}
		if daemonTLS, clientTLS, err = PeerTLSArgs(ctx, binDir, dir); err != nil {
			return nil, err
		}
	}
	for i := range spec.Daemons {
		dir, err := g.TempDir(fmt.Sprintf("torusd%d-*", i))
		if err != nil {
			return nil, err
		}
		d := &Daemon{Name: fmt.Sprintf("torusd-%d", i), DataDir: dir, HTTP: Addr(ports[3+2*i]), PeerAddr: Addr(ports[2+2*i])}
		argv := []string{filepath.Join(binDir, "torusd"), "--etcd", clientURL,
			"--data-dir", dir, "--size", FormatSize(opts.DaemonSize), "--peer-address", d.PeerAddr,
			"--http", d.HTTP, "--auto-join"}
		argv = append(argv, daemonTLS...)
		d.Proc, err = g.Start(spec.Name+"-"+d.Name, append(argv, opts.DaemonArgs...)...)
		if err != nil {
			return nil, err
		}
		c.Daemons = append(c.Daemons, d)
	}
	for _, d := range c.Daemons {
		if err := WaitReady(ctx, d.Proc, readyTimeout, d.Name, HTTPCheck("http://"+d.HTTP+"/readyz")); err != nil {
			return nil, err
		}
	}
	// --auto-join adds each daemon to the ring; wait until all are in it,
	// so the volume's first segments get their full replica set.
	err = WaitReady(ctx, nil, readyTimeout, "ring members", func(ctx context.Context) error {
		out, err := c.Ctl(ctx, "status", "-o", "json")
		if err != nil {
			return err
		}
		if n, ok := RingMembers(out); ok && n < spec.Daemons {
			return fmt.Errorf("%d of %d daemons in the ring", n, spec.Daemons)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if _, err := c.Ctl(ctx, "volume", "create", ExportName, FormatSize(opts.VolumeSize)); err != nil {
		return nil, err
	}
	c.NBDPort = ports[len(ports)-1]
	blk := append([]string{filepath.Join(binDir, "torusblk"), "--etcd", clientURL}, clientTLS...)
	c.Blk, err = g.Start(spec.Name+"-torusblk", append(blk, "nbdserve", "--listen", Addr(c.NBDPort))...)
	if err != nil {
		return nil, err
	}
	if err := WaitReady(ctx, c.Blk, readyTimeout, "torusblk", TCPCheck(Addr(c.NBDPort))); err != nil {
		return nil, err
	}
	return c, nil
}

// EvictCache writes back and drops from the page cache every regular file
// under paths (files or directories), so the next job starts cold on every
// target alike. It needs no privilege: POSIX_FADV_DONTNEED drops clean
// pages of any file we can open. Files that vanish meanwhile are ignored.
func EvictCache(paths []string) error {
	var errs []error
	for _, root := range paths {
		err := walkFiles(root, func(path string, _ fs.DirEntry) error {
			f, err := os.Open(path)
			if err != nil {
				return nil // vanished or unreadable: nothing to evict
			}
			defer f.Close()
			fd := int(f.Fd())
			if err := unix.Fdatasync(fd); err != nil {
				return fmt.Errorf("fdatasync %s: %w", path, err)
			}
			if err := unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED); err != nil {
				return fmt.Errorf("fadvise %s: %w", path, err)
			}
			return nil
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// walkFiles calls fn for every regular file under root; files and
// directories that vanish during the walk are skipped.
func walkFiles(root string, fn func(path string, d fs.DirEntry) error) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		return fn(path, d)
	})
}

// RingMembers reads "ring_members" from `torusctl status -o json` output;
// ok is false when the output has no such number.
func RingMembers(status []byte) (n int, ok bool) {
	var st struct {
		RingMembers *int `json:"ring_members"`
	}
	if err := json.Unmarshal(status, &st); err != nil || st.RingMembers == nil {
		return 0, false
	}
	return *st.RingMembers, true
}
