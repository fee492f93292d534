package server

import (
	"context"
	"fmt"
	"sync"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/peer"
)

// writerLocks answers peer.ServerConfig.WriterCheck: a client certificate
// may append, sync and fence at a volume's epoch only if the volume's
// writer lock at that epoch names it (torus.WriterInfo.Identity). It
// remembers the newest locked epoch of each volume, so etcd is read once
// per writer epoch, not per request.
type writerLocks struct {
	meta torus.Metadata

	mu    sync.Mutex
	names map[uint64]string     // volume ID -> name
	locks map[uint64]lockHolder // volume ID -> newest epoch seen locked
}

type lockHolder struct {
	epoch    uint64
	identity string
}

func newWriterLocks(meta torus.Metadata) *writerLocks {
	return &writerLocks{meta: meta, names: make(map[uint64]string), locks: make(map[uint64]lockHolder)}
}

// check is the WriterCheck. An epoch older than the newest locked one is
// left to the fence (the service refuses it with ErrFenced).
func (w *writerLocks) check(ctx context.Context, id peer.Identity, vol, epoch uint64) error {
	w.mu.Lock()
	h, ok := w.locks[vol]
	w.mu.Unlock()
	if !ok || epoch > h.epoch {
		var err error
		if h, err = w.load(ctx, vol); err != nil {
			return err
		}
	}
	switch {
	case epoch < h.epoch:
		return nil
	case epoch > h.epoch:
		return fmt.Errorf("%w: volume %d has no writer lock at epoch %d (client %q)", torus.ErrPermission, vol, epoch, id.Name)
	case h.identity != id.Name:
		return fmt.Errorf("%w: volume %d epoch %d is locked by %q, not by client %q", torus.ErrPermission, vol, epoch, h.identity, id.Name)
	}
	return nil
}

// load reads vol's writer lock and remembers it when it is newer.
func (w *writerLocks) load(ctx context.Context, vol uint64) (lockHolder, error) {
	name, err := w.name(ctx, vol)
	if err != nil {
		return lockHolder{}, err
	}
	wi, ok, err := w.meta.Writer(ctx, name)
	if err != nil {
		return lockHolder{}, fmt.Errorf("checking the writer lock of volume %s: %w", name, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	h := w.locks[vol]
	if ok && wi.Epoch >= h.epoch {
		h = lockHolder{epoch: wi.Epoch, identity: wi.Identity}
		w.locks[vol] = h
	}
	return h, nil
}

// name maps a volume ID to its name, listing the volumes when it is not
// known yet.
func (w *writerLocks) name(ctx context.Context, vol uint64) (string, error) {
	w.mu.Lock()
	name, ok := w.names[vol]
	w.mu.Unlock()
	if ok {
		return name, nil
	}
	vols, err := w.meta.Volumes(ctx)
	if err != nil {
		return "", fmt.Errorf("checking a writer lock: %w", err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, v := range vols {
		w.names[v.ID] = v.Name
	}
	if name, ok = w.names[vol]; !ok {
		return "", fmt.Errorf("%w: volume %d does not exist", torus.ErrPermission, vol)
	}
	return name, nil
}
