package storage_test

import (
	"errors"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/storage"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"1073741824", 1 << 30},
		{"1", 1},
		{"10GiB", 10 << 30},
		{"512MiB", 512 << 20},
		{"512 MiB", 512 << 20},
		{" 4KiB ", 4096},
		{"1G", 1 << 30},
		{"1g", 1 << 30},
		{"1Gi", 1 << 30},
		{"1GB", 1e9},
		{"2TB", 2e12},
		{"3T", 3 << 40},
		{"1P", 1 << 50},
		{"1.5GiB", 3 << 29},
		{"0.5K", 512},
		{"100B", 100},
		{"1.7B", 1}, // rounded down
		{"+2M", 2 << 20},
		{"7EiB", 0}, // unknown unit: no exabytes
		{"8589934591G", 8589934591 << 30},
	} {
		got, err := storage.ParseSize(tc.in, t.TempDir())
		if tc.want == 0 {
			if !errors.Is(err, torus.ErrInvalid) {
				t.Errorf("ParseSize(%q) = %d, %v; want ErrInvalid", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestParseSizeInvalid(t *testing.T) {
	for _, in := range []string{
		"", "  ", "0", "0G", "0.0001B", "-1", "-5GiB", "abc", "G", "10 GiBs", "1e9", "1/2G",
		"1.2.3G", "10XB", "9223372036854775808", "8589934592G", "0%", "-5%", "101%",
		"abc%", "%", "NaN%", "Inf%", "1..5G",
	} {
		got, err := storage.ParseSize(in, t.TempDir())
		if !errors.Is(err, torus.ErrInvalid) {
			t.Errorf("ParseSize(%q) = %d, %v; want ErrInvalid", in, got, err)
			continue
		}
		if !strings.Contains(err.Error(), "size") {
			t.Errorf("ParseSize(%q) error %q does not say what was wrong", in, err)
		}
	}
}

func TestParseSizePercent(t *testing.T) {
	dir := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	total := int64(st.Blocks) * int64(st.Bsize)
	for _, tc := range []struct {
		in  string
		pct float64
	}{{"100%", 100}, {"50%", 50}, {"12.5%", 12.5}, {" 80 % ", 80}} {
		// A dir that does not exist yet is measured on its parent.
		got, err := storage.ParseSize(tc.in, filepath.Join(dir, "not", "yet"))
		if err != nil {
			t.Fatalf("ParseSize(%q): %v", tc.in, err)
		}
		want := int64(float64(total) * tc.pct / 100)
		want -= want % torus.BlockSize
		if got != want || got%torus.BlockSize != 0 {
			t.Errorf("ParseSize(%q) = %d; want %d (%v%% of %d, block aligned)", tc.in, got, want, tc.pct, total)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{0, "0 B"},
		{1, "1 B"},
		{1023, "1023 B"},
		{1024, "1 KiB"},
		{1536, "1.5 KiB"},
		{512 << 20, "512 MiB"},
		{3 << 29, "1.5 GiB"},
		{10 << 30, "10 GiB"},
		{(1 << 30) - 1, "1 GiB"},
		{1 << 40, "1 TiB"},
		{math.MaxInt64, "8 EiB"},
		{-(3 << 29), "-1.5 GiB"},
		{math.MinInt64, "-8 EiB"},
	} {
		if got := storage.FormatSize(tc.in); got != tc.want {
			t.Errorf("FormatSize(%d) = %q; want %q", tc.in, got, tc.want)
		}
	}
}

// FormatSize output parses back to within 5% of the input.
func TestFormatSizeParses(t *testing.T) {
	for _, n := range []int64{1, 1000, 4096, 1 << 20, 123456789, 3 << 29, 1 << 50} {
		s := storage.FormatSize(n)
		got, err := storage.ParseSize(s, "")
		if err != nil {
			t.Fatalf("ParseSize(FormatSize(%d) = %q): %v", n, s, err)
		}
		if math.Abs(float64(got-n)) > 0.05*float64(n) {
			t.Errorf("ParseSize(FormatSize(%d) = %q) = %d", n, s, got)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"10GiB", "512MiB", "1G", "1073741824", "80%", "1.5 T", "-1", "0", "x"} {
		f.Add(s)
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, s string) {
		n, err := storage.ParseSize(s, dir)
		if err != nil {
			if !errors.Is(err, torus.ErrInvalid) {
				t.Fatalf("ParseSize(%q): %v; want ErrInvalid", s, err)
			}
			return
		}
		if n <= 0 {
			t.Fatalf("ParseSize(%q) = %d with no error", s, n)
		}
	})
}
