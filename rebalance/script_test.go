package rebalance

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/ring"
)

var update = flag.Bool("update", false, "rewrite the expected output of testdata/*.txt")

// A script (testdata/*.txt) describes one planner input, then a line
// "----", then the expected output, which -update rewrites. Input lines:
//
//	# comment
//	ring replication=R [vnodes=V]
//	member ID [zone=Z] [weight=W]              (weight defaults to 1)
//	up ID...                                   (default: every member)
//	down ID...                                 (removes from up)
//	up+ ID...                                  (adds a non-member to up)
//	draining ID...
//	seg SEGID len=L|open HOLDER=LEN...
//	place N len=L [volume=V] [skip=ID,ID]      (segments v<V>-e1-s<0..N-1>-k0 with
//	                                            full copies on the ring's desired
//	                                            holders as if the skip peers were
//	                                            absent; repeated, it adds holders)
func TestScripts(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no scripts")
	}
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txt"), func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			input, want, found := bytes.Cut(data, []byte("----\n"))
			if !found {
				input = data
			}
			got, err := runScript(string(input))
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			if *update {
				out := append(append(bytes.Clone(input), "----\n"...), got...)
				if err := os.WriteFile(path, out, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if string(want) != got {
				t.Errorf("%s: output differs (run go test ./rebalance -update and review the diff)\ngot:\n%s\nwant:\n%s", path, got, want)
			}
		})
	}
}

func kv(fields []string) (map[string]string, []string) {
	m := map[string]string{}
	var rest []string
	for _, f := range fields {
		if k, v, ok := strings.Cut(f, "="); ok {
			m[k] = v
		} else {
			rest = append(rest, f)
		}
	}
	return m, rest
}

func atoi(s string, def int64) (int64, error) {
	if s == "" {
		return def, nil
	}
	return strconv.ParseInt(s, 10, 64)
}

// runScript parses a script's input, plans, and renders the plan.
func runScript(script string) (string, error) {
	spec := torus.RingSpec{Version: 1}
	var up map[string]bool
	var extraUp, down []string
	draining := map[string]bool{}
	var segs []Segment
	type place struct {
		n, length, volume int64
		skip              []string
	}
	var places []place
	sc := bufio.NewScanner(strings.NewReader(script))
	line := 0
	for sc.Scan() {
		line++
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		args, rest := kv(f[1:])
		var err error
		switch f[0] {
		case "ring":
			var r, v int64
			if r, err = atoi(args["replication"], 2); err == nil {
				v, err = atoi(args["vnodes"], 0)
			}
			spec.Replication, spec.VirtualNodes = int(r), int(v)
		case "member":
			var w int64
			w, err = atoi(args["weight"], 1)
			if len(rest) != 1 {
				err = fmt.Errorf("member needs one ID")
			}
			if err == nil {
				spec.Members = append(spec.Members, torus.RingMember{ID: rest[0], Zone: args["zone"], Weight: w})
			}
		case "up":
			if up == nil {
				up = map[string]bool{}
			}
			for _, id := range rest {
				up[id] = true
			}
		case "up+":
			extraUp = append(extraUp, rest...)
		case "down":
			down = append(down, rest...)
		case "draining":
			for _, id := range rest {
				draining[id] = true
			}
		case "seg":
			var s Segment
			if len(rest) < 1 {
				err = fmt.Errorf("seg needs an ID")
				break
			}
			if s.ID, err = torus.ParseSegmentID(rest[0]); err != nil {
				break
			}
			if slices.Contains(rest, "open") {
				s.Sealed = false
			} else {
				s.Sealed = true
				s.Length, err = atoi(args["len"], -1)
			}
			delete(args, "len")
			for peer, n := range args {
				var l int64
				if l, err = atoi(n, 0); err != nil {
					break
				}
				s.Holders = append(s.Holders, Holder{Peer: peer, Length: l})
			}
			slices.SortFunc(s.Holders, func(a, b Holder) int { return strings.Compare(a.Peer, b.Peer) })
			segs = append(segs, s)
		case "place":
			var p place
			if len(rest) != 1 {
				err = fmt.Errorf("place needs a count")
				break
			}
			if p.n, err = atoi(rest[0], 0); err == nil {
				if p.length, err = atoi(args["len"], 100); err == nil {
					p.volume, err = atoi(args["volume"], 1)
				}
			}
			if args["skip"] != "" {
				p.skip = strings.Split(args["skip"], ",")
			}
			places = append(places, p)
		default:
			err = fmt.Errorf("unknown command %q", f[0])
		}
		if err != nil {
			return "", fmt.Errorf("line %d: %v", line, err)
		}
	}
	r, err := ring.New(spec)
	if err != nil {
		return "", err
	}
	if up == nil {
		up = map[string]bool{}
		for _, m := range spec.Members {
			up[m.ID] = true
		}
	}
	for _, id := range extraUp {
		up[id] = true
	}
	for _, id := range down {
		delete(up, id)
	}
	for _, p := range places {
		for i := int64(0); i < p.n; i++ {
			id := torus.SegmentID{Volume: uint64(p.volume), Epoch: 1, Seq: uint64(i)}
			j := slices.IndexFunc(segs, func(s Segment) bool { return s.ID == id })
			if j < 0 {
				j = len(segs)
				segs = append(segs, Segment{ID: id, Sealed: true, Length: p.length})
			}
			s := &segs[j]
			for _, h := range r.Lookup(id.Key(), r.Replication(), func(id string) bool { return slices.Contains(p.skip, id) }) {
				if !slices.ContainsFunc(s.Holders, func(o Holder) bool { return o.Peer == h }) {
					s.Holders = append(s.Holders, Holder{Peer: h, Length: p.length})
				}
			}
			slices.SortFunc(s.Holders, func(a, b Holder) int { return strings.Compare(a.Peer, b.Peer) })
		}
	}
	in := Input{Ring: r, Up: up, Draining: draining, Segments: segs}
	plan, err := Compute(in)
	if err != nil {
		return "", err
	}
	return render(in, plan), nil
}

func render(in Input, p *Plan) string {
	var b strings.Builder
	bySeg := map[torus.SegmentID][]string{}
	for _, c := range p.Copies {
		have := ""
		if c.Have > 0 {
			have = fmt.Sprintf(" (has %d)", c.Have)
		}
		bySeg[c.Seg] = append(bySeg[c.Seg], fmt.Sprintf("copy %s -> %s %d%s", c.From, c.To, c.Length, have))
	}
	for _, d := range p.Deletes {
		bySeg[d.Seg] = append(bySeg[d.Seg], fmt.Sprintf("delete %s", d.Peer))
	}
	segs := slices.Clone(in.Segments)
	slices.SortFunc(segs, func(a, b Segment) int { return CompareSegmentID(a.ID, b.ID) })
	for _, s := range segs {
		if !s.Sealed {
			fmt.Fprintf(&b, "%s open: skipped\n", s.ID)
			continue
		}
		var hs []string
		for _, h := range s.Holders {
			hs = append(hs, fmt.Sprintf("%s=%d", h.Peer, h.Length))
		}
		state := ""
		if slices.Contains(p.Unavailable, s.ID) {
			state = " UNAVAILABLE"
		}
		fmt.Fprintf(&b, "%s len=%d has=[%s] desired=[%s]%s\n", s.ID, s.Length, strings.Join(hs, " "), strings.Join(in.Desired(s.ID.Key()), " "), state)
		for _, m := range bySeg[s.ID] {
			fmt.Fprintf(&b, "  %s\n", m)
		}
	}
	fmt.Fprintf(&b, "summary: sealed=%d unsealed=%d copies=%d bytes=%d deletes=%d under-replicated=%d unavailable=%d\n",
		p.Sealed, p.Unsealed, len(p.Copies), p.CopyBytes, len(p.Deletes), p.UnderReplicated, len(p.Unavailable))
	peers := map[string]bool{}
	for _, c := range p.Copies {
		peers[c.From] = true
	}
	for _, d := range p.Deletes {
		peers[d.Peer] = true
	}
	ids := make([]string, 0, len(peers))
	for id := range peers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		m := p.ForPeer(id)
		fmt.Fprintf(&b, "peer %s: copies=%d bytes=%d deletes=%d\n", id, len(m.Copies), m.Bytes(), len(m.Deletes))
	}
	return b.String()
}
