package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/torus-storage/torus"
)

// ResolvePeers maps each argument (a peer ID or a peer address) to its
// peer record. IDs win over addresses; an argument naming nothing, or an
// address shared by several peers, fails with ErrNotExist or ErrInvalid.
// Duplicates are returned once, in argument order.
func ResolvePeers(peers []torus.PeerInfo, args []string) ([]torus.PeerInfo, error) {
	var out []torus.PeerInfo
	seen := map[string]bool{}
	for _, arg := range args {
		var match []torus.PeerInfo
		for _, p := range peers {
			if p.ID == arg {
				match = []torus.PeerInfo{p}
				break
			}
			if p.Address == arg {
				match = append(match, p)
			}
		}
		switch len(match) {
		case 0:
			return nil, fmt.Errorf("%w: no peer with ID or address %q (see `torusctl peer list`)", torus.ErrNotExist, arg)
		case 1:
		default:
			return nil, fmt.Errorf("%w: address %q is shared by peers %s; name one by ID", torus.ErrInvalid, arg, peerIDs(match))
		}
		if !seen[match[0].ID] {
			seen[match[0].ID] = true
			out = append(out, match[0])
		}
	}
	return out, nil
}

func peerIDs(ps []torus.PeerInfo) string {
	ids := make([]string, len(ps))
	for i, p := range ps {
		ids[i] = p.ID
	}
	return strings.Join(ids, ", ")
}

func isMember(ring torus.RingSpec, id string) bool {
	return slices.ContainsFunc(ring.Members, func(m torus.RingMember) bool { return m.ID == id })
}

// AddToRing returns ring's next version with peers added as members,
// weighted by capacity, at their location (zone, rack, host). The first
// members of an empty ring give it the current ring format. Peers must not be members already
// and must report a capacity.
func AddToRing(ring torus.RingSpec, peers []torus.PeerInfo) (torus.RingSpec, error) {
	next := ring
	next.Members = slices.Clone(ring.Members)
	for _, p := range peers {
		if isMember(ring, p.ID) {
			return ring, fmt.Errorf("%w: peer %s is already in the ring (state %s)", torus.ErrExist, p.ID, p.State)
		}
		if p.Capacity <= 0 {
			return ring, fmt.Errorf("%w: peer %s reports no capacity; it cannot hold data", torus.ErrInvalid, p.ID)
		}
		next.Members = append(next.Members, torus.NewRingMember(p.ID, p.Location(), p.Capacity))
	}
	if len(ring.Members) == 0 && ring.Format == 0 {
		next.Format = torus.RingFormatCurrent // the first members: a new cluster
	}
	next.Version++
	return next, nil
}

// RemoveFromRing returns ring's next version without the members ids.
func RemoveFromRing(ring torus.RingSpec, ids []string) torus.RingSpec {
	next := ring
	next.Members = slices.DeleteFunc(slices.Clone(ring.Members), func(m torus.RingMember) bool { return slices.Contains(ids, m.ID) })
	next.Version++
	return next
}

// changeRing applies change to the current ring and stores the result,
// retrying when another writer moved the ring meanwhile.
func changeRing(ctx context.Context, md torus.Metadata, change func(torus.RingSpec) (torus.RingSpec, error)) (torus.RingSpec, error) {
	for attempt := 0; ; attempt++ {
		ring, err := md.Ring(ctx)
		if err != nil {
			return ring, err
		}
		next, err := change(ring)
		if err != nil {
			return ring, err
		}
		err = md.SetRing(ctx, next)
		if err == nil {
			return next, nil
		}
		if !errors.Is(err, torus.ErrConflict) || attempt >= 10 {
			return ring, err
		}
	}
}

func (a *app) peerAddCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "add ADDR|ID...",
		Short: "Add registered peers (state new) to the ring",
		Long: `add writes a new ring version with the given peers as members, each with
weight = its capacity and in its zone. Peers register themselves when torusd
starts (without --auto-join they stay "new" until added). Data then
rebalances onto them; watch it with ` + "`torusctl status`.",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				peers, err := md.Peers(ctx)
				if err != nil {
					return err
				}
				add, err := ResolvePeers(peers, args)
				if err != nil {
					return err
				}
				ring, err := changeRing(ctx, md, func(r torus.RingSpec) (torus.RingSpec, error) { return AddToRing(r, add) })
				if err != nil {
					return err
				}
				return a.say(ring, "ring version %d: added %s (%d members)", ring.Version, peerIDs(add), len(ring.Members))
			})
		},
	}
}

// removeOpts are the flags of peer remove.
type removeOpts struct {
	force, yesReally, noWait bool
	timeout, interval        time.Duration
}

func (a *app) peerRemoveCmd() *cobra.Command {
	var o removeOpts
	cmd := &cobra.Command{
		Use:   "remove ADDR|ID...",
		Short: "Drain peers and remove them from the ring (--force for dead peers)",
		Long: `remove takes peers out of the cluster.

Graceful (default): marks each peer draining, so the daemons copy its data
to the other members, then waits (showing progress) until the peer reports
that it holds no data, writes a ring without it and deletes its record.
With --no-wait it only marks the peers draining; run remove again later to
finish. --timeout bounds the wait (0: no limit); on timeout the peers stay
draining.

--force is for dead peers: it drops them from the ring at once and deletes
their records; healing then re-replicates their segments from the other
copies. Segments whose only copies were on those peers are lost. --force on
a peer that is up is refused unless --yes-really is given too.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.yesReally && !o.force {
				return errors.New("--yes-really only goes with --force")
			}
			if o.force && o.noWait {
				return errors.New("--no-wait has no meaning with --force (it does not wait)")
			}
			if o.timeout < 0 || o.interval <= 0 {
				return fmt.Errorf("%w: --timeout must be ≥ 0 and --interval > 0", torus.ErrInvalid)
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				peers, err := md.Peers(ctx)
				if err != nil {
					return err
				}
				rm, err := ResolvePeers(peers, args)
				if err != nil {
					return err
				}
				if o.force {
					return a.forceRemove(ctx, md, rm, o)
				}
				return a.drainRemove(ctx, md, rm, o)
			})
		},
	}
	f := cmd.Flags()
	f.BoolVar(&o.force, "force", false, "drop dead peers from the ring at once, without moving their data")
	f.BoolVar(&o.yesReally, "yes-really", false, "with --force: remove peers even though they are up")
	f.BoolVar(&o.noWait, "no-wait", false, "only mark the peers draining; do not wait")
	f.DurationVar(&o.timeout, "timeout", time.Hour, "how long to wait for the peers to drain (0: no limit)")
	f.DurationVar(&o.interval, "interval", 2*time.Second, "how often to poll progress")
	_ = f.MarkHidden("interval")
	return cmd
}

// recentlySeen is how recent a heartbeat must be for a draining peer (whose
// state hides liveness) to count as possibly up.
const recentlySeen = 30 * time.Second

func (a *app) possiblyUp(p torus.PeerInfo) bool {
	switch p.State {
	case torus.PeerUp:
		return true
	case torus.PeerDraining:
		return !p.LastSeen.IsZero() && a.deps.Now().Sub(p.LastSeen) < recentlySeen
	}
	return false
}

// removeResult is the -o json output of peer remove.
type removeResult struct {
	Removed     []string `json:"removed"`
	Draining    []string `json:"draining,omitempty"`
	RingVersion uint64   `json:"ring_version"`
}

func (a *app) forceRemove(ctx context.Context, md torus.Metadata, rm []torus.PeerInfo, o removeOpts) error {
	ids := make([]string, len(rm))
	for i, p := range rm {
		ids[i] = p.ID
		if a.possiblyUp(p) && !o.yesReally {
			return fmt.Errorf("refusing --force on peer %s: it is %s (last heartbeat %s). --force drops its data without copying it: "+
				"until healing re-replicates, its segments have one copy fewer, and segments with no other copy are lost. "+
				"Use `torusctl peer remove %s` to drain it safely, or add --yes-really", p.ID, p.State, a.ago(p.LastSeen), p.ID)
		}
	}
	ring, err := changeRing(ctx, md, func(r torus.RingSpec) (torus.RingSpec, error) {
		members := 0
		for _, id := range ids {
			if isMember(r, id) {
				members++
			}
		}
		if left := len(r.Members) - members; members > 0 && left < r.Replication {
			fmt.Fprintf(a.errOut, "warning: %d ring members remain, fewer than replication %d: volumes stay degraded\n", left, r.Replication)
		}
		if members == 0 {
			return r, errNoChange
		}
		return RemoveFromRing(r, ids), nil
	})
	if err != nil && !errors.Is(err, errNoChange) {
		return err
	}
	for _, id := range ids {
		if err := md.DeletePeer(ctx, id); err != nil && !errors.Is(err, torus.ErrNotExist) {
			return fmt.Errorf("peer %s left the ring but its record remains: %w", id, err)
		}
	}
	return a.say(removeResult{Removed: ids, RingVersion: ring.Version},
		"removed %s (ring version %d); healing re-replicates their segments", strings.Join(ids, ", "), ring.Version)
}

// errNoChange stops changeRing when there is nothing to write.
var errNoChange = errors.New("ring unchanged")

func (a *app) ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return a.deps.Now().Sub(t).Round(time.Second).String() + " ago"
}

func (a *app) drainRemove(ctx context.Context, md torus.Metadata, rm []torus.PeerInfo, o removeOpts) error {
	ring, err := md.Ring(ctx)
	if err != nil {
		return err
	}
	var drain, gone []string
	for _, p := range rm {
		if isMember(ring, p.ID) {
			drain = append(drain, p.ID)
		} else {
			gone = append(gone, p.ID)
		}
	}
	if left := len(ring.Members) - len(drain); len(drain) > 0 && left < ring.Replication {
		return fmt.Errorf("%w: removing %s would leave %d ring members, fewer than replication %d, so the data cannot move; "+
			"add peers or lower replication (`torusctl ring set-replication`) first", torus.ErrInvalid, strings.Join(drain, ", "), left, ring.Replication)
	}
	// Peers not in the ring hold no placed data: forget them now.
	for _, id := range gone {
		if err := md.DeletePeer(ctx, id); err != nil && !errors.Is(err, torus.ErrNotExist) {
			return err
		}
	}
	for _, id := range drain {
		if err := md.SetDraining(ctx, id, true); err != nil {
			return err
		}
	}
	if o.noWait || len(drain) == 0 {
		return a.say(removeResult{Removed: gone, Draining: drain, RingVersion: ring.Version},
			"%s", removeMessage(gone, drain))
	}
	if err := a.waitDrained(ctx, md, drain, o); err != nil {
		return err
	}
	ring, err = changeRing(ctx, md, func(r torus.RingSpec) (torus.RingSpec, error) { return RemoveFromRing(r, drain), nil })
	if err != nil {
		return err
	}
	for _, id := range drain {
		if err := md.DeletePeer(ctx, id); err != nil && !errors.Is(err, torus.ErrNotExist) {
			return fmt.Errorf("peer %s left the ring but its record remains: %w", id, err)
		}
	}
	removed := append(gone, drain...)
	return a.say(removeResult{Removed: removed, RingVersion: ring.Version},
		"removed %s (ring version %d)", strings.Join(removed, ", "), ring.Version)
}

func removeMessage(gone, drain []string) string {
	var parts []string
	if len(gone) > 0 {
		parts = append(parts, fmt.Sprintf("deleted %s (not in the ring)", strings.Join(gone, ", ")))
	}
	if len(drain) > 0 {
		parts = append(parts, fmt.Sprintf("draining %s; run `torusctl peer remove %s` again to wait and finish",
			strings.Join(drain, ", "), strings.Join(drain, " ")))
	}
	return strings.Join(parts, "; ")
}

// DrainProgress is what waitDrained knows about draining peers.
type DrainProgress struct {
	Used, Pending int64 // sum over the draining peers, from their heartbeats
	StartUsed     int64 // Used when the wait began
	VolPending    int64 // sum of the volumes' PendingBytes
	Degraded      int   // volumes not healthy
	// Left lists the peers not known to be empty: they hold data, or
	// their report of none is not fresh enough yet.
	Left []string
}

// Fraction is the share of the initial data moved off, 0..1.
func (p DrainProgress) Fraction() float64 {
	if p.StartUsed <= 0 {
		if p.Used == 0 {
			return 1
		}
		return 0
	}
	f := 1 - float64(p.Used)/float64(p.StartUsed)
	return min(1, max(0, f))
}

// freshBeats is how many heartbeats after the wait began a peer must have
// sent before its Used == 0 counts: the first may have been computed
// before the drain began (and a writer with an older peer view may still
// have placed a segment on it); the second was computed at least one
// heartbeat interval later.
const freshBeats = 2

// beats counts each draining peer's heartbeats since the wait began, by
// changes of its LastSeen (the daemon's clock: no skew with ours).
type beats struct {
	last  map[string]time.Time
	count map[string]int
}

func (b *beats) observe(p torus.PeerInfo) {
	if b.last == nil {
		b.last, b.count = map[string]time.Time{}, map[string]int{}
	}
	last, ok := b.last[p.ID]
	if ok && p.LastSeen.After(last) {
		b.count[p.ID]++
	}
	if !ok || p.LastSeen.After(last) {
		b.last[p.ID] = p.LastSeen
	}
}

func drainProgress(peers []torus.PeerInfo, statuses map[string]torus.VolumeStatus, ids []string, b *beats) (DrainProgress, error) {
	var p DrainProgress
	for _, id := range ids {
		i := slices.IndexFunc(peers, func(x torus.PeerInfo) bool { return x.ID == id })
		if i < 0 {
			return p, fmt.Errorf("%w: peer %s vanished while draining", torus.ErrNotExist, id)
		}
		b.observe(peers[i])
		p.Used += peers[i].Used
		p.Pending += peers[i].Pending
		if peers[i].Used != 0 || b.count[id] < freshBeats {
			p.Left = append(p.Left, id)
		}
	}
	for _, s := range statuses {
		p.VolPending += s.PendingBytes
		if s.Health != torus.VolumeHealthy {
			p.Degraded++
		}
	}
	return p, nil
}

// waitDrained polls until every peer in ids reports Used == 0 in a fresh
// heartbeat (freshBeats), printing
// progress (a bar on a terminal, a line per change otherwise; nothing with
// -o json).
func (a *app) waitDrained(ctx context.Context, md torus.Metadata, ids []string, o removeOpts) error {
	wctx := ctx
	if o.timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	term := a.g.Output != "json" && a.deps.IsTerminal(a.out)
	tick := time.NewTicker(o.interval)
	defer tick.Stop()
	var start int64
	last := ""
	var b beats
	for {
		peers, err := md.Peers(wctx)
		if err != nil && wctx.Err() == nil {
			return err
		}
		if err == nil {
			statuses, err := md.VolumeStatuses(wctx)
			if err != nil && wctx.Err() == nil {
				return err
			}
			p, err := drainProgress(peers, statuses, ids, &b)
			if err != nil {
				return err
			}
			start = max(start, p.Used) // the first report may be stale
			p.StartUsed = start
			line := fmt.Sprintf("draining %s: %s left, %s pending; volumes: %d not healthy, %s to heal",
				strings.Join(ids, ", "), HumanSize(p.Used), HumanSize(p.Pending), p.Degraded, HumanSize(p.VolPending))
			if p.Used == 0 && len(p.Left) > 0 {
				line += "; waiting for fresh heartbeats"
			}
			switch {
			case a.g.Output == "json":
			case term:
				fmt.Fprintf(a.out, "\r%s %s\x1b[K", Bar(p.Fraction(), 30), line)
			case line != last:
				fmt.Fprintln(a.out, line)
			}
			last = line
			if len(p.Left) == 0 {
				if term {
					fmt.Fprintln(a.out)
				}
				return nil
			}
		}
		select {
		case <-tick.C:
		case <-wctx.Done():
			if term {
				fmt.Fprintln(a.out)
			}
			if ctx.Err() != nil {
				return fmt.Errorf("interrupted; %s stay draining (run `torusctl peer remove %s` again to finish): %w",
					strings.Join(ids, ", "), strings.Join(ids, " "), ctx.Err())
			}
			return fmt.Errorf("%w: %s still hold data after %v (%s); they stay draining: run `torusctl peer remove %s` again to keep waiting, "+
				"or if they are dead, `--force`", errDrainTimeout, strings.Join(ids, ", "), o.timeout, last, strings.Join(ids, " "))
		}
	}
}

// errDrainTimeout is returned by peer remove when --timeout passes.
var errDrainTimeout = errors.New("timed out waiting for peers to drain")

// Bar draws a text progress bar of width cells for fraction f (0..1).
func Bar(f float64, width int) string {
	f = min(1, max(0, f))
	n := int(f*float64(width) + 0.5)
	return fmt.Sprintf("[%s%s] %3.0f%%", strings.Repeat("#", n), strings.Repeat(".", width-n), f*100)
}
