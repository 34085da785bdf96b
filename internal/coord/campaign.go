package coord

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// releaseTimeout bounds Release once ctx has ended: a lease left held
// keeps the next owner out until its session expires.
const releaseTimeout = 10 * time.Second

// Release gives lease l up, with up to releaseTimeout even when ctx has
// already ended (a process stopping still hands its lease over).
func Release(ctx context.Context, l Lease) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	return l.Release(rctx)
}

// Campaign runs lead each time this process holds lease name as owner,
// until ctx ends: it acquires the lease, calls lead with a context that
// ends as soon as the lease is lost (WhileHeld), so that lead returns
// then or when ctx ends, releases the lease, and tries again every
// retry. It logs once when the lease is held elsewhere and this process
// stands by, and each failure to acquire or release (failed, if not nil,
// is called for each failure to acquire, for a metric). It returns nil
// when ctx ends, and an error wrapping ErrClosed when c is closed.
func Campaign(ctx context.Context, c Coord, name, owner string, retry time.Duration, log *slog.Logger, failed func(error), lead func(context.Context, Lease)) error {
	standby := false
	for {
		lease, err := c.Acquire(ctx, name, owner)
		switch {
		case err == nil:
			standby = false
			lctx, cancel := WhileHeld(ctx, lease)
			lead(lctx, lease)
			cancel()
			if err := Release(ctx, lease); err != nil {
				log.Warn("cannot release lease", "lease", name, "err", err)
			}
		case ctx.Err() != nil:
			return nil //nolint:nilerr // ctx ended: the campaign is over, not failed
		case errors.Is(err, ErrClosed):
			return fmt.Errorf("acquire lease %s: %w", name, err)
		case errors.Is(err, ErrHeld):
			if !standby {
				holder, _, _ := c.Holder(ctx, name) // for the log line only
				log.Info("lease held by another process; standing by", "lease", name, "holder", holder)
				standby = true
			}
		default:
			if failed != nil {
				failed(err)
			}
			log.Warn("cannot acquire lease", "lease", name, "err", err)
		}
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}
