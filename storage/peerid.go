package storage

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/vfs"
)

// PeerIDFile is the name of the file in the data dir holding the daemon's
// peer ID.
const PeerIDFile = "peer-id"

// LoadOrCreateID returns the daemon's stable peer ID, kept in
// dir/peer-id. At the first start (no such file) it creates dir if needed
// and writes a random ID of 16 hex digits atomically: the file appears
// complete and fsynced, or not at all, and when several processes race,
// all of them return the ID that won. A peer-id file that does not hold a
// valid name (torus.ValidName) is reported as torus.ErrCorrupt and left
// untouched.
func LoadOrCreateID(dir string) (string, error) {
	path := filepath.Join(dir, PeerIDFile)
	for range 2 {
		id, err := readID(path)
		if !errors.Is(err, fs.ErrNotExist) {
			return id, err
		}
		err = createID(dir, path)
		if err != nil && !errors.Is(err, fs.ErrExist) {
			return "", err
		}
		// Created, or another process created it first: read it back.
	}
	return readID(path)
}

func readID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		return "", fmt.Errorf("storage: reading peer ID: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if err := torus.ValidName(id); err != nil {
		return "", fmt.Errorf("storage: peer ID file %s holds %q, not a valid ID: %w", path, b, torus.ErrCorrupt)
	}
	return id, nil
}

// createID writes a fresh ID to a temporary file, fsyncs it, then links it
// to path, which fails with fs.ErrExist if path exists.
func createID(dir, path string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("storage: creating data dir: %w", err)
	}
	var raw [8]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return fmt.Errorf("storage: generating peer ID: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".peer-id-*")
	if err != nil {
		return fmt.Errorf("storage: writing peer ID: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(hex.EncodeToString(raw[:]) + "\n")
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("storage: writing peer ID: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return err
		}
		return fmt.Errorf("storage: writing peer ID: %w", err)
	}
	if err := vfs.OS.SyncDir(dir); err != nil {
		return fmt.Errorf("storage: writing peer ID: %w", err)
	}
	return nil
}
