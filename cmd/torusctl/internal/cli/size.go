package cli

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/torus-storage/torus"
)

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	// Longest suffixes first so "MiB" is not read as "B".
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"PiB", 1 << 50},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"PB", 1e15},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}, {"P", 1 << 50},
	{"B", 1},
}

// ParseSize parses a byte count: an integer with an optional unit, binary
// (KiB, MiB, GiB, TiB, PiB, or K, M, G, T, P) or decimal (KB, MB, GB, TB,
// PB), or B. Units are case-insensitive. It rejects negative, fractional,
// unparsable and overflowing values with an error wrapping torus.ErrInvalid.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if len(t) > len(u.suffix) && strings.EqualFold(t[len(t)-len(u.suffix):], u.suffix) {
			t, mult = strings.TrimSpace(t[:len(t)-len(u.suffix)]), u.mult
			break
		}
	}
	if strings.HasPrefix(t, "-") {
		return 0, fmt.Errorf("%w: size %q is negative", torus.ErrInvalid, s)
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
			return 0, fmt.Errorf("%w: size %q is too large", torus.ErrInvalid, s)
		}
		return 0, fmt.Errorf("%w: cannot parse size %q (examples: 4096, 512MiB, 1GiB)", torus.ErrInvalid, s)
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%w: size %q is too large", torus.ErrInvalid, s)
	}
	return n * mult, nil
}

// ParseVolumeSize parses a volume size: positive and a multiple of
// torus.BlockSize.
func ParseVolumeSize(s string) (int64, error) {
	n, err := ParseSize(s)
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, fmt.Errorf("%w: volume size %q must be greater than zero", torus.ErrInvalid, s)
	}
	if n%torus.BlockSize != 0 {
		return 0, fmt.Errorf("%w: volume size %q (%d bytes) is not a multiple of %d bytes", torus.ErrInvalid, s, n, torus.BlockSize)
	}
	return n, nil
}

// FormatSize prints n exactly, in the largest binary unit that divides it
// (1GiB, 1536MiB, 4KiB, 1000B).
func FormatSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	i := 0
	for n != 0 && n%1024 == 0 && i < len(units)-1 {
		n /= 1024
		i++
	}
	return strconv.FormatInt(n, 10) + units[i]
}

// HumanSize prints n for reading, not parsing: exactly when a binary unit
// of at least n/1024 divides it (4KiB, 0B), else rounded to one decimal in
// the largest unit not above n (5.0MiB, 1.5GiB, 1000B).
func HumanSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB"}
	i := 0
	f := float64(n)
	for (f >= 1024 || f <= -1024) && i < len(units)-1 {
		f /= 1024
		i++
	}
	if f == float64(int64(f)) {
		return strconv.FormatInt(int64(f), 10) + units[i]
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + units[i]
}
