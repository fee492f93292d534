package attach

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/statefile"
)

// StateVersion is the version of the state files this attacher writes.
// Version 1 (before the nbd backend; no "backend" field) is read as a fuse
// attachment; any other version is refused (ErrCorrupt): the attacher does
// not guess.
const StateVersion = 2

// state is one attachment as recorded in STATEDIR/VOLUME.json
// (testdata/state-v2.json and state-v2-nbd.json are the golden files;
// state-v1.json is the version before). It is written as soon as the
// torusblk process has started, before the device exists, so a
// crash at any point leaves something a restarted caller can find and
// undo.
type state struct {
	Version int `json:"version"`
	Attachment
	// StartTime is the process's start time (/proc/PID/stat field 22,
	// clock ticks since boot): a PID reused by another process does not
	// pass for the attachment's.
	StartTime uint64 `json:"start_time"`
}

func encodeState(s state) ([]byte, error) {
	s.Version = StateVersion
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

func decodeState(b []byte) (state, error) {
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return state{}, fmt.Errorf("attach: state: %w: %w", torus.ErrCorrupt, err)
	}
	switch s.Version {
	case 1:
		if s.Backend != "" {
			return state{}, fmt.Errorf("attach: state: %w: version 1 with a backend", torus.ErrCorrupt)
		}
		s.Backend = BackendFUSE
	case StateVersion:
	default:
		return state{}, fmt.Errorf("attach: state: %w: version %d (this attacher reads 1 and %d)", torus.ErrCorrupt, s.Version, StateVersion)
	}
	s.Version = StateVersion
	bad := validVolume(s.Volume) != nil || s.PID <= 0
	switch s.Backend {
	case BackendFUSE:
		bad = bad || s.File == ""
	case BackendNBD:
		if s.Device != "" {
			_, err := NBDIndex(s.Device)
			bad = bad || err != nil
		}
	default:
		bad = true
	}
	if bad {
		return state{}, fmt.Errorf("attach: state: %w: backend %q, volume %q, file %q, device %q, pid %d", torus.ErrCorrupt, s.Backend, s.Volume, s.File, s.Device, s.PID)
	}
	return s, nil
}

// validVolume accepts a volume name or VOLUME@SNAPSHOT.
func validVolume(v string) error {
	vol, snap, ok := strings.Cut(v, "@")
	if err := torus.ValidName(vol); err != nil {
		return err
	}
	if ok {
		return torus.ValidName(snap)
	}
	return nil
}

func (a *Attacher) statePath(volume string) string {
	return filepath.Join(a.opt.StateDir, volume+".json")
}

// load reads a volume's state; ok=false when there is none.
func (a *Attacher) load(volume string) (state, bool, error) {
	p := a.statePath(volume)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return state{}, false, nil
	}
	if err != nil {
		return state{}, false, fmt.Errorf("attach: read state: %w", err)
	}
	s, err := decodeState(b)
	if err != nil {
		return state{}, false, fmt.Errorf("%w (%s)", err, p)
	}
	if s.Volume != volume {
		return state{}, false, fmt.Errorf("attach: state %s: %w: names volume %q", p, torus.ErrCorrupt, s.Volume)
	}
	return s, true, nil
}

// save writes a state durably (statefile.Write).
func (a *Attacher) save(s state) error {
	b, err := encodeState(s)
	if err != nil {
		return fmt.Errorf("attach: encode state: %w", err)
	}
	if err := statefile.Write(a.statePath(s.Volume), b, 0o600); err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	return nil
}

// remove deletes a volume's state; none is success.
func (a *Attacher) remove(volume string) error {
	if err := statefile.Remove(a.statePath(volume)); err != nil {
		return fmt.Errorf("attach: remove state: %w", err)
	}
	return nil
}
