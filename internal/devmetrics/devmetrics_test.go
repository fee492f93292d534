package devmetrics

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/memdev"
	"github.com/torus-storage/torus/volume"
)

// statDev is a memdev that reports volume counters like *volume.Volume.
type statDev struct {
	*memdev.Device
	stats volume.Stats
	epoch uint64
}

func (d *statDev) Info() volume.Info   { return volume.Info{Epoch: d.epoch} }
func (d *statDev) Stats() volume.Stats { return d.stats }

func histCount(t *testing.T, reg *prometheus.Registry, vol, op string) uint64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "torus_client_request_duration_seconds" {
			continue
		}
		for _, m := range mf.Metric {
			labels := map[string]string{}
			for _, l := range m.Label {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["volume"] == vol && labels["op"] == op {
				return m.GetHistogram().GetSampleCount()
			}
		}
	}
	return 0
}

// TestDevice drives a wrapped device and checks the counters, the
// histogram observations, in-flight requests, error classification and the
// gauges read from the device's stats.
func TestDevice(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	now := time.Unix(1000, 0)
	m.now = func() time.Time { return now }
	inner := &statDev{Device: memdev.New(1<<20, false), epoch: 7}
	d := m.Wrap("vol", inner)
	ctx := context.Background()

	for range 3 {
		if err := d.WriteAt(ctx, make([]byte, 8192), 0, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.ReadAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Trim(ctx, 0, 4096); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteZeroes(ctx, 0, 4096, false); err != nil {
		t.Fatal(err)
	}
	// Out of range, then injected failures of each class.
	if err := d.ReadAt(ctx, make([]byte, 4096), 1<<20); !errors.Is(err, torus.ErrOutOfRange) {
		t.Fatalf("read past the end: %v", err)
	}
	for _, e := range []error{torus.ErrUnavailable, torus.ErrFenced, torus.ErrCorrupt, torus.ErrNoSpace, errors.New("boom")} {
		inner.SetFault(func(context.Context, memdev.Op, int64, int64) error { return fmt.Errorf("wrapped: %w", e) })
		if err := d.WriteAt(ctx, make([]byte, 4096), 0, false); err == nil {
			t.Fatal("fault not injected")
		}
	}
	inner.SetFault(nil)

	checks := []struct {
		c    prometheus.Collector
		want float64
	}{
		{m.bytes.WithLabelValues("vol", "write"), 3 * 8192},
		{m.bytes.WithLabelValues("vol", "read"), 4096},
		{m.errs.WithLabelValues("vol", "read", KindOutOfRange), 1},
		{m.errs.WithLabelValues("vol", "write", KindUnavailable), 1},
		{m.errs.WithLabelValues("vol", "write", KindFenced), 1},
		{m.errs.WithLabelValues("vol", "write", KindCorrupt), 1},
		{m.errs.WithLabelValues("vol", "write", KindNoSpace), 1},
		{m.errs.WithLabelValues("vol", "write", KindOther), 1},
		{m.inflight.WithLabelValues("vol"), 0},
	}
	for i, c := range checks {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("check %d: %v, want %v", i, got, c.want)
		}
	}
	for op, want := range map[string]uint64{"write": 8, "read": 2, "flush": 1, "trim": 2} {
		if got := histCount(t, reg, "vol", op); got != want {
			t.Errorf("%s latency observations: %d, want %d", op, got, want)
		}
	}

	// A request held in flight shows in the gauge.
	hold, release := make(chan struct{}), make(chan struct{})
	inner.SetFault(func(_ context.Context, op memdev.Op, _, _ int64) error {
		if op == memdev.OpFlush {
			close(hold)
			<-release
		}
		return nil
	})
	errc := make(chan error, 1)
	go func() { errc <- d.Flush(ctx) }()
	<-hold
	if got := testutil.ToFloat64(m.inflight.WithLabelValues("vol")); got != 1 {
		t.Errorf("in flight: %v, want 1", got)
	}
	close(release)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	inner.SetFault(nil)

	// Epoch and degraded state come from the device's stats.
	if n := testutil.CollectAndCount((*volumeCollector)(m)); n != 4 {
		t.Fatalf("volume gauges: %d series, want 4", n)
	}
	expect := func(degraded string) {
		t.Helper()
		want := `
# HELP torus_client_degraded 1 when the writer dropped a replica or carried writes within the last minute.
# TYPE torus_client_degraded gauge
torus_client_degraded{volume="vol"} ` + degraded + `
# HELP torus_client_writer_epoch Writer epoch of an open volume (0: read-only).
# TYPE torus_client_writer_epoch gauge
torus_client_writer_epoch{volume="vol"} 7
`
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "torus_client_degraded", "torus_client_writer_epoch"); err != nil {
			t.Error(err)
		}
	}
	expect("0")
	inner.stats.ReplicasDropped, inner.stats.CarriedBytes = 1, 4096
	expect("1")
	now = now.Add(DegradedWindow + time.Second)
	expect("0")

	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount((*volumeCollector)(m)); n != 0 {
		t.Fatalf("a closed device still reports %d gauges", n)
	}
}

// TestKind classifies wrapped errors.
func TestKind(t *testing.T) {
	for err, want := range map[error]string{
		fmt.Errorf("x: %w", torus.ErrUnavailable): KindUnavailable,
		fmt.Errorf("x: %w", torus.ErrFenced):      KindFenced,
		torus.ErrCorrupt:                          KindCorrupt,
		torus.ErrNoSpace:                          KindNoSpace,
		torus.ErrOutOfRange:                       KindOutOfRange,
		context.Canceled:                          KindOther,
	} {
		if got := Kind(err); got != want {
			t.Errorf("Kind(%v) = %s, want %s", err, got, want)
		}
	}
}
