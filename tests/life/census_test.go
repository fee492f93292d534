package life

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/internal/proccluster"
	metaetcd "github.com/torus-storage/torus/metadata/etcd"
	"github.com/torus-storage/torus/peer"
	"github.com/torus-storage/torus/ring"
	"github.com/torus-storage/torus/volume"
)

// A census is the ground truth about a volume's replicas, gathered by the
// test itself: the live segments (volume.LiveSegments, from the head, the
// snapshots and the checkpoint's segment table) and, from every running
// daemon over the peer protocol, which segments it holds and how long they
// are. It does not trust torusctl or the daemons' own accounting.
type census struct {
	volume   string
	repl     int
	head     torus.Head
	live     map[torus.SegmentID]bool
	required map[torus.SegmentID]int64 // length a full copy has (sealed: from the head)
	holders  map[torus.SegmentID][]holder
	// speculative: live IDs the writer may create later (head epoch, NextSeq)
	speculative map[torus.SegmentID]bool
}

type holder struct {
	daemon int // index in Cluster.Daemons
	id     string
	addr   string
	length int64
}

// takeCensus gathers the census of a volume. The head is read before and
// after the daemons are listed, and the census
// is taken again while they differ: volume.LiveSegments reads the head on
// its own, so a writer that seals or closes in between (a torusblk still
// closing its export after the client hung up) would otherwise name live
// segments this census thinks already exist with no copies.
func takeCensus(ctx context.Context, c *proccluster.Cluster, md *metaetcd.Store, name string, repl int) (*census, error) {
	for try := 0; ; try++ {
		head, err := md.Head(ctx, name)
		if err != nil {
			return nil, err
		}
		cs, err := censusAt(ctx, c, md, name, repl, head)
		if err != nil {
			return nil, err
		}
		after, err := md.Head(ctx, name)
		if err != nil {
			return nil, err
		}
		if reflect.DeepEqual(head, after) || try == 50 {
			return cs, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func censusAt(ctx context.Context, c *proccluster.Cluster, md *metaetcd.Store, name string, repl int, head torus.Head) (*census, error) {
	vi, err := md.Volume(ctx, name)
	if err != nil {
		return nil, err
	}
	addrOf := map[string]string{}
	idOf := map[string]string{}
	peers, err := md.Peers(ctx)
	if err != nil {
		return nil, err
	}
	for _, p := range peers {
		addrOf[p.ID] = p.Address
		idOf[p.Address] = p.ID
	}
	pool := peer.NewPool(func(ctx context.Context, id string) (string, error) {
		if a, ok := addrOf[id]; ok {
			return a, nil
		}
		return "", fmt.Errorf("%w: unknown peer %s", torus.ErrUnavailable, id)
	}, peer.ClientConfig{DialTimeout: 2 * time.Second, RequestTimeout: 10 * time.Second}, nil)
	defer pool.Close()
	live, err := volume.LiveSegments(ctx, md, pool, name)
	if err != nil {
		return nil, fmt.Errorf("live segments: %w", err)
	}
	cs := &census{volume: name, repl: repl, head: head, live: live, required: map[torus.SegmentID]int64{},
		holders: map[torus.SegmentID][]holder{}, speculative: map[torus.SegmentID]bool{}}
	for _, k := range []torus.SegmentKind{torus.KindData, torus.KindCheckpoint} {
		cs.speculative[torus.SegmentID{Volume: vi.ID, Epoch: head.Epoch, Seq: head.NextSeq, Kind: k}] = true
	}
	if head.Open != nil {
		cs.speculative[*head.Open] = true // named before its first byte
	}
	if head.Checkpointing != nil {
		cs.speculative[*head.Checkpointing] = true // a checkpoint being written
	}
	for _, s := range head.Sealed {
		cs.required[s.ID] = s.Length
	}
	if head.Checkpoint != nil {
		cs.required[head.Checkpoint.ID] = head.Checkpoint.Length
	}
	for i, d := range c.Daemons {
		if !d.Running() {
			continue
		}
		pc, err := peer.Dial(ctx, d.PeerAddr, peer.ClientConfig{DialTimeout: 2 * time.Second, RequestTimeout: 10 * time.Second}, nil)
		if err != nil {
			return nil, fmt.Errorf("daemon %d (%s): %w", i, d.PeerAddr, err)
		}
		infos, err := pc.List(ctx, vi.ID)
		pc.Close()
		if err != nil {
			return nil, fmt.Errorf("daemon %d (%s): list: %w", i, d.PeerAddr, err)
		}
		for _, si := range infos {
			cs.holders[si.ID] = append(cs.holders[si.ID], holder{daemon: i, id: idOf[d.PeerAddr], addr: d.PeerAddr, length: si.Length})
		}
	}
	for id := range live {
		if _, ok := cs.required[id]; ok {
			continue
		}
		var n int64
		for _, h := range cs.holders[id] {
			n = max(n, h.length)
		}
		cs.required[id] = n
	}
	return cs, nil
}

func (cs *census) sortedLive() []torus.SegmentID {
	ids := make([]torus.SegmentID, 0, len(cs.live))
	for id := range cs.live {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i].String() < ids[j].String() })
	return ids
}

func (cs *census) describe(id torus.SegmentID) string {
	var hs []string
	for _, h := range cs.holders[id] {
		hs = append(hs, fmt.Sprintf("d%d:%d", h.daemon, h.length))
	}
	return fmt.Sprintf("%v (need %d bytes) on [%s]", id, cs.required[id], strings.Join(hs, " "))
}

// underReplicated lists live segments with fewer than repl full copies on
// running daemons (not counting excluded daemons). Missing speculative
// segments are fine.
func (cs *census) underReplicated(exclude ...int) []string {
	var out []string
	for _, id := range cs.sortedLive() {
		full := 0
		for _, h := range cs.holders[id] {
			if h.length >= cs.required[id] && !slices.Contains(exclude, h.daemon) {
				full++
			}
		}
		if len(cs.holders[id]) == 0 && cs.speculative[id] {
			continue
		}
		if full < cs.repl {
			out = append(out, fmt.Sprintf("%d/%d copies: %s", full, cs.repl, cs.describe(id)))
		}
	}
	return out
}

// surplus lists live segments with more than repl copies (of any length),
// and non-live segments still stored (garbage).
func (cs *census) surplus() []string {
	var out []string
	for _, id := range cs.sortedLive() {
		if n := len(cs.holders[id]); n > cs.repl {
			out = append(out, fmt.Sprintf("%d copies: %s", n, cs.describe(id)))
		}
	}
	for id := range cs.holders {
		if !cs.live[id] {
			out = append(out, "garbage: "+cs.describe(id))
		}
	}
	sort.Strings(out)
	return out
}

// segments counts live segments and their bytes.
func (cs *census) size() (n int, bytes int64) {
	for id := range cs.live {
		n++
		bytes += cs.required[id]
	}
	return n, bytes
}

// compareCopies reads every full copy of every live sealed or checkpoint
// segment (not the open one, still being written) over the peer protocol
// and reports segments whose copies differ within the required length.
func (cs *census) compareCopies(ctx context.Context) ([]string, error) {
	var out []string
	for _, id := range cs.sortedLive() {
		if cs.speculative[id] {
			continue
		}
		need := cs.required[id]
		var first []byte
		firstFrom := -1
		for _, h := range cs.holders[id] {
			if h.length < need {
				continue
			}
			sum, err := segmentHash(ctx, h.addr, id, need)
			if err != nil {
				return nil, fmt.Errorf("reading %v from d%d: %w", id, h.daemon, err)
			}
			if first == nil {
				first, firstFrom = sum, h.daemon
			} else if !bytes.Equal(first, sum) {
				out = append(out, fmt.Sprintf("%v: the first %d bytes differ between d%d and d%d", id, need, firstFrom, h.daemon))
			}
		}
	}
	return out, nil
}

func segmentHash(ctx context.Context, addr string, id torus.SegmentID, n int64) ([]byte, error) {
	pc, err := peer.Dial(ctx, addr, peer.ClientConfig{DialTimeout: 2 * time.Second, RequestTimeout: 10 * time.Second}, nil)
	if err != nil {
		return nil, err
	}
	defer pc.Close()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < n; {
		p := buf[:min(int64(len(buf)), n-off)]
		k, err := pc.ReadAt(ctx, id, p, off)
		h.Write(p[:k])
		off += int64(k)
		if err != nil && !(errors.Is(err, io.EOF) && off == n) {
			return nil, fmt.Errorf("at %d: %w", off, err)
		}
	}
	return h.Sum(nil), nil
}

// misplaced lists live segments (not the writer's speculative ones) that
// lack a full copy on a peer the ring places them on: the first repl
// members of the segment's ring order that are up.
func (cs *census) misplaced(r *ring.Ring, up map[string]bool) []string {
	var out []string
	for _, id := range cs.sortedLive() {
		if cs.speculative[id] {
			continue
		}
		want := r.Lookup(id.Key(), r.Replication(), func(p string) bool { return !up[p] })
		for _, p := range want {
			ok := false
			for _, h := range cs.holders[id] {
				if h.id == p && h.length >= cs.required[id] {
					ok = true
				}
			}
			if !ok {
				out = append(out, fmt.Sprintf("no full copy on %s: %s", short(p), cs.describe(id)))
				break
			}
		}
	}
	return out
}
