package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/attach"
	"github.com/torus-storage/torus/internal/etcdflags"
	etcdmeta "github.com/torus-storage/torus/metadata/etcd"
)

// attachBackend is flex's production backend: internal/attach (a detached
// `torusblk nbd` or `torusblk fuse` of this very binary, as
// --attach-backend chooses), with its state under STATEDIR/attach and
// this process's cluster settings.
func attachBackend(g *globals) flexBackend {
	return func(ctx context.Context, cfg flexBackendConfig) (flexAttacher, error) {
		backend, err := attach.ParseBackend(cfg.Backend)
		if err != nil {
			return nil, err
		}
		bin, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("%w: finding this binary for the attach backend: %w", torus.ErrUnavailable, err)
		}
		c := attach.Cluster{Etcd: cfg.Etcd, Prefix: g.prefix, EtcdClient: g.etcdClient,
			PeerCert: g.peerCert, PeerKey: g.peerKey, PeerCA: g.peerCA, LogLevel: g.logLevel}
		args, err := c.Args()
		if err != nil {
			return nil, err
		}
		ecfg := etcdmeta.Config{Endpoints: etcdflags.Endpoints(cfg.Etcd), Prefix: g.prefix, Logger: cfg.Log}
		if err := g.etcdClient.Apply(&ecfg); err != nil {
			return nil, err
		}
		md, err := etcdmeta.New(ctx, ecfg)
		if err != nil {
			return nil, err
		}
		a, err := attach.New(attach.Options{Bin: bin, StateDir: filepath.Join(cfg.StateDir, "attach"), Args: args, Meta: md,
			Backend: backend, Logger: cfg.Log})
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
