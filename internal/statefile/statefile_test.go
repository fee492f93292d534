package statefile

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWrite: Write creates the directory, replaces the file, leaves no
// temporary file and sets the mode; Remove of a missing file succeeds.
func TestWrite(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sub", "v.json")
	for _, s := range []string{"one", "two"} {
		if err := Write(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(p); err != nil || string(b) != s {
			t.Fatalf("read %q, %v; want %q", b, err, s)
		}
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", st.Mode())
	}
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(p), "*.tmp")); len(m) != 0 {
		t.Errorf("temporary files left: %v", m)
	}
	if err := Write(filepath.Join(p, "x"), nil, 0o600); err == nil {
		t.Error("Write under a regular file succeeded")
	}
	if err := Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := Remove(p); err != nil {
		t.Fatalf("Remove of a missing file: %v", err)
	}
}
