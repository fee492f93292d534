package server

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/ui"
)

type metrics struct {
	reg            *prometheus.Registry
	healCopied     prometheus.Counter
	healDeleted    prometheus.Counter
	gcDeleted      prometheus.Counter
	maintenanceErr prometheus.Counter
	scrubChecked   prometheus.Counter
	scrubErrors    prometheus.Counter
	repaired       prometheus.Counter
	refused        *prometheus.CounterVec
	ops            *opMetrics
}

// Registry is the daemon's metrics registry (served on /metrics): a
// process embedding a writer (torusd --dev) registers its client metrics
// there. Nil before Start.
func (s *Server) Registry() prometheus.Registerer {
	if s.metrics == nil {
		return nil
	}
	return s.metrics.reg
}

// peerRefused counts a request the peer server refused (peer.ServerConfig.Refused).
func (m *metrics) peerRefused(_ peer.Identity, role, op string) {
	m.refused.WithLabelValues(role, op).Inc()
}

func newMetrics(s *Server) *metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &metrics{reg: reg}
	labels := prometheus.Labels{"peer": s.id}
	m.ops = newOpMetrics(reg, labels)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "torus_store_used_bytes", Help: "Bytes held by the local segment store.", ConstLabels: labels,
	}, func() float64 { return float64(s.store.Usage().Used) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "torus_store_capacity_bytes", Help: "Configured capacity (--size) of the local store.", ConstLabels: labels,
	}, func() float64 { return float64(s.store.Usage().Capacity) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "torus_store_full_warning_percent", Help: "0, or 80 / 90 when the store crossed that share of its capacity.", ConstLabels: labels,
	}, func() float64 { return float64(s.fullLevel.Load()) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "torus_rebalance_pending_bytes", Help: "Bytes this daemon still has to copy to heal or rebalance.", ConstLabels: labels,
	}, func() float64 { return float64(s.pending.Load()) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "torus_placement_degraded", Help: "1 when the ring's members span fewer failure domains (at the rule's level) than the replication.", ConstLabels: labels,
	}, func() float64 {
		if s.placementDegraded.Load() {
			return 1
		}
		return 0
	}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "torus_ready", Help: "1 when the daemon is serving and registered.", ConstLabels: labels,
	}, func() float64 {
		if s.isReady() {
			return 1
		}
		return 0
	}))
	m.healCopied = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "torus_heal_copied_bytes_total", Help: "Bytes copied to other peers by healing and rebalancing.", ConstLabels: labels})
	m.healDeleted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "torus_heal_deleted_segments_total", Help: "Surplus segment copies removed after rebalancing.", ConstLabels: labels})
	m.gcDeleted = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "torus_gc_deleted_segments_total", Help: "Segments removed by garbage collection.", ConstLabels: labels})
	m.maintenanceErr = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "torus_maintenance_errors_total", Help: "Failed heal, rebalance or GC steps.", ConstLabels: labels})
	m.scrubChecked = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "torus_scrub_checked_bytes_total", Help: "Bytes of segment copies read and verified by scrub and by healing's checks.", ConstLabels: labels})
	m.scrubErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "torus_scrub_errors_total", Help: "Bad or unreadable segment copies found by scrub and healing.", ConstLabels: labels})
	m.repaired = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "torus_repaired_bytes_total", Help: "Bytes copied to replace bad segment copies.", ConstLabels: labels})
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "torus_peer_refused_total", Help: "Peer protocol requests refused for the caller's certificate role (role \"plain\": a plain connection to a TLS daemon; \"unauthenticated\", op \"handshake\": a failed TLS handshake).", ConstLabels: labels},
		[]string{"role", "op"})
	m.refused.WithLabelValues("unauthenticated", "handshake") // from 0, for rate()
	reg.MustRegister(m.refused)
	reg.MustRegister(m.healCopied, m.healDeleted, m.gcDeleted, m.maintenanceErr, m.scrubChecked, m.scrubErrors, m.repaired)
	return m
}

func (s *Server) isReady() bool {
	if !s.ready.Load() {
		return false
	}
	s.sessMu.Lock()
	sess := s.session
	s.sessMu.Unlock()
	if sess == nil {
		return false
	}
	select {
	case <-sess.Done():
		return false
	default:
		return true
	}
}

func (s *Server) startHTTP() error {
	ln, err := net.Listen("tcp", s.cfg.HTTPListen)
	if err != nil {
		return fmt.Errorf("server: listening for http: %w", err)
	}
	s.httpLn = ln
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !s.isReady() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	dash := ui.Handler(s.meta, s.log) // read-only dashboard and its JSON API
	mux.Handle("/ui/", dash)
	mux.Handle("/api/v1/", dash)
	if s.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	s.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, TLSConfig: s.cfg.HTTPTLS}
	s.goAttach(func(context.Context) {
		serve := s.httpSrv.Serve
		if s.cfg.HTTPTLS != nil {
			serve = func(ln net.Listener) error { return s.httpSrv.ServeTLS(ln, "", "") }
		}
		if err := serve(ln); err != nil && err != http.ErrServerClosed {
			s.log.Warn("http server stopped", "err", err)
		}
	})
	return nil
}
