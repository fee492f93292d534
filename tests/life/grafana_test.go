package life

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/proccluster"
)

// grafanaDashboard is the part of contrib/grafana/torus.json the test reads.
type grafanaDashboard struct {
	Title      string `json:"title"`
	UID        string `json:"uid"`
	Templating struct {
		List []struct {
			Name string `json:"name"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		Type    string `json:"type"`
		Title   string `json:"title"`
		Targets []struct {
			Expr       string `json:"expr"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
		} `json:"targets"`
	} `json:"panels"`
}

// TestGrafanaDashboard: every metric the Grafana dashboard
// (contrib/grafana/torus.json) queries is exported by a running cluster:
// three torusd and a torusblk with --http, after a workload, a daemon
// killed and healing (so that daemons have sent each other requests). It
// also checks the dashboard's shape: the sections the docs promise
// (cluster, peers, volumes, latency, healing), every query on the
// dashboard's data source variable, balanced parentheses.
func TestGrafanaDashboard(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "contrib", "grafana", "torus.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("torus.json: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard has no uid or title")
	}
	rows := map[string]bool{}
	queried := map[string][]string{} // metric family -> panels
	name := regexp.MustCompile(`\btorus_[a-z_]+`)
	for _, p := range d.Panels {
		if p.Type == "row" {
			rows[strings.ToLower(strings.Fields(p.Title)[0])] = true
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: data source %q, want the ${datasource} variable", p.Title, tg.Datasource.UID)
			}
			if strings.Count(tg.Expr, "(") != strings.Count(tg.Expr, ")") || strings.Count(tg.Expr, "{") != strings.Count(tg.Expr, "}") {
				t.Errorf("panel %q: unbalanced query %s", p.Title, tg.Expr)
			}
			for _, m := range name.FindAllString(tg.Expr, -1) {
				m = strings.TrimSuffix(m, "_bucket")
				queried[m] = append(queried[m], p.Title)
			}
		}
	}
	for _, want := range []string{"cluster", "peers", "volumes", "latency", "healing,"} {
		if !rows[want] {
			t.Errorf("no %q row in the dashboard (rows %v)", want, rows)
		}
	}
	if len(queried) < 20 {
		t.Fatalf("only %d metrics queried: %v", len(queried), queried)
	}

	c := startCluster(t, proccluster.Options{Daemons: 3, Replication: 2})
	blkHTTP := fmt.Sprintf("127.0.0.101:%d", proccluster.FreePort(t, "127.0.0.101"))
	createVolume(t, c, "g", "16MiB", 0)
	c.Ctl("volume", "set", "g", "min-replicas=1")
	_, addr := c.StartNBD("--http", blkHTTP)
	nc := attach(t, nil, addr, "g", 4096*blockSize)
	m := newModel(seed(t), 4096)
	w := newWorkload(m, uint64(m.seed), "writer")
	for i := 0; i < 200; i++ {
		if err := w.step(nc); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatal(err)
	}
	c.Daemons[2].Kill(t)
	if took, ok, last := pollHealth(c, "g", "healthy", 60*time.Second); !ok {
		// Healing is what makes daemons send each other requests.
		t.Fatalf("volume health %q %v after a daemon was killed, want healthy again", last, took)
	}
	mustVerify(t, nc, m, "after healing")

	exported := map[string]bool{}
	typeLine := regexp.MustCompile(`(?m)^# TYPE (\S+) `)
	for _, a := range []string{c.Daemons[0].HTTPAddr, c.Daemons[1].HTTPAddr, blkHTTP} {
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + a + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, m := range typeLine.FindAllSubmatch(body, -1) {
			exported[string(m[1])] = true
		}
	}
	var missing []string
	for m, panels := range queried {
		if !exported[m] {
			missing = append(missing, fmt.Sprintf("%s (panels %s)", m, strings.Join(panels, "; ")))
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("the dashboard queries %d metrics no process exports:\n%s", len(missing), strings.Join(missing, "\n"))
	}
	t.Logf("%d metrics queried by %d panels, all exported", len(queried), len(d.Panels))
}
