package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/spf13/cobra"

	"github.com/torus-storage/torus"
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

// PlacementHealth is the health of spec's placement over the members skip
// does not reject; degraded with the build error as reason when spec
// cannot be built.
func PlacementHealth(spec torus.RingSpec, skip func(id string) bool) torus.PlacementHealth {
	p, err := ring.Build(spec)
	if err != nil {
		return torus.PlacementHealth{Replication: spec.Replication, Degraded: true, Reason: err.Error()}
	}
	return p.Health(skip)
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
	var domain string
	cmd := &cobra.Command{
		Use:   "set-rule --failure-domain host|rack|zone",
		Short: "Set the placement rule (writes a new ring version)",
		Long: `set-rule writes a new ring version in the hierarchy format (zone > rack >
host) whose replicas go to distinct failure domains at the given level,
spreading over the levels above it where possible. It also refreshes every
member's location from its peer record (torusd --location). When the
topology has fewer domains than the replication, placement fills from a
domain already used, and ring get, status and the daemons say so.

A ring of the older format (zones only) whose members are on distinct hosts
with no racks places exactly as before, so switching it moves nothing;
members sharing a host are separated, which moves those segments.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
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
				h := PlacementHealth(next, nil)
				if h.Degraded {
					fmt.Fprintf(a.errOut, "warning: placement degraded: %s\n", h.Reason)
				}
				return a.say(next, "ring version %d: failure domain %s; placement %s", next.Version, domain, placementSummary(h))
			})
		},
	}
	cmd.Flags().StringVar(&domain, "failure-domain", torus.DomainHost, "host, rack or zone")
	return cmd
}

// errUnchanged stops changeRing when there is nothing to write.
var errUnchanged = errors.New("ring unchanged")
