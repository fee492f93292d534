package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/torus-storage/torus"
	"github.com/torus-storage/torus/scrub"
)

// Exit statuses of `volume scrub` besides 0 (every copy good or repaired).
const (
	// ExitIncomplete: something was not checked or not repaired yet (a
	// peer could not be read, a repair failed or was deferred while the
	// writer still uses the segment); a later scrub may succeed.
	ExitIncomplete = 1
	// ExitUnrepairable: some segment has no good copy; the blocks named
	// are damaged on every copy scrub could read.
	ExitUnrepairable = 2
)

// ExitError carries an exit status other than 1 to Main.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// noPeers is the default Deps.Peers: torusctl's tests of this package run
// without daemons.
func noPeers(torus.Metadata, Global) (torus.PeerPool, func(), error) {
	return nil, nil, errors.New("reaching the daemons is not wired in (main injects Deps.Peers)")
}

func (a *app) volumeScrubCmd() *cobra.Command {
	var all, check bool
	cmd := &cobra.Command{
		Use:   "scrub [NAME...]",
		Short: "Verify every copy of a volume's segments and repair bad ones",
		Long: `scrub reads every live segment copy of the volumes on every up peer, checks
each record header and every block CRC, compares lengths with the head, and
replaces a bad or short copy with a verified copy from a good replica.

Exit status: 0 when every copy is good or was repaired; 2 when some segment
has no good copy (the blocks are named); 1 when something could not be
checked or repaired yet (a peer unreachable, a repair failed, or a segment
the volume's writer still uses: scrub again after it detaches or checkpoints).`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return errors.New("name volumes or give --all")
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				names := args
				if all {
					vols, err := md.Volumes(ctx)
					if err != nil {
						return err
					}
					for _, v := range vols {
						names = append(names, v.Name)
					}
				}
				pool, done, err := a.deps.Peers(md, a.g)
				if err != nil {
					return err
				}
				defer done()
				reports := make([]scrub.Report, 0, len(names))
				for _, n := range names {
					r, err := scrub.Volume(ctx, scrub.Deps{Meta: md, Peers: pool}, n, scrub.Options{Repair: !check})
					if err != nil {
						return fmt.Errorf("scrub %s: %w", n, err)
					}
					reports = append(reports, r)
				}
				if err := a.emit(reports, func(w io.Writer) { writeScrub(w, reports) }); err != nil {
					return err
				}
				return scrubVerdict(reports)
			})
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "scrub every volume")
	cmd.Flags().BoolVar(&check, "check", false, "only check; repair nothing")
	return cmd
}

// scrubVerdict turns reports into the exit status.
func scrubVerdict(reports []scrub.Report) error {
	var lost, open []string
	for _, r := range reports {
		if len(r.Unrepairable) > 0 || hasAction(r, scrub.ActionUnrepairable) {
			lost = append(lost, fmt.Sprintf("%s (blocks %s)", r.Volume, Ranges(r.Unrepairable)))
		} else if !r.Clean() {
			open = append(open, r.Volume)
		}
	}
	switch {
	case len(lost) > 0:
		return &ExitError{Code: ExitUnrepairable, Err: fmt.Errorf("%w: no good copy of some data: %s", torus.ErrCorrupt, strings.Join(lost, "; "))}
	case len(open) > 0:
		return &ExitError{Code: ExitIncomplete, Err: fmt.Errorf("not every copy of %s is good yet", strings.Join(open, ", "))}
	}
	return nil
}

func hasAction(r scrub.Report, a scrub.Action) bool {
	for _, f := range r.Findings {
		if f.Action == a {
			return true
		}
	}
	return false
}

func writeScrub(w io.Writer, reports []scrub.Report) {
	row(w, "VOLUME", "SEGMENTS", "COPIES", "CHECKED", "BAD", "REPAIRED", "UNREPAIRABLE-BLOCKS")
	var findings []scrub.Finding
	for _, r := range reports {
		row(w, r.Volume, r.Segments, r.Copies, HumanSize(r.CheckedBytes), r.Bad, r.Repaired, dash(Ranges(r.Unrepairable)))
		findings = append(findings, r.Findings...)
	}
	if len(findings) > 0 {
		fmt.Fprintln(w)
		row(w, "SEGMENT", "PEER", "ACTION", "BLOCKS", "PROBLEM")
		for _, f := range findings {
			p := f.Problem
			if f.Error != "" {
				p += ": " + f.Error
			}
			row(w, f.Segment, dash(f.Peer), f.Action, dash(Ranges(f.BadBlocks)), p)
		}
	}
	for _, r := range reports {
		for _, e := range r.Errors {
			fmt.Fprintf(w, "%s: %s\n", r.Volume, e)
		}
	}
}

// Ranges formats sorted block numbers as "1-3,7".
func Ranges(b []uint64) string {
	var parts []string
	for i := 0; i < len(b); {
		j := i
		for j+1 < len(b) && b[j+1] == b[j]+1 {
			j++
		}
		if i == j {
			parts = append(parts, strconv.FormatUint(b[i], 10))
		} else {
			parts = append(parts, strconv.FormatUint(b[i], 10)+"-"+strconv.FormatUint(b[j], 10))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}
