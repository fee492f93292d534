package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestWriteAmplification(t *testing.T) {
	for _, c := range []struct {
		stored, written int64
		repl            int
		want            float64
	}{
		{2 << 30, 1 << 30, 2, 1},
		{2*(1<<30) + 2*(1<<30)/20, 1 << 30, 2, 1.05},
		{3 << 30, 1 << 30, 3, 1},
		{1, 0, 2, 0},
		{1, 1, 0, 0},
		{-1, 1, 1, 0},
	} {
		if got := WriteAmplification(c.stored, c.written, c.repl); got < c.want-1e-9 || got > c.want+1e-9 {
			t.Errorf("%d/%d/%d = %v, want %v", c.stored, c.written, c.repl, got, c.want)
		}
	}
}

func TestParseSizes(t *testing.T) {
	got, err := ParseSizes("1GiB, 16GiB,64G,32MiB")
	if err != nil || !slices.Equal(got, []int64{1 << 30, 16 << 30, 64 << 30, 32 << 20}) {
		t.Errorf("got %v %v", got, err)
	}
	if FormatSizes(got) != "1GiB,16GiB,64GiB,32MiB" {
		t.Errorf("format %q", FormatSizes(got))
	}
	if got, err := ParseSizes(""); err != nil || len(got) != 0 {
		t.Errorf("empty: %v %v", got, err)
	}
	for _, bad := range []string{"1GiB,lots", "4KiB", "-1"} {
		if _, err := ParseSizes(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestDirBytes(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	write := func(p string, n int) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, make([]byte, n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(a, "segments", "v1", "s1"), 1000)
	write(filepath.Join(a, "LOCK"), 0)
	write(filepath.Join(b, "segments", "v1", "s2"), 24)
	// A sparse file counts its size, as a segment's length does.
	f, err := os.Create(filepath.Join(b, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Symlink(filepath.Join(a, "segments"), filepath.Join(b, "link")); err != nil {
		t.Fatal(err)
	}
	n, err := DirBytes([]string{a, b, filepath.Join(t.TempDir(), "gone")})
	if err != nil || n != 1024+1<<20 {
		t.Errorf("got %d %v, want %d", n, err, 1024+1<<20)
	}
}

func TestWAFioArgs(t *testing.T) {
	args := strings.Join(WAFioArgs(Endpoint{NBD: "nbd://127.0.0.1:1/bench"}, 1<<30, "/o.json"), " ")
	for _, want := range []string{"--rw=randwrite", "--bs=4096", "--size=1073741824", "--end_fsync=1", "--ioengine=nbd"} {
		if !strings.Contains(args, want) {
			t.Errorf("args lack %s: %s", want, args)
		}
	}
	// Every block exactly once: fio's random map stays on, no time limit.
	for _, bad := range []string{"norandommap", "time_based", "runtime"} {
		if strings.Contains(args, bad) {
			t.Errorf("args have %s: %s", bad, args)
		}
	}
}

func TestWADaemonSize(t *testing.T) {
	spec := WASpec()
	if got := WADaemonSize(spec, 1<<30, 20<<30); got != 20<<30 {
		t.Errorf("1GiB: %d", got)
	}
	// 64 GiB at replication 2 over 3 daemons: 42.7 GiB each on average,
	// twice that, rounded up to whole GiB.
	if got := WADaemonSize(spec, 64<<30, 20<<30); got != 86<<30 {
		t.Errorf("64GiB: %d GiB", got>>30)
	}
}

func TestWASummary(t *testing.T) {
	w := WAResult{Ratio: 1.0123, StoredBytes: 2 << 30, WrittenBytes: 1 << 30, Replication: 2, UsedRatio: 1.01, WriteSeconds: 52, IOPS: 5041}
	want := "1.012 (2.00 GiB stored for 1.00 GiB written × 2; torus_store_used_bytes gives 1.010; written in 52 s at 5041 IOPS)"
	if got := w.Summary(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
