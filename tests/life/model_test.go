package life

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"
)

const blockSize = 4096

// Every block a test writes is self-describing: a header naming the write
// and the block, then bytes generated from (seed, write, block). A block
// read back therefore says which write it came from, so a mismatch is
// reported as "write #41 found where #57 was flushed", not as a hex diff.
const blockMagic = "TORUSLIF"

// fillBlock writes the content of block blk as written by write id.
func fillBlock(dst []byte, seed int64, id uint64, blk int64) {
	copy(dst, blockMagic)
	binary.LittleEndian.PutUint64(dst[8:], id)
	binary.LittleEndian.PutUint64(dst[16:], uint64(blk))
	binary.LittleEndian.PutUint64(dst[24:], uint64(seed))
	// xorshift64* keyed by everything above.
	x := uint64(seed)*0x9E3779B97F4A7C15 ^ id*0xBF58476D1CE4E5B9 ^ uint64(blk)*0x94D049BB133111EB | 1
	for i := 32; i < blockSize; i += 8 {
		x ^= x >> 12
		x ^= x << 25
		x ^= x >> 27
		binary.LittleEndian.PutUint64(dst[i:], x*0x2545F4914F6CDD1D)
	}
}

// decodeBlock says what a block read back holds: write id (0 = zeros), or
// an error describing garbage.
func decodeBlock(b []byte, seed int64, blk int64) (uint64, error) {
	if isZero(b) {
		return 0, nil
	}
	if string(b[:8]) != blockMagic {
		return 0, fmt.Errorf("garbage (not written by this test): % x...", b[:16])
	}
	id := binary.LittleEndian.Uint64(b[8:])
	if got := int64(binary.LittleEndian.Uint64(b[16:])); got != blk {
		return 0, fmt.Errorf("misplaced: holds block %d of write #%d", got, id)
	}
	if s := int64(binary.LittleEndian.Uint64(b[24:])); s != seed {
		return 0, fmt.Errorf("write #%d of another run (seed %d)", id, s)
	}
	want := make([]byte, blockSize)
	fillBlock(want, seed, id, blk)
	if !bytes.Equal(b, want) {
		i := 0
		for i < blockSize && b[i] == want[i] {
			i++
		}
		return id, fmt.Errorf("corrupt: header of write #%d but content differs from byte %d", id, i)
	}
	return id, nil
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// writeState is what the model knows of one write.
type writeState int

const (
	wsIssued    writeState = iota // sent, no answer yet (or lost with a crash)
	wsCompleted                   // acknowledged, not yet covered by a flush
	wsFailed                      // error reply or broken connection: may have landed partly
	wsDurable                     // acknowledged and covered by a successful flush
	wsForbidden                   // sent by a fenced writer: must never be visible
)

func (s writeState) String() string {
	return [...]string{"issued, unanswered", "acknowledged, unflushed", "failed", "flushed", "sent by a fenced writer"}[s]
}

type writeRec struct {
	id     uint64
	first  int64 // block
	count  int64
	state  writeState
	note   string // when/through whom, for failure messages
	result string // error text for failed writes
}

// model tracks, per block, which writes may be visible. For block b the
// acceptable contents are: the newest durable write of b (or zeros when
// none), or any write of b issued after it that is not forbidden.
type model struct {
	mu      sync.Mutex
	seed    int64
	blocks  int64
	nextID  uint64
	writes  map[uint64]*writeRec
	durable []uint64   // per block: newest durable write (0: zeros)
	later   [][]uint64 // per block: writes after durable that may be visible
	// pendingFlush: writes acknowledged since the last successful flush.
	pendingFlush []uint64
}

func newModel(seed int64, blocks int64) *model {
	return &model{seed: seed, blocks: blocks, writes: map[uint64]*writeRec{},
		durable: make([]uint64, blocks), later: make([][]uint64, blocks)}
}

// newWrite registers a write of count blocks at first and returns its id
// and payload. forbidden marks a fenced writer's write.
func (m *model) newWrite(first, count int64, note string, forbidden bool) (uint64, []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if first < 0 || count <= 0 || first+count > m.blocks {
		panic(fmt.Sprintf("model: write [%d,+%d) outside %d blocks", first, count, m.blocks))
	}
	m.nextID++
	id := m.nextID
	w := &writeRec{id: id, first: first, count: count, note: note}
	if forbidden {
		w.state = wsForbidden
	}
	m.writes[id] = w
	if !forbidden {
		for b := first; b < first+count; b++ {
			m.later[b] = append(m.later[b], id)
		}
	}
	p := make([]byte, count*blockSize)
	for i := int64(0); i < count; i++ {
		fillBlock(p[i*blockSize:], m.seed, id, first+i)
	}
	return id, p
}

// done records a write's outcome.
func (m *model) done(id uint64, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := m.writes[id]
	if w.state == wsForbidden {
		if err == nil {
			w.result = "acknowledged"
		} else {
			w.result = err.Error()
		}
		return
	}
	if err != nil {
		w.state, w.result = wsFailed, err.Error()
		return
	}
	w.state = wsCompleted
	m.pendingFlush = append(m.pendingFlush, id)
}

// flushed records a successful flush issued after every write in
// pendingFlush completed: they become durable.
func (m *model) flushed() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range m.pendingFlush {
		m.makeDurable(id)
	}
	m.pendingFlush = nil
}

func (m *model) makeDurable(id uint64) {
	w := m.writes[id]
	w.state = wsDurable
	for b := w.first; b < w.first+w.count; b++ {
		if id <= m.durable[b] {
			continue
		}
		m.durable[b] = id
		m.later[b] = slices.DeleteFunc(m.later[b], func(x uint64) bool { return x <= id })
	}
}

// acceptable reports whether id may be in block b.
func (m *model) acceptable(b int64, id uint64) bool {
	return id == m.durable[b] || slices.Contains(m.later[b], id)
}

func (m *model) describe(id uint64) string {
	if id == 0 {
		return "zeros"
	}
	w := m.writes[id]
	if w == nil {
		return fmt.Sprintf("write #%d (unknown to the model)", id)
	}
	s := fmt.Sprintf("write #%d [%s", id, w.state)
	if w.note != "" {
		s += "; " + w.note
	}
	if w.result != "" && w.state != wsCompleted && w.state != wsDurable {
		s += "; result: " + w.result
	}
	return s + "]"
}

// mismatch is one block that holds what it must not.
type mismatch struct {
	block int64
	got   string
	want  string
}

// check compares data read at block first against the model. It returns
// the ids found per block and the mismatches.
func (m *model) check(first int64, data []byte) ([]uint64, []mismatch) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := int64(len(data) / blockSize)
	ids := make([]uint64, n)
	var bad []mismatch
	for i := int64(0); i < n; i++ {
		b := first + i
		id, err := decodeBlock(data[i*blockSize:(i+1)*blockSize], m.seed, b)
		ids[i] = id
		if err == nil && m.acceptable(b, id) {
			continue
		}
		got := m.describe(id)
		if err != nil {
			got = err.Error()
		}
		want := m.describe(m.durable[b])
		if len(m.later[b]) > 0 {
			var alt []string
			for _, x := range m.later[b] {
				alt = append(alt, fmt.Sprintf("#%d", x))
			}
			want += " or one of the later writes " + strings.Join(alt, ",")
		}
		bad = append(bad, mismatch{block: b, got: got, want: want})
	}
	return ids, bad
}

// settle makes what was observed the new truth: once a new writer has
// recovered the volume (and synced what it recovered) the blocks hold
// exactly ids from now on, and writes not visible are lost for good.
func (m *model) settle(first int64, ids []uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, id := range ids {
		b := first + int64(i)
		m.durable[b] = id
		m.later[b] = nil
	}
	m.pendingFlush = nil
}

// unflushedWrites counts writes in the model that a crash may lose.
func (m *model) stats() (durable, unflushed, failed, forbidden int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.writes {
		switch w.state {
		case wsDurable:
			durable++
		case wsCompleted, wsIssued:
			unflushed++
		case wsFailed:
			failed++
		case wsForbidden:
			forbidden++
		}
	}
	return
}

func formatMismatches(bad []mismatch, max int) string {
	var sb strings.Builder
	for i, x := range bad {
		if i == max {
			fmt.Fprintf(&sb, "  ... and %d more blocks\n", len(bad)-max)
			break
		}
		fmt.Fprintf(&sb, "  block %d (offset %d): got %s; want %s\n", x.block, x.block*blockSize, x.got, x.want)
	}
	return sb.String()
}
