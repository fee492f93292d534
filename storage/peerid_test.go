package storage_test

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/storage"
)

func TestLoadOrCreateID(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data") // created on demand
	id, err := storage.LoadOrCreateID(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(id) {
		t.Fatalf("new ID %q; want 16 hex digits", id)
	}
	b, err := os.ReadFile(filepath.Join(dir, "peer-id"))
	if err != nil || string(b) != id+"\n" {
		t.Fatalf("peer-id file holds %q, %v; want %q", b, err, id+"\n")
	}
	again, err := storage.LoadOrCreateID(dir)
	if err != nil || again != id {
		t.Fatalf("second LoadOrCreateID = %q, %v; want %q", again, err, id)
	}
	// No temporary files are left behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("data dir holds %d entries; want just peer-id", len(entries))
	}
	other, err := storage.LoadOrCreateID(t.TempDir())
	if err != nil || other == id {
		t.Fatalf("ID in another dir = %q, %v; want a different one", other, err)
	}
}

func TestLoadOrCreateIDConcurrent(t *testing.T) {
	dir := t.TempDir()
	const n = 8
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids[i], errs[i] = storage.LoadOrCreateID(dir)
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || ids[i] != ids[0] {
			t.Fatalf("caller %d got %q, %v; caller 0 got %q", i, ids[i], errs[i], ids[0])
		}
	}
}

func TestLoadOrCreateIDKeepsOperatorID(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "peer-id"), []byte("rack1-node7\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if id, err := storage.LoadOrCreateID(dir); err != nil || id != "rack1-node7" {
		t.Fatalf("LoadOrCreateID = %q, %v; want the stored ID", id, err)
	}
}

func TestLoadOrCreateIDCorrupt(t *testing.T) {
	for _, content := range []string{"", "\n", "Not An ID!", "a/b"} {
		dir := t.TempDir()
		path := filepath.Join(dir, "peer-id")
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if id, err := storage.LoadOrCreateID(dir); !errors.Is(err, torus.ErrCorrupt) {
			t.Fatalf("LoadOrCreateID with peer-id %q = %q, %v; want ErrCorrupt", content, id, err)
		}
		if b, _ := os.ReadFile(path); string(b) != content {
			t.Fatalf("peer-id rewritten to %q", b)
		}
	}
}
