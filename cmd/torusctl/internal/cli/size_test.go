package cli

import (
	"errors"
	"testing"

	"github.com/torus-storage/torus"
)

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"0": 0, "4096": 4096, "4096B": 4096, "1KiB": 1024, "512MiB": 512 << 20, "1GiB": 1 << 30,
		"1gib": 1 << 30, "2T": 2 << 40, "1G": 1 << 30, "1GB": 1e9, "32MiB": 32 << 20, " 8 MiB ": 8 << 20,
		"8PiB": 8 << 50,
	}
	for in, want := range good {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "-4096", "abc", "1.5GiB", "GiB", "1XB", "9999999999PiB", "99999999999999999999", "0x10"} {
		if _, err := ParseSize(in); !errors.Is(err, torus.ErrInvalid) {
			t.Errorf("ParseSize(%q) = %v, want ErrInvalid", in, err)
		}
	}
}

func TestParseVolumeSize(t *testing.T) {
	for _, in := range []string{"0", "0GiB", "1000", "4097", "1KB", "-1GiB"} {
		if _, err := ParseVolumeSize(in); !errors.Is(err, torus.ErrInvalid) {
			t.Errorf("ParseVolumeSize(%q) = %v, want ErrInvalid", in, err)
		}
	}
	if n, err := ParseVolumeSize("1GiB"); err != nil || n != 1<<30 {
		t.Fatalf("ParseVolumeSize(1GiB) = %d, %v", n, err)
	}
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 1000: "1000B", 4096: "4KiB", 1 << 30: "1GiB", 1536 << 20: "1536MiB", 1 << 50: "1PiB", 1 << 60: "1024PiB"} {
		if got := FormatSize(n); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", n, got, want)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"1GiB", "4096", "-1", "1.5M", "99999999999999PiB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err == nil && n < 0 {
			t.Fatalf("ParseSize(%q) = %d, negative without error", s, n)
		}
		if err == nil {
			if m, err := ParseSize(FormatSize(n)); err != nil || m != n {
				t.Fatalf("round trip of %d via %q: %d, %v", n, FormatSize(n), m, err)
			}
		}
	})
}

func TestHumanSize(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{0, "0B"}, {1000, "1000B"}, {4096, "4KiB"}, {5248040, "5.0MiB"}, {3 << 29, "1.5GiB"}, {1 << 30, "1GiB"}, {-2048, "-2KiB"},
	} {
		if got := HumanSize(tc.n); got != tc.want {
			t.Errorf("HumanSize(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}
