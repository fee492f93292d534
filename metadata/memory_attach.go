package metadata

import (
	"context"
	"fmt"
	"time"

	"github.com/torus-storage/torus"
)

// RegisterNode implements torus.Attachments.
func (m *Memory) RegisterNode(ctx context.Context, id string) error {
	if err := torus.ValidNodeID(id); err != nil {
		return fmt.Errorf("metadata: register node: %w", err)
	}
	if err := m.enter(ctx); err != nil {
		return err
	}
	defer m.mu.Unlock()
	m.csiNodes[id] = time.Now().UTC()
	m.notifyLocked(torus.Change{Kind: torus.ChangeAttachment, Name: id, Node: true})
	return nil
}

// NodeRegistered implements torus.Attachments.
func (m *Memory) NodeRegistered(ctx context.Context, id string) (bool, error) {
	if err := m.enter(ctx); err != nil {
		return false, err
	}
	defer m.mu.Unlock()
	_, ok := m.csiNodes[id]
	return ok, nil
}

// PutAttachment implements torus.Attachments.
func (m *Memory) PutAttachment(ctx context.Context, a torus.VolumeAttachment) (torus.VolumeAttachment, error) {
	if err := torus.ValidNodeID(a.Node); err != nil {
		return torus.VolumeAttachment{}, fmt.Errorf("metadata: attach %q: %w", a.Volume, err)
	}
	if err := m.enter(ctx); err != nil {
		return torus.VolumeAttachment{}, err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("attach", a.Volume)
	if err != nil {
		return torus.VolumeAttachment{}, err
	}
	if _, ok := m.csiNodes[a.Node]; !ok {
		return torus.VolumeAttachment{}, fmt.Errorf("metadata: attach %q: node %q: %w (no CSI node service registered it)", a.Volume, a.Node, torus.ErrNotExist)
	}
	if v.attached != nil {
		return *v.attached, nil
	}
	a.Since = time.Now().UTC()
	v.attached = &a
	m.notifyLocked(torus.Change{Kind: torus.ChangeAttachment, Name: a.Volume})
	return a, nil
}

// Attachment implements torus.Attachments.
func (m *Memory) Attachment(ctx context.Context, volume string) (torus.VolumeAttachment, bool, error) {
	if err := m.enter(ctx); err != nil {
		return torus.VolumeAttachment{}, false, err
	}
	defer m.mu.Unlock()
	v, err := m.volumeLocked("attachment", volume)
	if err != nil {
		return torus.VolumeAttachment{}, false, err
	}
	if v.attached == nil {
		return torus.VolumeAttachment{}, false, nil
	}
	return *v.attached, true, nil
}

// DeleteAttachment implements torus.Attachments.
func (m *Memory) DeleteAttachment(ctx context.Context, volume, node string) (bool, error) {
	if err := m.enter(ctx); err != nil {
		return false, err
	}
	defer m.mu.Unlock()
	v, ok := m.volumes[volume]
	if !ok || v.attached == nil || v.attached.Node != node {
		return false, nil
	}
	v.attached = nil
	chs := []torus.Change{{Kind: torus.ChangeAttachment, Name: volume}}
	if v.writer != nil {
		chs = append(chs, torus.Change{Kind: torus.ChangeWriter, Name: volume, Deleted: true})
	}
	v.writer, v.writerSes = nil, 0
	m.notifyLocked(chs...)
	return true, nil
}
