package life

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/memdev"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/nbd"
)

// The helpers are tested here against an in-process NBD server over an
// in-memory device, so that a passing process-level test means what it
// says: the client speaks NBD, and the model catches lost, stale, torn and
// misplaced blocks with a message naming them.

type oneExport struct{ d *memdev.Device }

func (e oneExport) Open(ctx context.Context, name string, ro bool) (torus.Device, error) {
	if name != "v" {
		return nil, fmt.Errorf("%q: %w", name, torus.ErrNotExist)
	}
	e.d.Reopen()
	return e.d, nil
}
func (e oneExport) List(ctx context.Context) ([]nbd.ExportInfo, error) {
	return []nbd.ExportInfo{{Name: "v", Size: e.d.Size()}}, nil
}
func (e oneExport) Default(ctx context.Context) (string, error) { return "v", nil }

func memServer(t *testing.T, blocks int64) (*memdev.Device, string) {
	t.Helper()
	d := memdev.New(blocks*blockSize, false)
	srv := nbd.NewServer(nbd.Config{}, oneExport{d}, testutil.Logger(t))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return d, ln.Addr().String()
}

func TestHelperClientAndModel(t *testing.T) {
	const blocks = 512
	d, addr := memServer(t, blocks)
	if _, err := tryAttach(nil, addr, "nope"); !errors.Is(err, torus.ErrNotExist) {
		t.Fatalf("attach to an unknown export: %v, want ErrNotExist", err)
	}
	nc := attach(t, nil, addr, "v", blocks*blockSize)
	m := newModel(42, blocks)
	w := newWorkload(m, 42, "selftest")
	for i := 0; i < 300; i++ {
		if err := w.step(nc); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.doFlush(nc); err != nil {
		t.Fatal(err)
	}
	if d.Flushes() == 0 {
		t.Fatal("the server saw no flush")
	}
	ids := mustVerify(t, nc, m, "selftest")
	written := 0
	for _, id := range ids {
		if id != 0 {
			written++
		}
	}
	if written == 0 {
		t.Fatal("verify found no written block")
	}

	// Find a block holding a flushed write, and one never written.
	var blk int64 = -1
	for b, id := range ids {
		if id != 0 && len(m.later[b]) == 0 {
			blk = int64(b)
			break
		}
	}
	if blk < 0 {
		t.Fatal("no flushed block")
	}
	ctx := context.Background()

	// Stale data: an older write's content where a newer one was flushed.
	stale := make([]byte, blockSize)
	fillBlock(stale, 42, ids[blk]-1, blk)
	d.WriteAt(ctx, stale, blk*blockSize, false)
	_, err := verify(nc, m)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("block %d ", blk)) || !strings.Contains(err.Error(), fmt.Sprintf("want write #%d", ids[blk])) {
		t.Fatalf("stale block not reported precisely: %v", err)
	}
	// Lost data: zeros.
	d.WriteAt(ctx, make([]byte, blockSize), blk*blockSize, false)
	if _, err := verify(nc, m); err == nil || !strings.Contains(err.Error(), "got zeros") {
		t.Fatalf("lost block not reported: %v", err)
	}
	// Torn: right header, wrong body.
	torn := make([]byte, blockSize)
	fillBlock(torn, 42, ids[blk], blk)
	torn[3000] ^= 1
	d.WriteAt(ctx, torn, blk*blockSize, false)
	if _, err := verify(nc, m); err == nil || !strings.Contains(err.Error(), "differs from byte 3000") {
		t.Fatalf("torn block not reported: %v", err)
	}
	// Misplaced: the right write's block from elsewhere.
	mis := make([]byte, blockSize)
	fillBlock(mis, 42, ids[blk], blk+1)
	d.WriteAt(ctx, mis, blk*blockSize, false)
	if _, err := verify(nc, m); err == nil || !strings.Contains(err.Error(), "misplaced") {
		t.Fatalf("misplaced block not reported: %v", err)
	}
	good := make([]byte, blockSize)
	fillBlock(good, 42, ids[blk], blk)
	d.WriteAt(ctx, good, blk*blockSize, false)
	mustVerify(t, nc, m, "repaired")

	// Unflushed writes may be lost; after a flush they may not.
	id, p := m.newWrite(blk, 1, "unflushed", false)
	m.done(id, nc.WriteAt(p, blk*blockSize, false))
	d.WriteAt(ctx, good, blk*blockSize, false) // "crash": the write is lost
	mustVerify(t, nc, m, "unflushed write lost")
	m.done(id, nil)
	nc.WriteAt(p, blk*blockSize, false)
	m.flushed()
	d.WriteAt(ctx, good, blk*blockSize, false)
	if _, err := verify(nc, m); err == nil {
		t.Fatal("a flushed write was lost and verify did not notice")
	}
	d.WriteAt(ctx, p, blk*blockSize, false)

	// Forbidden (fenced) writes must never be visible.
	fid, fp := m.newWrite(blk, 1, "fenced", true)
	m.done(fid, nc.WriteAt(fp, blk*blockSize, false))
	if _, err := verify(nc, m); err == nil || !strings.Contains(err.Error(), "sent by a fenced writer") {
		t.Fatalf("a fenced write's data was not reported: %v", err)
	}
	d.WriteAt(ctx, p, blk*blockSize, false)

	// Server-side errors come back as *nbdError and are counted.
	d.SetFault(func(ctx context.Context, op memdev.Op, off, length int64) error {
		if op == memdev.OpWrite {
			return fmt.Errorf("injected: %w", torus.ErrUnavailable)
		}
		return nil
	})
	err = w.step(nc)
	var ne *nbdError
	if !errors.As(err, &ne) || ne.Errno == 0 {
		t.Fatalf("injected write failure: %v, want an nbdError", err)
	}
	if we, _, _ := w.errors(); we != 1 {
		t.Fatalf("workload counted %d failed writes, want 1", we)
	}
	d.SetFault(nil)
	mustVerify(t, nc, m, "after a failed write")

	// settle pins what was seen.
	ids = mustVerify(t, nc, m, "before settle")
	m.settle(0, ids)
	if _, err := verify(nc, m); err != nil {
		t.Fatal(err)
	}
	if err := nc.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestHelperEventuallyAndMetric(t *testing.T) {
	n := 0
	took := eventually(t, 5*time.Second, time.Millisecond, "counter", func() (bool, string) {
		n++
		return n == 3, fmt.Sprint(n)
	})
	if n != 3 || took > time.Second {
		t.Fatalf("eventually: n=%d took %v", n, took)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "# HELP torus_x x\n# TYPE torus_x counter\ntorus_x{peer=\"a\"} 3\ntorus_x{peer=\"b\"} 4.5\ntorus_xy 100\ntorus_y 1e3\n")
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	if v, err := metric(addr, "torus_x"); err != nil || v != 7.5 {
		t.Fatalf("metric torus_x = %v, %v; want 7.5", v, err)
	}
	if v, err := metric(addr, "torus_y"); err != nil || v != 1000 {
		t.Fatalf("metric torus_y = %v, %v; want 1000", v, err)
	}
	if _, err := metric(addr, "torus_z"); err == nil {
		t.Fatal("a missing metric was found")
	}
}
