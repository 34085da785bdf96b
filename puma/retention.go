package puma

import (
	"context"
	"errors"
	"fmt"
	"path"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/ptail"
)

// CommittedPosition returns the position a shard (a bucket of a category)
// last committed in table, or that of a backfill of the shard if earlier:
// everything before it is in its committed state. ok is false when the shard never committed. Retention reads it:
// the segments before the position's segment are past Puma.
func CommittedPosition(ctx context.Context, st store.Store, table, category string, bucket int) (pos ptail.Position, ok bool, err error) {
	val, state, _, err := readCommit(ctx, st, table, category, bucket)
	if err != nil {
		return ptail.Position{}, false, err
	}
	// A backfill still has to read from its position (backfill.go).
	pos = state.Position
	for _, b := range state.Backfill {
		if b.Position.Before(pos) {
			pos = b.Position
		}
	}
	return pos, val != nil, nil
}

// gap is what a shard knows its state lacks: the lines of segments it
// never read, deleted by retention before it got there (its commit row
// was lost, or it is new to a bucket whose start is gone) or removed
// otherwise. They arrived up to ThroughMs, so their event times are at
// most ThroughMs plus an app's max_future: a window starting later is
// whole, an earlier one may lack them. It is kept in the commit row, so
// a restart does not forget it.
type gap struct {
	// ThroughMs bounds the arrival times of the lines lost (Unix ms).
	ThroughMs int64 `json:"through_ms"`
	// Segment is the last segment lost.
	Segment string `json:"segment"`
	// Reason is "retention" (before the bucket's retention mark) or
	// "vanished" (a segment gone before it was read).
	Reason string `json:"reason"`
}

// gapSlackMs covers the clocks of writers and the dfs disagreeing: a
// line's arrival is the writer's clock, a segment's time the dfs's.
const gapSlackMs = 60_000

// with returns g widened by o (either may be nil).
func (g *gap) with(o gap) *gap {
	if g == nil {
		return &o
	}
	n := *g
	if o.ThroughMs > n.ThroughMs {
		n.ThroughMs, n.Reason = o.ThroughMs, o.Reason
	}
	n.Segment = max(n.Segment, o.Segment)
	return &n
}

// incomplete says, for an answer of app over windows starting at fromMs
// or later, why the shard's data is not whole; "" when it is.
func (g *gap) incomplete(app *apps.App, fromMs int64) string {
	if g == nil || fromMs >= g.ThroughMs+app.MaxFutureMs+gapSlackMs {
		return ""
	}
	return clipError(g.String())
}

func (g *gap) String() string {
	what := "were deleted by retention before this shard read them (its commit row was lost, or it is new to the bucket)"
	if g.Reason == "vanished" {
		what = "vanished before this shard read them"
	}
	return fmt.Sprintf("incomplete: segments up to %s %s; lines that arrived before %s are missing",
		g.Segment, what, time.UnixMilli(g.ThroughMs).UTC().Format(time.RFC3339))
}

// retentionGap is the gap a shard recovering at pos has: the segments at
// or before the bucket's retention mark, if pos is not after it.
func (s *shard) retentionGap(pos ptail.Position) (*gap, error) {
	m, ok, err := names.ReadRetentionMark(s.p.deps.FS, names.BucketDir(s.category, s.bucket))
	if errors.Is(err, names.ErrBadMark) {
		// What retention deleted cannot be known: say everything up to
		// now may lack lines, rather than nothing.
		s.log.Error("retention mark unreadable; taking every line so far as possibly missing", "err", err)
		return &gap{ThroughMs: s.p.now().UnixMilli(), Reason: "retention"}, nil
	}
	if err != nil {
		return nil, err
	}
	if !ok || pos.Segment > m.Through {
		return nil, nil
	}
	return &gap{ThroughMs: m.ThroughMs, Segment: m.Through, Reason: "retention"}, nil
}

// lost records a segment that vanished before the shard read it.
func (s *shard) lost(ve *ptail.VanishedError) {
	through := ve.ModTime
	if through.IsZero() {
		through = s.p.now()
	}
	s.p.m.segmentsLost.Inc()
	s.log.Error("segment vanished before this shard read it; its lines are missing from the aggregates, which answers say",
		"segment", ve.Segment, "published", ve.ModTime)
	s.mu.Lock()
	s.gap = s.gap.with(gap{ThroughMs: through.UnixMilli(), Segment: path.Base(ve.Segment), Reason: "vanished"})
	s.mu.Unlock()
}
