package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/attach"
	"github.com/torus-storage/torus/internal/etcdflags"
	etcdmeta "github.com/torus-storage/torus/metadata/etcd"
)

// attachBackend is flex's production backend: internal/attach (a detached
// `torusblk fuse` of this very binary, and a direct-I/O loop device), with
// its state under STATEDIR/attach and this process's cluster settings.
func attachBackend(g *globals) flexBackend {
	return func(ctx context.Context, etcd, stateDir string, log *slog.Logger) (flexAttacher, error) {
		bin, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("%w: finding this binary for torusblk fuse: %w", torus.ErrUnavailable, err)
		}
		c := attach.Cluster{Etcd: etcd, Prefix: g.prefix, EtcdClient: g.etcdClient,
			PeerCert: g.peerCert, PeerKey: g.peerKey, PeerCA: g.peerCA, LogLevel: g.logLevel}
		args, err := c.Args()
		if err != nil {
			return nil, err
		}
		ecfg := etcdmeta.Config{Endpoints: etcdflags.Endpoints(etcd), Prefix: g.prefix, Logger: log}
		if err := g.etcdClient.Apply(&ecfg); err != nil {
			return nil, err
		}
		md, err := etcdmeta.New(ctx, ecfg)
		if err != nil {
			return nil, err
		}
		a, err := attach.New(attach.Options{Bin: bin, StateDir: filepath.Join(stateDir, "attach"), Args: args, Meta: md, Logger: log})
		if err != nil {
			md.Close()
			return nil, err
		}
		return &flexAttach{a: a, md: md}, nil
	}
}

// flexAttach adapts attach.Attacher to flexAttacher; Close closes its
// metadata client.
type flexAttach struct {
	a  *attach.Attacher
	md *etcdmeta.Store
}

func (f *flexAttach) Attach(ctx context.Context, volume string, ro bool) (string, error) {
	at, err := f.a.Attach(ctx, volume, ro)
	return at.Device, err
}

func (f *flexAttach) Detach(ctx context.Context, volume, _ string) error {
	return f.a.Detach(ctx, volume)
}

func (f *flexAttach) Close() error { return f.md.Close() }
