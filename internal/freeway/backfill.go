package freeway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/freeway-dev/freeway/copier"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/progress"
)

// backfillLeaseWait is how long a backfill waits for the copier lease:
// a copier killed moments ago holds it until its coordinator session
// expires (ZooKeeper's session_timeout, 10s by default), and a backfill
// run right after such a crash should not fail for that.
const backfillLeaseWait = 30 * time.Second

// Backfill is `freeway copier --backfill`: one copier pass over
// everything not copied (or merged) yet, its progress drawn on out (a bar
// redrawn in place when tty, plain lines every 10s otherwise), then a
// summary line. It holds the copier lease for the pass; while another
// copier holds it, it waits up to 30s (a killed copier's lease outlives
// it by the coordinator's session timeout), then fails naming the holder
// (a running copier, which is doing the same work). Interrupted (ctx), it
// stops where it is; what it did is recorded, and running it again goes
// on from there.
func Backfill(ctx context.Context, cfg Config, opts Options, out io.Writer, tty bool) (copier.Stats, error) {
	return backfill(ctx, cfg, opts, out, tty, backfillLeaseWait)
}

func backfill(ctx context.Context, cfg Config, opts Options, out io.Writer, tty bool, leaseWait time.Duration) (copier.Stats, error) {
	opts.AdminListen = "off"
	p, err := New(cfg, Copier, opts)
	if err != nil {
		return copier.Stats{}, err
	}
	defer func() { _ = p.Close() }() // the pass recorded what it did; closing only lets go of the backends
	pr := progress.New(out, tty, "backfill", nil)
	var last progress.State
	report := func(cp copier.Progress) {
		last = progress.State{Files: cp.Files, TotalFiles: cp.TotalFiles, Bytes: cp.Bytes, TotalBytes: cp.TotalBytes, Start: cp.Start}
		pr.Update(last)
	}
	var st copier.Stats
	deadline := time.Now().Add(leaseWait)
	for waited := false; ; waited = true {
		st, err = p.Copier.Backfill(ctx, report)
		if !errors.Is(err, coord.ErrHeld) {
			break
		}
		if ctx.Err() != nil || !time.Now().Before(deadline) {
			return st, err
		}
		if !waited {
			_, _ = fmt.Fprintf(out, "backfill: %v; waiting up to %s for it (a copier stopped moments ago holds it until its coordinator session expires)\n", err, leaseWait)
		}
		t := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			t.Stop()
			return st, err
		case <-t.C:
		}
	}
	pr.Done(last)
	what := fmt.Sprintf("copied %d segments", st.Copied)
	if cfg.Copier.Merging() {
		what = fmt.Sprintf("merged %d files (%d lines)", st.Merged, st.Lines)
	}
	_, _ = fmt.Fprintf(out, "backfill: %s, %s, %d found done already, %d vanished, %d errors; %d segments left (periods still open, or errors) in %s\n",
		what, progress.Bytes(st.Bytes), st.Skipped, st.Vanished, st.Errors, st.Lag, st.Duration.Round(1e6))
	return st, err
}
