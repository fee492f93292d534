package etcd

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/torus-storage/torus"
)

// Revision implements torus.Metadata: the header revision of a count-only
// read of the cluster key.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	var rev int64
	err := s.req(ctx, "revision", func(ctx context.Context) error {
		resp, err := s.cli.Get(ctx, s.k.cluster(), clientv3.WithCountOnly())
		if err == nil {
			rev = resp.Header.Revision
		}
		return err
	})
	return rev, err
}

// VolumesChangedSince implements torus.Metadata: one read transaction
// asking, per prefix, for at most one key modified after rev. (etcd
// applies the revision filter before the limit, not to a count-only read,
// so the keys-only, limit-1 form is the cheap exact one.)
func (s *Store) VolumesChangedSince(ctx context.Context, rev int64) (bool, error) {
	var gets []clientv3.Op
	for _, p := range []string{s.k.volume(""), s.k.epoch(""), s.k.lock(""), s.k.head(""), s.k.p + "snapshots/"} {
		gets = append(gets, clientv3.OpGet(p, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
			clientv3.WithMinModRev(rev+1), clientv3.WithLimit(1)))
	}
	r, err := s.read(ctx, "volumes changed since", gets...)
	if err != nil {
		return false, err
	}
	for _, kvs := range r {
		if len(kvs) > 0 {
			return true, nil
		}
	}
	return false, nil
}

// Compact is a test hook: it compacts etcd's history up to rev (every
// prefix: etcd has one history), as an operator's or etcd's automatic
// compaction would.
func (s *Store) Compact(rev int64) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
	defer cancel()
	if _, err := s.cli.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		s.log.Warn("compact failed", "rev", rev, "err", err)
	}
}

// WatchChanges implements torus.Metadata with one etcd watch on the
// prefix from revision from+1. A watch etcd cancels for compaction
// becomes a ChangeResync at the current revision and continues from
// there; one interrupted otherwise (leader loss, connection) continues
// from the last revision delivered, so nothing is lost.
func (s *Store) WatchChanges(ctx context.Context, from int64) <-chan torus.Change {
	out := make(chan torus.Change)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		close(out)
		return out
	}
	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer close(out)
		defer stop()
		defer cancel()
		send := func(c torus.Change) bool {
			select {
			case out <- c:
				return true
			case <-wctx.Done():
				return false
			}
		}
		last := from
		for wctx.Err() == nil {
			// The prefix up to "~": not the beat records (keys.beatTree).
			wch := s.cli.Watch(clientv3.WithRequireLeader(wctx), s.cfg.Prefix, clientv3.WithRange(s.k.watchEnd()),
				clientv3.WithRev(last+1), clientv3.WithPrevKV())
			compacted := false
			for resp := range wch {
				if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
					compacted = true
					break
				}
				if resp.Err() != nil {
					s.log.Debug("change watch interrupted", "err", resp.Err())
					continue
				}
				for _, ev := range resp.Events {
					c, ok := s.change(ev)
					if ok && !send(c) {
						return
					}
					last = max(last, ev.Kv.ModRevision)
				}
			}
			if wctx.Err() != nil {
				return
			}
			if compacted {
				rev, err := s.Revision(wctx)
				if err != nil {
					s.log.Debug("change watch: reading revision after compaction", "err", err)
				} else {
					if !send(torus.Change{Kind: torus.ChangeResync, Revision: rev}) {
						return
					}
					last = rev
					continue
				}
			}
			select {
			case <-wctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	return out
}

// change types one watch event; ok=false for keys nobody watches
// (statuses, the volume ID counter, last-seen records).
func (s *Store) change(ev *clientv3.Event) (torus.Change, bool) {
	key := strings.TrimPrefix(string(ev.Kv.Key), s.cfg.Prefix)
	dir, name, _ := strings.Cut(key, "/")
	c := torus.Change{Revision: ev.Kv.ModRevision, Name: name, Deleted: ev.Type == mvccpb.DELETE}
	switch dir {
	case "cluster", "default-export":
		c.Kind = torus.ChangeCluster
	case "ring":
		c.Kind = torus.ChangeRing
		if !c.Deleted {
			var spec torus.RingSpec
			if decode("watch", ev.Kv, &spec) == nil {
				c.Ring = &spec
			}
		}
	case "peers", "draining", "removed":
		c.Kind = torus.ChangePeer
	case "alive":
		c.Kind = torus.ChangePeer
		c.Beat = !c.Deleted && ev.Kv.Version > 1 && ev.PrevKv != nil && sameFindings(ev.PrevKv, ev.Kv)
	case "seen":
		return c, false // beats of daemons before 2026-12-03 (now ~beats/, not watched)
	case "volumes":
		c.Kind = torus.ChangeVolume
	case "epochs":
		c.Kind = torus.ChangeEpoch
		if !c.Deleted {
			c.Epoch, _ = strconv.ParseUint(string(ev.Kv.Value), 10, 64)
		}
	case "locks":
		c.Kind = torus.ChangeWriter
	case "heads":
		c.Kind = torus.ChangeHead
		if !c.Deleted {
			var h torus.Head
			if decode("watch", ev.Kv, &h) == nil {
				c.Head = &h
			}
		}
	case "snapshots", "snapreq", "snapres":
		c.Kind = torus.ChangeSnapshot
		c.Name, c.Snapshot, _ = strings.Cut(name, "/")
	case "attach":
		c.Kind = torus.ChangeAttachment
	case "csinodes":
		c.Kind, c.Node = torus.ChangeAttachment, true
	default:
		return c, false
	}
	return c, true
}

// sameFindings reports whether two liveness values carry the same scrub
// findings (Beat.Unrepairable).
func sameFindings(a, b *mvccpb.KeyValue) bool {
	var x, y beat
	if decode("watch", a, &x) != nil || decode("watch", b, &y) != nil {
		return false
	}
	return maps.EqualFunc(x.Unrepairable, y.Unrepairable, slices.Equal)
}
