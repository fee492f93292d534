package etcd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/torus-storage/torus"
)

// eventKey is events/<unix nanoseconds, 20 digits>-<8 random hex digits>:
// keys sort by time, so the history is trimmed by age with one range
// delete, and two reporters never collide. Seq is the key's create
// revision.
func (s *Store) eventKey(t time.Time) string {
	var b [4]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s%020d-%s", s.k.events(), t.UnixNano(), hex.EncodeToString(b[:]))
}

// RecordEvent implements torus.EventLog: one transaction puts the event
// and deletes those older than torus.EventRetention; when more than
// torus.MaxEvents remain, the oldest beyond it are deleted too.
func (s *Store) RecordEvent(ctx context.Context, e torus.Event) (torus.Event, error) {
	const op = "record event"
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = e.Time.UTC()
	e.Seq = 0
	cutTime := time.Now().Add(-torus.EventRetention)
	ops := []clientv3.Op{clientv3.OpPut(s.eventKey(e.Time), encode(e))}
	if !e.Time.Before(cutTime) {
		// (etcd refuses a put inside a deleted range in one transaction:
		// an event older than the retention is trimmed by the next one.)
		cut := s.k.events() + fmt.Sprintf("%020d", cutTime.UnixNano())
		ops = append(ops, clientv3.OpDelete(s.k.events(), clientv3.WithRange(cut)))
	}
	ops = append(ops, clientv3.OpGet(s.k.events(), clientv3.WithPrefix(), clientv3.WithCountOnly()))
	resp, err := s.txn(ctx, op, nil, ops, nil)
	if err != nil {
		return torus.Event{}, err
	}
	e.Seq = uint64(resp.Header.Revision)
	over := resp.Responses[len(ops)-1].GetResponseRange().Count - torus.MaxEvents
	if over <= 0 {
		return e, nil
	}
	old, err := s.read(ctx, op, clientv3.OpGet(s.k.events(), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend), clientv3.WithLimit(over)))
	if err != nil || len(old[0]) == 0 {
		return e, err
	}
	last := string(old[0][len(old[0])-1].Key)
	err = s.req(ctx, op, func(ctx context.Context) error {
		_, err := s.cli.Delete(ctx, s.k.events(), clientv3.WithRange(last+"\x00"))
		return err
	})
	return e, err
}

// Events implements torus.EventLog. The history is bounded, so it is read
// whole and filtered.
func (s *Store) Events(ctx context.Context, after uint64, limit int) ([]torus.Event, error) {
	const op = "events"
	r, err := s.read(ctx, op, clientv3.OpGet(s.k.events(), clientv3.WithPrefix()))
	if err != nil {
		return nil, err
	}
	var out []torus.Event
	for _, kv := range r[0] {
		if uint64(kv.CreateRevision) <= after {
			continue
		}
		var e torus.Event
		if err := decode(op, kv, &e); err != nil {
			return nil, err
		}
		e.Seq = uint64(kv.CreateRevision)
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}
