package csi

import (
	"context"
	"fmt"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/torus-storage/torus"
)

// identity is the CSI Identity service, served in every mode.
type identity struct {
	csipb.UnimplementedIdentityServer
	d *Driver
}

func (s *identity) GetPluginInfo(ctx context.Context, _ *csipb.GetPluginInfoRequest) (*csipb.GetPluginInfoResponse, error) {
	return &csipb.GetPluginInfoResponse{Name: s.d.cfg.DriverName, VendorVersion: s.d.cfg.Version}, nil
}

func (s *identity) GetPluginCapabilities(ctx context.Context, _ *csipb.GetPluginCapabilitiesRequest) (*csipb.GetPluginCapabilitiesResponse, error) {
	var caps []*csipb.PluginCapability
	if s.d.cfg.controller() {
		caps = append(caps, &csipb.PluginCapability{Type: &csipb.PluginCapability_Service_{
			Service: &csipb.PluginCapability_Service{Type: csipb.PluginCapability_Service_CONTROLLER_SERVICE}}})
	}
	caps = append(caps, &csipb.PluginCapability{Type: &csipb.PluginCapability_VolumeExpansion_{
		VolumeExpansion: &csipb.PluginCapability_VolumeExpansion{Type: csipb.PluginCapability_VolumeExpansion_ONLINE}}})
	return &csipb.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

// Probe is ready when etcd answers, the cluster is initialized and at
// least one storage daemon is up. etcd unreachable: Unavailable; not
// initialized or no daemon up: FailedPrecondition. The message says which.
func (s *identity) Probe(ctx context.Context, _ *csipb.ProbeRequest) (*csipb.ProbeResponse, error) {
	if err := s.d.probe(ctx); err != nil {
		return nil, err
	}
	return &csipb.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

func (d *Driver) probe(ctx context.Context) error {
	if _, err := d.meta.ClusterConfig(ctx); err != nil {
		return toStatus("probe: cluster config", err)
	}
	peers, err := d.meta.Peers(ctx)
	if err != nil {
		return toStatus("probe: peers", err)
	}
	up := 0
	for _, p := range peers {
		if p.State == torus.PeerUp || p.State == torus.PeerDraining {
			up++
		}
	}
	if up == 0 {
		return status.Error(codes.FailedPrecondition, fmt.Sprintf("probe: no storage daemon is up (%d known)", len(peers)))
	}
	return nil
}
