package storage

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/torus-storage/torus"
)

// sizeUnits maps a lower-cased unit suffix to its multiplier. Single
// letters and IEC names (KiB, Ki) are powers of 1024; SI names (KB) are
// powers of 1000.
var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "ki": 1 << 10, "kib": 1 << 10, "kb": 1e3,
	"m": 1 << 20, "mi": 1 << 20, "mib": 1 << 20, "mb": 1e6,
	"g": 1 << 30, "gi": 1 << 30, "gib": 1 << 30, "gb": 1e9,
	"t": 1 << 40, "ti": 1 << 40, "tib": 1 << 40, "tb": 1e12,
	"p": 1 << 50, "pi": 1 << 50, "pib": 1 << 50, "pb": 1e15,
}

// ParseSize parses a store capacity, the daemon's --size flag:
//
//   - a byte count: "1073741824";
//   - a number and a unit, case-insensitive, with optional space:
//     "10GiB", "512 MiB", "1.5T". K, M, G, T, P and KiB, MiB, ... (also
//     Ki, Mi, ...) are powers of 1024; KB, MB, GB, TB, PB are powers of
//     1000; B is bytes. Fractions are rounded down to whole bytes;
//   - a percentage of the size of the filesystem holding dir: "80%",
//     "12.5%" (0 < N <= 100), rounded down to a multiple of
//     torus.BlockSize. dir need not exist yet: its nearest existing
//     parent is measured.
//
// Anything else, zero, negative sizes and sizes above math.MaxInt64 fail
// with an error wrapping torus.ErrInvalid.
func ParseSize(s string, dir string) (int64, error) {
	in := strings.TrimSpace(s)
	bad := func(why string) error {
		return fmt.Errorf("storage: size %q %s (want e.g. 10GiB, 512MiB, 1G, 1073741824 or 80%%): %w", s, why, torus.ErrInvalid)
	}
	if in == "" {
		return 0, bad("is empty")
	}
	if pct, ok := strings.CutSuffix(in, "%"); ok {
		p, err := strconv.ParseFloat(strings.TrimSpace(pct), 64)
		if err != nil || math.IsNaN(p) || math.IsInf(p, 0) {
			return 0, bad("is not a percentage")
		}
		if p <= 0 || p > 100 {
			return 0, bad("must be a percentage in (0, 100]")
		}
		total, err := filesystemSize(dir)
		if err != nil {
			return 0, fmt.Errorf("storage: size %q: %w", s, err)
		}
		n := int64(float64(total) * p / 100)
		n -= n % torus.BlockSize
		if n <= 0 {
			return 0, bad(fmt.Sprintf("is zero bytes of the %d-byte filesystem holding %s", total, dir))
		}
		return n, nil
	}
	// Split the number from the unit.
	i := 0
	for i < len(in) && (in[i] >= '0' && in[i] <= '9' || in[i] == '.' || in[i] == '-' || in[i] == '+') {
		i++
	}
	num, unit := in[:i], strings.ToLower(strings.TrimSpace(in[i:]))
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, bad(fmt.Sprintf("has an unknown unit %q", in[i:]))
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok || num == "" || strings.ContainsAny(num, "eE/") {
		return 0, bad("is not a number")
	}
	if r.Sign() < 0 {
		return 0, bad("is negative")
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	n := new(big.Int).Quo(r.Num(), r.Denom()) // rounds toward zero
	if !n.IsInt64() {
		return 0, bad("is too large")
	}
	if n.Sign() == 0 {
		return 0, bad("is zero")
	}
	return n.Int64(), nil
}

// filesystemSize returns the total size of the filesystem holding dir, or
// its nearest existing parent.
func filesystemSize(dir string) (int64, error) {
	if dir == "" {
		dir = "."
	}
	p, err := filepath.Abs(dir)
	if err != nil {
		return 0, err
	}
	for {
		var st unix.Statfs_t
		err := unix.Statfs(p, &st)
		if err == nil {
			return int64(st.Blocks) * int64(st.Bsize), nil
		}
		parent := filepath.Dir(p)
		if !errors.Is(err, fs.ErrNotExist) || parent == p {
			return 0, fmt.Errorf("statfs %s: %w", p, &os.PathError{Op: "statfs", Path: p, Err: err})
		}
		p = parent
	}
}

// FormatSize formats a byte count for people: "0 B", "1023 B", "1 KiB",
// "1.5 GiB", with at most one decimal, in powers of 1024.
func FormatSize(n int64) string {
	if n < 0 {
		if n == math.MinInt64 {
			return "-8 EiB"
		}
		return "-" + FormatSize(-n)
	}
	if n < 1024 {
		return strconv.FormatInt(n, 10) + " B"
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v := float64(n) / 1024
	u := 0
	for u < len(units)-1 && v >= 1024 {
		v /= 1024
		u++
	}
	s := strconv.FormatFloat(v, 'f', 1, 64)
	if s == "1024.0" && u < len(units)-1 { // 1023.96 MiB rounds up to 1 GiB
		s, u = "1.0", u+1
	}
	return strings.TrimSuffix(s, ".0") + " " + units[u]
}
