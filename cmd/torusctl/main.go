// Command torusctl administers a Torus cluster through etcd. See
// `torusctl --help`; the commands live in internal/cli. This file only
// wires in what the cli package does not import: the volume package, used
// to snapshot a volume that has no writer and to import and export
// volumes, and the peer pool that reaches
// the daemons (volume scrub).
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/cmd/torusctl/internal/cli"
	"github.com/torus-storage/torus/internal/tlsconfig"
	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/volume"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr, deps()))
}

// deps are torusctl's production dependencies.
func deps() cli.Deps {
	return cli.Deps{SnapshotClosedVolume: snapshotClosed, Peers: peers, OpenVolume: openVolume}
}

// openVolume opens a volume through the volume package (volume import and
// export), reaching the peers through a pool resolving IDs via md.Peers.
func openVolume(ctx context.Context, md torus.Metadata, g cli.Global, name string, opt cli.VolumeOptions) (torus.Device, func(), error) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	pool, id, err := newPoolIdentity(md, g, log)
	if err != nil {
		return nil, nil, err
	}
	v, err := volume.Open(ctx, volume.Deps{Meta: md, Peers: pool, Identity: id, Logger: log}, name,
		volume.Options{ReadOnly: opt.ReadOnly, Snapshot: opt.Snapshot, Owner: opt.Owner})
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return v, func() { pool.Close() }, nil
}

// peers returns a pool reaching the daemons by the addresses md lists.
func peers(md torus.Metadata, g cli.Global) (torus.PeerPool, func(), error) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	pool, err := newPool(md, g, log)
	if err != nil {
		return nil, nil, err
	}
	return pool, func() { pool.Close() }, nil
}

// newPool is a peer pool that resolves IDs via md.Peers.
func newPool(md torus.Metadata, g cli.Global, log *slog.Logger) (*peer.Pool, error) {
	pool, _, err := newPoolIdentity(md, g, log)
	return pool, err
}

// newPoolIdentity is newPool with the common name of its client
// certificate ("" on a plain cluster), for volume.Deps.Identity.
func newPoolIdentity(md torus.Metadata, g cli.Global, log *slog.Logger) (*peer.Pool, string, error) {
	ptls, err := tlsconfig.Peer(tlsconfig.Files{Cert: g.PeerCert, Key: g.PeerKey, CA: g.PeerCA}, log)
	if err != nil {
		return nil, "", err
	}
	return peer.NewPool(func(ctx context.Context, id string) (string, error) {
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
	}, peer.ClientConfig{TLS: tlsconfig.PeerClient(ptls)}, log), ptls.CommonName(), nil
}

// snapshotClosed opens a volume without a writer as writer, snapshots it
// and closes it (volume.SnapshotClosed), reaching the peers through a pool
// that resolves IDs via md.Peers. Warnings go to stderr.
func snapshotClosed(ctx context.Context, md torus.Metadata, g cli.Global, vol, name string) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	pool, id, err := newPoolIdentity(md, g, log)
	if err != nil {
		return err
	}
	defer pool.Close()
	return volume.SnapshotClosed(ctx, volume.Deps{Meta: md, Peers: pool, Identity: id, Logger: log}, vol, name)
}
