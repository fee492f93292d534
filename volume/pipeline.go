package volume

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/torus-storage/torus"
)

// maxInflight is how many batches the appender keeps in flight to the
// replicas of the open segment. Each replica receives them in order on one
// connection, and the peer server runs a connection's appends in order, so
// batch k+1 travels and is written while batch k is being acknowledged: the
// write rate is no longer one batch per round trip.
const maxInflight = 4

// flight is one batch sent to the replicas of the open segment and not yet
// landed (acknowledged by all and committed, or failed).
type flight struct {
	batch  []*writeReq
	buf    []byte  // the encoded records; the appender's until landed
	offs   []int64 // each record's offset in buf
	seg    *segState
	off    int64    // the segment offset buf was sent at
	ids    []string // replicas sent to
	errs   []error  // their answers, by index in ids
	pooled bool     // buf is from the pipeline's free list
	res    chan replicaResult
	waits  []inlineWait // answers the appender awaits itself (launch)
	got    int
	o      outcome // once got == len(ids)
}

type replicaResult struct {
	i   int // index in flight.ids
	err error
}

// record takes one answer; the last one settles the flight's outcome, by
// the same rule as every other fan-out (tally).
func (f *flight) record(r replicaResult) {
	f.got++
	if r.err != nil {
		f.errs[r.i] = fmt.Errorf("peer %s: %w", f.ids[r.i], r.err)
	}
	if f.got == len(f.ids) {
		f.o = tally(f.ids, f.errs)
	}
}

// collect waits for every answer of f.
func (f *flight) collect() {
	for f.got < len(f.ids) {
		f.record(<-f.res)
	}
}

// appendJob asks a replica worker to append f.buf at f.off.
type appendJob struct {
	f *flight
	i int // the replica's index in f.ids
}

// pipeline is the appender goroutine's state.
type pipeline struct {
	v       *Volume
	q       []*flight // in send order; q[0] lands first
	tail    int64     // open segment length once every flight landed
	free    [][]byte  // encode buffers not in flight
	workers map[string]*replicaWorker
	wg      sync.WaitGroup // workers and their answer waiters
}

// replicaWorker sends one replica's appends in order.
type replicaWorker struct {
	jobs    chan appendJob
	pending atomic.Int32 // jobs queued and not yet sent
}

// directLimit: a batch this small is sent by the appender itself when the
// replica's worker is idle (one goroutine hand-off less on the latency
// path of small writes); larger ones are sent by the workers, in parallel
// to the replicas.
const directLimit = 256 << 10

// appender is the single goroutine that appends to the open segment. It
// gathers every waiting record into one batch (group commit, up to
// maxBatch bytes) and sends it to all replicas, keeping up to maxInflight
// batches in flight. Batches land (index updated, writes completed) in
// order. Control functions run with nothing in flight.
func (v *Volume) appender() {
	defer v.wg.Done()
	p := v.pipe
	defer p.stopWorkers()
	// held is a small batch kept back while others are in flight: small
	// writes gain nothing from a deeper pipeline and lose group commit
	// (more, smaller appends cost CPU per write), so a batch under
	// minPipelined waits for the oldest flight to land, gathering more.
	var held []*writeReq
	var heldSize int64
	release := func() {
		if len(held) > 0 {
			p.launch(held, heldSize)
			held, heldSize = nil, 0
		}
	}
	for {
		var oldest chan replicaResult
		if len(p.q) > 0 {
			oldest = p.q[0].res
		}
		reqs := v.reqs
		if len(p.q) >= maxInflight || heldSize >= maxBatch {
			reqs = nil
		}
		select {
		case <-v.stop:
			release()
			p.drain()
			for {
				select {
				case r := <-v.reqs:
					r.done <- fmt.Errorf("volume %s: %w", v.name, torus.ErrClosed)
				default:
					return
				}
			}
		case c := <-v.ctl:
			release()
			p.drain()
			c.done <- c.fn(v.ctx)

		case r := <-oldest:
			f := p.q[0]
			f.record(r)
			if f.got == len(f.ids) {
				p.land()
			}
		case r := <-reqs:
			held = append(held, r)
			heldSize += r.size()
		gather:
			for heldSize < maxBatch {
				select {
				case r := <-v.reqs:
					held = append(held, r)
					heldSize += r.size()
				default:
					break gather
				}
			}
		}
		if len(held) > 0 && len(p.q) < maxInflight && (len(p.q) == 0 || heldSize >= minPipelined) {
			release()
		}
	}
}

// minPipelined is the least batch launched while others are in flight.
const minPipelined = 512 << 10

// launch sends batch to the open segment's replicas, or, when the segment
// must roll first, lands everything in flight and appends it synchronously.
func (p *pipeline) launch(batch []*writeReq, size int64) {
	v := p.v
	if err := v.fencedErr(); err != nil {
		complete(batch, err)
		return
	}
	open := v.open
	if len(p.q) == 0 && open != nil {
		p.tail = open.length
	}
	if open == nil || v.needsRoll(0) || (p.tail > 0 && p.tail+size > v.cfg.SegmentSize) {
		p.drain()
		complete(batch, v.appendBatch(batch, false))
		return
	}
	var buf []byte
	if k := len(p.free); k > 0 {
		buf, p.free = p.free[k-1], p.free[:k-1]
	}
	if int64(cap(buf)) < size {
		buf = make([]byte, 0, max(size, 2*maxBatch))
	}
	buf, offs := v.encodeBatch(batch, buf)
	// A small batch with nothing else in flight and nothing waiting is a
	// latency-bound write: its answers are awaited right here (inline)
	// instead of by a goroutine per replica that hands them on, two
	// goroutine hand-offs less per write. Nothing is lost meanwhile: new
	// requests queue on v.reqs and are gathered when it lands, and control
	// functions and Close wait for flights to land anyway.
	inline := len(buf) <= inlineLimit && len(p.q) == 0 && len(v.reqs) == 0
	f := p.start(open, p.tail, buf, inline)
	f.batch, f.offs, f.pooled = batch, offs, true
	p.tail += int64(len(buf))
	p.q = append(p.q, f)
	for _, w := range f.waits {
		err := w.wait()
		w.cancel()
		f.record(replicaResult{w.i, err})
	}
	f.waits = nil
	if f.got == len(f.ids) { // answered inline (or no replicas: cannot happen, a segment without replicas is rolled)
		p.land()
	}
}

// inlineLimit is the largest batch whose answers the appender may await
// itself (launch).
const inlineLimit = 64 << 10

// inlineWait is an append started by the appender whose answer it awaits
// itself.
type inlineWait struct {
	i      int
	wait   func() error
	cancel context.CancelFunc
}

// start sends buf at off to every replica of seg, each replica's appends
// in order: small ones from the appender goroutine when the replica's
// worker is idle, the others by the worker. It is the one way appends
// reach replicas; the answers come back on the flight's channel.
//
// With inline, every replica is sent to from the appender goroutine and the
// answers are left to await in f.waits, unless a replica's worker is busy:
// then that replica goes through its worker, in order, and nothing is
// left in f.waits (the answers come back on the channel as usual).
func (p *pipeline) start(seg *segState, off int64, buf []byte, inline bool) *flight {
	v := p.v
	v.mu.Lock()
	ids := slices.Clone(seg.replicas)
	v.mu.Unlock()
	f := &flight{buf: buf, seg: seg, off: off, ids: ids, errs: make([]error, len(ids)),
		res: make(chan replicaResult, len(ids))}
	if inline {
		for _, id := range ids {
			if p.worker(id).pending.Load() != 0 {
				inline = false
			}
		}
	}
	for i, id := range ids {
		w := p.worker(id)
		if len(buf) <= directLimit && w.pending.Load() == 0 {
			p.sendDirect(f, i, inline)
			continue
		}
		w.pending.Add(1)
		w.jobs <- appendJob{f: f, i: i}
	}
	return f
}

// land finishes q[0], whose every answer is in. On success the batch is
// committed; on failure everything still in flight is awaited and the
// failed batch and those after it are appended again, synchronously, on a
// new segment.
func (p *pipeline) land() {
	v := p.v
	f := p.q[0]
	p.q = p.q[1:]
	if f.o.fenced != nil {
		err := v.fence(f.o.fenced)
		p.recycle(f)
		complete(f.batch, err)
		for _, g := range p.awaitAll() {
			complete(g.batch, err)
		}
		return
	}
	if len(f.o.failed) == 0 && v.open == f.seg && f.off == f.seg.length {
		v.commitBatch(f.seg, f.batch, f.offs, len(f.buf))
		p.recycle(f)
		complete(f.batch, nil)
		return
	}
	for _, err := range f.o.errs {
		v.log.Warn("append failed", "segment", f.seg.id, "err", err)
	}
	rest := p.awaitAll()
	if len(f.o.failed) > 0 {
		v.dropReplicas(f.seg, f.o.failed)
	}
	p.recycle(f)
	if len(f.o.failed) == 0 {
		// Nothing failed but the segment moved on under the flight
		// (rolled after a FLUSH dropped a replica): send it again.
		v.mu.Lock()
		f.seg.broken = f.seg.broken || v.open == f.seg
		v.mu.Unlock()
	}
	complete(f.batch, v.appendBatch(f.batch, f.o.noSpace))
	for _, g := range rest {
		complete(g.batch, v.appendBatch(g.batch, false))
	}
}

// awaitAll waits for every answer of every flight still in flight (their
// outcome no longer matters: they are appended again) and returns them.
func (p *pipeline) awaitAll() []*flight {
	rest := p.q
	p.q = nil
	for _, g := range rest {
		g.collect()
		p.recycle(g)
	}
	return rest
}

// drain lands every flight.
func (p *pipeline) drain() {
	for len(p.q) > 0 {
		p.q[0].collect()
		p.land()
	}
}

func (p *pipeline) recycle(f *flight) {
	if f.pooled && f.buf != nil {
		p.free = append(p.free, f.buf[:0])
		f.buf = nil
	}
}

func complete(batch []*writeReq, err error) {
	for _, r := range batch {
		r.done <- err
	}
}

// sendDirect starts f's append to replica i from the appender goroutine.
// With inline its answer is left in f.waits for the appender to await.
func (p *pipeline) sendDirect(f *flight, i int, inline bool) {
	v := p.v
	ctx, cancel := context.WithTimeout(v.ctx, peerTimeout)
	ps, err := v.peers.Peer(ctx, f.ids[i])
	if err != nil {
		cancel()
		f.res <- replicaResult{i, err}
		return
	}
	wait := ps.AppendAsync(ctx, v.epoch, f.seg.id, f.off, f.buf)
	if inline {
		f.waits = append(f.waits, inlineWait{i: i, wait: wait, cancel: cancel})
		return
	}
	p.await(wait, cancel, f, i)
}

// await delivers the answer of a started append to f, from a goroutine.
func (p *pipeline) await(wait func() error, cancel context.CancelFunc, f *flight, i int) {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		err := wait()
		cancel()
		f.res <- replicaResult{i, err}
	}()
}

// worker returns replica id's worker, starting it. A worker sends one
// replica's appends in order with AppendAsync (the answer is awaited by a
// goroutine of its own, so the next batch is sent at once).
func (p *pipeline) worker(id string) *replicaWorker {
	if w, ok := p.workers[id]; ok {
		return w
	}
	v := p.v
	w := &replicaWorker{jobs: make(chan appendJob, maxInflight)}
	p.workers[id] = w
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for j := range w.jobs {
			f := j.f
			ctx, cancel := context.WithTimeout(v.ctx, peerTimeout)
			ps, err := v.peers.Peer(ctx, f.ids[j.i])
			if err != nil {
				cancel()
				w.pending.Add(-1)
				f.res <- replicaResult{j.i, err}
				continue
			}
			wait := ps.AppendAsync(ctx, v.epoch, f.seg.id, f.off, f.buf)
			w.pending.Add(-1)
			p.await(wait, cancel, f, j.i)
		}
	}()
	return w
}

// stopWorkers ends the workers once nothing is in flight.
func (p *pipeline) stopWorkers() {
	for id, w := range p.workers {
		close(w.jobs)
		delete(p.workers, id)
	}
	p.wg.Wait()
}
