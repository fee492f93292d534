package etcd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/torus-storage/torus"
)

// session is an etcd lease kept alive by the client.
type session struct {
	st     *Store
	id     clientv3.LeaseID
	ttl    time.Duration // granted
	cancel context.CancelFunc
	done   chan struct{}
	lost   sync.Once // closes done
	closed sync.Once // Close
	exited chan struct{}
}

func (s *session) ID() int64             { return int64(s.id) }
func (s *session) Done() <-chan struct{} { return s.done }

func (s *session) markLost(reason string) {
	s.lost.Do(func() {
		close(s.done)
		s.st.mu.Lock()
		delete(s.st.sessions, int64(s.id))
		s.st.mu.Unlock()
		if reason != "" {
			s.st.log.Warn("etcd session lost", "lease", fmt.Sprintf("%x", int64(s.id)), "reason", reason)
		}
	})
}

// Close stops the keepalives and revokes the lease, so keys written under
// it vanish at once. Done is closed even when the revoke fails (the lease
// then expires after its TTL). Idempotent.
func (s *session) Close(ctx context.Context) error {
	var err error
	s.closed.Do(func() {
		s.cancel()
		<-s.exited
		s.markLost("")
		err = s.st.req(ctx, "close session", func(ctx context.Context) error {
			_, err := s.st.cli.Revoke(ctx, s.id)
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				return nil
			}
			return err
		})
	})
	return err
}

// NewSession implements torus.Metadata. ttl is rounded up to whole seconds
// (etcd may grant more: its minimum TTL is about 2 s). Done closes when
// the keepalive stream ends (lease expired or revoked, ctx ended, store
// closed) or when no keepalive succeeded for the granted TTL.
func (s *Store) NewSession(ctx context.Context, ttl time.Duration) (torus.Session, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("metadata/etcd: session: %w: ttl %v must be positive", torus.ErrInvalid, ttl)
	}
	secs := int64((ttl + time.Second - 1) / time.Second)
	var grant *clientv3.LeaseGrantResponse
	err := s.req(ctx, "new session", func(rctx context.Context) error {
		var err error
		grant, err = s.cli.Grant(rctx, secs)
		return err
	})
	if err != nil {
		return nil, err
	}
	kctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.ctx, cancel)
	ch, err := s.cli.KeepAlive(kctx, grant.ID)
	if err != nil {
		stop()
		cancel()
		return nil, s.wrap(ctx, "new session", err)
	}
	ses := &session{
		st:     s,
		id:     grant.ID,
		ttl:    time.Duration(grant.TTL) * time.Second,
		cancel: cancel,
		done:   make(chan struct{}),
		exited: make(chan struct{}),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		stop()
		cancel()
		return nil, fmt.Errorf("metadata/etcd: new session: %w", torus.ErrClosed)
	}
	s.sessions[ses.ID()] = ses
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		defer close(ses.exited)
		defer stop()
		defer cancel()
		ses.keepAlive(kctx, ch)
	}()
	return ses, nil
}

// keepAlive consumes keepalive responses until the stream ends or none
// arrives for the lease's TTL, then marks the session lost.
func (s *session) keepAlive(ctx context.Context, ch <-chan *clientv3.LeaseKeepAliveResponse) {
	timer := time.NewTimer(s.ttl)
	defer timer.Stop()
	for {
		select {
		case resp, ok := <-ch:
			if !ok {
				reason := "keepalive stream ended (lease expired or revoked)"
				if ctx.Err() != nil {
					reason = "" // Close, the caller's ctx or Store.Close: not news
				}
				s.markLost(reason)
				return
			}
			if resp.TTL <= 0 {
				s.markLost("lease expired")
				return
			}
			timer.Reset(time.Duration(resp.TTL) * time.Second)
		case <-timer.C:
			s.markLost(fmt.Sprintf("no successful keepalive for %v", s.ttl))
			return
		}
	}
}

// session resolves a torus.Session to a live session of s.
func (s *Store) session(ts torus.Session) (*session, error) {
	es, ok := ts.(*session)
	if !ok || es.st != s {
		return nil, fmt.Errorf("metadata/etcd: %w: session %T does not belong to this store", torus.ErrInvalid, ts)
	}
	select {
	case <-es.done:
		return nil, fmt.Errorf("metadata/etcd: session %x: %w: lease lost", es.ID(), torus.ErrClosed)
	default:
	}
	return es, nil
}

// ExpireSession is a test hook: it revokes lease id behind its owner's back,
// as if it had expired (keys under it vanish), and ends the local session
// of that ID at once. Errors are logged.
func (s *Store) ExpireSession(id int64) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
	defer cancel()
	if _, err := s.cli.Revoke(ctx, clientv3.LeaseID(id)); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		s.log.Warn("expire session: revoke failed", "lease", id, "err", err)
	}
	s.mu.Lock()
	ses := s.sessions[id]
	s.mu.Unlock()
	if ses != nil {
		ses.cancel()
		ses.markLost("expired by ExpireSession")
	}
}
