// Package devmetrics instruments block devices for Prometheus: a wrapper
// around torus.Device (and around nbd.Exports, so every device the NBD
// server opens is wrapped) records, per volume, request latency, bytes,
// requests in flight and errors by class; devices that report volume
// counters (*volume.Volume) add the writer epoch and degraded-write signals.
//
// All metrics are labelled volume="NAME" (the export name: "vol@snap" for a
// snapshot). Latency histograms and error counters carry op="read",
// "write", "flush", "trim" (Trim and WriteZeroes both count as trim).
package devmetrics

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/nbd"
	"github.com/torus-storage/torus/volume"
)

// Error kinds, the values of the kind label of torus_client_errors_total.
const (
	KindUnavailable = "unavailable"
	KindFenced      = "fenced"
	KindCorrupt     = "corrupt"
	KindNoSpace     = "no-space"
	KindOutOfRange  = "out-of-range"
	KindOther       = "other"
)

// Kind classifies err by the torus error class it wraps (torus.ErrorKind:
// the constants above, or another class's name).
func Kind(err error) string { return torus.ErrorKind(err) }

// DegradedWindow is how long after replicas were last dropped (or unflushed
// bytes last carried to a new segment) a volume reports degraded.
const DegradedWindow = time.Minute

// Stater is what a device may implement to report its writer epoch and
// degraded-write counters; *volume.Volume does.
type Stater interface {
	Info() volume.Info
	Stats() volume.Stats
}

// Metrics holds the collectors; register them with New.
type Metrics struct {
	latency  *prometheus.HistogramVec
	bytes    *prometheus.CounterVec
	inflight *prometheus.GaugeVec
	errs     *prometheus.CounterVec
	now      func() time.Time

	epochDesc, droppedDesc, carriedDesc, degradedDesc *prometheus.Desc

	mu   sync.Mutex
	open map[*Device]struct{}
}

// New creates the metrics and registers them with reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "torus_client_request_duration_seconds",
			Help:    "Latency of block requests to a volume, by op (read, write, flush, trim).",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 18), // 50µs .. ~6.5s
		}, []string{"volume", "op"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "torus_client_bytes_total",
			Help: "Bytes read from or written to a volume by successful requests (dir read or write).",
		}, []string{"volume", "dir"}),
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "torus_client_requests_in_flight",
			Help: "Block requests to a volume started and not finished.",
		}, []string{"volume"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "torus_client_errors_total",
			Help: "Failed block requests, by op and error kind (unavailable, fenced, corrupt, no-space, out-of-range, other).",
		}, []string{"volume", "op", "kind"}),
		now:          time.Now,
		epochDesc:    prometheus.NewDesc("torus_client_writer_epoch", "Writer epoch of an open volume (0: read-only).", []string{"volume"}, nil),
		droppedDesc:  prometheus.NewDesc("torus_client_replicas_dropped_total", "Replicas a volume's writer dropped from open segments after they failed.", []string{"volume"}, nil),
		carriedDesc:  prometheus.NewDesc("torus_client_carried_bytes_total", "Unflushed bytes a volume's writer appended again after a replica dropped out.", []string{"volume"}, nil),
		degradedDesc: prometheus.NewDesc("torus_client_degraded", "1 when the writer dropped a replica or carried writes within the last minute.", []string{"volume"}, nil),
		open:         make(map[*Device]struct{}),
	}
	reg.MustRegister(m.latency, m.bytes, m.inflight, m.errs, (*volumeCollector)(m))
	return m
}

// Wrap returns dev instrumented under the volume label name. Closing the
// result removes the volume's epoch and degraded gauges.
func (m *Metrics) Wrap(name string, dev torus.Device) *Device {
	d := &Device{Device: dev, m: m, name: name, inflight: m.inflight.WithLabelValues(name)}
	for _, op := range []string{"read", "write", "flush", "trim"} {
		d.lat[opIndex(op)] = m.latency.WithLabelValues(name, op)
		for _, kind := range []string{KindUnavailable, KindFenced, KindCorrupt, KindNoSpace, KindOutOfRange, KindOther} {
			m.errs.WithLabelValues(name, op, kind) // every series from 0, for rate()
		}
	}
	d.rd, d.wr = m.bytes.WithLabelValues(name, "read"), m.bytes.WithLabelValues(name, "write")
	m.mu.Lock()
	m.open[d] = struct{}{}
	m.mu.Unlock()
	return d
}

// Exports wraps every device e opens.
func (m *Metrics) Exports(e nbd.Exports) nbd.Exports { return exports{e, m} }

type exports struct {
	nbd.Exports
	m *Metrics
}

func (e exports) Open(ctx context.Context, name string, readOnly bool) (torus.Device, error) {
	dev, err := e.Exports.Open(ctx, name, readOnly)
	if err != nil {
		return nil, err
	}
	return e.m.Wrap(name, dev), nil
}

func opIndex(op string) int {
	switch op {
	case "read":
		return 0
	case "write":
		return 1
	case "flush":
		return 2
	}
	return 3
}

// Device is an instrumented torus.Device.
type Device struct {
	torus.Device
	m        *Metrics
	name     string
	lat      [4]prometheus.Observer
	rd, wr   prometheus.Counter
	inflight prometheus.Gauge

	mu          sync.Mutex
	lastDropped int64
	lastCarried int64
	lastChange  time.Time
	closeOnce   sync.Once
}

// done records one request of op that began at start.
func (d *Device) done(op string, start time.Time, err error) {
	d.inflight.Dec()
	d.lat[opIndex(op)].Observe(time.Since(start).Seconds())
	if err != nil {
		d.m.errs.WithLabelValues(d.name, op, Kind(err)).Inc()
	}
}

func (d *Device) begin() time.Time {
	d.inflight.Inc()
	return time.Now()
}

func (d *Device) ReadAt(ctx context.Context, p []byte, off int64) error {
	t := d.begin()
	err := d.Device.ReadAt(ctx, p, off)
	if err == nil {
		d.rd.Add(float64(len(p)))
	}
	d.done("read", t, err)
	return err
}

func (d *Device) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	t := d.begin()
	err := d.Device.WriteAt(ctx, p, off, fua)
	if err == nil {
		d.wr.Add(float64(len(p)))
	}
	d.done("write", t, err)
	return err
}

func (d *Device) Flush(ctx context.Context) error {
	t := d.begin()
	err := d.Device.Flush(ctx)
	d.done("flush", t, err)
	return err
}

func (d *Device) Trim(ctx context.Context, off, length int64) error {
	t := d.begin()
	err := d.Device.Trim(ctx, off, length)
	d.done("trim", t, err)
	return err
}

func (d *Device) WriteZeroes(ctx context.Context, off, length int64, fua bool) error {
	t := d.begin()
	err := d.Device.WriteZeroes(ctx, off, length, fua)
	d.done("trim", t, err)
	return err
}

// Close closes the device and drops its per-volume gauges.
func (d *Device) Close(ctx context.Context) error {
	err := d.Device.Close(ctx)
	d.closeOnce.Do(func() {
		d.m.mu.Lock()
		delete(d.m.open, d)
		d.m.mu.Unlock()
		d.m.inflight.DeleteLabelValues(d.name)
	})
	return err
}

// degraded reports whether s shows replicas dropped or bytes carried within
// DegradedWindow of now.
func (d *Device) degraded(s volume.Stats, now time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if s.ReplicasDropped != d.lastDropped || s.CarriedBytes != d.lastCarried {
		d.lastDropped, d.lastCarried, d.lastChange = s.ReplicasDropped, s.CarriedBytes, now
	}
	return !d.lastChange.IsZero() && now.Sub(d.lastChange) < DegradedWindow
}

// volumeCollector reports the gauges read from open devices at scrape time.
type volumeCollector Metrics

func (c *volumeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.epochDesc
	ch <- c.droppedDesc
	ch <- c.carriedDesc
	ch <- c.degradedDesc
}

func (c *volumeCollector) Collect(ch chan<- prometheus.Metric) {
	m := (*Metrics)(c)
	m.mu.Lock()
	devs := make([]*Device, 0, len(m.open))
	for d := range m.open {
		devs = append(devs, d)
	}
	m.mu.Unlock()
	now := m.now()
	for _, d := range devs {
		st, ok := d.Device.(Stater)
		if !ok {
			continue
		}
		s := st.Stats()
		deg := 0.0
		if d.degraded(s, now) {
			deg = 1
		}
		ch <- prometheus.MustNewConstMetric(m.epochDesc, prometheus.GaugeValue, float64(st.Info().Epoch), d.name)
		ch <- prometheus.MustNewConstMetric(m.droppedDesc, prometheus.CounterValue, float64(s.ReplicasDropped), d.name)
		ch <- prometheus.MustNewConstMetric(m.carriedDesc, prometheus.CounterValue, float64(s.CarriedBytes), d.name)
		ch <- prometheus.MustNewConstMetric(m.degradedDesc, prometheus.GaugeValue, deg, d.name)
	}
}
