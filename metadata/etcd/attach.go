package etcd

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/torus-storage/torus"
)

// RegisterNode implements torus.Attachments: a plain put of
// csinodes/<id> = {"since": now}.
func (s *Store) RegisterNode(ctx context.Context, id string) error {
	if err := torus.ValidNodeID(id); err != nil {
		return fmt.Errorf("metadata/etcd: register node: %w", err)
	}
	return s.req(ctx, "register node", func(ctx context.Context) error {
		_, err := s.cli.Put(ctx, s.k.csiNode(id), encode(struct {
			Since time.Time `json:"since"`
		}{time.Now().UTC()}))
		return err
	})
}

// NodeRegistered implements torus.Attachments.
func (s *Store) NodeRegistered(ctx context.Context, id string) (bool, error) {
	if torus.ValidNodeID(id) != nil {
		return false, nil
	}
	resp, err := s.txn(ctx, "node registered", nil, []clientv3.Op{clientv3.OpGet(s.k.csiNode(id), clientv3.WithCountOnly())}, nil)
	if err != nil {
		return false, err
	}
	return resp.Responses[0].GetResponseRange().Count > 0, nil
}

// PutAttachment implements torus.Attachments. Transaction: volume exists,
// node registered, attachment absent → put attach/<name>; else read the
// volume (count), the node (count) and the stored attachment.
func (s *Store) PutAttachment(ctx context.Context, a torus.VolumeAttachment) (torus.VolumeAttachment, error) {
	const op = "attach"
	if err := torus.ValidNodeID(a.Node); err != nil {
		return torus.VolumeAttachment{}, fmt.Errorf("metadata/etcd: attach %q: %w", a.Volume, err)
	}
	if err := torus.ValidName(a.Volume); err != nil {
		return torus.VolumeAttachment{}, errNoVolume(op, a.Volume)
	}
	a.Since = time.Now().UTC()
	key := s.k.attach(a.Volume)
	resp, err := s.txn(ctx, op,
		[]clientv3.Cmp{exists(s.k.volume(a.Volume)), exists(s.k.csiNode(a.Node)), absent(key)},
		[]clientv3.Op{clientv3.OpPut(key, encode(a))},
		[]clientv3.Op{clientv3.OpGet(s.k.volume(a.Volume), clientv3.WithCountOnly()),
			clientv3.OpGet(s.k.csiNode(a.Node), clientv3.WithCountOnly()), clientv3.OpGet(key)})
	if err != nil {
		return torus.VolumeAttachment{}, err
	}
	if resp.Succeeded {
		return a, nil
	}
	r := ranges(resp)
	if resp.Responses[0].GetResponseRange().Count == 0 {
		return torus.VolumeAttachment{}, errNoVolume(op, a.Volume)
	}
	if resp.Responses[1].GetResponseRange().Count == 0 {
		return torus.VolumeAttachment{}, fmt.Errorf("metadata/etcd: attach %q: node %q: %w (no CSI node service registered it)", a.Volume, a.Node, torus.ErrNotExist)
	}
	if len(r[2]) == 0 {
		return torus.VolumeAttachment{}, fmt.Errorf("metadata/etcd: attach %q: %w: changed concurrently", a.Volume, torus.ErrConflict)
	}
	var cur torus.VolumeAttachment
	return cur, decode(op, r[2][0], &cur)
}

// Attachment implements torus.Attachments.
func (s *Store) Attachment(ctx context.Context, volume string) (torus.VolumeAttachment, bool, error) {
	const op = "attachment"
	if err := torus.ValidName(volume); err != nil {
		return torus.VolumeAttachment{}, false, errNoVolume(op, volume)
	}
	r, err := s.read(ctx, op, clientv3.OpGet(s.k.volume(volume), clientv3.WithKeysOnly()), clientv3.OpGet(s.k.attach(volume)))
	if err != nil {
		return torus.VolumeAttachment{}, false, err
	}
	if len(r[0]) == 0 {
		return torus.VolumeAttachment{}, false, errNoVolume(op, volume)
	}
	if len(r[1]) == 0 {
		return torus.VolumeAttachment{}, false, nil
	}
	var a torus.VolumeAttachment
	return a, true, decode(op, r[1][0], &a)
}

// DeleteAttachment implements torus.Attachments. Read attach/<name>; if it
// names node, transaction: mod_revision(attach/<name>) = read → delete it
// and locks/<name>; retried when raced.
func (s *Store) DeleteAttachment(ctx context.Context, volume, node string) (bool, error) {
	const op = "detach"
	if torus.ValidName(volume) != nil {
		return false, nil
	}
	key := s.k.attach(volume)
	for range maxRetries {
		r, err := s.read(ctx, op, clientv3.OpGet(key))
		if err != nil {
			return false, err
		}
		if len(r[0]) == 0 {
			return false, nil
		}
		var a torus.VolumeAttachment
		if err := decode(op, r[0][0], &a); err != nil {
			return false, err
		}
		if a.Node != node {
			return false, nil
		}
		resp, err := s.txn(ctx, op, []clientv3.Cmp{modRev(key, r[0][0].ModRevision)},
			[]clientv3.Op{clientv3.OpDelete(key), clientv3.OpDelete(s.k.lock(volume))}, nil)
		if err != nil {
			return false, err
		}
		if resp.Succeeded {
			return true, nil
		}
		s.log.Debug("detach: raced, retrying", "volume", volume)
	}
	return false, errContended(op)
}
