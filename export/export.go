// Package export adapts Torus volumes to the NBD server: it opens volumes by
// export name ("vol" read-write, "vol@snap" a read-only snapshot) through the
// volume package, lists them for NBD_OPT_LIST, and names the default export.
package export

import (
	"context"
	"fmt"
	"strings"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/nbd"
	"github.com/torus-storage/torus/volume"
)

// Exports implements nbd.Exports over a Torus cluster.
type Exports struct {
	deps  volume.Deps
	meta  torus.Metadata
	owner string
}

// New returns exports served by a process described by owner (stored in
// each volume's writer lock, e.g. "torusblk@host:10809 pid 42").
// deps are the cluster's (deps.Identity is stored in the locks too).
func New(deps volume.Deps, owner string) *Exports {
	return &Exports{deps: deps, meta: deps.Meta, owner: owner}
}

// Open opens name: a volume for writing (taking its writer lock), or
// read-only; "vol@snap" opens a snapshot, always read-only.
func (e *Exports) Open(ctx context.Context, name string, readOnly bool) (torus.Device, error) {
	deps := e.deps
	if vol, snap, ok := strings.Cut(name, "@"); ok {
		return volume.Open(ctx, deps, vol, volume.Options{ReadOnly: true, Snapshot: snap, Owner: e.owner})
	}
	return volume.Open(ctx, deps, name, volume.Options{ReadOnly: readOnly, Owner: e.owner})
}

// List lists every volume and snapshot as an export.
func (e *Exports) List(ctx context.Context) ([]nbd.ExportInfo, error) {
	vols, err := e.meta.Volumes(ctx)
	if err != nil {
		return nil, err
	}
	var out []nbd.ExportInfo
	for _, v := range vols {
		out = append(out, nbd.ExportInfo{Name: v.Name, Size: v.Size, Description: fmt.Sprintf("torus volume %s", v.Name)})
		snaps, err := e.meta.Snapshots(ctx, v.Name)
		if err != nil {
			return nil, err
		}
		for _, s := range snaps {
			out = append(out, nbd.ExportInfo{Name: v.Name + "@" + s.Name, Size: v.Size, ReadOnly: true, Description: fmt.Sprintf("snapshot %s of %s", s.Name, v.Name)})
		}
	}
	return out, nil
}

// Default names the volume served for the empty export name.
func (e *Exports) Default(ctx context.Context) (string, error) {
	return e.meta.DefaultExport(ctx)
}
