package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/torus-storage/torus/cmd/torusctl/internal/cli"
	"github.com/torus-storage/torus/internal/testcluster"
	"github.com/torus-storage/torus/volume"
)

// ctlIn runs torusctl with stdin as its standard input.
func ctlIn(t *testing.T, c *testcluster.Cluster, stdin io.Reader, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	d := deps()
	d.Stdin = stdin
	args = append([]string{"--etcd", strings.Join(c.Endpoints, ","), "--etcd-prefix", "/torus/"}, args...)
	code = cli.Main(args, &out, &errOut, d)
	return out.String(), errOut.String(), code
}

// sparseImage is a random image of n bytes (a multiple of 4 KiB): holes of
// whole blocks, runs of data, and data blocks with zero runs inside.
func sparseImage(n int, seed int64) []byte {
	r := rand.New(rand.NewSource(seed))
	img := make([]byte, n)
	for off := 0; off < n; {
		run := (1 + r.Intn(64)) * 4096
		end := min(off+run, n)
		switch r.Intn(3) {
		case 0: // hole
		case 1: // data
			r.Read(img[off:end])
		case 2: // data with a zero run that is not block aligned
			r.Read(img[off:end])
			z := r.Intn(end - off)
			clear(img[off+z : off+z+r.Intn(end-off-z)])
		}
		off = end
	}
	return img
}

// writeSparse writes img to a new file, skipping its all-zero blocks.
func writeSparse(t *testing.T, img []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "image.raw")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, 4096)
	for off := 0; off < len(img); off += 4096 {
		if b := img[off : off+4096]; !bytes.Equal(b, zero) {
			if _, err := f.WriteAt(b, int64(off)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := f.Truncate(int64(len(img))); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return path
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// allocated is the bytes of disk a file uses.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func dataBytes(t *testing.T, c *testcluster.Cluster, name string) int64 {
	t.Helper()
	ctx := context.Background()
	v, err := c.Open(ctx, name, volume.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close(ctx)
	es, err := v.Extents(ctx, 0, v.Size())
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range es {
		if !e.Zero {
			n += e.Length
		}
	}
	return n
}

func imageData(img []byte) int64 {
	var n int64
	zero := make([]byte, 4096)
	for off := 0; off < len(img); off += 4096 {
		if !bytes.Equal(img[off:off+4096], zero) {
			n += 4096
		}
	}
	return n
}

// TestImportExportRoundTrip imports a random sparse image from a file and
// from a pipe, and exports it to a file (sparse) and to a pipe: every copy
// is byte-identical, only the image's data blocks become volume data, and
// progress lines and the summary are printed.
func TestImportExportRoundTrip(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 2, Replication: 1})
	const size = 24 << 20
	mustCtl(t, c, "volume", "create", "vol", "24MiB")
	img := sparseImage(size, 1)
	src := writeSparse(t, img)

	out, errOut, code := ctlIn(t, c, nil, "volume", "import", "vol", src, "--progress-interval", "1ns")
	if code != 0 {
		t.Fatalf("import: exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "imported 24MiB into vol") || !strings.Contains(errOut, "import vol: ") || !strings.Contains(errOut, "done in") {
		t.Fatalf("import output: %q, progress: %q", out, errOut)
	}
	if got, want := dataBytes(t, c, "vol"), imageData(img); got != want {
		t.Fatalf("volume holds %d bytes of data, the image %d", got, want)
	}

	dst := filepath.Join(t.TempDir(), "out.raw")
	mustCtl(t, c, "volume", "export", "vol", dst)
	if !bytes.Equal(readFile(t, dst), img) {
		t.Fatal("exported file differs from the image")
	}
	if a := allocated(t, dst); a > imageData(img)+1<<20 {
		t.Fatalf("exported file allocates %d bytes, the image has %d of data: holes were written", a, imageData(img))
	}
	out, errOut, code = ctlIn(t, c, nil, "volume", "export", "vol", "-")
	if code != 0 || !bytes.Equal([]byte(out), img) {
		t.Fatalf("export to a pipe: exit %d, %d bytes, identical %v: %s", code, len(out), bytes.Equal([]byte(out), img), errOut)
	}

	// Through a pipe, with the original's name (block load / block dump).
	mustCtl(t, c, "volume", "create", "vol2", "24MiB")
	if _, errOut, code := ctlIn(t, c, bytes.NewReader(img), "block", "load", "vol2", "-"); code != 0 {
		t.Fatalf("block load from a pipe: exit %d: %s", code, errOut)
	}
	dst2 := filepath.Join(t.TempDir(), "out2.raw")
	mustCtl(t, c, "block", "dump", "vol2", dst2)
	if !bytes.Equal(readFile(t, dst2), img) {
		t.Fatal("image imported from a pipe differs")
	}
}

// TestImportClearsOldData imports a sparse image over a volume full of old
// data: the image's zero runs read as zeros afterwards; past the image the
// old data stays, unless --zero-rest.
func TestImportClearsOldData(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 2, Replication: 1})
	mustCtl(t, c, "volume", "create", "vol", "16MiB")
	old := pattern(16<<20, 9)
	writeVolume(t, c, "vol", 0, old)
	img := sparseImage(12<<20, 2)
	src := writeSparse(t, img)

	out := mustCtl(t, c, "-o", "json", "volume", "import", "vol", src)
	if !strings.Contains(out, `"zeroed_bytes"`) || strings.Contains(out, `"zeroed_bytes": 0,`) {
		t.Fatalf("import over old data cleared nothing: %s", out)
	}
	got := readVolume(t, c, "vol", volume.Options{}, 0, 16<<20)
	if !bytes.Equal(got[:len(img)], img) {
		t.Fatal("the image's zero runs did not clear the old data")
	}
	if !bytes.Equal(got[len(img):], old[len(img):]) {
		t.Fatal("past the image the old data changed without --zero-rest")
	}

	mustCtl(t, c, "volume", "import", "vol", src, "--zero-rest")
	got = readVolume(t, c, "vol", volume.Options{}, 0, 16<<20)
	if !bytes.Equal(got[:len(img)], img) || !bytes.Equal(got[len(img):], make([]byte, 16<<20-len(img))) {
		t.Fatal("--zero-rest: the rest of the volume is not zero")
	}
}

// TestImportTooLarge: a file larger than the volume is refused before
// anything is written, pointing at volume resize; from a pipe the import
// fails at the volume's end.
func TestImportTooLarge(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 2, Replication: 1})
	mustCtl(t, c, "volume", "create", "vol", "8MiB")
	big := pattern(9<<20, 4)
	path := filepath.Join(t.TempDir(), "big.raw")
	if err := os.WriteFile(path, big, 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := ctlIn(t, c, nil, "volume", "import", "vol", path)
	if code == 0 || !strings.Contains(errOut, "larger than volume") || !strings.Contains(errOut, "torusctl volume resize vol 9MiB") || !strings.Contains(errOut, "nothing written") {
		t.Fatalf("too large: exit %d, %q", code, errOut)
	}
	if n := dataBytes(t, c, "vol"); n != 0 {
		t.Fatalf("a refused import wrote %d bytes", n)
	}
	if v, _ := c.Meta.Volume(context.Background(), "vol"); v.Labels[cli.ImportOffsetLabel] != "" {
		t.Fatalf("a refused import left the label: %v", v.Labels)
	}
	_, errOut, code = ctlIn(t, c, bytes.NewReader(big), "volume", "import", "vol", "-")
	if code == 0 || !strings.Contains(errOut, "input is larger than volume") {
		t.Fatalf("too large from a pipe: exit %d, %q", code, errOut)
	}
}

// failingReader returns the first n bytes of r, then an error.
type failingReader struct {
	r io.Reader
	n int
}

var errCut = errors.New("cable cut")

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errCut
	}
	p = p[:min(len(p), f.n)]
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

// TestImportResume interrupts an import from a pipe: the volume records the
// offset flushed; a new import is refused naming --resume and --force;
// --resume (from the file, and from a pipe again) completes the image and
// removes the label.
func TestImportResume(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 2, Replication: 1})
	mustCtl(t, c, "volume", "create", "vol", "16MiB")
	img := sparseImage(16<<20, 3)
	src := writeSparse(t, img)

	_, errOut, code := ctlIn(t, c, &failingReader{r: bytes.NewReader(img), n: 7<<20 + 100}, "volume", "import", "vol", "-", "--checkpoint-every", "2MiB")
	if code == 0 || !strings.Contains(errOut, "cable cut") || !strings.Contains(errOut, "--resume") {
		t.Fatalf("interrupted import: exit %d, %q", code, errOut)
	}
	v, err := c.Meta.Volume(context.Background(), "vol")
	if err != nil {
		t.Fatal(err)
	}
	if got := v.Labels[cli.ImportOffsetLabel]; got != "6291456" {
		t.Fatalf("label %s=%q, want 6291456 (the last 2MiB checkpoint before 7MiB)", cli.ImportOffsetLabel, got)
	}
	_, errOut, code = ctlIn(t, c, nil, "volume", "import", "vol", src)
	if code == 0 || !strings.Contains(errOut, "interrupted import") || !strings.Contains(errOut, "--resume") || !strings.Contains(errOut, "--force") {
		t.Fatalf("import over an interrupted one: exit %d, %q", code, errOut)
	}
	out := mustCtl(t, c, "-o", "json", "volume", "import", "vol", src, "--resume")
	if !strings.Contains(out, `"start": 6291456`) {
		t.Fatalf("resume did not start at the checkpoint: %s", out)
	}
	if v, _ := c.Meta.Volume(context.Background(), "vol"); v.Labels[cli.ImportOffsetLabel] != "" {
		t.Fatalf("completed import left the label: %v", v.Labels)
	}
	if got := readVolume(t, c, "vol", volume.Options{}, 0, 16<<20); !bytes.Equal(got, img) {
		t.Fatal("resumed import differs from the image")
	}
	if _, errOut, code := ctlIn(t, c, nil, "volume", "import", "vol", src, "--resume"); code == 0 || !strings.Contains(errOut, "no interrupted import") {
		t.Fatalf("--resume without an interrupted import: exit %d %q", code, errOut)
	}

	// Interrupted again, resumed from a pipe; --force starts over.
	_, _, code = ctlIn(t, c, &failingReader{r: bytes.NewReader(img), n: 3 << 20}, "volume", "import", "vol", "-", "--checkpoint-every", "1MiB")
	if code == 0 {
		t.Fatal("second interrupted import succeeded")
	}
	if _, errOut, code := ctlIn(t, c, bytes.NewReader(img), "volume", "import", "vol", "-", "--resume"); code != 0 {
		t.Fatalf("resume from a pipe: exit %d %q", code, errOut)
	}
	if got := readVolume(t, c, "vol", volume.Options{}, 0, 16<<20); !bytes.Equal(got, img) {
		t.Fatal("import resumed from a pipe differs from the image")
	}
	_, _, _ = ctlIn(t, c, &failingReader{r: bytes.NewReader(img), n: 3 << 20}, "volume", "import", "vol", "-", "--checkpoint-every", "1MiB")
	mustCtl(t, c, "volume", "import", "vol", src, "--force")
}

// TestExportSnapshot exports vol@snap: the data of the snapshot's moment,
// not the volume's current data.
func TestExportSnapshot(t *testing.T) {
	c := testcluster.New(t, testcluster.Options{Daemons: 2, Replication: 1})
	mustCtl(t, c, "volume", "create", "vol", "8MiB")
	a := pattern(3<<20, 1)
	writeVolume(t, c, "vol", 1<<20, a)
	mustCtl(t, c, "snapshot", "create", "vol@s1")
	writeVolume(t, c, "vol", 0, pattern(8<<20, 77))

	dst := filepath.Join(t.TempDir(), "snap.raw")
	out := mustCtl(t, c, "volume", "export", "vol@s1", dst)
	if !strings.Contains(out, "exported vol@s1") {
		t.Fatalf("export printed %q", out)
	}
	want := make([]byte, 8<<20)
	copy(want[1<<20:], a)
	if !bytes.Equal(readFile(t, dst), want) {
		t.Fatal("snapshot export differs from the snapshot's data")
	}
	if _, errOut, code := ctlIn(t, c, nil, "volume", "export", "vol@nope", dst); code == 0 || !strings.Contains(errOut, "not exist") {
		t.Fatalf("export of a missing snapshot: exit %d %q", code, errOut)
	}
}
