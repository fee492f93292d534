package volume

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/torus-storage/torus"
)

// TestConcurrentPartialWrites: writers touching disjoint byte ranges of the
// same blocks (read-modify-write of shared edge blocks) lose nothing.
func TestConcurrentPartialWrites(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2})
	const size = 256 << 10
	c.create("vol", size, 0)
	v := c.open("vol", Options{})
	defer v.Close(ctx)
	const workers, piece = 8, 700 // pieces straddle block boundaries
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := int64(w * piece); off+piece <= size; off += workers * piece {
				p := bytes.Repeat([]byte{byte(w + 1)}, piece)
				if err := v.WriteAt(ctx, p, off, false); err != nil {
					t.Error(err)
					return
				}
				if off%(32*workers*piece) == int64(w*piece) {
					if err := v.Flush(ctx); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	// Readers run alongside.
	stop := make(chan struct{})
	var rg sync.WaitGroup
	rg.Add(1)
	go func() {
		defer rg.Done()
		buf := make([]byte, 9000)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := v.ReadAt(ctx, buf, 1234); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	wg.Wait()
	close(stop)
	rg.Wait()
	m := make(model, size)
	for off := int64(0); off+piece <= size; off += piece {
		w := (off / piece) % workers
		copy(m[off:off+piece], bytes.Repeat([]byte{byte(w + 1)}, piece))
	}
	verify(t, ctx, v, m)
}

// TestNoGoroutineLeak: Close stops every goroutine the volume started.
func TestNoGoroutineLeak(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2})
	c.create("vol", 1<<20, 0)
	before := runtime.NumGoroutine()
	for i := 0; i < 5; i++ {
		v := c.open("vol", Options{})
		if err := v.WriteAt(ctx, make([]byte, 5000), 100, true); err != nil {
			t.Fatal(err)
		}
		ro := c.open("vol", Options{ReadOnly: true})
		if err := ro.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := v.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines before, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestCloseDuringIO: Close while writers, flushers and readers run; each
// call either succeeds or fails with ErrClosed, and nothing hangs.
func TestCloseDuringIO(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, clusterOpts{replication: 2})
	c.create("vol", 1<<20, 0)
	v := c.open("vol", Options{})
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 3000)
			for i := 0; ; i++ {
				var err error
				switch w % 3 {
				case 0:
					err = v.WriteAt(ctx, p, int64(i%200)*4000, false)
				case 1:
					err = v.Flush(ctx)
				default:
					err = v.ReadAt(ctx, p, int64(i%200)*4000)
				}
				if errors.Is(err, torus.ErrClosed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	if err := v.Close(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}
