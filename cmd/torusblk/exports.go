package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/torus-storage/torus/nbd"
)

// exportList is the --nbd-exports file as an nbd.Authorizer, read again on
// SIGHUP. A file that fails to parse is logged at Warn and the previous
// list stays in force.
type exportList struct {
	*nbd.ExportListFile
	log *slog.Logger
}

func loadExportList(path string, log *slog.Logger) (*exportList, error) {
	f, err := nbd.LoadExportListFile(path)
	if err != nil {
		return nil, fmt.Errorf("--nbd-exports: %w", err)
	}
	return &exportList{ExportListFile: f, log: log}, nil
}

// keep reloads the list on SIGHUP until ctx ends.
func (l *exportList) keep(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if err := l.Reload(); err != nil {
					l.log.Warn("export list not reloaded; keeping the previous one", "err", err)
				} else {
					l.log.Info("export list reloaded", "file", l.Path())
				}
			}
		}
	}()
}
