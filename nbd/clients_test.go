package nbd

// Tests with real NBD clients: libnbd tools, qemu, fio, and a filesystem on
// nbdfuse + loop. Each is skipped when its program is missing (unless
// TORUS_REQUIRE_TOOLS=1).

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus/internal/testutil"
)

// run runs a program with a timeout and returns its combined output,
// failing the test if it fails.
func run(t testing.TB, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := runErr(timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

func uri(addr, export string) string { return "nbd://" + addr + "/" + export }

func TestNbdinfo(t *testing.T) {
	nbdinfo := testutil.RequireBinary(t, "nbdinfo")
	t.Parallel()
	ex := newMemExports()
	dev := ex.add("vol", 64<<20)
	ex.add("vol@snap1", 16<<20)
	ex.desc["vol"] = "test volume"
	_, addr := startServer(t, Config{}, ex)

	var info struct {
		Exports []struct {
			Name         string   `json:"export-name"`
			Size         int64    `json:"export-size"`
			Description  string   `json:"description"`
			ReadOnly     bool     `json:"is_read_only"`
			CanFlush     bool     `json:"can_flush"`
			CanFUA       bool     `json:"can_fua"`
			CanTrim      bool     `json:"can_trim"`
			CanZero      bool     `json:"can_zero"`
			CanFastZero  bool     `json:"can_fast_zero"`
			CanCache     bool     `json:"can_cache"`
			CanMultiConn bool     `json:"can_multi_conn"`
			CanDF        bool     `json:"can_df"`
			MinBlock     int64    `json:"block_size_minimum"`
			PrefBlock    int64    `json:"block_size_preferred"`
			MaxBlock     int64    `json:"block_size_maximum"`
			Contexts     []string `json:"contexts"`
		} `json:"exports"`
	}
	out := run(t, 30*time.Second, nbdinfo, "--json", uri(addr, "vol"))
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	e := info.Exports[0]
	if e.Size != 64<<20 || e.ReadOnly || !e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero ||
		!e.CanFastZero || !e.CanCache || !e.CanMultiConn || !e.CanDF ||
		e.MinBlock != 1 || e.PrefBlock != 4096 || e.MaxBlock != 32<<20 {
		t.Fatalf("nbdinfo: %+v\n%s", e, out)
	}
	if !strings.Contains(strings.Join(e.Contexts, ","), "base:allocation") {
		t.Fatalf("contexts %v", e.Contexts)
	}

	out = run(t, 30*time.Second, nbdinfo, "--json", uri(addr, "vol@snap1"))
	if !strings.Contains(out, `"is_read_only": true`) || !strings.Contains(out, `"export-size": 16777216`) {
		t.Fatalf("snapshot info:\n%s", out)
	}

	// --list shows both exports with the description.
	out = run(t, 30*time.Second, nbdinfo, "--list", "nbd://"+addr)
	for _, want := range []string{"export=", "vol", "vol@snap1", "test volume"} {
		if !strings.Contains(out, want) {
			t.Fatalf("nbdinfo --list lacks %q:\n%s", want, out)
		}
	}

	// --map: data after writes, holes after trims.
	idle(t, dev)
	ctx := context.Background()
	if err := dev.WriteAt(ctx, bytes.Repeat([]byte{1}, 1<<20), 4<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := dev.WriteAt(ctx, bytes.Repeat([]byte{1}, 2<<20), 10<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := dev.Trim(ctx, 10<<20, 1<<20); err != nil {
		t.Fatal(err)
	}
	out = run(t, 30*time.Second, nbdinfo, "--map", "--totals", uri(addr, "vol"))
	// --totals: bytes per type. 2 MiB data, 62 MiB hole+zero.
	if !strings.Contains(out, fmt.Sprint(2<<20)) || !strings.Contains(out, fmt.Sprint(62<<20)) {
		t.Fatalf("nbdinfo --map --totals:\n%s", out)
	}
	out = run(t, 30*time.Second, nbdinfo, "--map", uri(addr, "vol"))
	wantMap := []string{
		fmt.Sprintf("%d %d 3 hole,zero", 0, 4<<20),
		fmt.Sprintf("%d %d 0 data", 4<<20, 1<<20),
		fmt.Sprintf("%d %d 3 hole,zero", 5<<20, 6<<20),
		fmt.Sprintf("%d %d 0 data", 11<<20, 1<<20),
		fmt.Sprintf("%d %d 3 hole,zero", 12<<20, 52<<20),
	}
	if got := normalizeSpaces(out); got != strings.Join(wantMap, "\n") {
		t.Fatalf("nbdinfo --map:\n%s\nwant:\n%s", got, strings.Join(wantMap, "\n"))
	}
}

func normalizeSpaces(s string) string {
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		lines = append(lines, strings.Join(strings.Fields(l), " "))
	}
	return strings.Join(lines, "\n")
}

func TestQemuIO(t *testing.T) {
	qemuIO := testutil.RequireBinary(t, "qemu-io")
	t.Parallel()
	ex := newMemExports()
	dev := ex.add("vol", 64<<20)
	_, addr := startServer(t, Config{}, ex)
	type op struct {
		off, n int64
		pat    byte
	}
	ops := []op{
		{513, 3000, 0xab}, {0, 1, 0x01}, {1, 511, 0x02}, {4095, 2, 0x03}, {8191, 8193, 0x04},
		{1 << 20, 1 << 20, 0x05}, {3<<20 + 7, 5<<20 + 11, 0x06}, {64<<20 - 1, 1, 0x07},
		{64<<20 - 4097, 4097, 0x08}, {20 << 20, 32 << 20, 0x09}, {123457, 98765, 0x0a},
	}
	var args []string
	for _, o := range ops {
		args = append(args, "-c", fmt.Sprintf("write -P 0x%02x %d %d", o.pat, o.off, o.n))
	}
	// Later writes overlap earlier ones; verify in a second pass with what
	// the device holds.
	args = append(args, "-f", "raw", uri(addr, "vol"))
	out := run(t, 60*time.Second, qemuIO, args...)
	if strings.Contains(out, "failed") || strings.Count(out, "wrote ") != len(ops) {
		t.Fatalf("qemu-io writes:\n%s", out)
	}
	// Expected contents: apply the writes in order to a model.
	idle(t, dev)
	model := make([]byte, 64<<20)
	for _, o := range ops {
		copy(model[o.off:o.off+o.n], bytes.Repeat([]byte{o.pat}, int(o.n)))
	}
	got := make([]byte, 64<<20)
	if err := dev.ReadAt(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("device contents differ from the writes")
	}
	// Read back through qemu-io with pattern checks for non-overlapped
	// pieces, plus zero-writes and discards.
	args = []string{
		"-c", "read -P 0xab 513 3000", "-c", "read -P 0x08 67108863 1",
		"-c", "read -P 0x0a 123457 98765", "-c", "read -P 0x09 20971520 33554432",
		"-c", "write -z 4096 8192", "-c", "read -P 0 4096 8192",
		"-c", "discard 1048576 1048576", "-c", "read -P 0 1048576 1048576",
		"-c", "write -z -u 30000000 1000000", "-c", "read -P 0 30000000 1000000",
		"-c", "aio_write -P 0x33 40000000 65536", "-c", "aio_write -P 0x44 40065536 65536",
		"-c", "aio_flush", "-c", "read -P 0x33 40000000 65536", "-c", "read -P 0x44 40065536 65536",
		"-c", "flush",
		"-f", "raw", uri(addr, "vol"),
	}
	out = run(t, 60*time.Second, qemuIO, args...)
	if strings.Contains(out, "fail") || strings.Count(out, "read ") != 9 {
		t.Fatalf("qemu-io reads:\n%s", out)
	}
	idle(t, dev)
	if ext, _ := dev.Extents(context.Background(), 1<<20, 1<<20); len(ext) != 1 || !ext[0].Zero {
		t.Fatalf("discarded range not a hole: %v", ext)
	}
}

func TestNbdcopy(t *testing.T) {
	nbdcopy := testutil.RequireBinary(t, "nbdcopy")
	testutil.SkipShort(t, "256 MiB copy")
	t.Parallel()
	const size = 256 << 20
	ex := newMemExports()
	dev := ex.add("vol", size)
	_, addr := startServer(t, Config{}, ex)
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	data := make([]byte, size)
	rand.Read(data)
	clear(data[64<<20 : 80<<20]) // a hole, to exercise zeroing
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, 90*time.Second, nbdcopy, "--flush", src, uri(addr, "vol"))
	idle(t, dev)
	if dev.Flushes() < 2 { // nbdcopy's flush and the close
		t.Fatal("nbdcopy --flush did not flush")
	}
	got := make([]byte, size)
	if err := dev.ReadAt(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("device differs from the source after nbdcopy")
	}
	got = nil
	run(t, 90*time.Second, nbdcopy, uri(addr, "vol"), dst)
	run(t, 30*time.Second, "cmp", src, dst)
}

func TestFio(t *testing.T) {
	fio := testutil.RequireBinary(t, "fio")
	t.Parallel()
	ex := newMemExports()
	ex.add("vol", 64<<20)
	_, addr := startServer(t, Config{}, ex)
	out := run(t, 90*time.Second, fio,
		"--name=verify", "--ioengine=nbd", "--uri="+uri(addr, "vol"),
		"--rw=randwrite", "--bsrange=512-64k", "--bs_unaligned=1", "--iodepth=32", "--size=32M",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_backlog=512",
		"--output-format=json")
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				Bytes int64 `json:"io_bytes"`
			} `json:"read"`
			Write struct {
				Bytes int64 `json:"io_bytes"`
			} `json:"write"`
		} `json:"jobs"`
	}
	if i := strings.Index(out, "{"); i >= 0 {
		out = out[i:]
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Jobs) != 1 {
		t.Fatalf("fio output: %v\n%s", err, out)
	}
	// Every byte written was read back and verified.
	if j := res.Jobs[0]; j.Error != 0 || j.Write.Bytes < 30<<20 || j.Read.Bytes < j.Write.Bytes {
		t.Fatalf("fio: %+v", j)
	}
}

func TestQemuImgConvert(t *testing.T) {
	qemuImg := testutil.RequireBinary(t, "qemu-img")
	qemuIO := testutil.RequireBinary(t, "qemu-io")
	t.Parallel()
	ex := newMemExports()
	ex.add("vol", 64<<20)
	_, addr := startServer(t, Config{}, ex)
	dir := t.TempDir()
	src, back := filepath.Join(dir, "src.qcow2"), filepath.Join(dir, "back.qcow2")
	run(t, 30*time.Second, qemuImg, "create", "-q", "-f", "qcow2", src, "64M")
	run(t, 30*time.Second, qemuIO, "-f", "qcow2",
		"-c", "write -P 0x11 0 1M", "-c", "write -P 0x22 10M 3M", "-c", "write -P 0x33 63M 1M",
		"-c", "write -P 0x44 12345 6789", src)
	run(t, 60*time.Second, qemuImg, "convert", "-n", "-f", "qcow2", "-O", "raw", src, uri(addr, "vol"))
	run(t, 60*time.Second, qemuImg, "compare", "-f", "qcow2", "-F", "raw", src, uri(addr, "vol"))
	run(t, 60*time.Second, qemuImg, "convert", "-f", "raw", "-O", "qcow2", uri(addr, "vol"), back)
	out := run(t, 60*time.Second, qemuImg, "compare", src, back)
	if !strings.Contains(out, "identical") {
		t.Fatalf("qemu-img compare: %s", out)
	}
	// The copy back is sparse: qemu-img used block status.
	out = run(t, 30*time.Second, qemuImg, "map", "--output=json", "-f", "raw", uri(addr, "vol"))
	if !strings.Contains(out, `"data": false`) {
		t.Fatalf("qemu-img map shows no holes:\n%s", out)
	}
}
