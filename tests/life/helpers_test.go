package life

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testutil"
	metaetcd "github.com/torus-storage/torus/metadata/etcd"
)

// Timing knobs the tests give the daemons, and the slack they allow on
// top of them (process start, torusctl round trips, a loaded 2-core CI box).
const (
	heartbeatTTL   = 2 * time.Second
	downGrace      = 3 * time.Second
	writerLeaseTTL = 10 * time.Second // volume.DefaultLockTTL, docs/operations.md
	detectSlack    = 1500 * time.Millisecond
	ioTimeout      = 45 * time.Second // one NBD request; above volume's 30 s peer round
)

func startCluster(t *testing.T, o proccluster.Options) *proccluster.Cluster {
	t.Helper()
	testutil.SkipShort(t, "process-level cluster test; skipped with -short")
	testutil.RequireBinary(t, "etcd")
	if o.HeartbeatTTL == "" {
		o.HeartbeatTTL = heartbeatTTL.String()
	}
	if o.DownGrace == "" {
		o.DownGrace = downGrace.String()
	}
	if o.SegmentSize == "" {
		o.SegmentSize = "1MiB"
	}
	start := time.Now()
	c := proccluster.New(t, o)
	t.Logf("cluster of %d daemons (replication %d) up in %v; etcd %s", len(c.Daemons), o.Replication, time.Since(start).Round(time.Millisecond), c.EtcdURL)
	return c
}

// metaClient is a metadata client of the test itself, to read heads and
// peers directly (ground truth that torusctl output is checked against).
func metaClient(t *testing.T, c *proccluster.Cluster) *metaetcd.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	md, err := metaetcd.New(ctx, metaetcd.Config{Endpoints: []string{c.EtcdURL}, RequestTimeout: 5 * time.Second, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("metadata client: %v", err)
	}
	t.Cleanup(func() { md.Close() })
	return md
}

// eventually polls cond every interval until it reports ok or d passes;
// then the test fails with what and cond's last description of the state.
// It returns how long it took.
func eventually(t *testing.T, d, interval time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(d)
	for {
		ok, state := cond()
		if ok {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %v; last state: %s", what, d, state)
		}
		time.Sleep(interval)
	}
}

// peerList is `torusctl peer list -o json`.
func peerList(c *proccluster.Cluster) ([]torus.PeerInfo, error) {
	var ps []torus.PeerInfo
	err := c.CtlJSON(&ps, "peer", "list")
	return ps, err
}

func peerStates(ps []torus.PeerInfo) string {
	var s []string
	for _, p := range ps {
		s = append(s, fmt.Sprintf("%s@%s=%s(used %d, pending %d)", short(p.ID), p.Address, p.State, p.Used, p.Pending))
	}
	return strings.Join(s, " ")
}

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// peerByAddr finds a daemon's record by its peer address.
func peerByAddr(ps []torus.PeerInfo, addr string) (torus.PeerInfo, bool) {
	for _, p := range ps {
		if p.Address == addr {
			return p, true
		}
	}
	return torus.PeerInfo{}, false
}

// volumeRow is one element of `torusctl volume list -o json`.
type volumeRow struct {
	Name        string  `json:"name"`
	ID          uint64  `json:"id"`
	Size        int64   `json:"size"`
	MinReplicas int     `json:"min_replicas"`
	Writer      string  `json:"writer"`
	Epoch       uint64  `json:"epoch"`
	Used        *int64  `json:"used"`
	Health      *string `json:"health"`
}

func volumeInfo(c *proccluster.Cluster, name string) (volumeRow, error) {
	var rows []volumeRow
	if err := c.CtlJSON(&rows, "volume", "list"); err != nil {
		return volumeRow{}, err
	}
	for _, r := range rows {
		if r.Name == name {
			return r, nil
		}
	}
	return volumeRow{}, fmt.Errorf("volume %s not in volume list", name)
}

func healthOf(r volumeRow) string {
	if r.Health == nil {
		return "<null: volume list does not report health>"
	}
	return *r.Health
}

// createVolume creates a volume of blocks*4KiB and returns its name.
func createVolume(t *testing.T, c *proccluster.Cluster, name string, size string, minReplicas int) {
	t.Helper()
	args := []string{"volume", "create", name, size}
	if minReplicas > 0 {
		args = append(args, "--min-replicas", strconv.Itoa(minReplicas))
	}
	c.Ctl(args...)
}

// attach connects an NBD client to addr (dialed with dial, nil: plain TCP)
// and checks the export size.
func attach(t *testing.T, dial func(string) (net.Conn, error), addr, export string, size int64) *nbdClient {
	t.Helper()
	nc, err := tryAttach(dial, addr, export)
	if err != nil {
		t.Fatalf("attaching %s at %s: %v", export, addr, err)
	}
	if nc.size != size {
		t.Fatalf("export %s has size %d, want %d", export, nc.size, size)
	}
	t.Cleanup(func() { nc.Abort() })
	return nc
}

func tryAttach(dial func(string) (net.Conn, error), addr, export string) (*nbdClient, error) {
	if dial == nil {
		dial = func(a string) (net.Conn, error) { return net.DialTimeout("tcp", a, 5*time.Second) }
	}
	return dialNBD(context.Background(), func() (net.Conn, error) { return dial(addr) }, export, ioTimeout)
}

// verify reads blocks [0, m.blocks) through nc and compares them with the
// model. It returns the ids found (for settle) or an error listing every
// block that differs.
func verify(nc *nbdClient, m *model) ([]uint64, error) {
	const chunk = 256 // blocks per read: 1 MiB
	all := make([]uint64, 0, m.blocks)
	var bad []mismatch
	buf := make([]byte, chunk*blockSize)
	for b := int64(0); b < m.blocks; b += chunk {
		n := min(chunk, m.blocks-b)
		p := buf[:n*blockSize]
		if err := nc.ReadAt(p, b*blockSize); err != nil {
			return nil, fmt.Errorf("verify: reading blocks [%d,%d): %w", b, b+n, err)
		}
		ids, mm := m.check(b, p)
		all = append(all, ids...)
		bad = append(bad, mm...)
	}
	if len(bad) > 0 {
		d, u, f, x := m.stats()
		return all, fmt.Errorf("verify: %d of %d blocks differ from the model (writes: %d flushed, %d unflushed, %d failed, %d fenced):\n%s",
			len(bad), m.blocks, d, u, f, x, formatMismatches(bad, 20))
	}
	return all, nil
}

func mustVerify(t *testing.T, nc *nbdClient, m *model, when string) []uint64 {
	t.Helper()
	start := time.Now()
	ids, err := verify(nc, m)
	if err != nil {
		t.Fatalf("%s: %v", when, err)
	}
	t.Logf("%s: %d blocks verified in %v", when, m.blocks, time.Since(start).Round(time.Millisecond))
	return ids
}

// workload drives random writes and flushes through one NBD client.
type workload struct {
	m     *model
	rng   *rand.Rand
	note  string
	flush int // flush after every this many writes (on average)
	maxN  int64
	// lo, hi bound the blocks written (hi 0: the whole volume).
	lo, hi int64

	mu                   sync.Mutex
	writes, flushes      int
	writeErrs, flushErrs int
	firstErr             error
	bytes                int64
	errLog               []string
}

func newWorkload(m *model, seed uint64, note string) *workload {
	return &workload{m: m, rng: rand.New(rand.NewPCG(seed, seed^0x5eed)), note: note, flush: 8, maxN: 16}
}

// step issues one random write, and a flush now and then. It returns the
// first error of the step.
func (w *workload) step(nc *nbdClient) error {
	lo, hi := w.lo, w.hi
	if hi == 0 {
		hi = w.m.blocks
	}
	n := 1 + w.rng.Int64N(min(w.maxN, hi-lo))
	first := lo + w.rng.Int64N(hi-lo-n+1)
	fua := w.rng.IntN(20) == 0
	id, p := w.m.newWrite(first, n, w.note+" at "+time.Now().Format("15:04:05.000"), false)
	err := nc.WriteAt(p, first*blockSize, fua)
	w.m.done(id, err)
	if err == nil && fua {
		w.m.mu.Lock()
		w.m.makeDurable(id)
		w.m.mu.Unlock()
	}
	w.mu.Lock()
	w.writes++
	if err != nil {
		w.writeErrs++
		w.logErr(err)
	} else {
		w.bytes += int64(len(p))
	}
	w.mu.Unlock()
	if err != nil {
		return err
	}
	if w.rng.IntN(w.flush) == 0 {
		return w.doFlush(nc)
	}
	return nil
}

func (w *workload) doFlush(nc *nbdClient) error {
	err := nc.Flush()
	if err == nil {
		w.m.flushed()
	}
	w.mu.Lock()
	w.flushes++
	if err != nil {
		w.flushErrs++
		w.logErr(err)
	}
	w.mu.Unlock()
	return err
}

func (w *workload) logErr(err error) {
	if w.firstErr == nil {
		w.firstErr = err
	}
	if len(w.errLog) < 10 {
		w.errLog = append(w.errLog, time.Now().Format("15:04:05.000")+" "+err.Error())
	}
}

func (w *workload) summary() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return fmt.Sprintf("%d writes (%d failed, %.1f MiB ok), %d flushes (%d failed)", w.writes, w.writeErrs, float64(w.bytes)/(1<<20), w.flushes, w.flushErrs)
}

func (w *workload) errors() (int, int, []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.writeErrs, w.flushErrs, append([]string(nil), w.errLog...)
}

// background runs the workload on nc until stop is called; stop waits for
// the goroutine and returns. A broken connection ends the loop early.
func (w *workload) background(nc *nbdClient) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if err := w.step(nc); err != nil && nc.broken != nil {
				return
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
}

// seed returns TORUS_SEED or a fresh seed, logging it for replay.
func seed(t *testing.T) int64 {
	t.Helper()
	if s := os.Getenv("TORUS_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("TORUS_SEED=%q: %v", s, err)
		}
		t.Logf("seed %d (from TORUS_SEED)", v)
		return v
	}
	v := time.Now().UnixNano() & (1<<62 - 1)
	t.Logf("seed %d (replay with TORUS_SEED=%d)", v, v)
	return v
}

var errTimeout = errors.New("timed out")

// metric fetches http://addr/metrics and sums the samples of name (all
// label sets).
func metric(addr, name string) (float64, error) {
	cl := http.Client{Timeout: 5 * time.Second}
	resp, err := cl.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	var sum float64
	found := false
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name) || strings.HasPrefix(line, "#") {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(rest[strings.LastIndex(rest, "}")+1:])
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return 0, fmt.Errorf("metric line %q: %v", line, err)
		}
		sum += v
		found = true
	}
	if !found {
		return 0, fmt.Errorf("metric %s not exported", name)
	}
	return sum, nil
}

// poll is eventually without failing: it reports how long cond took and
// whether it held within d, with cond's last state.
func poll(d, interval time.Duration, cond func() (bool, string)) (time.Duration, bool, string) {
	start := time.Now()
	for {
		ok, state := cond()
		if ok {
			return time.Since(start), true, state
		}
		if time.Since(start) > d {
			return time.Since(start), false, state
		}
		time.Sleep(interval)
	}
}

// ready reports whether a daemon's /readyz answers 200.
func ready(httpAddr string) (bool, string) {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get("http://" + httpAddr + "/readyz")
	if err != nil {
		return false, err.Error()
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode == 200, fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(b)))
}

// stablyReady reports whether /readyz answers 200 five times in a row over
// a second and a half (a liveness lease that is re-created and lost on
// every heartbeat would flap).
func stablyReady(httpAddr string) (bool, string) {
	for i := 0; i < 5; i++ {
		if i > 0 {
			time.Sleep(300 * time.Millisecond)
		}
		if ok, state := ready(httpAddr); !ok {
			return false, fmt.Sprintf("check %d of 5: %s", i+1, state)
		}
	}
	return true, ""
}
