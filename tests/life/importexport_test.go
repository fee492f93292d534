package life

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/proccluster"
)

// TestImportExportLarge: the real torusctl imports a 1 GiB sparse file
// holding 100 MiB of data, from the file and from a pipe, and exports it to
// a file and to a pipe: every copy is byte-identical (SHA-256), the volume
// holds only the data (its used bytes, one copy), the exported file
// allocates only the data, and progress lines are printed.
func TestImportExportLarge(t *testing.T) {
	c := startCluster(t, proccluster.Options{Daemons: 2, Replication: 1, SegmentSize: "32MiB"})
	dir := t.TempDir()
	const size, chunk, chunks = 1 << 30, 1 << 20, 100
	src := filepath.Join(dir, "src.raw")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(uint64(seed(t)), 1))
	buf := make([]byte, chunk)
	stride := int64(size / chunks)
	for i := int64(0); i < chunks; i++ {
		for j := range buf {
			buf[j] = byte(r.Uint32() | 1) // no zero block inside a chunk
		}
		if _, err := f.WriteAt(buf, i*stride+int64(r.IntN(int(stride-chunk)/4096))*4096); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	want := fileHash(t, src)

	ctl := func(stdin io.Reader, stdout io.Writer, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, proccluster.Bin(t, "torusctl"), append([]string{"--etcd", c.EtcdURL}, args...)...)
		var errOut bytes.Buffer
		cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, &errOut
		start := time.Now()
		if err := cmd.Run(); err != nil {
			t.Fatalf("torusctl %s: %v\n%s", strings.Join(args, " "), err, errOut.String())
		}
		t.Logf("torusctl %s: %v", strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
		return errOut.String()
	}
	used := func(vol string) int64 {
		t.Helper()
		row, err := volumeInfo(c, vol)
		if err != nil || row.Used == nil {
			t.Fatalf("volume %s: %+v %v", vol, row, err)
		}
		return *row.Used
	}

	c.Ctl("volume", "create", "big", "1GiB")
	progress := ctl(nil, io.Discard, "volume", "import", "big", src, "--progress-interval", "100ms")
	if !strings.Contains(progress, "import big: ") || !strings.Contains(progress, "done in") {
		t.Errorf("import progress output: %q", progress)
	}
	dst := filepath.Join(dir, "dst.raw")
	ctl(nil, io.Discard, "volume", "export", "big", dst, "--progress-interval", "100ms")
	if got := fileHash(t, dst); got != want {
		t.Fatalf("exported file sha256 %s, source %s", got, want)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if a := st.Blocks * 512; a < chunks*chunk || a > chunks*chunk+8<<20 {
		t.Errorf("exported file allocates %d bytes for %d of data", a, chunks*chunk)
	}

	// Through pipes: stdin into a second volume, its export to stdout.
	c.Ctl("volume", "create", "piped", "1GiB")
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	ctl(struct{ io.Reader }{in}, io.Discard, "volume", "import", "piped", "-")
	h := sha256.New()
	ctl(nil, h, "volume", "export", "piped", "-")
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		t.Fatalf("export through a pipe: sha256 %s, source %s", got, want)
	}

	// Only the data became volume data (the published status; allow the
	// records' headers and checksums, and a status round).
	eventually(t, 30*time.Second, 500*time.Millisecond, "used bytes published", func() (bool, string) {
		u1, u2 := used("big"), used("piped")
		ok := func(u int64) bool { return u >= chunks*chunk && u < chunks*chunk*11/10 }
		return ok(u1) && ok(u2), fmt.Sprintf("used %d and %d for %d bytes of data", u1, u2, chunks*chunk)
	})
}

func fileHash(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
