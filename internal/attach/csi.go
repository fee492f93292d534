package attach

import (
	"context"

	"github.com/torus-storage/torus/csi"
)

// CSI returns a as the CSI node service's csi.Attacher.
func (a *Attacher) CSI() csi.Attacher { return csiAttacher{a} }

type csiAttacher struct{ a *Attacher }

func toCSI(at Attachment) csi.Attachment {
	return csi.Attachment{Volume: at.Volume, Device: at.Device, ReadOnly: at.ReadOnly}
}

func (c csiAttacher) Attach(ctx context.Context, volume string, readOnly bool) (csi.Attachment, error) {
	at, err := c.a.Attach(ctx, volume, readOnly)
	if err != nil {
		return csi.Attachment{}, err
	}
	return toCSI(at), nil
}

func (c csiAttacher) Detach(ctx context.Context, volume string) error {
	return c.a.Detach(ctx, volume)
}

func (c csiAttacher) Get(volume string) (csi.Attachment, bool, error) {
	at, ok, err := c.a.Get(volume)
	return toCSI(at), ok, err
}

func (c csiAttacher) Resize(ctx context.Context, volume string) error {
	return c.a.Resize(ctx, volume)
}
