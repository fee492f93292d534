package tests

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/torus-storage/torus/internal/proccluster"
)

// TestVersionsAgree: torusd --version, torusctl version, torusblk
// --version and torus-csi --version print the same line but for the
// program's name: release, commit, Go version and format versions.
func TestVersionsAgree(t *testing.T) {
	var lines []string
	for _, c := range [][]string{{"torusd", "--version"}, {"torusctl", "version"}, {"torusblk", "--version"}, {"torus-csi", "--version"}} {
		out, err := exec.Command(proccluster.Bin(t, c[0]), c[1:]...).Output()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", c[0], c[1], err, out)
		}
		line := strings.TrimSpace(string(out))
		rest, ok := strings.CutPrefix(line, c[0]+" ")
		if !ok || strings.Contains(rest, "\n") || !strings.Contains(rest, "formats: peer protocol ") || !strings.Contains(rest, "commit ") {
			t.Fatalf("%s %s printed %q", c[0], c[1], line)
		}
		lines = append(lines, rest)
	}
	for i := 1; i < len(lines); i++ {
		if lines[i] != lines[0] {
			t.Errorf("versions differ:\n%s\n%s", lines[0], lines[i])
		}
	}
	t.Logf("torusd %s", lines[0])
}
