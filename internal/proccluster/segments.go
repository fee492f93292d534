package proccluster

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"github.com/torus-storage/torus"
)

// SegmentFile is one segment file in a daemon's data directory, as the disk
// store lays them out: DATA/segments/v<volume>/<SegmentID.String()>.
type SegmentFile struct {
	ID   torus.SegmentID
	Path string
	Size int64
}

// SegmentPath is where the daemon's disk store keeps segment id.
func (d *Daemon) SegmentPath(id torus.SegmentID) string {
	return filepath.Join(d.DataDir, "segments", "v"+strconv.FormatUint(id.Volume, 10), id.String())
}

// Segments lists the segment files of volume vol in the daemon's data
// directory, read straight from the file system (the daemon need not run),
// ordered by ID. A volume without a directory has none.
func (d *Daemon) Segments(vol uint64) ([]SegmentFile, error) {
	dir := filepath.Join(d.DataDir, "segments", "v"+strconv.FormatUint(vol, 10))
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []SegmentFile
	for _, e := range ents {
		id, err := torus.ParseSegmentID(e.Name())
		if err != nil || !e.Type().IsRegular() {
			continue
		}
		st, err := e.Info()
		if err != nil {
			return nil, err
		}
		out = append(out, SegmentFile{ID: id, Path: filepath.Join(dir, e.Name()), Size: st.Size()})
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].ID, out[j].ID
		if a.Epoch != b.Epoch {
			return a.Epoch < b.Epoch
		}
		if a.Seq != b.Seq {
			return a.Seq < b.Seq
		}
		return a.Kind < b.Kind
	})
	return out, nil
}
