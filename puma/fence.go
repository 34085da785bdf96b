package puma

import (
	"context"
	"fmt"

	"github.com/freeway-dev/freeway/internal/store"
)

// epochRange is an inclusive range of checkpoint epochs, stored in the
// commit row as [from, to].
type epochRange [2]int64

// maxAborted bounds the aborted ranges a commit row keeps. A range is
// added only when an owner takes a shard over from an attempt that never
// committed (a crash or a hand-off mid-checkpoint), or commits after
// attempts of its own whose Put or commit failed (checkpoint), so the
// list grows by one per such takeover or run of failures; beyond the
// bound the oldest are forgotten (a version of theirs that is still the
// newest of its cell would then be read again: after thousands of them,
// and only for a cell no later commit rewrote, which the owner's own
// next attempt always does).
const maxAborted = 1024

// withAborted is the aborted list of a commit at epoch whose previous
// commit is at committed: every epoch between the two was begun (an
// attempt marker, by this owner or a stale one) and never committed.
func withAborted(prev []epochRange, committed, epoch int64) []epochRange {
	if epoch <= committed+1 {
		return prev
	}
	out := append(append([]epochRange(nil), prev...), epochRange{committed + 1, epoch - 1})
	if len(out) > maxAborted {
		out = out[len(out)-maxAborted:]
	}
	return out
}

// abortedAt returns the range of aborted holding epoch ts, if any.
func abortedAt(aborted []epochRange, ts int64) (epochRange, bool) {
	for i := len(aborted) - 1; i >= 0; i-- {
		if r := aborted[i]; ts >= r[0] && ts <= r[1] {
			return r, true
		}
	}
	return epochRange{}, false
}

// committedVersions replaces, in cells (a row as read as of a commit's
// epoch), each version written at an aborted epoch by the newest version
// of its column below that epoch's range, read again; a column with no
// such version is left out.
//
// This is the fence against an owner that lost its shard while it was
// writing a checkpoint's cells: it keeps writing at its attempt's epoch
// after the new owner's claim and purge, and nothing at the store can stop
// those puts (they are plain puts to other rows than the commit row). But
// its epoch was begun and never committed, so the next commit lists it as
// aborted, and no read as of that commit, or of any later one (the list is
// carried forward), counts its versions.
func committedVersions(ctx context.Context, st store.Store, table, row string, cells []store.Cell, aborted []epochRange) ([]store.Cell, error) {
	if len(aborted) == 0 {
		return cells, nil
	}
	var out []store.Cell
	for _, c := range cells {
		for {
			r, bad := abortedAt(aborted, c.Timestamp)
			if !bad {
				out = append(out, c)
				break
			}
			if r[0] <= 1 {
				break // nothing was committed below the range
			}
			older, err := st.Get(ctx, table, row, r[0]-1)
			if err != nil {
				return nil, fmt.Errorf("read %s below aborted epochs %d-%d: %w", row, r[0], r[1], err)
			}
			found := false
			for _, o := range older {
				if o.Column == c.Column {
					c, found = o, true
					break
				}
			}
			if !found {
				break
			}
		}
	}
	return out, nil
}
