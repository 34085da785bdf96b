package freeway

import (
	"context"
	"fmt"
	"io"

	"github.com/freeway-dev/freeway/copier"
	"github.com/freeway-dev/freeway/internal/progress"
)

// Backfill is `freeway copier --backfill`: one copier pass over
// everything not copied (or merged) yet, its progress drawn on out (a bar
// redrawn in place when tty, plain lines every 10s otherwise), then a
// summary line. It holds the copier lease for the pass, so it fails while
// a running copier holds it (which is doing the same work). Interrupted
// (ctx), it stops where it is; what it did is recorded, and running it
// again goes on from there.
func Backfill(ctx context.Context, cfg Config, opts Options, out io.Writer, tty bool) (copier.Stats, error) {
	opts.AdminListen = "off"
	p, err := New(cfg, Copier, opts)
	if err != nil {
		return copier.Stats{}, err
	}
	defer p.Close()
	pr := progress.New(out, tty, "backfill", nil)
	var last progress.State
	st, err := p.Copier.Backfill(ctx, func(cp copier.Progress) {
		last = progress.State{Files: cp.Files, TotalFiles: cp.TotalFiles, Bytes: cp.Bytes, TotalBytes: cp.TotalBytes, Start: cp.Start}
		pr.Update(last)
	})
	pr.Done(last)
	what := fmt.Sprintf("copied %d segments", st.Copied)
	if cfg.Copier.Merging() {
		what = fmt.Sprintf("merged %d files (%d lines)", st.Merged, st.Lines)
	}
	fmt.Fprintf(out, "backfill: %s, %s, %d found done already, %d vanished, %d errors; %d segments left (periods still open, or errors) in %s\n",
		what, progress.Bytes(st.Bytes), st.Skipped, st.Vanished, st.Errors, st.Lag, st.Duration.Round(1e6))
	return st, err
}
