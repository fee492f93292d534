package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/torus-storage/torus"
)

// eventPoll is how often `events --follow` asks for new events.
const eventPoll = time.Second

func (a *app) eventsCmd() *cobra.Command {
	var limit int
	var follow bool
	cmd := &cobra.Command{
		Use:   "events [--limit N] [--follow]",
		Short: "Show the cluster's recent events (peers down and up, volume health, healing, scrub, writers)",
		Long: `events prints the cluster's event history, oldest first: the last --limit
events (0: all kept; the history holds the last 1,000 events of the last 7
days). With --follow it then prints new events as they are recorded, until
interrupted; with -o json each event is one JSON object per line.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if limit < 0 {
				return fmt.Errorf("%w: --limit %d must be 0 or more", torus.ErrInvalid, limit)
			}
			return a.with(cmd, func(ctx context.Context, md torus.Metadata) error {
				evs, err := md.Events(ctx, 0, 0)
				if err != nil {
					return err
				}
				if limit > 0 && len(evs) > limit {
					evs = evs[len(evs)-limit:]
				}
				if !follow {
					if evs == nil {
						evs = []torus.Event{}
					}
					return a.emit(evs, func(w io.Writer) { writeEvents(w, evs, true) })
				}
				var last uint64
				header := true
				for {
					if err := a.printEvents(evs, header); err != nil {
						return err
					}
					header = header && len(evs) == 0
					if len(evs) > 0 {
						last = evs[len(evs)-1].Seq
					}
					select {
					case <-ctx.Done():
						return nil
					case <-time.After(eventPoll):
					}
					if evs, err = md.Events(ctx, last, 0); err != nil {
						if ctx.Err() != nil {
							return nil
						}
						return err
					}
				}
			})
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 100, "show at most the last N events (0: all)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events")
	return cmd
}

// printEvents prints evs as table lines (with the header the first time)
// or JSON lines, for --follow.
func (a *app) printEvents(evs []torus.Event, header bool) error {
	if a.g.Output == "json" {
		enc := json.NewEncoder(a.out)
		for _, e := range evs {
			if err := enc.Encode(e); err != nil {
				return err
			}
		}
		return nil
	}
	if len(evs) == 0 {
		return nil
	}
	return a.emit(nil, func(w io.Writer) { writeEvents(w, evs, header) })
}

func writeEvents(w io.Writer, evs []torus.Event, header bool) {
	if header {
		row(w, "TIME", "SEVERITY", "KIND", "PEER", "VOLUME", "MESSAGE")
	}
	for _, e := range evs {
		row(w, e.Time.Local().Format("2006-01-02 15:04:05"), e.Severity, e.Kind, dash(e.Peer), dash(e.Volume), e.Message)
	}
}
