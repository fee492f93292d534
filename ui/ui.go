// Package ui serves the operators' dashboard of a torusd: a page under
// /ui/ (index.html, app.js and style.css, embedded in the binary; plain
// JavaScript, nothing loaded from elsewhere) and the JSON API it polls
// under /api/v1/. The API answers are those of `torusctl -o json` (package
// report): /api/v1/status, /api/v1/peers, /api/v1/ring, /api/v1/volumes,
// and /api/v1/events?after=SEQ (torus.Event values, oldest first).
//
// The dashboard is read-only: every method but GET and HEAD is answered
// 405. Each answer is cached for CacheFor, so many open dashboards cost
// the metadata store one read per view per CacheFor.
package ui

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/report"
)

//go:embed assets
var assets embed.FS

// CacheFor is how long an API answer is reused.
const CacheFor = time.Second

// eventLimit bounds one /api/v1/events answer.
const eventLimit = 200

// readTimeout bounds the metadata reads behind one answer.
const readTimeout = 5 * time.Second

// Handler returns the handler of /ui/ and /api/v1/. md is read for the
// API answers; logger gets the failed reads (Warn).
func Handler(md torus.Metadata, logger *slog.Logger) http.Handler {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	h := &handler{md: md, log: logger, now: time.Now, cache: map[string]entry{}}
	mux := http.NewServeMux()
	mux.Handle("/ui/", http.StripPrefix("/ui/", http.FileServerFS(sub)))
	mux.HandleFunc("/api/v1/status", h.view(func(ctx context.Context, _ *http.Request) (any, error) {
		return report.ReadStatus(ctx, md)
	}))
	mux.HandleFunc("/api/v1/peers", h.view(func(ctx context.Context, _ *http.Request) (any, error) {
		return report.ReadPeers(ctx, md)
	}))
	mux.HandleFunc("/api/v1/ring", h.view(func(ctx context.Context, _ *http.Request) (any, error) {
		return report.ReadRing(ctx, md)
	}))
	mux.HandleFunc("/api/v1/volumes", h.view(func(ctx context.Context, _ *http.Request) (any, error) {
		return report.ReadVolumes(ctx, md)
	}))
	mux.HandleFunc("/api/v1/events", h.view(func(ctx context.Context, r *http.Request) (any, error) {
		after, err := parseAfter(r.URL.Query().Get("after"))
		if err != nil {
			return nil, err
		}
		evs, err := md.Events(ctx, after, eventLimit)
		if evs == nil && err == nil {
			evs = []torus.Event{}
		}
		return evs, err
	}))
	return &readOnlyHandler{h: h, next: mux}
}

// readOnlyHandler answers 405 to every method but GET and HEAD.
type readOnlyHandler struct {
	h    *handler
	next http.Handler
}

func (ro *readOnlyHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "the dashboard is read-only", http.StatusMethodNotAllowed)
		return
	}
	ro.next.ServeHTTP(w, r)
}

func parseAfter(s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, errBadAfter
	}
	return n, nil
}

var errBadAfter = errors.New("ui: after must be an event sequence number")

type entry struct {
	body []byte
	at   time.Time
}

type handler struct {
	md  torus.Metadata
	log *slog.Logger
	now func() time.Time

	mu    sync.Mutex // guards cache; held across a read so concurrent misses share it
	cache map[string]entry
}

// view serves read's answer as JSON, cached by path and query for CacheFor.
func (h *handler) view(read func(ctx context.Context, r *http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		key := r.URL.Path + "?" + r.URL.RawQuery
		h.mu.Lock()
		e, ok := h.cache[key]
		if !ok || h.now().Sub(e.at) >= CacheFor {
			body, err := h.fetch(r, read)
			if err != nil {
				h.mu.Unlock()
				status := http.StatusServiceUnavailable
				if errors.Is(err, errBadAfter) {
					status = http.StatusBadRequest
				} else {
					h.log.Warn("dashboard: reading metadata", "path", r.URL.Path, "err", err)
				}
				http.Error(w, err.Error(), status)
				return
			}
			h.prune()
			e = entry{body: body, at: h.now()}
			h.cache[key] = e
		}
		h.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(e.body)
	}
}

func (h *handler) fetch(r *http.Request, read func(ctx context.Context, r *http.Request) (any, error)) ([]byte, error) {
	ctx, cancel := context.WithTimeout(r.Context(), readTimeout)
	defer cancel()
	v, err := read(ctx, r)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// prune drops expired entries (events?after=N keys are many), h.mu held.
func (h *handler) prune() {
	now := h.now()
	for k, e := range h.cache {
		if now.Sub(e.at) >= CacheFor {
			delete(h.cache, k)
		}
	}
}
