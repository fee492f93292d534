package attach

import (
	"context"
	"crypto/rand"
	"os"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/testcluster"
	"github.com/torus-storage/torus/volume"
)

// BenchmarkWrite compares sequential 1 MiB writes, fsynced every 16 MiB,
// through the attach backend (loop device → FUSE → torusblk fuse → volume
// API) with the same writes straight through the volume API in this
// process (the baseline), on the same in-process cluster. The ratio
// fuse-loop/volume-api is the cost of the kernel path:
//
//	TORUS_BIN=$PWD/bin go test -run XXX -bench BenchmarkWrite -benchtime 256x ./internal/attach
func BenchmarkWrite(b *testing.B) {
	requireToolsB(b)
	c := testcluster.New(b, testcluster.Options{Daemons: 1, Replication: 1, Capacity: 4 << 30})
	const size = 256 << 20
	c.CreateVolume("api", size)
	c.CreateVolume("fuse", size)
	buf := make([]byte, 1<<20)
	_, _ = rand.Read(buf)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	b.Run("volume-api", func(b *testing.B) {
		v, err := c.Open(ctx, "api", volume.Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer v.Close(ctx)
		b.SetBytes(int64(len(buf)))
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := v.WriteAt(ctx, buf, int64(i%(size>>20))<<20, false); err != nil {
				b.Fatal(err)
			}
			if i%16 == 15 || i == b.N-1 {
				if err := v.Flush(ctx); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	b.Run("fuse-loop", func(b *testing.B) {
		a := newAttacher(b, c, b.TempDir())
		at, err := a.Attach(ctx, "fuse", false)
		if err != nil {
			b.Fatal(err)
		}
		defer a.Detach(context.Background(), "fuse")
		f, err := os.OpenFile(at.Device, os.O_RDWR|0o40000 /* O_DIRECT */, 0)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		b.SetBytes(int64(len(buf)))
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := f.WriteAt(buf, int64(i%(size>>20))<<20); err != nil {
				b.Fatal(err)
			}
			if i%16 == 15 || i == b.N-1 {
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
