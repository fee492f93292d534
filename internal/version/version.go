// Package version is what every Torus binary says it is: the release
// (set at build time), the commit it was built from, and the versions of
// the formats it reads and writes, so that an operator can tell at a
// glance whether two processes can work together. torusd --version,
// torusctl version, torusblk --version and torus-csi --version print the
// same String.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/attach"
	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/volume"
)

// Version is the release, set with
// -ldflags "-X github.com/torus-storage/torus/internal/version.Version=v1.2.3".
var Version = "dev"

// commit is set by `make build` with
// -ldflags "-X github.com/torus-storage/torus/internal/version.commit=..."
// (builds with -buildvcs=false have no VCS stamp).
var commit string

// Commit is the VCS revision the binary was built from (12 hex digits,
// "+dirty" for a modified tree), or "unknown".
func Commit() string {
	if commit != "" {
		return commit
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	var rev, dirty string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	if rev == "" {
		return "unknown"
	}
	return rev[:min(12, len(rev))] + dirty
}

// Formats lists the on-wire and on-disk format versions this build reads
// and writes.
func Formats() string {
	return fmt.Sprintf("peer protocol %d, checkpoint %d-%d, ring format %d-%d, attach state %d",
		peer.Version, volume.CheckpointVersion, volume.CheckpointVersionRuns,
		torus.RingFormatZones, torus.RingFormatHierarchy, attach.StateVersion)
}

// String is the version line of program.
func String(program string) string {
	return fmt.Sprintf("%s %s (commit %s, %s); formats: %s", program, Version, Commit(), runtime.Version(), Formats())
}
