package volume

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/volume/lsm"
)

// This file is the writer's side of replication: the one fan-out to a
// segment's replicas, the rules that count their answers, sealing a segment
// (roll), committing the head, and FLUSH. docs/design/data-path.md states
// the rules; in short:
//
//   - A batch is acknowledged only when every replica of the segment it was
//     sent to stored it, and a segment always has at least MinReplicas
//     replicas: one that fails is dropped, the segment is marked broken and
//     never appended to again.
//   - A replica counts for FLUSH only when its Sync reports a durable length
//     covering what the writer needs.
//   - A segment is sealed only once its acknowledged bytes are durable on
//     MinReplicas replicas. When too few replicas can make them durable, the
//     unflushed tail is read back from a replica that holds it and appended
//     again, as the first bytes of the next segment (the carry), so FLUSH
//     succeeds again as soon as the new segment is synced.
//   - A head commit whose outcome is unknown is settled by reading the head
//     back before anything else is written.

// fanout calls fn on every replica in ids at once and returns each one's
// error, in the order of ids: syncs, fences and checkpoint copies. Appends
// to the open segment go through the pipeline's flights instead (ordered,
// several in flight; pipeline.start), whose answers tally counts by the same
// rule.
func (v *Volume) fanout(ctx context.Context, ids []string, fn func(ctx context.Context, i int, p torus.PeerService) error) []error {
	errs := make([]error, len(ids))
	call := func(i int) {
		p, err := v.peers.Peer(ctx, ids[i])
		if err == nil {
			err = fn(ctx, i, p)
		}
		if err != nil {
			errs[i] = fmt.Errorf("peer %s: %w", ids[i], err)
		}
	}
	// The last replica is called from this goroutine: one goroutine and
	// one hand-off less per FLUSH (and none at all with one replica).
	var wg sync.WaitGroup
	for i := range len(ids) - 1 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			call(i)
		}()
	}
	if len(ids) > 0 {
		call(len(ids) - 1)
	}
	wg.Wait()
	return errs
}

// outcome counts a fan-out's answers.
type outcome struct {
	ok      []string // replicas that succeeded
	failed  []string // replicas that failed
	errs    []error  // their errors, in the order of failed
	fenced  error    // non-nil when a replica refused the writer's epoch
	noSpace bool     // a replica's store is full
}

func tally(ids []string, errs []error) outcome {
	var o outcome
	for i, err := range errs {
		if err == nil {
			o.ok = append(o.ok, ids[i])
			continue
		}
		if errors.Is(err, torus.ErrFenced) {
			o.fenced = err
		}
		if errors.Is(err, torus.ErrNoSpace) {
			o.noSpace = true
		}
		o.failed = append(o.failed, ids[i])
		o.errs = append(o.errs, err)
	}
	return o
}

// errBroken: the open segment lost a replica (or never had MinReplicas):
// it must be sealed and the batch sent to a new one. It matches
// torus.ErrUnavailable: to a caller it is a replica failure.
var errBroken = fmt.Errorf("open segment is broken: %w", torus.ErrUnavailable)

// dropReplicas removes failed replicas from s, marks it broken (no more
// appends: it is sealed at the next batch) and keeps the failed peers out
// of new segments for badPeerTimeout while others can take them.
func (v *Volume) dropReplicas(s *segState, failed []string) {
	v.mu.Lock()
	now := time.Now()
	for _, id := range failed {
		if !slices.Contains(s.replicas, id) {
			continue
		}
		v.bad[id] = now
		s.replicas = slices.DeleteFunc(s.replicas, func(r string) bool { return r == id })
		v.stats.ReplicasDropped++
	}
	s.broken = true
	v.forgetCandidates()
	v.mu.Unlock()
	v.log.Warn("replicas dropped from segment; rolling", "segment", s.id, "failed", failed)
}

// needsRoll reports whether the next batch of size bytes must go to a new
// segment.
func (v *Volume) needsRoll(size int64) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	o := v.open
	return o == nil || o.broken || v.carry != nil || (o.length > 0 && o.length+size > v.cfg.SegmentSize)
}

// appendBatch appends one batch to the open segment, waiting for it, and,
// once every replica acknowledged it, updates the index. A replica that
// fails is dropped: the segment is sealed (its unflushed tail carried to the
// next one) and the batch retried on a new segment. noSpace says an earlier
// failure was a full store. It runs on the appender goroutine; the pipeline
// falls back to it whenever a segment must roll.
func (v *Volume) appendBatch(batch []*writeReq, noSpace bool) error {
	if err := v.fencedErr(); err != nil {
		return err
	}
	// One buffer, reused batch after batch: appends do not retain it.
	if total := batchSize(batch); int64(cap(v.batchBuf)) < total {
		v.batchBuf = make([]byte, 0, max(total, 2*maxBatch))
	}
	buf, offs := v.encodeBatch(batch, v.batchBuf)
	r := v.newRetry()
	for attempt := 0; ; attempt++ {
		// A full store is retried like a missing peer, within RetryFor:
		// the daemon collects garbage at once when its store fills up
		// (docs/design/cluster.md, "Garbage collection"), so a store full
		// of overwritten blocks has room again within seconds.
		if attempt >= 4 && !r.again() {
			break
		}
		if v.needsRoll(int64(len(buf))) {
			if err := v.roll(v.ctx, ckptIfDue, true); err != nil {
				if errors.Is(err, torus.ErrUnavailable) && v.fencedErr() == nil && r.again() {
					continue // too few live peers (or none with room) for now: wait for the view to change
				}
				if noSpace && errors.Is(err, torus.ErrUnavailable) {
					return fmt.Errorf("volume %s: %w (%v)", v.name, torus.ErrNoSpace, err)
				}
				return err
			}
		}
		open := v.open
		o, err := v.appendReplicas(open, buf)
		if errors.Is(err, errBroken) {
			continue
		}
		if err != nil {
			return err
		}
		if len(o.failed) == 0 {
			v.commitBatch(open, batch, offs, len(buf))
			return nil
		}
		noSpace = noSpace || o.noSpace
		v.dropReplicas(open, o.failed)
	}
	if noSpace {
		return fmt.Errorf("volume %s: appends keep failing: %w", v.name, torus.ErrNoSpace)
	}
	return fmt.Errorf("volume %s: appends keep failing: %w", v.name, torus.ErrUnavailable)
}

// retry paces the retries of one batch or FLUSH: again waits a little
// (backing off), refreshes the cluster view, and reports whether time is
// left.
type retry struct {
	v        *Volume
	deadline time.Time
	wait     time.Duration
}

func (v *Volume) newRetry() *retry {
	return &retry{v: v, deadline: time.Now().Add(v.retryFor), wait: 20 * time.Millisecond}
}

func (r *retry) again() bool {
	v := r.v
	if time.Now().Add(r.wait).After(r.deadline) || v.fencedErr() != nil {
		return false
	}
	select {
	case <-time.After(r.wait):
	case <-v.stop:
		return false
	case <-v.ctx.Done():
		return false
	}
	r.wait = min(2*r.wait, time.Second)
	ctx, cancel := context.WithTimeout(v.ctx, 2*time.Second)
	defer cancel()
	if err := v.refreshCluster(ctx); err != nil {
		v.log.Warn("refresh", "err", err)
	}
	return true
}

// appendReplicas sends buf at s's length to each of its replicas and waits
// for every answer: the pipeline at depth 1 (nothing else is in flight when
// it runs). It fences the volume if a replica refused the epoch, and returns
// errBroken without sending anything when s has fewer than MinReplicas
// replicas. Appender goroutine only.
func (v *Volume) appendReplicas(s *segState, buf []byte) (outcome, error) {
	v.mu.Lock()
	replicas := slices.Clone(s.replicas)
	off, minRep := s.length, v.minRep
	if len(replicas) < minRep || len(replicas) == 0 {
		s.broken = true
	}
	broken := s.broken
	v.mu.Unlock()
	if broken {
		return outcome{}, errBroken
	}
	// The pipeline at depth 1: one flight, awaited at once.
	f := v.pipe.start(s, off, buf, false)
	f.collect()
	o := f.o
	for _, err := range o.errs {
		v.log.Warn("append failed", "segment", s.id, "err", err)
	}
	if o.fenced != nil {
		return outcome{}, v.fence(o.fenced)
	}
	return o, nil
}

// errNoOpen is returned by roll when it committed the seal but could not
// place a new open segment. It matches torus.ErrUnavailable.
var errNoOpen = fmt.Errorf("no open segment: %w", torus.ErrUnavailable)

type ckptMode int

const (
	ckptNever ckptMode = iota
	ckptIfDue
	ckptForce
)

// pick chooses the replicas of a new segment: the first (volume) Replication ring
// members clockwise from its key that are up and have not failed lately,
// preferring peers that are not nearly full. Peers that failed lately (a
// daemon restarted in a rolling upgrade is one) are taken only to reach
// MinReplicas: a segment on fewer healthy peers is degraded but writable.
func (v *Volume) pick(seg torus.SegmentID) []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := time.Now()
	down := func(id string) bool { return !v.up[id] }
	bad := func(id string) bool {
		t, ok := v.bad[id]
		return down(id) || ok && now.Sub(t) < badPeerTimeout
	}
	ids := v.place.Lookup(seg.Key(), v.repl, func(id string) bool { return bad(id) || v.full[id] })
	fill := func(n int, skip func(string) bool) {
		for _, id := range v.place.Lookup(seg.Key(), v.repl, skip) {
			if len(ids) < n && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	fill(v.repl, bad) // nearly full peers
	if len(ids) < v.minRep {
		// Peers that failed lately, those that failed longest ago first
		// (a daemon back from a restart before one that just stopped and
		// may not be seen as down yet).
		lately := v.place.Lookup(seg.Key(), len(v.up)+v.repl, down)
		slices.SortStableFunc(lately, func(a, b string) int { return v.bad[a].Compare(v.bad[b]) })
		for _, id := range lately {
			if len(ids) < v.minRep && !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// roll seals the open segment, writes a checkpoint when due (or forced),
// names a new open segment when openNew, and commits the head with one
// CommitHead; then it appends the carry, if any, to the new segment. It
// runs on the appender goroutine (or in Open before the appender starts).
// When no new segment can be placed on MinReplicas live peers, the seal is
// committed alone and ErrUnavailable returned.
func (v *Volume) roll(ctx context.Context, mode ckptMode, openNew bool) error {
	for attempt := 0; ; attempt++ {
		m := mode
		if v.carry != nil {
			// The carry lands first; a checkpoint must not name the
			// carried blocks' old places.
			m, openNew = ckptNever, true
		}
		checkpointed, err := v.rollOnce(ctx, m, openNew)
		if err != nil {
			return err
		}
		if v.carry != nil {
			if err := v.landCarry(ctx); err != nil {
				if !errors.Is(err, errBroken) || attempt >= 3 {
					return err
				}
				continue // a replica of the new segment failed: roll again
			}
		}
		if checkpointed || mode != ckptForce || attempt >= 3 {
			return nil
		}
		// A forced checkpoint is still owed: seal again, now without a carry.
	}
}

// rollOnce is one seal-and-commit of roll; it reports whether it wrote a
// checkpoint. No checkpoint is written while a carry is pending.
func (v *Volume) rollOnce(ctx context.Context, mode ckptMode, openNew bool) (bool, error) {
	// A background checkpoint that is done goes into this roll's head; one
	// still in flight is waited for when this roll writes a checkpoint
	// itself (forced, at close, or with the sealed list at its limit).
	var finished *ckptJob
	var done ckptResult
	var job *ckptJob // what a new checkpoint took from the index: restored if the head does not take it
	// restore gives the index back what the checkpoints this roll does
	// not put in the head had taken from it: every return with an error
	// after finished is received calls it, or their blocks would be in no
	// checkpoint while the sealed segments holding them are dropped by the
	// next one.
	restore := func() {
		for _, j := range []*ckptJob{finished, job} {
			if j != nil {
				v.restoreCheckpoint(j)
			}
		}
		finished, job = nil, nil
	}
	if v.ckpt != nil {
		v.mu.Lock()
		full := len(v.head.Sealed)+1 >= v.maxSealed
		v.mu.Unlock()
		wait := mode == ckptForce || !openNew || full
		select {
		case done = <-v.ckptDone:
			finished, v.ckpt = v.ckpt, nil
		default:
			if wait {
				select {
				case done = <-v.ckptDone:
					finished, v.ckpt = v.ckpt, nil
				case <-ctx.Done():
					return false, ctx.Err()
				}
			}
		}
	}
	old := v.open
	if old != nil {
		if err := v.secure(ctx, old); err != nil {
			restore()
			return false, err
		}
	}
	v.mu.Lock()
	nh := cloneHead(v.head)
	if old != nil {
		nh.Open, nh.OpenReplicas = nil, nil
		seal := old.length
		if v.carry != nil && v.carry.src == old {
			seal = v.carry.base // the rest lives on in the carry
		}
		if seal > 0 {
			nh.Sealed = append(nh.Sealed, torus.SegmentRef{ID: old.id, Length: seal})
			v.idx.SetLength(old.slot, seal)
		}
	}
	v.mu.Unlock()

	var ck *torus.SegmentRef
	var ckStack []StackRun // the stack once ck is in the head
	var background bool    // job is to be written in the background once the head names it
	stack := v.stack
	if finished != nil {
		if err := v.applyCheckpoint(&nh, finished, done); err != nil {
			v.restoreCheckpoint(finished)
			finished = nil
			v.log.Warn("background checkpoint not taken; the next seal tries again", "err", err)
		} else {
			ck, ckStack, stack = nh.Checkpoint, done.stack, done.stack
		}
	}
	due := v.carry == nil && (mode == ckptForce || mode == ckptIfDue && len(nh.Sealed) >= v.cfg.CheckpointEvery)
	// A checkpoint due at a seal that opens a new segment is written in the
	// background (one at a time: while one is in flight the next seal
	// checks again); a forced one, one at close, or one with the sealed
	// list at its limit is written here.
	if due && v.ckpt == nil {
		var err error
		job, err = v.prepareCheckpoint(nh, stack)
		switch {
		case err != nil:
		case mode == ckptIfDue && openNew && len(nh.Sealed) < v.maxSealed:
			background = true
			nh.Checkpointing = &job.id
			nh.NextSeq++
		default:
			var ref torus.SegmentRef
			if ref, ckStack, err = v.writeCheckpoint(ctx, job); err == nil {
				ck = &ref
				nh.Checkpoint = ck
				nh.Sealed = nil
				nh.NextSeq++
			}
		}
		if err != nil {
			if job != nil {
				v.restoreCheckpoint(job)
				job = nil
			}
			if mode == ckptForce {
				restore()
				return false, err
			}
			v.log.Warn("checkpoint skipped", "err", err)
		}
	}
	if v.ckpt == nil && !background {
		nh.Checkpointing = nil // a background checkpoint that failed
	}
	if ck == nil && len(nh.Sealed) > v.maxSealed {
		// Checkpoints keep failing: a longer head would soon pass etcd's
		// request limit and no commit would go through at all.
		err := fmt.Errorf("volume %s: %d sealed segments since the last checkpoint (limit %d): checkpoints keep failing: %w",
			v.name, len(nh.Sealed), v.maxSealed, torus.ErrUnavailable)
		v.log.Error("writes refused until a checkpoint succeeds", "err", err)
		restore()
		return false, err
	}

	var next *segState
	var placeErr error
	if openNew {
		id := torus.SegmentID{Volume: v.id, Epoch: v.epoch, Seq: nh.NextSeq, Kind: torus.KindData}
		replicas := v.pick(id)
		if minRep := v.minReplicas(); len(replicas) < minRep {
			placeErr = fmt.Errorf("volume %s: %d live peers for a new segment, need %d: %w",
				v.name, len(replicas), minRep, errNoOpen)
		} else {
			nh.NextSeq++
			nh.Open, nh.OpenReplicas = &id, slices.Clone(replicas)
			next = &segState{id: id, replicas: replicas}
			v.log.Debug("new segment", "segment", id, "replicas", replicas)
		}
	}
	if err := v.commit(ctx, nh); err != nil {
		restore()
		return false, err
	}
	v.mu.Lock()
	v.head = nh
	if ck != nil {
		v.stack = ckStack
	}
	if background {
		v.ckpt = job
		v.wg.Add(1)
		go v.checkpointInBackground(job)
	}
	if old != nil && old.length > 0 {
		v.stats.SegmentsSealed++
	}
	v.open = next
	if next != nil {
		next.slot = v.idx.AddSegment(next.id)
		v.segs[next.id] = next
		v.forgetCandidates()
	}
	v.pruneSegsLocked()
	v.mu.Unlock()
	if ck != nil {
		select {
		case v.compactKick <- struct{}{}:
		default:
		}
	}
	v.log.Debug("rolled", "sealed", old != nil && old.length > 0, "checkpoint", ck != nil, "open", nh.Open)
	return ck != nil, placeErr
}

// commitResolveTimeout bounds how long a writer tries to learn the outcome
// of a head commit whose reply was lost before it fences itself. The
// writer's lease (DefaultLockTTL) expires sooner when etcd is unreachable.
const commitResolveTimeout = 30 * time.Second

// commit stores the head (one etcd transaction), fenced by the epoch. A
// commit whose outcome is unknown (a timeout, a lost connection: etcd may
// have applied it) is settled by reading the head back: the writer never
// goes on believing a commit failed that etcd holds, nor the reverse.
func (v *Volume) commit(ctx context.Context, h torus.Head) error {
	v.mu.Lock()
	v.stats.EtcdCommits++
	prev := cloneHead(v.head)
	v.mu.Unlock()
	done, err := v.commitOnce(ctx, h)
	if done {
		return err
	}
	return v.resolveCommit(ctx, prev, h, err)
}

// commitOnce sends one CommitHead. done reports a definite outcome, err
// then being nil (applied) or why it was not applied (fenced: the writer is
// fenced); otherwise err is the ambiguous failure.
func (v *Volume) commitOnce(ctx context.Context, h torus.Head) (done bool, err error) {
	err = v.meta.CommitHead(ctx, v.name, v.epoch, h)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, torus.ErrFenced):
		return true, v.fence(err)
	case errors.Is(err, torus.ErrNotExist) || errors.Is(err, torus.ErrInvalid) ||
		errors.Is(err, torus.ErrConflict) || errors.Is(err, torus.ErrNotInitialized):
		return true, fmt.Errorf("volume %s: commit head: %w", v.name, err)
	}
	return false, err
}

// resolveCommit reads the head back until it can tell what became of the
// commit of h: etcd holds h (applied: success), or still prev (not
// applied: the same h is committed again), or anything else (another
// writer: fenced). When it cannot tell within commitResolveTimeout the
// writer fences itself: going on could append past what etcd has sealed.
func (v *Volume) resolveCommit(ctx context.Context, prev, h torus.Head, cause error) error {
	v.log.Warn("head commit outcome unknown; reading the head back", "err", cause)
	deadline := time.Now().Add(commitResolveTimeout)
	wait := 50 * time.Millisecond
	for {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		got, err := v.meta.Head(rctx, v.name)
		cancel()
		if err == nil {
			switch {
			case sameHead(got, h):
				v.log.Info("head commit was applied though its answer was lost")
				return nil
			case !sameHead(got, prev):
				return v.fence(fmt.Errorf("head changed under the writer (epoch %d in etcd)", got.Epoch))
			}
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			done, cerr := v.commitOnce(rctx, h)
			cancel()
			if done {
				return cerr
			}
			err = cerr
		}
		cause = err
		if time.Now().After(deadline) {
			return v.fence(fmt.Errorf("outcome of a head commit unknown for %v: %w", commitResolveTimeout, cause))
		}
		select {
		case <-time.After(wait):
		case <-v.stop:
			return fmt.Errorf("volume %s: commit head: %w (%v)", v.name, torus.ErrClosed, cause)
		}
		wait = min(2*wait, time.Second)
	}
}

// sameHead compares heads by their stored form.
// pruneSegsLocked drops from v.segs the segments the writer no longer
// needs to remember: sealed, every acknowledged byte durable, not the
// source of a pending carry, and held exactly where the ring places them
// (so candidates loses nothing: the ring order leads to the same
// replicas). What stays is the open segment, segments a FLUSH still has to
// sync, and those placed elsewhere (a peer was down or full when they were
// opened): FLUSH and checkpoints walk only those. It runs on the appender
// (rollOnce) with mu held.
func (v *Volume) pruneSegsLocked() {
	for id, s := range v.segs {
		if s == v.open || s.length > s.synced || v.carry != nil && v.carry.src == s {
			continue
		}
		ring := v.place.Lookup(id.Key(), len(s.replicas), nil)
		if len(ring) != len(s.replicas) {
			continue
		}
		same := true
		for _, r := range s.replicas {
			if !slices.Contains(ring, r) {
				same = false
			}
		}
		if same {
			delete(v.segs, id)
		}
	}
}

func sameHead(a, b torus.Head) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}

// ckptJob is a checkpoint being made: what it took from the index (the
// run's changes, the segment table) and the head it covers.
type ckptJob struct {
	id      torus.SegmentID // the checkpoint segment: {epoch, NextSeq at the seal}
	delta   []lsm.Extent
	table   []torus.SegmentRef
	size    int64
	stack   []StackRun        // the runs below, as the head names them
	covered []torus.SegmentID // the head's sealed list it replaces
	pending Pending
}

// ckptResult is the outcome of a background checkpoint.
type ckptResult struct {
	ref   torus.SegmentRef
	stack []StackRun
	err   error
}

// prepareCheckpoint takes what the next checkpoint of the index holds, as
// of head h (the seal that makes it due), over stack. Every segment the index names
// must be durable already (roll secures the open one first). It runs on
// the appender.
func (v *Volume) prepareCheckpoint(h torus.Head, stack []StackRun) (*ckptJob, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, s := range v.segs {
		if s.length > s.synced {
			return nil, fmt.Errorf("volume %s: checkpoint: segment %v not durable (%d of %d bytes): %w",
				v.name, s.id, s.synced, s.length, torus.ErrUnavailable)
		}
	}
	job := &ckptJob{
		id:    torus.SegmentID{Volume: v.id, Epoch: v.epoch, Seq: h.NextSeq, Kind: torus.KindCheckpoint},
		table: v.idx.LiveTable(),
		size:  int64(v.idx.Blocks()) * torus.BlockSize,
		stack: stack,
	}
	for _, r := range h.Sealed {
		job.covered = append(job.covered, r.ID)
	}
	job.delta, job.pending = v.idx.TakeDelta()
	return job, nil
}

// restoreCheckpoint gives the index back what job took: its checkpoint
// will not be in the head.
func (v *Volume) restoreCheckpoint(job *ckptJob) {
	v.mu.Lock()
	v.idx.Restore(job.pending)
	v.mu.Unlock()
}

// checkpointInBackground writes job and hands the outcome to the
// appender's next roll (rollOnce). Its owner is the Volume (v.wg).
func (v *Volume) checkpointInBackground(job *ckptJob) {
	defer v.wg.Done()
	ref, stack, err := v.writeCheckpoint(v.ctx, job)
	v.ckptDone <- ckptResult{ref: ref, stack: stack, err: err}
}

// applyCheckpoint puts a finished background checkpoint into head h in
// place of the sealed segments it covers.
func (v *Volume) applyCheckpoint(h *torus.Head, job *ckptJob, res ckptResult) error {
	if res.err != nil {
		return res.err
	}
	n := len(job.covered)
	for i := range n {
		if i >= len(h.Sealed) || h.Sealed[i].ID != job.covered[i] {
			return fmt.Errorf("volume %s: checkpoint %v: the head's sealed list no longer starts with the segments it covers", v.name, job.id)
		}
	}
	h.Sealed = slices.Clone(h.Sealed[n:])
	h.Checkpoint, h.Checkpointing = &res.ref, nil
	return nil
}

// writeCheckpoint writes job as a checkpoint segment on Replication
// replicas and syncs it. The segment is not yet in the head: LiveSegments
// protects {epoch, NextSeq} and the head's Checkpointing from the GC
// sweep.
func (v *Volume) writeCheckpoint(ctx context.Context, job *ckptJob) (torus.SegmentRef, []StackRun, error) {
	run, stack, err := v.planRun(ctx, job.delta, job.stack)
	if err != nil {
		return torus.SegmentRef{}, nil, fmt.Errorf("volume %s: checkpoint: %w", v.name, err)
	}
	ckpt := EncodeRunCheckpoint(&RunCheckpoint{VolumeID: v.id, Size: job.size, Segments: job.table, Stack: stack, Run: run})
	id := job.id
	replicas := v.pick(id)
	minRep := v.minReplicas()
	if len(replicas) < minRep {
		return torus.SegmentRef{}, nil, fmt.Errorf("volume %s: %d live peers for a checkpoint, need %d: %w",
			v.name, len(replicas), minRep, torus.ErrUnavailable)
	}
	o := tally(replicas, v.fanout(ctx, replicas, func(ctx context.Context, _ int, p torus.PeerService) error {
		return v.writeWhole(ctx, p, id, ckpt)
	}))
	v.mu.Lock()
	v.stats.Syncs += int64(len(replicas))
	v.stats.ReplicaBytes += int64(len(ckpt)) * int64(len(o.ok))
	v.mu.Unlock()
	if o.fenced != nil {
		return torus.SegmentRef{}, nil, v.fence(o.fenced)
	}
	if len(o.ok) < minRep {
		return torus.SegmentRef{}, nil, fmt.Errorf("volume %s: checkpoint on %d replicas, need %d: %w",
			v.name, len(o.ok), minRep, errors.Join(append(o.errs, torus.ErrUnavailable)...))
	}
	v.mu.Lock()
	v.stats.Checkpoints++
	v.stats.CheckpointBytes += int64(len(ckpt))
	v.mu.Unlock()
	v.log.Debug("checkpoint written", "segment", id, "bytes", len(ckpt), "replicas", len(o.ok))
	ref := torus.SegmentRef{ID: id, Length: int64(len(ckpt))}
	return ref, append([]StackRun{{Ref: ref, RunSize: int64(len(run))}}, stack...), nil
}

// writeWhole appends b to a new segment on one peer in maxBatch pieces and
// syncs it; the copy counts only when its durable length covers b.
func (v *Volume) writeWhole(ctx context.Context, p torus.PeerService, id torus.SegmentID, b []byte) error {
	for off := 0; off < len(b); off += maxBatch {
		end := min(off+maxBatch, len(b))
		if err := p.Append(ctx, v.epoch, id, int64(off), b[off:end]); err != nil {
			return err
		}
	}
	n, err := p.Sync(ctx, v.epoch, id)
	if err == nil && n < int64(len(b)) {
		err = fmt.Errorf("segment %v durable to %d of %d bytes: %w", id, n, len(b), torus.ErrUnavailable)
	}
	return err
}

// syncJob is one segment FLUSH must make durable up to length.
type syncJob struct {
	s        *segState
	length   int64
	replicas []string
}

// syncSegments syncs every replica of every job at once. A replica counts
// for a job when its Sync succeeded and its durable length covers the job;
// one that does not is dropped from the segment (its copy of the unflushed
// range is in doubt), which marks the segment broken. A job with
// MinReplicas counted replicas moves its segment's synced mark. It returns
// the jobs that fell short, described, and the errors seen.
func (v *Volume) syncSegments(ctx context.Context, jobs []syncJob) (short []string, errs []error, err error) {
	var ids []string
	var owner []int
	for ji, j := range jobs {
		for _, id := range j.replicas {
			ids = append(ids, id)
			owner = append(owner, ji)
		}
	}
	sctx, cancel := context.WithTimeout(ctx, peerTimeout)
	defer cancel()
	results := v.fanout(sctx, ids, func(ctx context.Context, i int, p torus.PeerService) error {
		j := jobs[owner[i]]
		n, err := p.Sync(ctx, v.epoch, j.s.id)
		if err == nil && n < j.length {
			err = fmt.Errorf("segment %v durable to %d, need %d (the replica lost unsynced bytes): %w",
				j.s.id, n, j.length, torus.ErrUnavailable)
		}
		return err
	})
	if err := ctx.Err(); err != nil {
		// The caller gave up: the answers say nothing about the replicas.
		return nil, nil, err
	}
	v.mu.Lock()
	v.stats.Syncs += int64(len(ids))
	v.mu.Unlock()
	o := tally(ids, results)
	if o.fenced != nil {
		return nil, nil, v.fence(o.fenced)
	}
	ok := make([]int, len(jobs))
	failed := make([][]string, len(jobs))
	for i, id := range ids {
		if results[i] == nil {
			ok[owner[i]]++
		} else {
			v.log.Warn("sync failed", "segment", jobs[owner[i]].s.id, "err", results[i])
			failed[owner[i]] = append(failed[owner[i]], id)
		}
	}
	minRep := v.minReplicas()
	for ji, j := range jobs {
		if len(failed[ji]) > 0 {
			v.dropReplicas(j.s, failed[ji])
		}
		v.mu.Lock()
		if ok[ji] >= minRep {
			j.s.synced = max(j.s.synced, j.length)
		} else if j.s.synced < j.length {
			short = append(short, fmt.Sprintf("%v on %d/%d", j.s.id, ok[ji], minRep))
		}
		v.mu.Unlock()
	}
	return short, o.errs, nil
}

// flushJobs lists the segments with acknowledged bytes not yet durable.
func (v *Volume) flushJobs() ([]syncJob, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.fenced != nil {
		return nil, v.fenced
	}
	var jobs []syncJob
	for _, s := range v.segs {
		if s.length > s.synced {
			jobs = append(jobs, syncJob{s, s.length, slices.Clone(s.replicas)})
		}
	}
	return jobs, nil
}

// flush makes every acknowledged write durable on MinReplicas replicas.
// When a segment falls short (a replica failed or lost unsynced bytes), the
// appender seals it and carries its unflushed tail to a new segment on
// healthy peers; the flush then syncs that one. It must not run on the
// appender goroutine.
func (v *Volume) flush(ctx context.Context) error {
	v.mu.Lock()
	v.stats.Flushes++
	v.mu.Unlock()
	r := v.newRetry()
	for attempt := 0; ; attempt++ {
		jobs, err := v.flushJobs()
		if err != nil || len(jobs) == 0 {
			return err
		}
		short, errs, err := v.syncSegments(ctx, jobs)
		if err != nil || len(short) == 0 {
			return err
		}
		if ctx.Err() != nil || attempt >= 2 && !r.again() {
			return fmt.Errorf("volume %s: flush: segments synced on too few replicas (%v): %w",
				v.name, short, errors.Join(append(errs, torus.ErrUnavailable)...))
		}
		if err := v.control(ctx, v.restore); err != nil {
			if errors.Is(err, torus.ErrUnavailable) && v.fencedErr() == nil && ctx.Err() == nil && r.again() {
				continue
			}
			return fmt.Errorf("volume %s: flush: restoring redundancy: %w", v.name, err)
		}
	}
}

// restore runs on the appender: it seals a broken open segment, carrying
// its unflushed tail to a new one.
func (v *Volume) restore(ctx context.Context) error {
	v.mu.Lock()
	o := v.open
	need := o != nil && (o.broken || o.length > o.synced && len(o.replicas) < v.minRep) || v.carry != nil
	v.mu.Unlock()
	if !need {
		return nil
	}
	return v.roll(ctx, ckptNever, true)
}

// Flush makes every write completed before it durable on MinReplicas
// replicas (ErrUnavailable otherwise). It sends no etcd request unless a
// replica failed and the open segment had to be sealed.
func (v *Volume) Flush(ctx context.Context) error {
	if err := v.begin(false); err != nil {
		return err
	}
	defer v.end()
	if v.ro {
		return nil
	}
	return v.flush(ctx)
}
