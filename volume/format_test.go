package volume

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/volume/lsm"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

// TestFormatsGolden pins the stored formats byte for byte: write, zero and
// move records, a checkpoint, and the head as etcd stores it (JSON). A
// change here is a format change: it needs a new version and a note in
// docs/design/data-path.md. Regenerate with go test ./volume -run Golden
// -update and review the diff.
func TestFormatsGolden(t *testing.T) {
	block := func(b byte) []byte { return bytes.Repeat([]byte{b}, torus.BlockSize) }
	two := append(block(0xA1), block(0xB2)...)
	var seg []byte
	seg = AppendWriteRecord(seg, 7, 3, two, nil)
	seg = AppendZeroRecord(seg, 100, 5, 3)
	seg = AppendMoveRecord(seg, 9, 3, MoveSource{Epoch: 2, Seq: 4, Offset: 8192}, block(0xC3), nil)

	x := NewIndex(256)
	slot := x.AddSegment(torus.SegmentID{Volume: 1, Epoch: 3, Seq: 5})
	x.SetLength(slot, int64(len(seg)))
	recs, _ := ScanRecords(seg, 0)
	for _, r := range recs {
		x.Apply(1, slot, r)
	}
	ckpt := EncodeCheckpoint(1, 256*torus.BlockSize, x)

	// A clone's checkpoint (version 2): volume 2 names volume 1's
	// segment beside one of its own.
	xs := NewIndex(256)
	s1 := xs.AddSegment(torus.SegmentID{Volume: 1, Epoch: 3, Seq: 5})
	xs.SetLength(s1, int64(len(seg)))
	for _, r := range recs {
		xs.Apply(1, s1, r)
	}
	s2 := xs.AddSegment(torus.SegmentID{Volume: 2, Epoch: 1, Seq: 6})
	own := AppendWriteRecord(nil, 50, 1, block(0xD4), nil)
	xs.SetLength(s2, int64(len(own)))
	ownRecs, _ := ScanRecords(own, 0)
	xs.Apply(2, s2, ownRecs[0])
	shared := EncodeCheckpoint(2, 256*torus.BlockSize, xs)

	// A version 3 checkpoint: the run of x's changes since the checkpoint
	// below it (one run on the stack), and the segment table.
	run, err := lsm.Encode(1, x.Delta())
	if err != nil {
		t.Fatal(err)
	}
	runs := EncodeRunCheckpoint(&RunCheckpoint{VolumeID: 1, Size: 256 * torus.BlockSize, Segments: x.LiveTable(),
		Stack: []StackRun{{Ref: torus.SegmentRef{ID: torus.SegmentID{Volume: 1, Epoch: 3, Seq: 2, Kind: torus.KindCheckpoint}, Length: 500}, RunSize: 300}},
		Run:   run})

	head := torus.Head{
		Epoch:        3,
		Checkpoint:   &torus.SegmentRef{ID: torus.SegmentID{Volume: 1, Epoch: 3, Seq: 6, Kind: torus.KindCheckpoint}, Length: int64(len(ckpt))},
		Sealed:       []torus.SegmentRef{{ID: torus.SegmentID{Volume: 1, Epoch: 3, Seq: 7}, Length: 4096}},
		Open:         &torus.SegmentID{Volume: 1, Epoch: 3, Seq: 8},
		OpenReplicas: []string{"peer-a", "peer-b"},
		NextSeq:      10,
		// A checkpoint being written in the background (additive field).
		Checkpointing: &torus.SegmentID{Volume: 1, Epoch: 3, Seq: 9, Kind: torus.KindCheckpoint},
	}
	headJSON, err := json.Marshal(head)
	if err != nil {
		t.Fatal(err)
	}
	// A clone's volume record as etcd stores it (volumes/<name>): the
	// fields are additive JSON, absent on records written before them.
	cloneJSON, err := json.Marshal(torus.VolumeInfo{Name: "c", ID: 2, Size: 1 << 20, Created: time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC),
		MinReplicas: 1, Replication: 3, Parent: &torus.VolumeParent{Volume: "src", ID: 1, Snapshot: "s"}, Shares: []uint64{1}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		data []byte
	}{
		{"records.hex", seg},
		{"checkpoint.hex", ckpt},
		{"checkpoint-shared.hex", shared},
		{"checkpoint-runs.hex", runs},
		{"head.json", headJSON},
		{"volume-clone.json", cloneJSON},
	} {
		path := filepath.Join("testdata", "golden", c.name)
		got := string(c.data)
		if strings.HasSuffix(c.name, ".hex") {
			got = hexLines(c.data)
		}
		if *update {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test ./volume -run Golden -update)", err)
		}
		if got != string(want) {
			t.Errorf("%s differs from %s: the stored format changed; if intended, bump its version, run go test ./volume -run Golden -update and review the diff", c.name, path)
		}
	}
	// The pinned bytes still decode to what was written.
	if _, valid := ScanRecords(seg, 0); valid != int64(len(seg)) {
		t.Errorf("records: valid %d of %d", valid, len(seg))
	}
	if _, err := DecodeCheckpoint(ckpt, OnlyVolume(1), 256); err != nil {
		t.Errorf("checkpoint: %v", err)
	}
	clone := torus.VolumeInfo{ID: 2, Shares: []uint64{1}}
	if ck, err := DecodeCheckpoint(shared, clone.SharesVolume, 256); err != nil || len(ck.Segments) != 2 {
		t.Errorf("shared checkpoint: %v", err)
	}
	if _, err := DecodeCheckpoint(shared, OnlyVolume(2), 256); !errors.Is(err, torus.ErrCorrupt) {
		t.Errorf("shared checkpoint read by a volume sharing nothing: %v, want ErrCorrupt", err)
	}
	if ck, err := DecodeCheckpoint(runs, OnlyVolume(1), 256); err != nil || ck.Runs == nil || len(ck.Runs.Stack) != 1 || len(ck.Segments) != 1 {
		t.Errorf("version 3 checkpoint: %v", err)
	} else if r, err := ck.Runs.open(context.Background(), OnlyVolume(1)); err != nil {
		t.Errorf("version 3 checkpoint's run: %v", err)
	} else if es, err := r.All(context.Background()); err != nil || len(es) != 1 || es[0].First != 7 || es[0].Count != 2 {
		t.Errorf("version 3 checkpoint's run: %v, %v", err, es)
	}
	if _, err := DecodeCheckpoint(ckpt, clone.SharesVolume, 256); err != nil {
		t.Errorf("the parent's version 1 checkpoint read by its clone: %v", err)
	}
	var old torus.VolumeInfo // a record from before clones and per-volume replication
	if err := json.Unmarshal([]byte(`{"name":"v","id":1,"size":4096,"created":"2026-01-01T00:00:00Z","min_replicas":1}`), &old); err != nil ||
		old.Replication != 0 || old.Parent != nil || old.Shares != nil || old.Replicas(2) != 2 {
		t.Errorf("an old volume record: %v, %+v", err, old)
	}
	var back torus.Head
	if err := json.Unmarshal(headJSON, &back); err != nil || !sameHead(back, head) {
		t.Errorf("head: %v, %+v", err, back)
	}
}

// hexLines is a diffable dump: 32 bytes a line.
func hexLines(p []byte) string {
	var b strings.Builder
	for len(p) > 0 {
		n := min(32, len(p))
		b.WriteString(hex.EncodeToString(p[:n]))
		b.WriteByte('\n')
		p = p[n:]
	}
	return b.String()
}
