package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/metadata/internal/rules"
)

// Defaults for Config.
const (
	DefaultPrefix         = "/torus/"
	DefaultDialTimeout    = 3 * time.Second
	DefaultRequestTimeout = 5 * time.Second
)

// maxRetries bounds the read-then-CAS loops (Lock, CreateVolume, ...)
// when concurrent writers keep winning.
const maxRetries = 32

// Config configures a Store.
type Config struct {
	// Endpoints are etcd client URLs, e.g. http://127.0.0.1:2379.
	Endpoints []string
	// CertFile, KeyFile: client certificate for TLS client auth; CAFile:
	// the CA that signed the servers' certificates. Any of them set
	// enables TLS.
	CertFile, KeyFile, CAFile string
	// Username and Password authenticate to an etcd with authentication
	// enabled (etcdctl auth enable); empty Username: none, or the common
	// name of CertFile when etcd runs with --client-cert-auth. A refused
	// user (wrong password, no role on the prefix) fails New with an error
	// wrapping torus.ErrPermission. docs/security.md gives the etcdctl
	// commands of a role limited to Prefix.
	Username, Password string
	// TLS, when set, is the client TLS configuration, used instead of
	// CertFile, KeyFile and CAFile (which then only name the files in
	// messages). internal/etcdflags sets it to one that reloads rotated
	// files at every connection (tlsconfig.Reloader.EtcdClient).
	TLS *tls.Config
	// DialTimeout bounds connecting and the initial probe in New.
	DialTimeout time.Duration
	// RequestTimeout bounds every request.
	RequestTimeout time.Duration
	// Prefix is prepended to every key; it ends with "/".
	Prefix string
	// Logger receives Warn for lost sessions and Debug for retries.
	Logger *slog.Logger
}

// EnsureDefaults fills zero fields with defaults.
func (c *Config) EnsureDefaults() {
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(c.Prefix, "/") {
		c.Prefix += "/"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return fmt.Errorf("metadata/etcd: %w: no endpoints", torus.ErrInvalid)
	}
	for _, e := range c.Endpoints {
		if e == "" {
			return fmt.Errorf("metadata/etcd: %w: empty endpoint", torus.ErrInvalid)
		}
	}
	if c.DialTimeout < 0 || c.RequestTimeout < 0 {
		return fmt.Errorf("metadata/etcd: %w: negative timeout", torus.ErrInvalid)
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return fmt.Errorf("metadata/etcd: %w: --etcd-cert and --etcd-key go together", torus.ErrInvalid)
	}
	if c.Username == "" && c.Password != "" {
		return fmt.Errorf("metadata/etcd: %w: an etcd password without a user", torus.ErrInvalid)
	}
	return nil
}

func (c Config) tlsConfig() (*tls.Config, error) {
	if c.TLS != nil {
		return c.TLS, nil
	}
	if c.CertFile == "" && c.KeyFile == "" && c.CAFile == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("metadata/etcd: %w: client certificate: %w", torus.ErrInvalid, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("metadata/etcd: %w: CA file: %w", torus.ErrInvalid, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("metadata/etcd: %w: no certificate in CA file %s", torus.ErrInvalid, c.CAFile)
		}
		tc.RootCAs = pool
	}
	return tc, nil
}

// Store is the etcd implementation of torus.Metadata. Safe for concurrent
// use.
type Store struct {
	cli    *clientv3.Client
	cfg    Config
	k      keys
	log    *slog.Logger
	ctx    context.Context // canceled by Close; parent of watches and keepalives
	cancel context.CancelFunc
	wg     sync.WaitGroup // watch and keepalive goroutines

	mu       sync.Mutex
	closed   bool
	sessions map[int64]*session
}

var _ torus.Metadata = (*Store)(nil)

// New connects to etcd and checks that it answers. If it does not answer
// within cfg.DialTimeout, New fails with an error wrapping
// torus.ErrUnavailable that names the endpoints.
func New(ctx context.Context, cfg Config) (*Store, error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tc, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: cfg.RequestTimeout,
		TLS:                  tc,
		Username:             cfg.Username,
		Password:             cfg.Password,
		Logger:               zap.NewNop(),
		Context:              context.WithoutCancel(ctx),
	})
	if err != nil {
		if authError(err) {
			return nil, fmt.Errorf("metadata/etcd: connect to %s as %q: %w: %w", strings.Join(cfg.Endpoints, ","), cfg.Username, torus.ErrPermission, err)
		}
		return nil, fmt.Errorf("metadata/etcd: connect to %s: %w: %w", strings.Join(cfg.Endpoints, ","), torus.ErrUnavailable, err)
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s := &Store{
		cli:      cli,
		cfg:      cfg,
		k:        keys{p: cfg.Prefix},
		log:      cfg.Logger,
		ctx:      sctx,
		cancel:   cancel,
		sessions: make(map[int64]*session),
	}
	pctx, pcancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer pcancel()
	if _, err := cli.Get(pctx, s.k.cluster(), clientv3.WithCountOnly()); err != nil {
		cancel()
		_ = cli.Close()
		return nil, s.wrap(ctx, "connect", err)
	}
	return s, nil
}

// Endpoints returns the configured endpoints.
func (s *Store) Endpoints() []string { return append([]string(nil), s.cfg.Endpoints...) }

// authError reports whether err is etcd refusing the caller's identity:
// a wrong user or password, a user without permission on a key, or
// authentication required and not given. These are not transient.
func authError(err error) bool {
	for _, e := range []error{rpctypes.ErrPermissionDenied, rpctypes.ErrAuthFailed, rpctypes.ErrUserEmpty,
		rpctypes.ErrUserNotFound, rpctypes.ErrInvalidAuthToken, rpctypes.ErrInvalidAuthMgmt} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// wrap classifies an etcd client error. Expired or revoked leases become
// torus.ErrClosed; etcd refusing the caller's user or role becomes
// torus.ErrPermission; a canceled caller context stays itself; everything else
// (timeouts, connection failures) wraps torus.ErrUnavailable and names the
// endpoints.
func (s *Store) wrap(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return fmt.Errorf("metadata/etcd: %s: %w: session lease expired", op, torus.ErrClosed)
	case ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled):
		return fmt.Errorf("metadata/etcd: %s: %w", op, ctx.Err())
	case s.isClosed():
		return fmt.Errorf("metadata/etcd: %s: %w", op, torus.ErrClosed)
	case authError(err):
		who := s.cfg.Username
		if who == "" {
			who = "(no etcd user)"
		}
		return fmt.Errorf("metadata/etcd: %s: etcd at %s refused %s (check its role on %s): %w: %w",
			op, strings.Join(s.cfg.Endpoints, ","), who, s.cfg.Prefix, torus.ErrPermission, err)
	}
	return fmt.Errorf("metadata/etcd: %s: etcd at %s: %w: %w", op, strings.Join(s.cfg.Endpoints, ","), torus.ErrUnavailable, err)
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// electionRetries bounds how often req retries a request etcd refused
// during a leader election; electionBackoff is the first wait between
// tries (it doubles): together about 3 s, an election or two.
const (
	electionRetries = 6
	electionBackoff = 100 * time.Millisecond
)

// duringElection reports whether err is etcd saying it had no leader, or
// lost it while serving a read: the request was not applied, so trying
// again is safe for reads and writes alike.
func duringElection(err error) bool {
	return errors.Is(err, rpctypes.ErrNoLeader) || errors.Is(err, rpctypes.ErrLeaderChanged)
}

// req runs fn with the per-request timeout and classifies its error. A
// request refused during an etcd leader election (a member died) is
// tried again, up to electionRetries times, so that callers see the
// election only as latency.
func (s *Store) req(ctx context.Context, op string, fn func(ctx context.Context) error) error {
	if s.isClosed() {
		return fmt.Errorf("metadata/etcd: %s: %w", op, torus.ErrClosed)
	}
	wait := electionBackoff
	for try := 0; ; try++ {
		rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
		err := fn(rctx)
		cancel()
		if err == nil || !duringElection(err) || try == electionRetries || ctx.Err() != nil {
			return s.wrap(ctx, op, err)
		}
		s.log.Debug("etcd is electing a leader; retrying", "op", op, "in", wait, "err", err)
		select {
		case <-ctx.Done():
			return s.wrap(ctx, op, err)
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// txn runs one transaction.
func (s *Store) txn(ctx context.Context, op string, cmps []clientv3.Cmp, then, els []clientv3.Op) (*clientv3.TxnResponse, error) {
	var resp *clientv3.TxnResponse
	err := s.req(ctx, op, func(ctx context.Context) error {
		var err error
		resp, err = s.cli.Txn(ctx).If(cmps...).Then(then...).Else(els...).Commit()
		return err
	})
	return resp, err
}

// read runs gets in one transaction without compares: a consistent view.
func (s *Store) read(ctx context.Context, op string, gets ...clientv3.Op) ([][]*mvccpb.KeyValue, error) {
	resp, err := s.txn(ctx, op, nil, gets, nil)
	if err != nil {
		return nil, err
	}
	return ranges(resp), nil
}

func ranges(resp *clientv3.TxnResponse) [][]*mvccpb.KeyValue {
	out := make([][]*mvccpb.KeyValue, len(resp.Responses))
	for i, r := range resp.Responses {
		if rr := r.GetResponseRange(); rr != nil {
			out[i] = rr.Kvs
		}
	}
	return out
}

func decode(op string, kv *mvccpb.KeyValue, v any) error {
	if err := json.Unmarshal(kv.Value, v); err != nil {
		return fmt.Errorf("metadata/etcd: %s: key %s: %w: %w", op, kv.Key, torus.ErrCorrupt, err)
	}
	return nil
}

func encode(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("metadata/etcd: marshal %T: %v", v, err)) // only plain structs are marshaled
	}
	return string(b)
}

func parseUint(op string, kv *mvccpb.KeyValue) (uint64, error) {
	n, err := strconv.ParseUint(string(kv.Value), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("metadata/etcd: %s: key %s: %w: %w", op, kv.Key, torus.ErrCorrupt, err)
	}
	return n, nil
}

func exists(key string) clientv3.Cmp { return clientv3.Compare(clientv3.CreateRevision(key), ">", 0) }
func absent(key string) clientv3.Cmp { return clientv3.Compare(clientv3.CreateRevision(key), "=", 0) }
func modRev(key string, rev int64) clientv3.Cmp {
	return clientv3.Compare(clientv3.ModRevision(key), "=", rev)
}

func errNoVolume(op, name string) error {
	return fmt.Errorf("metadata/etcd: %s: volume %q: %w", op, name, torus.ErrNotExist)
}

func errContended(op string) error {
	return fmt.Errorf("metadata/etcd: %s: %w: gave up after %d contended attempts", op, torus.ErrUnavailable, maxRetries)
}

// InitCluster implements torus.Metadata. One transaction: cluster key
// absent → put config and the initial ring.
func (s *Store) InitCluster(ctx context.Context, cfg torus.ClusterConfig) error {
	cfg, err := rules.Cluster(cfg)
	if err != nil {
		return err
	}
	resp, err := s.txn(ctx, "init", []clientv3.Cmp{absent(s.k.cluster())},
		[]clientv3.Op{
			clientv3.OpPut(s.k.cluster(), encode(cfg)),
			clientv3.OpPut(s.k.ring(), encode(rules.InitialRing(cfg))),
		}, nil)
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return fmt.Errorf("metadata/etcd: init: cluster: %w", torus.ErrExist)
	}
	return nil
}

// ClusterConfig implements torus.Metadata.
func (s *Store) ClusterConfig(ctx context.Context) (torus.ClusterConfig, error) {
	r, err := s.read(ctx, "cluster config", clientv3.OpGet(s.k.cluster()))
	if err != nil {
		return torus.ClusterConfig{}, err
	}
	if len(r[0]) == 0 {
		return torus.ClusterConfig{}, fmt.Errorf("metadata/etcd: %w", torus.ErrNotInitialized)
	}
	var cfg torus.ClusterConfig
	return cfg, decode("cluster config", r[0][0], &cfg)
}

// PutPeer implements torus.Metadata.
func (s *Store) PutPeer(ctx context.Context, p torus.PeerInfo) error {
	if err := rules.PeerID(p.ID); err != nil {
		return fmt.Errorf("metadata/etcd: put peer: %w", err)
	}
	p.State, p.Used, p.Pending, p.LastSeen = "", 0, 0, time.Time{}
	return s.req(ctx, "put peer", func(ctx context.Context) error {
		_, err := s.cli.Put(ctx, s.k.peer(p.ID), encode(p))
		return err
	})
}

// beat is the value of the beat records (~beats/<id>, and seen/<id> as
// daemons before 2026-12-03 wrote it) and, before 2026-12-03, of the
// liveness key.
type beat struct {
	Used         int64               `json:"used"`
	Pending      int64               `json:"pending"`
	LastSeen     time.Time           `json:"last_seen"`
	Unrepairable map[uint64][]uint64 `json:"unrepairable,omitempty"`
}

// aliveValue is the value of the liveness key: only what changes a
// watcher's view (the scrub findings), so that a repeat beat leaves it as
// it is.
type aliveValue struct {
	Unrepairable map[uint64][]uint64 `json:"unrepairable,omitempty"`
}

// Heartbeat implements torus.Metadata. One transaction: peer record exists
// → put the beat record (~beats/<id>, no lease, outside the change
// watch's range), and put the liveness key under the session's lease
// unless it already holds this lease and these findings (a nested
// transaction): a repeat beat changes no watched key.
func (s *Store) Heartbeat(ctx context.Context, ses torus.Session, id string, hb torus.Beat) error {
	es, err := s.session(ses)
	if err != nil {
		return err
	}
	bad := rules.BeatBlocks(hb.Unrepairable)
	b := encode(beat{Used: hb.Used, Pending: hb.Pending, LastSeen: time.Now().UTC(), Unrepairable: bad})
	alive := encode(aliveValue{Unrepairable: bad})
	resp, err := s.txn(ctx, "heartbeat", []clientv3.Cmp{exists(s.k.peer(id))},
		[]clientv3.Op{
			clientv3.OpPut(s.k.beat(id), b),
			clientv3.OpTxn(
				[]clientv3.Cmp{
					clientv3.Compare(clientv3.LeaseValue(s.k.alive(id)), "=", es.id),
					clientv3.Compare(clientv3.Value(s.k.alive(id)), "=", alive),
				},
				nil,
				[]clientv3.Op{clientv3.OpPut(s.k.alive(id), alive, clientv3.WithLease(es.id))}),
		}, nil)
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return fmt.Errorf("metadata/etcd: heartbeat: peer %q: %w", id, torus.ErrNotExist)
	}
	return nil
}

// Peers implements torus.Metadata: one consistent read of records, ring,
// liveness keys and marks.
func (s *Store) Peers(ctx context.Context) ([]torus.PeerInfo, error) {
	const op = "peers"
	pfx := clientv3.WithPrefix()
	r, err := s.read(ctx, op,
		clientv3.OpGet(s.k.peer(""), pfx),
		clientv3.OpGet(s.k.alive(""), pfx, clientv3.WithKeysOnly()),
		clientv3.OpGet(s.k.seen(""), pfx),
		clientv3.OpGet(s.k.draining(""), pfx, clientv3.WithKeysOnly()),
		clientv3.OpGet(s.k.removed(""), pfx, clientv3.WithKeysOnly()),
		clientv3.OpGet(s.k.ring()),
		clientv3.OpGet(s.k.beat(""), pfx))
	if err != nil {
		return nil, err
	}
	alive := suffixSet(r[1], s.k.alive(""))
	draining := suffixSet(r[3], s.k.draining(""))
	removed := suffixSet(r[4], s.k.removed(""))
	// Beats in ~beats/, and in seen/ from daemons before 2026-12-03: the
	// later one counts.
	seen := make(map[string]beat, len(r[6]))
	for i, tree := range map[int]string{2: s.k.seen(""), 6: s.k.beat("")} {
		for _, kv := range r[i] {
			var b beat
			if err := decode(op, kv, &b); err != nil {
				return nil, err
			}
			id := strings.TrimPrefix(string(kv.Key), tree)
			if old, ok := seen[id]; !ok || b.LastSeen.After(old.LastSeen) {
				seen[id] = b
			}
		}
	}
	var ring torus.RingSpec
	if len(r[5]) > 0 {
		if err := decode(op, r[5][0], &ring); err != nil {
			return nil, err
		}
	}
	members := rules.Members(ring)
	out := make([]torus.PeerInfo, 0, len(r[0]))
	for _, kv := range r[0] {
		var p torus.PeerInfo
		if err := decode(op, kv, &p); err != nil {
			return nil, err
		}
		b := seen[p.ID]
		p.Used, p.Pending, p.LastSeen, p.Unrepairable = b.Used, b.Pending, b.LastSeen, b.Unrepairable
		p.Alive = alive[p.ID]
		p.State = rules.PeerState(members[p.ID], draining[p.ID], removed[p.ID], p.Alive)
		out = append(out, p)
	}
	return out, nil // sorted by key, hence by ID
}

func suffixSet(kvs []*mvccpb.KeyValue, prefix string) map[string]bool {
	m := make(map[string]bool, len(kvs))
	for _, kv := range kvs {
		m[strings.TrimPrefix(string(kv.Key), prefix)] = true
	}
	return m
}

// DeletePeer implements torus.Metadata. Transaction: ring unchanged since
// read (and the peer not a member of it), record exists → delete record,
// liveness, last-seen and marks.
func (s *Store) DeletePeer(ctx context.Context, id string) error {
	const op = "delete peer"
	for range maxRetries {
		r, err := s.read(ctx, op, clientv3.OpGet(s.k.ring()))
		if err != nil {
			return err
		}
		var ring torus.RingSpec
		var rev int64
		if len(r[0]) > 0 {
			rev = r[0][0].ModRevision
			if err := decode(op, r[0][0], &ring); err != nil {
				return err
			}
		}
		if rules.Members(ring)[id] {
			return fmt.Errorf("metadata/etcd: delete peer %q: %w: still a ring member", id, torus.ErrInvalid)
		}
		resp, err := s.txn(ctx, op,
			[]clientv3.Cmp{modRev(s.k.ring(), rev), exists(s.k.peer(id))},
			[]clientv3.Op{
				clientv3.OpDelete(s.k.peer(id)), clientv3.OpDelete(s.k.alive(id)), clientv3.OpDelete(s.k.seen(id)), clientv3.OpDelete(s.k.beat(id)),
				clientv3.OpDelete(s.k.draining(id)), clientv3.OpDelete(s.k.removed(id)),
			},
			[]clientv3.Op{clientv3.OpGet(s.k.peer(id), clientv3.WithCountOnly())})
		if err != nil {
			return err
		}
		if resp.Succeeded {
			return nil
		}
		if resp.Responses[0].GetResponseRange().Count == 0 {
			return fmt.Errorf("metadata/etcd: delete peer %q: %w", id, torus.ErrNotExist)
		}
		s.log.Debug("delete peer: ring changed, retrying", "peer", id)
	}
	return errContended(op)
}

// SetDraining implements torus.Metadata.
func (s *Store) SetDraining(ctx context.Context, id string, draining bool) error {
	o := clientv3.OpDelete(s.k.draining(id))
	if draining {
		o = clientv3.OpPut(s.k.draining(id), "1")
	}
	resp, err := s.txn(ctx, "drain peer", []clientv3.Cmp{exists(s.k.peer(id))}, []clientv3.Op{o}, nil)
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return fmt.Errorf("metadata/etcd: drain peer %q: %w", id, torus.ErrNotExist)
	}
	return nil
}

// readRing reads the ring with its mod revision.
func (s *Store) readRing(ctx context.Context, op string) (torus.RingSpec, int64, error) {
	r, err := s.read(ctx, op, clientv3.OpGet(s.k.ring()))
	if err != nil {
		return torus.RingSpec{}, 0, err
	}
	if len(r[0]) == 0 {
		return torus.RingSpec{}, 0, fmt.Errorf("metadata/etcd: %s: %w", op, torus.ErrNotInitialized)
	}
	var spec torus.RingSpec
	return spec, r[0][0].ModRevision, decode(op, r[0][0], &spec)
}

// Ring implements torus.Metadata.
func (s *Store) Ring(ctx context.Context) (torus.RingSpec, error) {
	spec, _, err := s.readRing(ctx, "ring")
	return spec, err
}

// SetRing implements torus.Metadata. Transaction: ring mod revision equals
// the one read (whose version is spec.Version-1) → put ring, put removed
// marks of dropped members, delete the removed marks (read with the ring)
// of present members.
func (s *Store) SetRing(ctx context.Context, spec torus.RingSpec) error {
	if err := rules.Ring(spec); err != nil {
		return err
	}
	return s.setRing(ctx, "set ring", spec, nil)
}

// JoinRing implements torus.Metadata: SetRing's transaction with one more
// compare per joining peer, exists(peers/id).
func (s *Store) JoinRing(ctx context.Context, spec torus.RingSpec, joined []string) error {
	if err := rules.JoinRing(spec, joined); err != nil {
		return err
	}
	return s.setRing(ctx, "join ring", spec, joined)
}

// setRing stores spec (checked) if the stored ring is its previous
// version and every peer of need has a record.
func (s *Store) setRing(ctx context.Context, op string, spec torus.RingSpec, need []string) error {
	// The ring and the removed marks in one read: only marks that exist
	// are deleted, so the transaction's size follows the members that
	// change, not the ring's (etcd refuses more than --max-txn-ops, 128
	// by default: a delete per member failed every join past 127).
	// Marks are written only here, under the ring's revision.
	r, err := s.read(ctx, op, clientv3.OpGet(s.k.ring()),
		clientv3.OpGet(s.k.removed(""), clientv3.WithPrefix(), clientv3.WithKeysOnly()))
	if err != nil {
		return err
	}
	if len(r[0]) == 0 {
		return fmt.Errorf("metadata/etcd: %s: %w", op, torus.ErrNotInitialized)
	}
	var old torus.RingSpec
	if err := decode(op, r[0][0], &old); err != nil {
		return err
	}
	rev := r[0][0].ModRevision
	if spec.Version != old.Version+1 {
		return fmt.Errorf("metadata/etcd: set ring version %d: %w: stored version is %d", spec.Version, torus.ErrConflict, old.Version)
	}
	ops := []clientv3.Op{clientv3.OpPut(s.k.ring(), encode(spec))}
	newMembers := rules.Members(spec)
	for _, m := range old.Members {
		if !newMembers[m.ID] {
			ops = append(ops, clientv3.OpPut(s.k.removed(m.ID), "1"))
		}
	}
	for id := range suffixSet(r[1], s.k.removed("")) {
		if newMembers[id] {
			ops = append(ops, clientv3.OpDelete(s.k.removed(id)))
		}
	}
	cmps := []clientv3.Cmp{modRev(s.k.ring(), rev)}
	for _, id := range need {
		cmps = append(cmps, exists(s.k.peer(id)))
	}
	resp, err := s.txn(ctx, op, cmps, ops, nil)
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		if len(need) > 0 {
			return fmt.Errorf("metadata/etcd: %s version %d: %w: ring changed concurrently, or a joining peer's record is gone", op, spec.Version, torus.ErrConflict)
		}
		return fmt.Errorf("metadata/etcd: set ring version %d: %w: ring changed concurrently", spec.Version, torus.ErrConflict)
	}
	return nil
}

// Watch implements torus.Metadata on WatchChanges, coalesced into a
// channel of capacity 1: one watch loop serves both. A liveness renewal
// that changes nothing else (Change.Beat) is not signalled. The channel
// closes when ctx ends or the store is closed.
func (s *Store) Watch(ctx context.Context) <-chan struct{} {
	out := make(chan struct{}, 1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		close(out)
		return out
	}
	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	s.wg.Add(1)
	s.mu.Unlock()
	signal := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	go func() {
		defer s.wg.Done()
		defer close(out)
		defer stop()
		defer cancel()
		// A coalesced watch is a consumer of the typed one: take the
		// current revision, signal once for whatever changed before it
		// (between the call and this read), then signal for every change
		// after it. Heartbeats that only renew a daemon's liveness wake
		// nobody.
		var rev int64
		for {
			var err error
			if rev, err = s.Revision(wctx); err == nil {
				break
			}
			s.log.Debug("watch: reading revision", "err", err)
			select {
			case <-wctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
		signal()
		for c := range s.WatchChanges(wctx, rev) {
			if !c.Beat {
				signal()
			}
		}
	}()
	return out
}

// readVolume decodes one volume record.
func (s *Store) readVolume(kv *mvccpb.KeyValue, op string) (torus.VolumeInfo, error) {
	var v torus.VolumeInfo
	return v, decode(op, kv, &v)
}

// CreateVolume implements torus.Metadata. Transaction: cluster exists,
// ID counter unchanged since read, name absent → put counter+1, volume
// record, epoch "0", empty head; clear leftover snapshot keys of the name.
func (s *Store) CreateVolume(ctx context.Context, v torus.VolumeInfo) (torus.VolumeInfo, error) {
	v.Parent, v.Shares = nil, nil
	if err := rules.Volume(v); err != nil {
		return torus.VolumeInfo{}, err
	}
	return s.createVolume(ctx, "create volume", v, func(context.Context) (torus.VolumeInfo, torus.Head, []clientv3.Cmp, error) {
		return v, torus.Head{}, nil, nil
	})
}

// CloneVolume implements torus.Metadata. It reads the source volume and
// its snapshot, then runs CreateVolume's transaction with the clone's
// head, also comparing the snapshot's and the source record's mod
// revisions: a snapshot deleted (or replaced) meanwhile fails the
// transaction, which is retried and then reports ErrNotExist.
func (s *Store) CloneVolume(ctx context.Context, v torus.VolumeInfo, volume, snapshot string) (torus.VolumeInfo, error) {
	const op = "clone volume"
	v.Parent, v.Shares = nil, nil
	if err := rules.Volume(v); err != nil {
		return torus.VolumeInfo{}, err
	}
	return s.createVolume(ctx, op, v, func(ctx context.Context) (torus.VolumeInfo, torus.Head, []clientv3.Cmp, error) {
		r, err := s.read(ctx, op, clientv3.OpGet(s.k.volume(volume)), clientv3.OpGet(s.k.snapshot(volume, snapshot)))
		if err != nil {
			return v, torus.Head{}, nil, err
		}
		if len(r[0]) == 0 {
			return v, torus.Head{}, nil, errNoVolume(op, volume)
		}
		if len(r[1]) == 0 {
			return v, torus.Head{}, nil, fmt.Errorf("metadata/etcd: clone volume %q: snapshot %s@%s: %w", v.Name, volume, snapshot, torus.ErrNotExist)
		}
		src, err := s.readVolume(r[0][0], op)
		if err != nil {
			return v, torus.Head{}, nil, err
		}
		var snap torus.Snapshot
		if err := decode(op, r[1][0], &snap); err != nil {
			return v, torus.Head{}, nil, err
		}
		nv, head, err := rules.Clone(v, src, snap)
		return nv, head, []clientv3.Cmp{
			modRev(s.k.volume(volume), r[0][0].ModRevision),
			modRev(s.k.snapshot(volume, snapshot), r[1][0].ModRevision),
		}, err
	})
}

// createVolume is CreateVolume's transaction with the record, head and
// extra comparisons prepare returns (called again at every retry).
func (s *Store) createVolume(ctx context.Context, op string, v torus.VolumeInfo,
	prepare func(ctx context.Context) (torus.VolumeInfo, torus.Head, []clientv3.Cmp, error)) (torus.VolumeInfo, error) {
	created := v.Created
	if created.IsZero() {
		created = time.Now().UTC()
	}
	for range maxRetries {
		r, err := s.read(ctx, op, clientv3.OpGet(s.k.nextID()))
		if err != nil {
			return torus.VolumeInfo{}, err
		}
		var last uint64
		var rev int64
		if len(r[0]) > 0 {
			rev = r[0][0].ModRevision
			if last, err = parseUint(op, r[0][0]); err != nil {
				return torus.VolumeInfo{}, err
			}
		}
		v, head, extra, err := prepare(ctx)
		if err != nil {
			return torus.VolumeInfo{}, err
		}
		v.Created = created
		v.Labels = rules.CloneLabels(v.Labels)
		v.ID = last + 1
		name := v.Name
		resp, err := s.txn(ctx, op,
			append([]clientv3.Cmp{exists(s.k.cluster()), modRev(s.k.nextID(), rev), absent(s.k.volume(name))}, extra...),
			[]clientv3.Op{
				clientv3.OpPut(s.k.nextID(), strconv.FormatUint(v.ID, 10)),
				clientv3.OpPut(s.k.volume(name), encode(v)),
				clientv3.OpPut(s.k.epoch(name), "0"),
				clientv3.OpPut(s.k.head(name), encode(head)),
				clientv3.OpDelete(s.k.attach(name)),
				clientv3.OpDelete(s.k.snapshot(name, ""), clientv3.WithPrefix()),
				clientv3.OpDelete(s.k.snapReq(name, ""), clientv3.WithPrefix()),
				clientv3.OpDelete(s.k.snapRes(name, ""), clientv3.WithPrefix()),
			},
			[]clientv3.Op{
				clientv3.OpGet(s.k.cluster(), clientv3.WithCountOnly()),
				clientv3.OpGet(s.k.volume(name), clientv3.WithCountOnly()),
			})
		if err != nil {
			return torus.VolumeInfo{}, err
		}
		if resp.Succeeded {
			return v, nil
		}
		if resp.Responses[0].GetResponseRange().Count == 0 {
			return torus.VolumeInfo{}, fmt.Errorf("metadata/etcd: create volume %q: %w", name, torus.ErrNotInitialized)
		}
		if resp.Responses[1].GetResponseRange().Count > 0 {
			return torus.VolumeInfo{}, fmt.Errorf("metadata/etcd: create volume %q: %w", name, torus.ErrExist)
		}
		s.log.Debug("create volume: id counter or source moved, retrying", "volume", name, "op", op)
	}
	return torus.VolumeInfo{}, errContended(op)
}

// Volume implements torus.Metadata.
func (s *Store) Volume(ctx context.Context, name string) (torus.VolumeInfo, error) {
	r, err := s.read(ctx, "volume", clientv3.OpGet(s.k.volume(name)))
	if err != nil {
		return torus.VolumeInfo{}, err
	}
	if len(r[0]) == 0 {
		return torus.VolumeInfo{}, errNoVolume("volume", name)
	}
	return s.readVolume(r[0][0], "volume")
}

// Volumes implements torus.Metadata.
func (s *Store) Volumes(ctx context.Context) ([]torus.VolumeInfo, error) {
	r, err := s.read(ctx, "volumes", clientv3.OpGet(s.k.volume(""), clientv3.WithPrefix()))
	if err != nil {
		return nil, err
	}
	out := make([]torus.VolumeInfo, 0, len(r[0]))
	for _, kv := range r[0] {
		v, err := s.readVolume(kv, "volumes")
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil // sorted by key, hence by name
}

// UpdateVolume implements torus.Metadata. Transaction: volume record
// unchanged since read → put the updated record.
func (s *Store) UpdateVolume(ctx context.Context, upd torus.VolumeInfo) error {
	const op = "update volume"
	for range maxRetries {
		r, err := s.read(ctx, op, clientv3.OpGet(s.k.volume(upd.Name)))
		if err != nil {
			return err
		}
		if len(r[0]) == 0 {
			return errNoVolume(op, upd.Name)
		}
		old, err := s.readVolume(r[0][0], op)
		if err != nil {
			return err
		}
		v, err := rules.Update(old, upd)
		if err != nil {
			return err
		}
		resp, err := s.txn(ctx, op, []clientv3.Cmp{modRev(s.k.volume(upd.Name), r[0][0].ModRevision)},
			[]clientv3.Op{clientv3.OpPut(s.k.volume(upd.Name), encode(v))}, nil)
		if err != nil {
			return err
		}
		if resp.Succeeded {
			return nil
		}
	}
	return errContended(op)
}

// SetVolumeLabels implements torus.Metadata. Transaction: volume record
// unchanged since read → put the record with the new labels.
func (s *Store) SetVolumeLabels(ctx context.Context, volume string, set map[string]string, remove []string) (torus.VolumeInfo, error) {
	const op = "set volume labels"
	for range maxRetries {
		r, err := s.read(ctx, op, clientv3.OpGet(s.k.volume(volume)))
		if err != nil {
			return torus.VolumeInfo{}, err
		}
		if len(r[0]) == 0 {
			return torus.VolumeInfo{}, errNoVolume(op, volume)
		}
		v, err := s.readVolume(r[0][0], op)
		if err != nil {
			return torus.VolumeInfo{}, err
		}
		if v.Labels, err = rules.Labels(volume, v.Labels, set, remove); err != nil {
			return torus.VolumeInfo{}, err
		}
		resp, err := s.txn(ctx, op, []clientv3.Cmp{modRev(s.k.volume(volume), r[0][0].ModRevision)},
			[]clientv3.Op{clientv3.OpPut(s.k.volume(volume), encode(v))}, nil)
		if err != nil {
			return torus.VolumeInfo{}, err
		}
		if resp.Succeeded {
			return v, nil
		}
		s.log.Debug("set volume labels: record changed, retrying", "volume", volume)
	}
	return torus.VolumeInfo{}, errContended(op)
}

// DeleteVolume implements torus.Metadata. Transaction: volume exists, lock
// absent → delete record, epoch, head, snapshots, requests, results, and
// (nested) the default export if it names the volume.
func (s *Store) DeleteVolume(ctx context.Context, name string) error {
	const op = "delete volume"
	pfx := clientv3.WithPrefix()
	resp, err := s.txn(ctx, op,
		[]clientv3.Cmp{exists(s.k.volume(name)), absent(s.k.lock(name))},
		[]clientv3.Op{
			clientv3.OpDelete(s.k.volume(name)),
			clientv3.OpDelete(s.k.epoch(name)),
			clientv3.OpDelete(s.k.head(name)),
			clientv3.OpDelete(s.k.status(name)),
			clientv3.OpDelete(s.k.attach(name)),
			clientv3.OpDelete(s.k.snapshot(name, ""), pfx),
			clientv3.OpDelete(s.k.snapReq(name, ""), pfx),
			clientv3.OpDelete(s.k.snapRes(name, ""), pfx),
			clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.Value(s.k.defaultExport()), "=", name)},
				[]clientv3.Op{clientv3.OpDelete(s.k.defaultExport())}, nil),
		},
		[]clientv3.Op{clientv3.OpGet(s.k.volume(name), clientv3.WithCountOnly()), clientv3.OpGet(s.k.lock(name))})
	if err != nil {
		return err
	}
	if resp.Succeeded {
		return nil
	}
	r := ranges(resp)
	if resp.Responses[0].GetResponseRange().Count == 0 {
		return errNoVolume(op, name)
	}
	if len(r[1]) > 0 {
		var w torus.WriterInfo
		if err := decode(op, r[1][0], &w); err != nil {
			return err
		}
		return fmt.Errorf("metadata/etcd: delete: %w", &torus.LockedError{Volume: name, Holder: w.Owner, Epoch: w.Epoch, InUse: true})
	}
	return fmt.Errorf("metadata/etcd: delete volume %q: %w: changed concurrently", name, torus.ErrConflict)
}

// Lock implements torus.Metadata. Transaction: volume record is the one
// read, epoch unchanged since read, lock absent → put the writer record
// under the session's lease and epoch+1.
func (s *Store) Lock(ctx context.Context, ses torus.Session, volume string, owner torus.WriterInfo) (uint64, error) {
	const op = "lock"
	if owner.Owner == "" {
		return 0, fmt.Errorf("metadata/etcd: lock %q: %w: empty owner", volume, torus.ErrInvalid)
	}
	es, err := s.session(ses)
	if err != nil {
		return 0, err
	}
	for range maxRetries {
		r, err := s.read(ctx, op, clientv3.OpGet(s.k.volume(volume)), clientv3.OpGet(s.k.epoch(volume)), clientv3.OpGet(s.k.lock(volume)))
		if err != nil {
			return 0, err
		}
		if len(r[0]) == 0 || len(r[1]) == 0 {
			return 0, errNoVolume(op, volume)
		}
		if len(r[2]) > 0 {
			var w torus.WriterInfo
			if err := decode(op, r[2][0], &w); err != nil {
				return 0, err
			}
			return 0, fmt.Errorf("metadata/etcd: lock: %w", &torus.LockedError{Volume: volume, Holder: w.Owner, Epoch: w.Epoch})
		}
		e, err := parseUint(op, r[1][0])
		if err != nil {
			return 0, err
		}
		e++
		w := torus.WriterInfo{Owner: owner.Owner, Identity: owner.Identity, Epoch: e, Since: time.Now().UTC()}
		resp, err := s.txn(ctx, op,
			[]clientv3.Cmp{
				clientv3.Compare(clientv3.CreateRevision(s.k.volume(volume)), "=", r[0][0].CreateRevision),
				modRev(s.k.epoch(volume), r[1][0].ModRevision),
				absent(s.k.lock(volume)),
			},
			[]clientv3.Op{
				clientv3.OpPut(s.k.lock(volume), encode(w), clientv3.WithLease(es.id)),
				clientv3.OpPut(s.k.epoch(volume), strconv.FormatUint(e, 10)),
			}, nil)
		if err != nil {
			return 0, err
		}
		if resp.Succeeded {
			return e, nil
		}
		s.log.Debug("lock: raced, retrying", "volume", volume)
	}
	return 0, errContended(op)
}

// Unlock implements torus.Metadata. Transaction: epoch = epoch and lock
// present → delete lock.
func (s *Store) Unlock(ctx context.Context, volume string, epoch uint64) error {
	_, err := s.txn(ctx, "unlock", s.fence(volume, epoch), []clientv3.Op{clientv3.OpDelete(s.k.lock(volume))}, nil)
	return err
}

// fence is the compare of every fenced write: the volume's epoch is still
// epoch and its lock key exists (a lock exists only for the latest epoch,
// since every Lock increments the epoch).
func (s *Store) fence(volume string, epoch uint64) []clientv3.Cmp {
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.Value(s.k.epoch(volume)), "=", strconv.FormatUint(epoch, 10)),
		exists(s.k.lock(volume)),
	}
}

// ForceUnlock implements torus.Metadata. Transaction: volume exists →
// delete lock.
func (s *Store) ForceUnlock(ctx context.Context, volume string) error {
	resp, err := s.txn(ctx, "force unlock", []clientv3.Cmp{exists(s.k.volume(volume))},
		[]clientv3.Op{clientv3.OpDelete(s.k.lock(volume))}, nil)
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return errNoVolume("force unlock", volume)
	}
	return nil
}

// Writer implements torus.Metadata.
func (s *Store) Writer(ctx context.Context, volume string) (torus.WriterInfo, bool, error) {
	const op = "writer"
	r, err := s.read(ctx, op, clientv3.OpGet(s.k.volume(volume), clientv3.WithKeysOnly()), clientv3.OpGet(s.k.lock(volume)))
	if err != nil {
		return torus.WriterInfo{}, false, err
	}
	if len(r[0]) == 0 {
		return torus.WriterInfo{}, false, errNoVolume(op, volume)
	}
	if len(r[1]) == 0 {
		return torus.WriterInfo{}, false, nil
	}
	var w torus.WriterInfo
	return w, true, decode(op, r[1][0], &w)
}

// Epochs implements torus.Metadata.
func (s *Store) Epochs(ctx context.Context) (map[uint64]uint64, error) {
	const op = "epochs"
	r, err := s.read(ctx, op, clientv3.OpGet(s.k.volume(""), clientv3.WithPrefix()), clientv3.OpGet(s.k.epoch(""), clientv3.WithPrefix()))
	if err != nil {
		return nil, err
	}
	byName := make(map[string]uint64, len(r[1]))
	for _, kv := range r[1] {
		e, err := parseUint(op, kv)
		if err != nil {
			return nil, err
		}
		byName[strings.TrimPrefix(string(kv.Key), s.k.epoch(""))] = e
	}
	out := make(map[uint64]uint64, len(r[0]))
	for _, kv := range r[0] {
		v, err := s.readVolume(kv, op)
		if err != nil {
			return nil, err
		}
		out[v.ID] = byName[v.Name]
	}
	return out, nil
}

// Head implements torus.Metadata.
func (s *Store) Head(ctx context.Context, volume string) (torus.Head, error) {
	r, err := s.read(ctx, "head", clientv3.OpGet(s.k.head(volume)))
	if err != nil {
		return torus.Head{}, err
	}
	if len(r[0]) == 0 {
		return torus.Head{}, errNoVolume("head", volume)
	}
	var h torus.Head
	return h, decode("head", r[0][0], &h)
}

// CommitHead implements torus.Metadata. One transaction: epoch = epoch and
// lock present → put head; else read the volume's existence to tell
// ErrNotExist from ErrFenced.
func (s *Store) CommitHead(ctx context.Context, volume string, epoch uint64, h torus.Head) error {
	const op = "commit head"
	resp, err := s.txn(ctx, op, s.fence(volume, epoch),
		[]clientv3.Op{clientv3.OpPut(s.k.head(volume), encode(h))},
		[]clientv3.Op{clientv3.OpGet(s.k.volume(volume), clientv3.WithCountOnly())})
	if err != nil {
		return err
	}
	if resp.Succeeded {
		return nil
	}
	if resp.Responses[0].GetResponseRange().Count == 0 {
		return errNoVolume(op, volume)
	}
	return fmt.Errorf("metadata/etcd: commit head %q at epoch %d: %w", volume, epoch, torus.ErrFenced)
}

// RestoreSnapshot implements torus.Metadata. Reads the head and the
// snapshot; transaction: the fence compares (as CommitHead), snapshot and
// head unchanged since read → put the restored head.
func (s *Store) RestoreSnapshot(ctx context.Context, epoch uint64, volume, name string) (torus.Head, error) {
	const op = "restore snapshot"
	for range maxRetries {
		r, err := s.read(ctx, op, clientv3.OpGet(s.k.head(volume)), clientv3.OpGet(s.k.snapshot(volume, name)))
		if err != nil {
			return torus.Head{}, err
		}
		if len(r[0]) == 0 {
			return torus.Head{}, errNoVolume(op, volume)
		}
		var cur torus.Head
		if err := decode(op, r[0][0], &cur); err != nil {
			return torus.Head{}, err
		}
		fenced := func() error {
			ok, err := s.txn(ctx, op, s.fence(volume, epoch), nil, nil)
			if err != nil {
				return err
			}
			if !ok.Succeeded {
				return fmt.Errorf("metadata/etcd: restore snapshot %s@%s at epoch %d: %w", volume, name, epoch, torus.ErrFenced)
			}
			return nil
		}
		if len(r[1]) == 0 {
			if err := fenced(); err != nil {
				return torus.Head{}, err
			}
			return torus.Head{}, fmt.Errorf("metadata/etcd: restore snapshot %s@%s: %w", volume, name, torus.ErrNotExist)
		}
		var snap torus.Snapshot
		if err := decode(op, r[1][0], &snap); err != nil {
			return torus.Head{}, err
		}
		h := rules.Restore(cur, snap, epoch)
		cmps := append(s.fence(volume, epoch),
			modRev(s.k.snapshot(volume, name), r[1][0].ModRevision),
			modRev(s.k.head(volume), r[0][0].ModRevision))
		resp, err := s.txn(ctx, op, cmps, []clientv3.Op{clientv3.OpPut(s.k.head(volume), encode(h))}, nil)
		if err != nil {
			return torus.Head{}, err
		}
		if resp.Succeeded {
			return h, nil
		}
		if err := fenced(); err != nil {
			return torus.Head{}, err
		}
	}
	return torus.Head{}, errContended(op)
}

// CreateSnapshot implements torus.Metadata. Transaction: volume exists,
// snapshot absent, and when epoch != 0 the fence compares → put snapshot.
func (s *Store) CreateSnapshot(ctx context.Context, epoch uint64, snap torus.Snapshot) error {
	const op = "create snapshot"
	if err := rules.Snapshot(snap); err != nil {
		return err
	}
	if snap.Created.IsZero() {
		snap.Created = time.Now().UTC()
	}
	vol, name := snap.Volume, snap.Name
	cmps := []clientv3.Cmp{exists(s.k.volume(vol)), absent(s.k.snapshot(vol, name))}
	if epoch != 0 {
		cmps = append(cmps, s.fence(vol, epoch)...)
	}
	resp, err := s.txn(ctx, op, cmps,
		[]clientv3.Op{clientv3.OpPut(s.k.snapshot(vol, name), encode(snap))},
		[]clientv3.Op{
			clientv3.OpGet(s.k.volume(vol), clientv3.WithCountOnly()),
			clientv3.OpGet(s.k.snapshot(vol, name), clientv3.WithCountOnly()),
		})
	if err != nil {
		return err
	}
	if resp.Succeeded {
		return nil
	}
	switch {
	case resp.Responses[0].GetResponseRange().Count == 0:
		return errNoVolume(op, vol)
	case resp.Responses[1].GetResponseRange().Count == 0:
		return fmt.Errorf("metadata/etcd: create snapshot %s@%s at epoch %d: %w", vol, name, epoch, torus.ErrFenced)
	case epoch != 0:
		// Both the fence and existence may have failed; report the
		// fence first, as Memory does.
		ok, err := s.txn(ctx, op, s.fence(vol, epoch), nil, nil)
		if err != nil {
			return err
		}
		if !ok.Succeeded {
			return fmt.Errorf("metadata/etcd: create snapshot %s@%s at epoch %d: %w", vol, name, epoch, torus.ErrFenced)
		}
	}
	return fmt.Errorf("metadata/etcd: create snapshot %s@%s: %w", vol, name, torus.ErrExist)
}

// Snapshots implements torus.Metadata.
func (s *Store) Snapshots(ctx context.Context, volume string) ([]torus.Snapshot, error) {
	const op = "snapshots"
	r, err := s.read(ctx, op, clientv3.OpGet(s.k.volume(volume), clientv3.WithKeysOnly()),
		clientv3.OpGet(s.k.snapshot(volume, ""), clientv3.WithPrefix()))
	if err != nil {
		return nil, err
	}
	if len(r[0]) == 0 {
		return nil, errNoVolume(op, volume)
	}
	out := make([]torus.Snapshot, 0, len(r[1]))
	for _, kv := range r[1] {
		var sn torus.Snapshot
		if err := decode(op, kv, &sn); err != nil {
			return nil, err
		}
		out = append(out, sn)
	}
	return out, nil
}

// Snapshot implements torus.Metadata.
func (s *Store) Snapshot(ctx context.Context, volume, name string) (torus.Snapshot, error) {
	const op = "snapshot"
	r, err := s.read(ctx, op, clientv3.OpGet(s.k.volume(volume), clientv3.WithKeysOnly()), clientv3.OpGet(s.k.snapshot(volume, name)))
	if err != nil {
		return torus.Snapshot{}, err
	}
	if len(r[0]) == 0 {
		return torus.Snapshot{}, errNoVolume(op, volume)
	}
	if len(r[1]) == 0 {
		return torus.Snapshot{}, fmt.Errorf("metadata/etcd: snapshot %s@%s: %w", volume, name, torus.ErrNotExist)
	}
	var sn torus.Snapshot
	return sn, decode(op, r[1][0], &sn)
}

// DeleteSnapshot implements torus.Metadata. Transaction: snapshot exists →
// delete it.
func (s *Store) DeleteSnapshot(ctx context.Context, volume, name string) error {
	if name == "" {
		return fmt.Errorf("metadata/etcd: delete snapshot of %q: %w: empty name", volume, torus.ErrInvalid)
	}
	resp, err := s.txn(ctx, "delete snapshot", []clientv3.Cmp{exists(s.k.snapshot(volume, name))},
		[]clientv3.Op{clientv3.OpDelete(s.k.snapshot(volume, name))}, nil)
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return fmt.Errorf("metadata/etcd: delete snapshot %s@%s: %w", volume, name, torus.ErrNotExist)
	}
	return nil
}

// RequestSnapshot implements torus.Metadata. Transaction: volume exists,
// neither a snapshot nor a pending request of that name → put request,
// delete an old result.
func (s *Store) RequestSnapshot(ctx context.Context, volume, name string) error {
	const op = "request snapshot"
	if err := rules.SnapshotName(volume, name); err != nil {
		return err
	}
	resp, err := s.txn(ctx, op,
		[]clientv3.Cmp{exists(s.k.volume(volume)), absent(s.k.snapshot(volume, name)), absent(s.k.snapReq(volume, name))},
		[]clientv3.Op{clientv3.OpPut(s.k.snapReq(volume, name), ""), clientv3.OpDelete(s.k.snapRes(volume, name))},
		[]clientv3.Op{clientv3.OpGet(s.k.volume(volume), clientv3.WithCountOnly())})
	if err != nil {
		return err
	}
	if resp.Succeeded {
		return nil
	}
	if resp.Responses[0].GetResponseRange().Count == 0 {
		return errNoVolume(op, volume)
	}
	return fmt.Errorf("metadata/etcd: request snapshot %s@%s: %w", volume, name, torus.ErrExist)
}

// SnapshotRequests implements torus.Metadata.
func (s *Store) SnapshotRequests(ctx context.Context, volume string) ([]string, error) {
	const op = "snapshot requests"
	r, err := s.read(ctx, op, clientv3.OpGet(s.k.volume(volume), clientv3.WithKeysOnly()),
		clientv3.OpGet(s.k.snapReq(volume, ""), clientv3.WithPrefix(), clientv3.WithKeysOnly()))
	if err != nil {
		return nil, err
	}
	if len(r[0]) == 0 {
		return nil, errNoVolume(op, volume)
	}
	out := make([]string, 0, len(r[1]))
	for _, kv := range r[1] {
		out = append(out, strings.TrimPrefix(string(kv.Key), s.k.snapReq(volume, "")))
	}
	return out, nil
}

// DoneSnapshotRequest implements torus.Metadata. Transaction: request
// exists → delete it, put the result.
func (s *Store) DoneSnapshotRequest(ctx context.Context, volume, name, failure string) error {
	const op = "done snapshot request"
	if name == "" {
		return fmt.Errorf("metadata/etcd: %s of %q: %w: empty name", op, volume, torus.ErrInvalid)
	}
	resp, err := s.txn(ctx, op, []clientv3.Cmp{exists(s.k.snapReq(volume, name))},
		[]clientv3.Op{clientv3.OpDelete(s.k.snapReq(volume, name)), clientv3.OpPut(s.k.snapRes(volume, name), failure)}, nil)
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return fmt.Errorf("metadata/etcd: %s %s@%s: %w", op, volume, name, torus.ErrNotExist)
	}
	return nil
}

// SnapshotRequestResult implements torus.Metadata.
func (s *Store) SnapshotRequestResult(ctx context.Context, volume, name string) (bool, string, error) {
	const op = "snapshot request result"
	if name == "" {
		return false, "", fmt.Errorf("metadata/etcd: %s of %q: %w: empty name", op, volume, torus.ErrInvalid)
	}
	r, err := s.read(ctx, op, clientv3.OpGet(s.k.volume(volume), clientv3.WithKeysOnly()),
		clientv3.OpGet(s.k.snapRes(volume, name)), clientv3.OpGet(s.k.snapReq(volume, name), clientv3.WithKeysOnly()))
	if err != nil {
		return false, "", err
	}
	switch {
	case len(r[0]) == 0:
		return false, "", errNoVolume(op, volume)
	case len(r[1]) > 0:
		return true, string(r[1][0].Value), nil
	case len(r[2]) > 0:
		return false, "", nil
	}
	return false, "", fmt.Errorf("metadata/etcd: snapshot request %s@%s: %w", volume, name, torus.ErrNotExist)
}

// DefaultExport implements torus.Metadata.
func (s *Store) DefaultExport(ctx context.Context) (string, error) {
	r, err := s.read(ctx, "default export", clientv3.OpGet(s.k.defaultExport()))
	if err != nil || len(r[0]) == 0 {
		return "", err
	}
	return string(r[0][0].Value), nil
}

// SetDefaultExport implements torus.Metadata. Transaction: volume exists →
// put; "" deletes the key.
func (s *Store) SetDefaultExport(ctx context.Context, volume string) error {
	const op = "set default export"
	if volume == "" {
		_, err := s.txn(ctx, op, nil, []clientv3.Op{clientv3.OpDelete(s.k.defaultExport())}, nil)
		return err
	}
	resp, err := s.txn(ctx, op, []clientv3.Cmp{exists(s.k.volume(volume))},
		[]clientv3.Op{clientv3.OpPut(s.k.defaultExport(), volume)}, nil)
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return errNoVolume(op, volume)
	}
	return nil
}

// statusBatch bounds the puts or deletes of one PutVolumeStatuses
// transaction, below etcd's default limit of 128 operations per txn.
const statusBatch = 100

// PutVolumeStatuses implements torus.Metadata. It reads volumes/ and the
// keys of status/, then writes status/<name> for every status matching an
// existing volume and deletes status/<name> of volumes that no longer
// exist: one transaction whose compares pin the create revision of each
// written volume's record (so a status never outlives a concurrent
// DeleteVolume), split every statusBatch volumes. A failed compare retries.
func (s *Store) PutVolumeStatuses(ctx context.Context, st []torus.VolumeStatus) error {
	const op = "put volume statuses"
	if err := rules.VolumeStatuses(st); err != nil {
		return err
	}
	for range maxRetries {
		r, err := s.read(ctx, op,
			clientv3.OpGet(s.k.volume(""), clientv3.WithPrefix()),
			clientv3.OpGet(s.k.status(""), clientv3.WithPrefix(), clientv3.WithKeysOnly()))
		if err != nil {
			return err
		}
		vols := make(map[string]*mvccpb.KeyValue, len(r[0]))
		infos := make(map[string]torus.VolumeInfo, len(r[0]))
		for _, kv := range r[0] {
			v, err := s.readVolume(kv, op)
			if err != nil {
				return err
			}
			vols[v.Name], infos[v.Name] = kv, v
		}
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		for _, kv := range r[1] {
			name := strings.TrimPrefix(string(kv.Key), s.k.status(""))
			if _, ok := vols[name]; !ok {
				ops = append(ops, clientv3.OpDelete(string(kv.Key)))
			}
		}
		for _, x := range st {
			v, ok := infos[x.Volume]
			if !ok || !rules.StatusMatches(x, v) {
				continue
			}
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(s.k.volume(v.Name)), "=", vols[v.Name].CreateRevision))
			ops = append(ops, clientv3.OpPut(s.k.status(v.Name), encode(x)))
		}
		ok := true
		for len(ops) > 0 && ok {
			n := min(len(ops), statusBatch)
			// Compares belong to the puts, which follow the deletes.
			nc := max(0, n-(len(ops)-len(cmps)))
			resp, err := s.txn(ctx, op, cmps[:nc], ops[:n], nil)
			if err != nil {
				return err
			}
			ok = resp.Succeeded
			ops, cmps = ops[n:], cmps[nc:]
		}
		if ok {
			return nil
		}
		s.log.Debug("put volume statuses: volumes changed, retrying")
	}
	return errContended(op)
}

// VolumeStatuses implements torus.Metadata. It reads volumes/ and status/
// in one transaction and returns the statuses of existing volumes.
func (s *Store) VolumeStatuses(ctx context.Context) (map[string]torus.VolumeStatus, error) {
	const op = "volume statuses"
	r, err := s.read(ctx, op,
		clientv3.OpGet(s.k.volume(""), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		clientv3.OpGet(s.k.status(""), clientv3.WithPrefix()))
	if err != nil {
		return nil, err
	}
	vols := suffixSet(r[0], s.k.volume(""))
	out := make(map[string]torus.VolumeStatus, len(r[1]))
	for _, kv := range r[1] {
		name := strings.TrimPrefix(string(kv.Key), s.k.status(""))
		if !vols[name] {
			continue
		}
		var st torus.VolumeStatus
		if err := decode(op, kv, &st); err != nil {
			return nil, err
		}
		out[name] = st
	}
	return out, nil
}

// Close stops watches and session keepalives (their leases then expire
// after their TTL; Close does not revoke them) and closes the client.
// Idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("metadata/etcd: close: %w", err)
	}
	return nil
}
