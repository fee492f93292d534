package server

import (
	"context"

	"github.com/torus-storage/torus/rebalance"
)

// publishStatus computes each volume's health; the lowest up peer ID
// publishes it to etcd.
func (s *Server) publishStatus(ctx context.Context, view *clusterView, replication int, segs []rebalance.Segment, live liveness, plan *rebalance.Plan) {
}
