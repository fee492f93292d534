package blockdev

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/testutil"
)

// TestProbe on image files: all zeros is empty, unknown bytes are refused
// (ErrInUse), an ext4 image is ext4, an unreadable path is ErrUnavailable
// (never "empty").
func TestProbe(t *testing.T) {
	testutil.RequireBinary(t, "blkid")
	testutil.RequireBinary(t, "mkfs.ext4")
	ctx := context.Background()
	dir := t.TempDir()
	img := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, 8<<20); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if fs, err := Probe(ctx, img("zero", nil)); err != nil || fs != "" {
		t.Errorf("zeros: %q, %v; want empty", fs, err)
	}
	if _, err := Probe(ctx, img("data", []byte("some bytes that are no filesystem"))); !errors.Is(err, torus.ErrInUse) {
		t.Errorf("unknown data: %v, want ErrInUse", err)
	}
	ext := img("ext4", nil)
	if err := Mkfs(ctx, "ext4", ext); err != nil {
		t.Fatal(err)
	}
	if fs, err := Probe(ctx, ext); err != nil || fs != "ext4" {
		t.Errorf("ext4 image: %q, %v", fs, err)
	}
	if _, err := Probe(ctx, filepath.Join(dir, "missing")); !errors.Is(err, torus.ErrUnavailable) {
		t.Errorf("missing device: %v, want ErrUnavailable", err)
	}
	if err := Mkfs(ctx, "ntfs", ext); !errors.Is(err, torus.ErrInvalid) {
		t.Errorf("Mkfs ntfs: %v, want ErrInvalid", err)
	}
}
