package csi_test

import (
	"context"
	"path/filepath"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/csi"
	"github.com/torus-storage/torus/internal/testutil"
	"github.com/torus-storage/torus/metadata"
)

// TestNodeGetInfoTopology: a node service started with a zone reports it
// as the topology segment csi.TopologyZoneKey; without one, none.
func TestNodeGetInfoTopology(t *testing.T) {
	m := metadata.NewMemory()
	defer m.Close()
	if err := m.InitCluster(context.Background(), torus.ClusterConfig{Replication: 1}); err != nil {
		t.Fatal(err)
	}
	for zone, want := range map[string]map[string]string{"z1": {csi.TopologyZoneKey: "z1"}, "": nil} {
		d, err := csi.New(csi.Config{Endpoint: "unix://" + filepath.Join(t.TempDir(), "csi.sock"), Mode: csi.ModeNode,
			NodeID: "n1", Zone: zone, StateDir: t.TempDir()}, csi.Deps{Meta: m, Logger: testutil.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		conn, err := grpc.NewClient(d.Endpoint(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		info, err := csipb.NewNodeClient(conn).NodeGetInfo(context.Background(), &csipb.NodeGetInfoRequest{})
		conn.Close()
		d.Close()
		if err != nil || info.NodeId != "n1" || len(info.GetAccessibleTopology().GetSegments()) != len(want) ||
			info.GetAccessibleTopology().GetSegments()[csi.TopologyZoneKey] != want[csi.TopologyZoneKey] {
			t.Errorf("zone %q: NodeGetInfo = %v, %v; want segments %v", zone, info, err, want)
		}
	}
}
