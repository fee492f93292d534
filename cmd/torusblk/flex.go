package main

// torusblk flex: the Kubernetes FlexVolume driver (the calling convention
// of the kubelet's volume/flexvolume package), kept for clusters that used
// the original Torus's FlexVolume plugin. New clusters use the CSI driver
// (docs/kubernetes.md).
//
// The kubelet runs PLUGINDIR/torus~torus/torus with
//
//	init                    -> {"status":"Success","capabilities":{"attach":false}}
//	mount MOUNTDIR OPTIONS  -> attach, format if empty, mount at MOUNTDIR
//	unmount MOUNTDIR        -> unmount, detach
//
// and anything else is answered "Not supported". The answer is one JSON
// object on stdout; the kubelet reads stdout and stderr together, so
// nothing else is ever written to either (the log goes to
// STATEDIR/flex.log). No systemd, no D-Bus: mounts are made with mount(2).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/blockdev"
	"github.com/torus-storage/torus/internal/statefile"
)

// flexAttacher is what flex needs of an attach backend: a block device for
// a volume, and its removal. Attach of a volume that this node already has
// attached returns the same device.
type flexAttacher interface {
	// Attach makes volume a block device (read-only when ro) and returns
	// its path.
	Attach(ctx context.Context, volume string, ro bool) (device string, err error)
	// Detach removes the device Attach made for volume. A volume that is
	// not attached is success.
	Detach(ctx context.Context, volume, device string) error
	// Close releases what the backend holds for this call (its metadata
	// client); attached devices stay attached.
	Close() error
}

// flexBackend opens the attach backend for cfg. flex closes it when the
// call is done (flexDriver.withAttacher).
type flexBackend func(ctx context.Context, cfg flexBackendConfig) (flexAttacher, error)

// flexBackendConfig is what a flex call asks of its attach backend.
type flexBackendConfig struct {
	Etcd     string // the cluster
	StateDir string // flex's --state-dir; the backend keeps its state under it
	Backend  string // --attach-backend: auto, nbd or fuse
	Log      *slog.Logger
}

// flexProgram is the name a FlexVolume driver has inside its vendor~driver
// directory: copied (or linked) there as "torus", this binary acts as
// "torusblk flex".
const flexProgram = "torus"

// addFlex registers the flex command on root and, when the program was
// started as the FlexVolume driver (argv[0] "torus"), makes the command
// line "flex ARGS...".
func addFlex(root *cobra.Command, g *globals, argv []string) {
	root.AddCommand(newFlex(g, attachBackend(g)))
	if args, ok := flexArgs(argv); ok {
		root.SetArgs(args)
	}
}

// flexArgs is the command line of a program started as argv: "flex
// ARGS..." when argv[0]'s base name is the driver's name.
//
// A command line that starts with a flag is a torusblk one even then: the
// attach backend starts this same binary as `torus --etcd ... fuse ...`.
// The kubelet always passes the call (init, mount, ...) first.
func flexArgs(argv []string) ([]string, bool) {
	if len(argv) == 0 || filepath.Base(argv[0]) != flexProgram || (len(argv) > 1 && strings.HasPrefix(argv[1], "-")) {
		return nil, false
	}
	return append([]string{"flex"}, argv[1:]...), true
}

const (
	flexSuccess      = "Success"
	flexFailure      = "Failure"
	flexNotSupported = "Not supported"
)

// flexResponse is the driver's answer, the kubelet's DriverStatus.
type flexResponse struct {
	Status       string            `json:"status"`
	Message      string            `json:"message,omitempty"`
	Capabilities *flexCapabilities `json:"capabilities,omitempty"`
}

type flexCapabilities struct {
	Attach bool `json:"attach"`
}

// flexOptions are the mount options: the kubelet's own
// ("kubernetes.io/...") and the volume's, as the original plugin took them.
type flexOptions struct {
	Volume   string
	Etcd     string
	FSType   string
	ReadOnly bool
	Trim     bool
}

// The original's options that this Torus has no use for: accepted, ignored.
var flexIgnored = map[string]bool{"writeLevel": true, "writeCacheSize": true}

// parseFlexOptions reads the kubelet's JSON. Every value is a string. An
// unknown option that is not the kubelet's is refused, so that a typo is
// not silently ignored.
func parseFlexOptions(s string) (flexOptions, error) {
	var m map[string]string
	d := json.NewDecoder(strings.NewReader(s))
	if err := d.Decode(&m); err != nil {
		return flexOptions{}, fmt.Errorf("%w: mount options are not a JSON object of strings: %v", torus.ErrInvalid, err)
	}
	o := flexOptions{FSType: "ext4", Volume: m["volume"], Etcd: m["etcd"]}
	if o.Volume == "" {
		return o, fmt.Errorf(`%w: option "volume" is missing: set options.volume in the pod's flexVolume source`, torus.ErrInvalid)
	}
	if err := torus.ValidName(o.Volume); err != nil {
		return o, fmt.Errorf("option \"volume\": %w", err)
	}
	if fs := m["kubernetes.io/fsType"]; fs != "" {
		o.FSType = fs
	}
	switch o.FSType {
	case "ext4", "ext3", "xfs", "btrfs":
	default:
		return o, fmt.Errorf("%w: fsType %q: ext4, ext3, xfs or btrfs", torus.ErrInvalid, o.FSType)
	}
	switch rw := m["kubernetes.io/readwrite"]; rw {
	case "", "rw":
	case "ro":
		o.ReadOnly = true
	default:
		return o, fmt.Errorf("%w: kubernetes.io/readwrite %q: rw or ro", torus.ErrInvalid, rw)
	}
	switch t := m["trim"]; t {
	case "", "false":
	case "true":
		o.Trim = true
	default:
		return o, fmt.Errorf("%w: option trim %q: true or false", torus.ErrInvalid, t)
	}
	var unknown []string
	for k := range m {
		switch {
		case strings.HasPrefix(k, "kubernetes.io/"), flexIgnored[k], k == "volume", k == "etcd", k == "trim":
		default:
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return o, fmt.Errorf("%w: unknown option %s (known: volume, etcd, trim)", torus.ErrInvalid, strings.Join(unknown, ", "))
	}
	return o, nil
}

// flexState is what mount leaves for unmount, one file per mount
// directory: STATEDIR/mounts/<sha256(MOUNTDIR)[:16]>.json. Version 1.
type flexState struct {
	Version  int    `json:"version"`
	MountDir string `json:"mountDir"`
	Volume   string `json:"volume"`
	Etcd     string `json:"etcd,omitempty"`
	Device   string `json:"device,omitempty"`
	FSType   string `json:"fsType"`
	ReadOnly bool   `json:"readOnly"`
	Mounted  bool   `json:"mounted"`
}

const flexStateVersion = 1

type flexDriver struct {
	stateDir string
	etcd     string // default when the options name none
	backend  flexBackend
	attach   string // --attach-backend
	log      *slog.Logger
}

func newFlex(g *globals, backend flexBackend) *cobra.Command {
	def := os.Getenv("TORUS_FLEX_STATE_DIR")
	if def == "" {
		def = "/var/lib/torus-flex"
	}
	defBackend := os.Getenv("TORUS_ATTACH_BACKEND")
	if defBackend == "" {
		defBackend = "auto"
	}
	var stateDir, attachBackend string
	cmd := &cobra.Command{
		Use:   "flex init|mount MOUNTDIR OPTIONS|unmount MOUNTDIR",
		Short: "Kubernetes FlexVolume driver (install as VOLUME-PLUGIN-DIR/torus~torus/torus)",
		Long: "The FlexVolume calling convention: the answer is one JSON object on stdout, " +
			`{"status":"Success"|"Failure"|"Not supported","message":...}. ` +
			"State files and the log (flex.log) are kept in --state-dir.",
		DisableFlagParsing: false,
		Args:               cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			d := &flexDriver{stateDir: stateDir, etcd: g.etcd, backend: backend, attach: attachBackend}
			resp := d.run(cmd.Context(), args)
			b, _ := json.Marshal(resp)
			fmt.Fprintln(cmd.OutOrStdout(), string(b))
			if resp.Status != flexSuccess {
				os.Exit(1) // the kubelet reads the JSON; the exit status is for people
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&stateDir, "state-dir", def, "directory of flex's state files and log (env TORUS_FLEX_STATE_DIR)")
	cmd.Flags().StringVar(&attachBackend, "attach-backend", defBackend, "how volumes become block devices: nbd (kernel NBD, survives torusblk restarts), fuse (torusblk fuse + loop) or auto (nbd where the nbd module is loaded) (env TORUS_ATTACH_BACKEND)")
	return cmd
}

func (d *flexDriver) run(ctx context.Context, args []string) flexResponse {
	if ctx == nil {
		ctx = context.Background()
	}
	if len(args) == 0 {
		return flexResponse{Status: flexFailure, Message: "no call: init, mount MOUNTDIR OPTIONS or unmount MOUNTDIR"}
	}
	call, args := args[0], args[1:]
	if call == "init" {
		return flexResponse{Status: flexSuccess, Capabilities: &flexCapabilities{Attach: false}}
	}
	if call != "mount" && call != "unmount" {
		return flexResponse{Status: flexNotSupported, Message: fmt.Sprintf("%s is not supported (attach: false)", call)}
	}
	closeLog := d.openLog()
	defer closeLog()
	var err error
	switch {
	case call == "mount" && len(args) == 2:
		err = d.mount(ctx, args[0], args[1])
	case call == "unmount" && len(args) == 1:
		err = d.unmount(ctx, args[0])
	default:
		err = fmt.Errorf("%w: %s takes %s, got %d arguments", torus.ErrInvalid, call,
			map[string]string{"mount": "MOUNTDIR OPTIONS", "unmount": "MOUNTDIR"}[call], len(args))
	}
	if err != nil {
		d.log.Error("flex: "+call+" failed", "args", args, "err", err)
		return flexResponse{Status: flexFailure, Message: err.Error()}
	}
	d.log.Info("flex: "+call, "args", args)
	return flexResponse{Status: flexSuccess}
}

// openLog points d.log at STATEDIR/flex.log (or nowhere when it cannot be
// opened: stdout and stderr belong to the JSON answer).
func (d *flexDriver) openLog() func() {
	d.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := os.MkdirAll(filepath.Join(d.stateDir, "mounts"), 0o700); err != nil {
		return func() {}
	}
	f, err := os.OpenFile(filepath.Join(d.stateDir, "flex.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return func() {}
	}
	d.log = slog.New(slog.NewTextHandler(f, nil))
	return func() { f.Close() }
}

func (d *flexDriver) statePath(mountDir string) string {
	h := sha256.Sum256([]byte(filepath.Clean(mountDir)))
	return filepath.Join(d.stateDir, "mounts", hex.EncodeToString(h[:8])+".json")
}

// readState returns the state of mountDir (ok false when there is none).
func (d *flexDriver) readState(mountDir string) (flexState, bool, error) {
	b, err := os.ReadFile(d.statePath(mountDir))
	if errors.Is(err, os.ErrNotExist) {
		return flexState{}, false, nil
	}
	if err != nil {
		return flexState{}, false, err
	}
	var st flexState
	if err := json.Unmarshal(b, &st); err != nil {
		return flexState{}, false, fmt.Errorf("%w: state file %s: %v", torus.ErrCorrupt, d.statePath(mountDir), err)
	}
	if st.Version != flexStateVersion {
		return flexState{}, false, fmt.Errorf("%w: state file %s has version %d, this torusblk reads %d", torus.ErrCorrupt, d.statePath(mountDir), st.Version, flexStateVersion)
	}
	return st, true, nil
}

// writeState writes st durably (statefile.Write).
func (d *flexDriver) writeState(st flexState) error {
	st.Version = flexStateVersion
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return statefile.Write(d.statePath(st.MountDir), append(b, '\n'), 0o600)
}

// lock serialises flex calls on this node (one file lock on the state
// directory): the kubelet may run several at once.
func (d *flexDriver) lock() (func(), error) {
	f, err := os.OpenFile(filepath.Join(d.stateDir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// mountedElsewhere names the mount directory of another state file for the
// same volume ("" when none).
func (d *flexDriver) mountedElsewhere(volume, mountDir string) (string, error) {
	files, err := filepath.Glob(filepath.Join(d.stateDir, "mounts", "*.json"))
	if err != nil {
		return "", err
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		var st flexState
		if json.Unmarshal(b, &st) == nil && st.Volume == volume && filepath.Clean(st.MountDir) != filepath.Clean(mountDir) {
			return st.MountDir, nil
		}
	}
	return "", nil
}

func (d *flexDriver) mount(ctx context.Context, mountDir, options string) error {
	o, err := parseFlexOptions(options)
	if err != nil {
		return err
	}
	if !filepath.IsAbs(mountDir) {
		return fmt.Errorf("%w: mount directory %q is not absolute", torus.ErrInvalid, mountDir)
	}
	unlock, err := d.lock()
	if err != nil {
		return err
	}
	defer unlock()
	st, ok, err := d.readState(mountDir)
	if err != nil {
		return err
	}
	if ok {
		if st.Volume != o.Volume || st.ReadOnly != o.ReadOnly || st.FSType != o.FSType {
			return fmt.Errorf("%w: %s already has volume %s (fsType %s, read-only %v) mounted", torus.ErrInUse, mountDir, st.Volume, st.FSType, st.ReadOnly)
		}
		if st.Mounted && isMountPoint(mountDir) {
			return nil // mounted already
		}
	}
	if other, err := d.mountedElsewhere(o.Volume, mountDir); err != nil {
		return err
	} else if other != "" {
		return fmt.Errorf("%w: volume %s is already mounted on this node at %s (a Torus volume has one writer)", torus.ErrInUse, o.Volume, other)
	}
	etcd := o.Etcd
	if etcd == "" {
		etcd = d.etcd
	}
	st = flexState{MountDir: mountDir, Volume: o.Volume, Etcd: etcd, FSType: o.FSType, ReadOnly: o.ReadOnly}
	return d.withAttacher(ctx, etcd, func(att flexAttacher) error { return d.attachMount(ctx, att, st, o) })
}

// attachMount attaches st's volume through att, formats it if empty and
// mounts it at st.MountDir, recording each step in st's state file.
func (d *flexDriver) attachMount(ctx context.Context, att flexAttacher, st flexState, o flexOptions) error {
	mountDir := st.MountDir
	// The state is written before the attach, so that whatever happens
	// next leaves something unmount can find and undo.
	if err := d.writeState(st); err != nil {
		return err
	}
	dev, err := att.Attach(ctx, o.Volume, o.ReadOnly)
	if err != nil {
		return d.undo(ctx, st, nil, fmt.Errorf("attach %s: %w", o.Volume, err))
	}
	st.Device = dev
	if err := d.writeState(st); err != nil {
		return d.undo(ctx, st, att, err)
	}
	fs, err := blockdev.Probe(ctx, dev)
	if err != nil {
		return d.undo(ctx, st, att, err)
	}
	switch {
	case fs == "" && o.ReadOnly:
		return d.undo(ctx, st, att, fmt.Errorf("%w: volume %s is empty and attached read-only: nothing to mount (mount it read-write once to format it)", torus.ErrInvalid, o.Volume))
	case fs == "":
		d.log.Info("flex: formatting an empty volume", "volume", o.Volume, "device", dev, "fs", o.FSType)
		if err := blockdev.Mkfs(ctx, o.FSType, dev); err != nil {
			return d.undo(ctx, st, att, err)
		}
	case fs != o.FSType:
		return d.undo(ctx, st, att, fmt.Errorf("%w: volume %s holds a %s filesystem, fsType asks for %s (not reformatting)", torus.ErrInUse, o.Volume, fs, o.FSType))
	}
	if err := os.MkdirAll(mountDir, 0o750); err != nil {
		return d.undo(ctx, st, att, err)
	}
	flags, data := mountFlags(o)
	if err := unix.Mount(dev, mountDir, o.FSType, flags, data); err != nil {
		return d.undo(ctx, st, att, fmt.Errorf("mount %s on %s (%s, %s): %w", dev, mountDir, o.FSType, data, err))
	}
	st.Mounted = true
	if err := d.writeState(st); err != nil {
		_ = unix.Unmount(mountDir, 0)
		return d.undo(ctx, st, att, err)
	}
	return nil
}

// withAttacher opens the attach backend for the cluster at etcd, runs f
// with it and closes it: the one place mount and unmount get a backend.
func (d *flexDriver) withAttacher(ctx context.Context, etcd string, f func(flexAttacher) error) error {
	att, err := d.backend(ctx, flexBackendConfig{Etcd: etcd, StateDir: d.stateDir, Backend: d.attach, Log: d.log})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := att.Close(); cerr != nil {
			d.log.Warn("flex: closing the attach backend", "err", cerr)
		}
	}()
	return f(att)
}

// undo detaches after a failed mount and removes the state file; if the
// detach fails the state file stays, so that unmount can retry it.
func (d *flexDriver) undo(ctx context.Context, st flexState, att flexAttacher, cause error) error {
	if att != nil && st.Device != "" {
		if err := att.Detach(ctx, st.Volume, st.Device); err != nil {
			d.log.Error("flex: detach after a failed mount", "volume", st.Volume, "device", st.Device, "err", err)
			return cause
		}
	}
	_ = os.Remove(d.statePath(st.MountDir))
	return cause
}

func mountFlags(o flexOptions) (uintptr, string) {
	flags := uintptr(unix.MS_NOATIME)
	var data []string
	if o.Trim {
		data = append(data, "discard")
	}
	if o.ReadOnly {
		flags |= unix.MS_RDONLY
		switch o.FSType { // a read-only device cannot replay a journal
		case "ext4", "ext3":
			data = append(data, "noload")
		case "xfs":
			data = append(data, "norecovery")
		}
	}
	return flags, strings.Join(data, ",")
}

func (d *flexDriver) unmount(ctx context.Context, mountDir string) error {
	unlock, err := d.lock()
	if err != nil {
		return err
	}
	defer unlock()
	st, ok, err := d.readState(mountDir)
	if err != nil {
		return err
	}
	if isMountPoint(mountDir) {
		if err := unix.Unmount(mountDir, 0); err != nil {
			return fmt.Errorf("unmount %s: %w", mountDir, err)
		}
	}
	if !ok {
		return nil // nothing of ours (or unmounted already)
	}
	if st.Device != "" {
		err := d.withAttacher(ctx, st.Etcd, func(att flexAttacher) error {
			if err := att.Detach(ctx, st.Volume, st.Device); err != nil {
				return fmt.Errorf("detach %s (%s): %w", st.Volume, st.Device, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	if err := os.Remove(d.statePath(mountDir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// isMountPoint: dir is the root of a mount (its device differs from its
// parent's, or it is a bind mount of the same device: /proc/self/mountinfo).
func isMountPoint(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	want := filepath.Clean(dir)
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && unescapeMountinfo(f[4]) == want {
			return true
		}
	}
	return false
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
