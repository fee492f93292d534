package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"

	"github.com/torus-storage/torus/nbd"
)

// exportList is the --nbd-exports file as an nbd.Authorizer, read again on
// SIGHUP. A file that fails to parse is logged at Warn and the previous
// list stays in force.
type exportList struct {
	path string
	log  *slog.Logger
	cur  atomic.Pointer[nbd.ExportList]
}

func loadExportList(path string, log *slog.Logger) (*exportList, error) {
	l := &exportList{path: path, log: log}
	if err := l.reload(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *exportList) reload() error {
	b, err := os.ReadFile(l.path)
	if err != nil {
		return fmt.Errorf("--nbd-exports: %w", err)
	}
	list, err := nbd.ParseExportList(b)
	if err != nil {
		return fmt.Errorf("--nbd-exports %s: %w", l.path, err)
	}
	l.cur.Store(list)
	return nil
}

// Authorize implements nbd.Authorizer with the current list.
func (l *exportList) Authorize(cert *x509.Certificate, export string) nbd.Access {
	return l.cur.Load().Authorize(cert, export)
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
				if err := l.reload(); err != nil {
					l.log.Warn("export list not reloaded; keeping the previous one", "err", err)
				} else {
					l.log.Info("export list reloaded", "file", l.path)
				}
			}
		}
	}()
}
