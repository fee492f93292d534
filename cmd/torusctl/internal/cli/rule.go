package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/report"
	"github.com/torus-storage/torus/ring"
)

// SetRule returns ring's next version with the placement rule domain
// (zone, rack or host) in the hierarchy format, and every member's
// location refreshed from its peer record (members without one keep
// theirs). changed is false when ring already is that. It fails with an
// error wrapping torus.ErrInvalid for an unknown domain or a ring the
// result cannot be built from.
func SetRule(spec torus.RingSpec, peers []torus.PeerInfo, domain string) (next torus.RingSpec, changed bool, err error) {
	if domain == "" || !torus.ValidFailureDomain(domain) {
		return spec, false, fmt.Errorf("%w: failure domain %q: want host, rack or zone", torus.ErrInvalid, domain)
	}
	next = spec
	next.Format = torus.RingFormatHierarchy
	next.FailureDomain = domain
	next.Members = slices.Clone(spec.Members)
	for i, m := range next.Members {
		if j := slices.IndexFunc(peers, func(p torus.PeerInfo) bool { return p.ID == m.ID }); j >= 0 {
			next.Members[i] = torus.NewRingMember(m.ID, peers[j].Location(), m.Weight)
		}
	}
	if spec.Format == next.Format && spec.FailureDomain == next.FailureDomain && slices.Equal(spec.Members, next.Members) {
		return spec, false, nil
	}
	next.Version++
	if _, err := ring.Build(next); err != nil {
		return spec, false, err
	}
	return next, true, nil
}

// SetVolumeRule returns ring's next version in which volume vol has its
// own placement rule domain, or none when domain is "" (the ring's rule
// applies again). changed is false when ring already is that. It fails
// with an error wrapping torus.ErrInvalid for an unknown domain or a ring
// the result cannot be built from (a ring of the zones format: set a
// cluster rule first).
func SetVolumeRule(spec torus.RingSpec, vol uint64, domain string) (next torus.RingSpec, changed bool, err error) {
	if domain != "" && !torus.ValidFailureDomain(domain) {
		return spec, false, fmt.Errorf("%w: failure domain %q: want host, rack or zone", torus.ErrInvalid, domain)
	}
	key := strconv.FormatUint(vol, 10)
	if spec.Rules[key] == domain {
		return spec, false, nil
	}
	next = spec
	next.Rules = maps.Clone(spec.Rules)
	if domain == "" {
		delete(next.Rules, key)
	} else {
		if next.Rules == nil {
			next.Rules = map[string]string{}
		}
		next.Rules[key] = domain
	}
	if len(next.Rules) == 0 {
		next.Rules = nil
	}
	next.Version++
	if _, err := ring.Build(next); err != nil {
		return spec, false, err
	}
	return next, true, nil
}

// SetPins returns ring's next version in which volume vol's segments are
// pinned to peers (ring member IDs, in preference order), or unpinned
// when peers is empty. changed is false when ring already is that. It
// fails with an error wrapping torus.ErrInvalid when a peer is not a ring
// member or is named twice.
func SetPins(spec torus.RingSpec, vol uint64, peers []string) (next torus.RingSpec, changed bool, err error) {
	key := strconv.FormatUint(vol, 10)
	if slices.Equal(spec.Pins[key], peers) {
		return spec, false, nil
	}
	next = spec
	next.Pins = maps.Clone(spec.Pins)
	if len(peers) == 0 {
		delete(next.Pins, key)
	} else {
		if next.Pins == nil {
			next.Pins = map[string][]string{}
		}
		next.Pins[key] = slices.Clone(peers)
	}
	if len(next.Pins) == 0 {
		next.Pins = nil
	}
	next.Version++
	if _, err := ring.Build(next); err != nil {
		return spec, false, err
	}
	return next, true, nil
}

func placementSummary(h torus.PlacementHealth) string {
	if h.Degraded {
		return "DEGRADED: " + h.Reason
	}
	return fmt.Sprintf("ok (%d %s domains for replication %d)", h.Domains, h.FailureDomain, h.Replication)
}

func ruleName(spec torus.RingSpec) string {
	switch {
	case spec.Format <= torus.RingFormatZones:
		return "peer (zones preferred; `torusctl ring set-rule` to use hosts and racks)"
	case spec.FailureDomain == "":
		return torus.DomainHost
	}
	return spec.FailureDomain
}

func (a *app) ringSetRuleCmd() *cobra.Command {
	var domain, vol string
	cmd := &cobra.Command{
		Use:   "set-rule --failure-domain host|rack|zone [--volume NAME]",
		Short: "Set the placement rule of the cluster or of one volume (writes a new ring version)",
		Long: `set-rule writes a new ring version in the hierarchy format (zone > rack >
host) whose replicas go to distinct failure domains at the given level,
spreading over the levels above it where possible. It also refreshes every
member's location from its peer record (torusd --location). When the
topology has fewer domains than the replication, placement fills from a
domain already used, and ring get, status and the daemons say so.

A ring of the older format (zones only) whose members are on distinct hosts
with no racks places exactly as before, so switching it moves nothing;
members sharing a host are separated, which moves those segments.

With --volume, the rule is that volume's own (the ring must have the
hierarchy format: set the cluster's rule first). The walk is the same for
every rule, so a volume's rule moves none of its data; it decides which
domains healing keeps apart for its segments (with rule zone and a zone
down, healing waits for the zone instead of copying into a zone that holds
the other copy) and what the placement health holds it to. Segments a
clone shares with its source follow the source's rule. unset-rule removes
it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				if vol != "" {
					return a.setVolumeRule(ctx, md, vol, domain)
				}
				peers, err := md.Peers(ctx)
				if err != nil {
					return err
				}
				next, err := changeRing(ctx, md, func(r torus.RingSpec) (torus.RingSpec, error) {
					n, changed, err := SetRule(r, peers, domain)
					if err == nil && !changed {
						return r, errUnchanged
					}
					return n, err
				})
				if errors.Is(err, errUnchanged) {
					return a.say(next, "ring version %d already has failure domain %s", next.Version, domain)
				}
				if err != nil {
					return err
				}
				return a.sayPlacement(next, "ring version %d: failure domain %s", next.Version, domain)
			})
		},
	}
	cmd.Flags().StringVar(&domain, "failure-domain", torus.DomainHost, "host, rack or zone")
	cmd.Flags().StringVar(&vol, "volume", "", "set the rule of this volume only")
	return cmd
}

func (a *app) ringUnsetRuleCmd() *cobra.Command {
	var vol string
	cmd := &cobra.Command{
		Use:   "unset-rule --volume NAME",
		Short: "Remove a volume's own placement rule: the cluster's applies again",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if vol == "" {
				return fmt.Errorf("%w: unset-rule needs --volume NAME (the cluster always has a rule)", torus.ErrInvalid)
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				return a.setVolumeRule(ctx, md, vol, "")
			})
		},
	}
	cmd.Flags().StringVar(&vol, "volume", "", "the volume")
	return cmd
}

// setVolumeRule sets (domain != "") or removes the rule of volume name.
func (a *app) setVolumeRule(ctx context.Context, md torus.Metadata, name, domain string) error {
	vi, err := md.Volume(ctx, name)
	if err != nil {
		return err
	}
	next, err := changeRing(ctx, md, func(r torus.RingSpec) (torus.RingSpec, error) {
		n, changed, err := SetVolumeRule(r, vi.ID, domain)
		if err == nil && !changed {
			return r, errUnchanged
		}
		return n, err
	})
	what := "has rule " + domain
	if domain == "" {
		what = "follows the cluster's rule"
	}
	if errors.Is(err, errUnchanged) {
		return a.say(next, "ring version %d: volume %s already %s", next.Version, name, what)
	}
	if err != nil {
		return err
	}
	return a.sayPlacement(next, "ring version %d: volume %s %s", next.Version, name, what)
}

func (a *app) ringPinCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "pin VOLUME PEER...",
		Short: "Pin a volume's segments to chosen peers (writes a new ring version)",
		Long: `pin makes the given peers (IDs or addresses, in preference order) the
desired holders of every segment of VOLUME: its replicas are its first
usable pins, and daemons move its data there. When fewer pins are usable
than the replication, the ring's order fills the rest and the placement
health says degraded. Pins replace the failure-domain rule for that volume:
they are the operator's choice of domains. Segments a clone shares with
its source follow the source's pins. unpin removes them.`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				peers, err := md.Peers(ctx)
				if err != nil {
					return err
				}
				ps, err := ResolvePeers(peers, args[1:])
				if err != nil {
					return err
				}
				ids := make([]string, len(ps))
				for i, p := range ps {
					ids[i] = p.ID
				}
				return a.setPins(ctx, md, args[0], ids)
			})
		},
	}
}

func (a *app) ringUnpinCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "unpin VOLUME",
		Short: "Remove a volume's pins: the ring places it again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				return a.setPins(ctx, md, args[0], nil)
			})
		},
	}
}

// setPins pins volume name to ids, or unpins it when ids is empty.
func (a *app) setPins(ctx context.Context, md torus.Metadata, name string, ids []string) error {
	vi, err := md.Volume(ctx, name)
	if err != nil {
		return err
	}
	next, err := changeRing(ctx, md, func(r torus.RingSpec) (torus.RingSpec, error) {
		n, changed, err := SetPins(r, vi.ID, ids)
		if err == nil && !changed {
			return r, errUnchanged
		}
		return n, err
	})
	what := "unpinned"
	if len(ids) > 0 {
		what = "pinned to " + strings.Join(ids, ", ")
	}
	if errors.Is(err, errUnchanged) {
		return a.say(next, "ring version %d: volume %s already %s", next.Version, name, what)
	}
	if err != nil {
		return err
	}
	return a.sayPlacement(next, "ring version %d: volume %s %s", next.Version, name, what)
}

// sayPlacement reports a written ring with its placement health, and
// warns on stderr when it is degraded.
func (a *app) sayPlacement(next torus.RingSpec, format string, args ...any) error {
	h := report.PlacementHealth(next, nil)
	if h.Degraded {
		fmt.Fprintf(a.errOut, "warning: placement degraded: %s\n", h.Reason)
	}
	return a.say(next, format+"; placement %s", append(args, placementSummary(h))...)
}

// errUnchanged stops changeRing when there is nothing to write.
var errUnchanged = errors.New("ring unchanged")

// volumeNames maps the IDs of the volumes ring has rules or pins for to
// their names; nil (and no etcd read) when it has none.
func volumeNames(ctx context.Context, md torus.Metadata, spec torus.RingSpec) (map[string]string, error) {
	if len(spec.Rules) == 0 && len(spec.Pins) == 0 {
		return nil, nil
	}
	vols, err := md.Volumes(ctx)
	if err != nil {
		return nil, err
	}
	names := make(map[string]string, len(vols))
	for _, v := range vols {
		names[strconv.FormatUint(v.ID, 10)] = v.Name
	}
	return names, nil
}

// writeVolumePlacement writes the ring's per-volume rules and pins, by
// volume ID order, naming each volume ("(deleted)" for an ID no volume
// has: its entry is harmless and unset-rule/unpin cannot reach it by
// name, but the next set-rule or pin keeps it).
func writeVolumePlacement(w io.Writer, spec torus.RingSpec, names map[string]string) {
	name := func(id string) string { return cmp.Or(names[id], "(deleted)") }
	ids := func(m []string) []string { // decimal IDs, in numeric order
		slices.SortFunc(m, func(a, b string) int { return cmp.Or(cmp.Compare(len(a), len(b)), cmp.Compare(a, b)) })
		return m
	}
	if len(spec.Rules) > 0 {
		row(w, "VOLUME", "ID", "RULE")
		for _, id := range ids(slices.Collect(maps.Keys(spec.Rules))) {
			row(w, name(id), id, spec.Rules[id])
		}
	}
	if len(spec.Pins) > 0 {
		row(w, "VOLUME", "ID", "PINNED TO")
		for _, id := range ids(slices.Collect(maps.Keys(spec.Pins))) {
			row(w, name(id), id, strings.Join(spec.Pins[id], ","))
		}
	}
}
