// Command torusctl administers a Torus cluster through etcd. See
// `torusctl --help`; the commands live in internal/cli. This file only
// wires in what the cli package does not import: the volume package, used
// to snapshot a volume that has no writer.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/cmd/torusctl/internal/cli"
	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/volume"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr, deps()))
}

// deps are torusctl's production dependencies.
func deps() cli.Deps {
	return cli.Deps{SnapshotClosedVolume: snapshotClosed}
}

// snapshotClosed opens a volume without a writer as writer, snapshots it
// and closes it (volume.SnapshotClosed), reaching the peers through a pool
// that resolves IDs via md.Peers. Warnings go to stderr.
func snapshotClosed(ctx context.Context, md torus.Metadata, vol, name string) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	pool := peer.NewPool(func(ctx context.Context, id string) (string, error) {
		peers, err := md.Peers(ctx)
		if err != nil {
			return "", err
		}
		for _, p := range peers {
			if p.ID == id {
				return p.Address, nil
			}
		}
		return "", fmt.Errorf("%w: peer %s is not registered", torus.ErrUnavailable, id)
	}, peer.ClientConfig{}, log)
	defer pool.Close()
	return volume.SnapshotClosed(ctx, volume.Deps{Meta: md, Peers: pool, Logger: log}, vol, name)
}
