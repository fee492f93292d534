// Package testcluster runs a whole Torus cluster inside one test process: an
// embedded etcd and N storage daemons (server.Server) on 127.0.0.1, each with
// its own data directory, so tests can stop, restart and inspect daemons.
package testcluster

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/etcdtest"
	"github.com/torus-storage/torus/internal/testutil"
	etcdmeta "github.com/torus-storage/torus/metadata/etcd"
	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/server"
	"github.com/torus-storage/torus/volume"
)

// Options configures a cluster.
type Options struct {
	Daemons     int
	Replication int
	SegmentSize int64 // 0: 1 MiB, small so tests roll segments
	Capacity    int64 // per daemon; 0: 1 GiB
	Zones       []string
	// Server adjusts each daemon's config before it starts.
	Server func(i int, cfg *server.Config)
}

// Cluster is a running in-process cluster.
type Cluster struct {
	t         testing.TB
	Endpoints []string
	Meta      torus.Metadata
	Pool      *peer.Pool
	Log       *slog.Logger
	Daemons   []*server.Server
	cfgs      []server.Config
}

// New starts a cluster; it is torn down by t.Cleanup.
func New(t testing.TB, o Options) *Cluster {
	t.Helper()
	if o.Daemons == 0 {
		o.Daemons = 3
	}
	if o.Replication == 0 {
		o.Replication = 2
	}
	if o.SegmentSize == 0 {
		o.SegmentSize = 1 << 20
	}
	if o.Capacity == 0 {
		o.Capacity = 1 << 30
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := &Cluster{t: t, Log: testutil.Logger(t)}
	c.Endpoints = etcdtest.Start(t)
	meta, err := etcdmeta.New(ctx, etcdmeta.Config{Endpoints: c.Endpoints, Logger: c.Log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { meta.Close() })
	c.Meta = meta
	cfg := torus.ClusterConfig{Replication: o.Replication, SegmentSize: o.SegmentSize, CheckpointEvery: 4}
	cfg.EnsureDefaults()
	if err := meta.InitCluster(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	c.Pool = peer.NewPool(peer.NewResolver(meta, 0).Resolve, peer.ClientConfig{}, c.Log)
	t.Cleanup(func() { c.Pool.Close() })
	for i := 0; i < o.Daemons; i++ {
		sc := server.Config{
			DataDir:             t.TempDir(),
			Capacity:            o.Capacity,
			PeerListen:          "127.0.0.1:0",
			HTTPListen:          "127.0.0.1:0",
			AutoJoin:            true,
			HeartbeatTTL:        5 * time.Second,
			MaintenanceInterval: time.Second,
			GCInterval:          5 * time.Second,
		}
		if len(o.Zones) > 0 {
			sc.Location.Zone = o.Zones[i%len(o.Zones)]
		}
		if o.Server != nil {
			o.Server(i, &sc)
		}
		c.cfgs = append(c.cfgs, sc)
		c.Daemons = append(c.Daemons, nil)
		c.Start(i)
	}
	t.Cleanup(func() {
		for _, d := range c.Daemons {
			if d != nil {
				d.Close()
			}
		}
	})
	return c
}

// Start (re)starts daemon i on its data directory. A restart keeps the
// peer address it had, so clients reconnect.
func (c *Cluster) Start(i int) {
	c.t.Helper()
	if c.Daemons[i] != nil {
		c.t.Fatalf("daemon %d is running", i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := server.New(c.cfgs[i], c.Meta, c.Log.With("daemon", i))
	if err != nil {
		c.t.Fatal(err)
	}
	if err := d.Start(ctx); err != nil {
		c.t.Fatalf("starting daemon %d: %v", i, err)
	}
	c.cfgs[i].PeerListen = d.PeerAddr() // keep the port across restarts
	c.Daemons[i] = d
}

// Stop stops daemon i (a clean close: its lease is revoked at once).
func (c *Cluster) Stop(i int) {
	c.t.Helper()
	if d := c.Daemons[i]; d != nil {
		if err := d.Close(); err != nil {
			c.t.Logf("closing daemon %d: %v", i, err)
		}
		c.Daemons[i] = nil
	}
}

// CreateVolume creates a volume of size bytes.
func (c *Cluster) CreateVolume(name string, size int64) {
	c.t.Helper()
	if _, err := c.Meta.CreateVolume(context.Background(), torus.VolumeInfo{Name: name, Size: size}); err != nil {
		c.t.Fatal(err)
	}
}

// Open opens a volume through the volume package.
func (c *Cluster) Open(ctx context.Context, name string, opt volume.Options) (*volume.Volume, error) {
	if opt.Owner == "" {
		opt.Owner = "testcluster"
	}
	return volume.Open(ctx, volume.Deps{Meta: c.Meta, Peers: c.Pool, Logger: c.Log}, name, opt)
}
