package volume

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/torus-storage/torus"
)

// TestWriteFuzzSeeds regenerates the checked-in seed corpora under
// testdata/fuzz when run with TORUS_WRITE_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("TORUS_WRITE_SEEDS") != "1" {
		t.Skip("set TORUS_WRITE_SEEDS=1 to regenerate testdata/fuzz")
	}
	x, _ := sampleIndex()
	torn := sampleSegment()
	seeds := map[string]map[string][]byte{
		"FuzzScanRecords": {
			"segment":   sampleSegment(),
			"torn":      torn[:len(torn)-100],
			"zero-only": AppendZeroRecord(AppendZeroRecord(nil, 0, 1, 1), 5, 2048, 1),
		},
		"FuzzDecodeCheckpoint": {
			"sample": EncodeCheckpoint(9, 5000*torus.BlockSize, x),
			"empty":  EncodeCheckpoint(9, 0, NewIndex(0)),
			"runs":   sampleRunCheckpoint(x),
		},
	}
	for fuzz, files := range seeds {
		dir := filepath.Join("testdata", "fuzz", fuzz)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, p := range files {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", p)
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
