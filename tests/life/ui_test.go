package life

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/proccluster"
	"github.com/torus-storage/torus/internal/testutil"
)

// dashboardStep is one answer of tests/ui/dashboard.mjs.
type dashboardStep struct {
	Name          string          `json:"name"`
	OK            bool            `json:"ok"`
	Ms            int64           `json:"ms"`
	Error         string          `json:"error"`
	State         json.RawMessage `json:"state"`
	ConsoleErrors []string        `json:"console_errors"`
	Screenshot    string          `json:"screenshot"`
}

// browser is a running dashboard.mjs: Wait sends it one condition.
type browser struct {
	in  io.WriteCloser
	out *bufio.Scanner
}

// Wait has the page wait up to d for the JS predicate expr, saves a
// screenshot named name, and returns what the page showed.
func (b *browser) Wait(t *testing.T, name, expr string, d time.Duration) dashboardStep {
	t.Helper()
	req, _ := json.Marshal(map[string]any{"name": name, "expr": expr, "timeout_ms": d.Milliseconds()})
	if _, err := fmt.Fprintf(b.in, "%s\n", req); err != nil {
		t.Fatalf("dashboard %s: %v", name, err)
	}
	if !b.out.Scan() {
		t.Fatalf("dashboard %s: the node script ended: %v", name, b.out.Err())
	}
	var st dashboardStep
	if err := json.Unmarshal(b.out.Bytes(), &st); err != nil {
		t.Fatalf("dashboard %s: %v in %q", name, err, b.out.Text())
	}
	t.Logf("dashboard %s: ok=%v after %d ms; screenshot %s; page shows %s", name, st.OK, st.Ms, st.Screenshot, st.State)
	if len(st.ConsoleErrors) > 0 {
		t.Errorf("dashboard %s: page errors: %q", name, st.ConsoleErrors)
	}
	return st
}

// startBrowser runs tests/ui/dashboard.mjs (playwright-core driving
// Debian's chromium) on url, screenshots going to dir.
func startBrowser(t *testing.T, url, dir string) *browser {
	t.Helper()
	node := testutil.RequireBinary(t, "node")
	testutil.RequireBinary(t, "chromium")
	script, err := filepath.Abs(filepath.Join("..", "ui", "dashboard.mjs"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = os.Stat(filepath.Join(filepath.Dir(script), "node_modules", "playwright-core"))
	testutil.Require(t, "tests/ui/node_modules/playwright-core (make deps runs npm ci there)", err)
	cmd := exec.Command(node, script, url, dir)
	cmd.Dir = filepath.Dir(script)
	cmd.Stderr = &prefixWriter{t: t}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", script, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		in.Close()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	return &browser{in: in, out: sc}
}

// prefixWriter logs the node script's stderr.
type prefixWriter struct{ t *testing.T }

func (w *prefixWriter) Write(p []byte) (int, error) {
	w.t.Logf("dashboard.mjs: %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// artifactDir is where a test keeps its screenshots: $TORUS_ARTIFACTS/NAME,
// or tests/life/artifacts/NAME (ignored by git), emptied first.
func artifactDir(t *testing.T) string {
	t.Helper()
	root := os.Getenv("TORUS_ARTIFACTS")
	if root == "" {
		root = "artifacts"
	}
	dir, err := filepath.Abs(filepath.Join(root, t.Name()))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots go to %s", dir)
	return dir
}

// TestDashboard: the dashboard of a survivor, in headless chromium, shows
// a 3-daemon cluster with 3 peers up and the volume healthy; after a
// SIGKILL of the daemon holding most of the volume it shows that peer
// down and the volume degraded within 15 s, then healing progress, then
// the volume healthy again. Screenshots of each step are kept.
func TestDashboard(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2})
	md := metaClient(t, c)
	const vol, blocks = "dash", 8192 // 32 MiB
	createVolume(t, c, vol, "32MiB", 0)
	_, addr := c.StartNBD()
	nc := attach(t, nil, addr, vol, blocks*blockSize)
	m := newModel(seed(t), blocks)
	w := newWorkload(m, uint64(m.seed), "writer")
	for i := 0; i < 300; i++ {
		if err := w.step(nc); err != nil {
			t.Fatalf("workload: %v", err)
		}
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatalf("flush: %v", err)
	}
	t.Logf("wrote %s", w.summary())

	victim := pickVictim(t, c, md, vol)
	vd := c.Daemons[victim]
	survivor := c.Daemons[(victim+1)%len(c.Daemons)]
	ps, err := peerList(c)
	if err != nil {
		t.Fatal(err)
	}
	vp, ok := peerByAddr(ps, vd.PeerAddr)
	if !ok {
		t.Fatalf("victim %s not in peer list: %s", vd.PeerAddr, peerStates(ps))
	}

	b := startBrowser(t, "http://"+survivor.HTTPAddr+"/ui/", artifactDir(t))
	volHealth := fmt.Sprintf(`document.querySelector('#volumes tr[data-volume="%s"]')?.dataset.volumeHealth`, vol)
	if st := b.Wait(t, "1-healthy", `(() => { const p = document.getElementById('sum-peers').dataset;
		return p.peersUp === '3' && p.peersDown === '0' && document.querySelectorAll('#peers tbody tr[data-peer-state="up"]').length === 3 &&
			document.querySelectorAll('#ring [data-ring-member]').length === 3 && `+volHealth+` === 'healthy'; })()`, 30*time.Second); !st.OK {
		t.Fatalf("the page never showed 3 peers up and %s healthy: %s", vol, st.Error)
	}

	t.Logf("SIGKILL daemon %d (%s, %s); the page is served by %s", victim, vp.ID, vd.PeerAddr, survivor.HTTPAddr)
	vd.Kill(t)
	if st := b.Wait(t, "2-degraded", fmt.Sprintf(`document.querySelector('#peers tr[data-peer-id="%s"]')?.dataset.peerState === 'down' &&
		document.querySelector('#ring [data-ring-member="%s"]')?.dataset.peerState === 'down' &&
		document.getElementById('sum-peers').dataset.peersDown === '1' && %s === 'degraded'`, vp.ID, vp.ID, volHealth), 15*time.Second); !st.OK {
		t.Fatalf("15 s after the SIGKILL the page did not show %s down and %s degraded: %s", vp.ID, vol, st.Error)
	}
	if st := b.Wait(t, "3-healing", `document.getElementById('healing').dataset.healSeen === '1'`, 30*time.Second); !st.OK {
		t.Fatalf("the page never showed healing progress: %s", st.Error)
	}
	if st := b.Wait(t, "4-healed", `document.getElementById('healing').dataset.healing === 'idle' && `+volHealth+` === 'healthy'`, 90*time.Second); !st.OK {
		t.Fatalf("the page never showed %s healthy again after healing: %s", vol, st.Error)
	}
	// The recent events tell the story: the peer went down, the volume
	// degraded, healing ran, the volume is healthy again.
	if st := b.Wait(t, "5-events", `['peer-down', 'volume-degraded', 'heal-started', 'heal-finished', 'volume-healthy'].every(
		(k) => document.querySelector('#events li[data-event-kind="' + k + '"]'))`, 30*time.Second); !st.OK {
		t.Fatalf("the page's recent events lack peer-down, volume-degraded, heal-started, heal-finished or volume-healthy: %s", st.Error)
	}
}
