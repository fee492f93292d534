package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/etcdflags"
	"github.com/torus-storage/torus/internal/version"
	"github.com/torus-storage/torus/metadata/etcd"
)

// DefaultEtcd is the etcd endpoint used when neither --etcd nor TORUS_ETCD
// is given.
const DefaultEtcd = "http://127.0.0.1:2379"

// Global holds the global flags.
type Global struct {
	Etcd   []string // endpoints
	Prefix string   // key prefix
	// EtcdClient: --etcd-cert, --etcd-key, --etcd-ca, --etcd-user,
	// --etcd-password-file.
	EtcdClient etcdflags.Flags
	Output     string // "table" or "json"
	// Peer TLS files (--peer-cert, --peer-key, --peer-ca): the client
	// certificate that reaches the daemons (volume scrub, snapshots of
	// closed volumes). Repairing (volume scrub without --check) needs a
	// daemon certificate.
	PeerCert, PeerKey, PeerCA string
}

// Deps are torusctl's dependencies, injected by main and by tests.
type Deps struct {
	// Open connects to the cluster's metadata. Default: etcd.New.
	Open func(ctx context.Context, g Global) (torus.Metadata, error)
	// SnapshotClosedVolume snapshots a volume that has no writer (by
	// opening it as writer briefly). main wires volume.SnapshotClosed;
	// the default (for tests of this package) fails with a hint.
	SnapshotClosedVolume func(ctx context.Context, md torus.Metadata, g Global, volume, name string) error
	// Peers reaches the daemons (volume scrub); done releases the pool.
	// main wires a peer.Pool resolving IDs via md.Peers; the default
	// fails.
	Peers func(md torus.Metadata, g Global) (pool torus.PeerPool, done func(), err error)
	// Getenv reads the environment (TORUS_ETCD, TORUS_ETCD_PREFIX,
	// TORUS_PEER_CERT, TORUS_PEER_KEY, TORUS_PEER_CA).
	Getenv func(string) string
	// Now is the clock for "last seen" ages.
	Now func() time.Time
	// IsTerminal reports whether w is a terminal (progress bars are drawn
	// only there). Default: IsTerminal.
	IsTerminal func(w io.Writer) bool
	// OpenVolume opens a volume as a device (volume import and export);
	// done releases what it holds besides the device (the peer pool).
	// main wires volume.Open; the default fails.
	OpenVolume func(ctx context.Context, md torus.Metadata, g Global, name string, opt VolumeOptions) (dev torus.Device, done func(), err error)
	// Stdin is read by `volume import NAME -`. Default: os.Stdin.
	Stdin io.Reader
}

// VolumeOptions say how Deps.OpenVolume opens a volume.
type VolumeOptions struct {
	ReadOnly bool   // no writer lock: a point-in-time view
	Snapshot string // open this snapshot (read-only)
	Owner    string // the writer lock's owner string
}

// IsTerminal is the default Deps.IsTerminal: w is an *os.File whose
// descriptor answers the terminal ioctl.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// errNotImplemented is returned by the default SnapshotClosedVolume.
var errNotImplemented = errors.New("not implemented yet")

// snapshotClosedVolume is the hook for snapshots of volumes without a
// writer when none is injected: it returns an error. main injects the real
// one (volume.SnapshotClosed: open as writer, seal, checkpoint,
// CreateSnapshot, close).
func snapshotClosedVolume(ctx context.Context, md torus.Metadata, _ Global, volume, name string) error {
	return fmt.Errorf("snapshot of %q, which has no writer: %w (attach the volume, then retry: its writer takes the snapshot)", volume, errNotImplemented)
}

// OpenEtcd is the default Deps.Open.
func OpenEtcd(ctx context.Context, g Global) (torus.Metadata, error) {
	cfg := etcd.Config{Endpoints: g.Etcd, Prefix: g.Prefix}
	if err := g.EtcdClient.Apply(&cfg); err != nil {
		return nil, err
	}
	s, err := etcd.New(ctx, cfg)
	if err != nil {
		if errors.Is(err, torus.ErrUnavailable) {
			return nil, fmt.Errorf("cannot reach etcd at %s (set --etcd or TORUS_ETCD): %w", strings.Join(g.Etcd, ","), err)
		}
		return nil, err
	}
	return s, nil
}

func (d *Deps) ensureDefaults() {
	if d.Open == nil {
		d.Open = OpenEtcd
	}
	if d.SnapshotClosedVolume == nil {
		d.SnapshotClosedVolume = snapshotClosedVolume
	}
	if d.Peers == nil {
		d.Peers = noPeers
	}
	if d.Getenv == nil {
		d.Getenv = os.Getenv
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.IsTerminal == nil {
		d.IsTerminal = IsTerminal
	}
	if d.OpenVolume == nil {
		d.OpenVolume = noVolumes
	}
	if d.Stdin == nil {
		d.Stdin = os.Stdin
	}
}

// app is one invocation's state.
type app struct {
	deps    Deps
	g       Global
	etcdStr string
	out     io.Writer
	errOut  io.Writer
}

// Main runs torusctl with args (without the program name) and returns the
// exit status.
func Main(args []string, stdout, stderr io.Writer, deps Deps) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := NewCommand(deps, stdout, stderr)
	cmd.SetArgs(args)
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "torusctl: %v\n", err)
		var ee *ExitError
		if errors.As(err, &ee) {
			return ee.Code
		}
		return 1
	}
	return 0
}

// NewCommand builds the command tree.
func NewCommand(deps Deps, stdout, stderr io.Writer) *cobra.Command {
	deps.ensureDefaults()
	a := &app{deps: deps, out: stdout, errOut: stderr}
	root := &cobra.Command{
		Use:   "torusctl",
		Short: "Administer a Torus cluster",
		Long: `torusctl administers a Torus cluster through its etcd: cluster settings,
peers, the ring, volumes and snapshots.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return a.parseGlobal()
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	def := deps.Getenv("TORUS_ETCD")
	if def == "" {
		def = DefaultEtcd
	}
	prefix := deps.Getenv("TORUS_ETCD_PREFIX")
	if prefix == "" {
		prefix = etcd.DefaultPrefix
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.etcdStr, "etcd", def, "etcd endpoints, comma-separated (env TORUS_ETCD)")
	pf.StringVar(&a.g.Prefix, "etcd-prefix", prefix, "key prefix of the cluster in etcd (env TORUS_ETCD_PREFIX)")
	a.g.EtcdClient.Register(pf, deps.Getenv)
	pf.StringVar(&a.g.PeerCert, "peer-cert", deps.Getenv("TORUS_PEER_CERT"), "client certificate for mutual TLS to the daemons (env TORUS_PEER_CERT)")
	pf.StringVar(&a.g.PeerKey, "peer-key", deps.Getenv("TORUS_PEER_KEY"), "key of --peer-cert (env TORUS_PEER_KEY)")
	pf.StringVar(&a.g.PeerCA, "peer-ca", deps.Getenv("TORUS_PEER_CA"), "CA that signed the daemons' certificates (env TORUS_PEER_CA)")
	pf.StringVarP(&a.g.Output, "output", "o", "table", "output format: table or json")

	root.AddCommand(a.initCmd(), a.statusCmd(), a.peerCmd(), a.ringCmd(), a.volumeCmd(), a.snapshotCmd(), a.certsCmd(), a.eventsCmd(), versionCmd())
	return root
}

func (a *app) parseGlobal() error {
	switch a.g.Output {
	case "table", "json":
	default:
		return fmt.Errorf("unknown output format %q (use table or json)", a.g.Output)
	}
	a.g.Etcd = nil
	for _, e := range strings.Split(a.etcdStr, ",") {
		if e = strings.TrimSpace(e); e != "" {
			a.g.Etcd = append(a.g.Etcd, e)
		}
	}
	if len(a.g.Etcd) == 0 {
		return errors.New("no etcd endpoint given (--etcd or TORUS_ETCD)")
	}
	return nil
}

// with opens the metadata store, runs fn and closes the store.
func (a *app) with(cmd *cobra.Command, fn func(ctx context.Context, md torus.Metadata) error) error {
	ctx := cmd.Context()
	md, err := a.deps.Open(ctx, a.g)
	if err != nil {
		return err
	}
	defer md.Close()
	return explain(fn(ctx, md))
}

// explain adds advice to errors whose cause has an obvious remedy.
func explain(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, torus.ErrNotInitialized):
		return fmt.Errorf("%w (run `torusctl init` first)", err)
	}
	return err
}

// emit prints v as JSON with -o json, else calls table with a tabwriter.
func (a *app) emit(v any, table func(w io.Writer)) error {
	if a.g.Output == "json" {
		enc := json.NewEncoder(a.out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(a.out, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// say prints a confirmation line (table mode) or v as JSON.
func (a *app) say(v any, format string, args ...any) error {
	if a.g.Output == "json" {
		return a.emit(v, nil)
	}
	_, err := fmt.Fprintf(a.out, format+"\n", args...)
	return err
}

func row(w io.Writer, cols ...any) {
	for i, c := range cols {
		if i > 0 {
			fmt.Fprint(w, "\t")
		}
		fmt.Fprint(w, c)
	}
	fmt.Fprintln(w)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit and format versions (the same line as torusd --version)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := fmt.Fprintln(cmd.OutOrStdout(), version.String("torusctl"))
			return err
		},
	}
}
