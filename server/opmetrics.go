package server

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/torus-storage/torus"
)

// opMetrics are the daemon's latency histograms and error counters: its
// own store's appends, syncs and reads as the peer service serves them,
// and the requests it sends to other daemons (healing copies, scrub
// reads, fences), by peer.
type opMetrics struct {
	storeSeconds *prometheus.HistogramVec // op
	storeErrors  *prometheus.CounterVec   // op, kind
	rpcSeconds   *prometheus.HistogramVec // op
	rpcErrors    *prometheus.CounterVec   // to, op, kind
}

// latencyBuckets span 10 µs (a page-cache append) to about 10 s (a
// stalled disk).
var latencyBuckets = prometheus.ExponentialBuckets(10e-6, 2, 21)

func newOpMetrics(reg prometheus.Registerer, labels prometheus.Labels) *opMetrics {
	m := &opMetrics{
		storeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "torus_store_op_duration_seconds", ConstLabels: labels, Buckets: latencyBuckets,
			Help: "Latency of the local store's operations as the peer service runs them, by op (append, sync, read).",
		}, []string{"op"}),
		storeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "torus_store_op_errors_total", ConstLabels: labels,
			Help: "Failed local store operations, by op and error kind (torus.ErrorKind).",
		}, []string{"op", "kind"}),
		rpcSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "torus_peer_rpc_duration_seconds", ConstLabels: labels, Buckets: latencyBuckets,
			Help: "Latency of peer protocol requests this daemon sends to other daemons, by op.",
		}, []string{"op"}),
		rpcErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "torus_peer_rpc_errors_total", ConstLabels: labels,
			Help: "Failed peer protocol requests this daemon sent, by target peer ID, op and error kind (torus.ErrorKind).",
		}, []string{"to", "op", "kind"}),
	}
	reg.MustRegister(m.storeSeconds, m.storeErrors, m.rpcSeconds, m.rpcErrors)
	// Export the common series from the start, so dashboards and alerts
	// see zeros rather than nothing.
	for _, op := range []string{"append", "sync", "read"} {
		m.storeSeconds.WithLabelValues(op)
		m.rpcSeconds.WithLabelValues(op)
		for _, kind := range []string{"no-space", "corrupt", "other"} {
			m.storeErrors.WithLabelValues(op, kind)
		}
	}
	return m
}

// observePeer is the peer pool's ClientConfig.ObservePeer (op "dial":
// the peer could not be reached at all).
func (m *opMetrics) observePeer(id, op string, took time.Duration, err error) {
	m.rpcSeconds.WithLabelValues(op).Observe(took.Seconds())
	if err != nil {
		m.rpcErrors.WithLabelValues(id, op, torus.ErrorKind(err)).Inc()
		return
	}
	// A peer this daemon talks to gets its error series at 0, so that
	// rate() and alerts see the first failure.
	m.rpcErrors.WithLabelValues(id, op, "unavailable")
}

func (m *opMetrics) store(op string, start time.Time, err error) {
	m.storeSeconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
	if err != nil {
		m.storeErrors.WithLabelValues(op, torus.ErrorKind(err)).Inc()
	}
}

// meteredStore times a Store's appends, syncs and reads. The peer service
// (peer.Local) runs on it; everything else uses the store directly.
type meteredStore struct {
	torus.Store
	m *opMetrics
}

func (s meteredStore) Append(ctx context.Context, seg torus.SegmentID, off int64, p []byte) error {
	start := time.Now()
	err := s.Store.Append(ctx, seg, off, p)
	s.m.store("append", start, err)
	return err
}

func (s meteredStore) Sync(ctx context.Context, seg torus.SegmentID) (int64, error) {
	start := time.Now()
	n, err := s.Store.Sync(ctx, seg)
	s.m.store("sync", start, err)
	return n, err
}

func (s meteredStore) ReadAt(ctx context.Context, seg torus.SegmentID, p []byte, off int64) (int, error) {
	start := time.Now()
	n, err := s.Store.ReadAt(ctx, seg, p, off)
	s.m.store("read", start, err)
	return n, err
}
