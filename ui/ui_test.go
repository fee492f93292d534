package ui

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/metadata"
	"github.com/torus-storage/torus/report"
)

func newTest(t *testing.T) (*metadata.Memory, *handler, http.Handler) {
	t.Helper()
	m := metadata.NewMemory()
	if err := m.InitCluster(context.Background(), torus.ClusterConfig{Replication: 2}); err != nil {
		t.Fatal(err)
	}
	h := Handler(m, slog.New(slog.DiscardHandler))
	return m, h.(*readOnlyHandler).h, h
}

func get(t *testing.T, h http.Handler, method, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

// The API answers are the report views, as torusctl -o json prints them.
func TestAPIMatchesReport(t *testing.T) {
	m, _, h := newTest(t)
	ctx := context.Background()
	if _, err := m.CreateVolume(ctx, torus.VolumeInfo{Name: "v", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	st, _ := report.ReadStatus(ctx, m)
	vols, _ := report.ReadVolumes(ctx, m)
	ring, _ := report.ReadRing(ctx, m)
	for path, want := range map[string]any{"/api/v1/status": st, "/api/v1/volumes": vols, "/api/v1/ring": ring} {
		code, body := get(t, h, "GET", path)
		wb, _ := json.MarshalIndent(want, "", "  ")
		if code != 200 || strings.TrimSpace(body) != string(wb) {
			t.Errorf("%s: %d\n%s\nwant\n%s", path, code, body, wb)
		}
	}
	if code, body := get(t, h, "GET", "/api/v1/peers"); code != 200 || strings.TrimSpace(body) != "[]" {
		t.Errorf("peers: %d %s", code, body)
	}
}

func TestReadOnly(t *testing.T) {
	_, _, h := newTest(t)
	for _, method := range []string{"POST", "PUT", "DELETE", "PATCH"} {
		for _, path := range []string{"/api/v1/status", "/ui/", "/api/v1/events"} {
			if code, _ := get(t, h, method, path); code != http.StatusMethodNotAllowed {
				t.Errorf("%s %s: %d, want 405", method, path, code)
			}
		}
	}
}

func TestAssets(t *testing.T) {
	_, _, h := newTest(t)
	for path, want := range map[string]string{"/ui/": "<svg id=\"ring\"", "/ui/app.js": "/api/v1/status", "/ui/style.css": "--down"} {
		if code, body := get(t, h, "GET", path); code != 200 || !strings.Contains(body, want) {
			t.Errorf("%s: %d, lacks %q", path, code, want)
		}
	}
	// Nothing is loaded from elsewhere.
	for _, path := range []string{"/ui/", "/ui/app.js", "/ui/style.css"} {
		if _, body := get(t, h, "GET", path); strings.Contains(body, "http://") && !strings.Contains(body, "http://www.w3.org/2000/svg") ||
			strings.Contains(body, "https://") {
			t.Errorf("%s names a remote address", path)
		}
	}
}

func TestEvents(t *testing.T) {
	m, _, h := newTest(t)
	ctx := context.Background()
	var seqs []uint64
	for _, k := range []torus.EventKind{torus.EventPeerDown, torus.EventVolumeDegraded} {
		e, err := m.RecordEvent(ctx, torus.Event{Kind: k, Severity: torus.SeverityWarning, Message: string(k)})
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, e.Seq)
	}
	var evs []torus.Event
	_, body := get(t, h, "GET", "/api/v1/events")
	if err := json.Unmarshal([]byte(body), &evs); err != nil || len(evs) != 2 {
		t.Fatalf("events: %v %s", err, body)
	}
	_, body = get(t, h, "GET", "/api/v1/events?after="+jsonNum(seqs[0]))
	if err := json.Unmarshal([]byte(body), &evs); err != nil || len(evs) != 1 || evs[0].Kind != torus.EventVolumeDegraded {
		t.Fatalf("events after %d: %v %s", seqs[0], err, body)
	}
	if code, _ := get(t, h, "GET", "/api/v1/events?after=x"); code != http.StatusBadRequest {
		t.Fatalf("after=x: %d", code)
	}
}

func jsonNum(n uint64) string { b, _ := json.Marshal(n); return string(b) }

// An answer is reused for CacheFor, then read again.
func TestCache(t *testing.T) {
	m, hd, h := newTest(t)
	now := time.Unix(1000, 0)
	hd.now = func() time.Time { return now }
	ctx := context.Background()
	_, before := get(t, h, "GET", "/api/v1/volumes")
	if _, err := m.CreateVolume(ctx, torus.VolumeInfo{Name: "v", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(CacheFor / 2)
	if _, body := get(t, h, "GET", "/api/v1/volumes"); body != before {
		t.Fatalf("answer not cached: %s", body)
	}
	now = now.Add(CacheFor)
	if _, body := get(t, h, "GET", "/api/v1/volumes"); !strings.Contains(body, `"name": "v"`) {
		t.Fatalf("stale answer after CacheFor: %s", body)
	}
}
