package calligraphus

import (
	"context"
	"path"
	"slices"
	"time"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/ratelog"
)

// leftBucket is a bucket that held an unpublished segment at start
// (leftBuckets), with the holder of its lease as first seen held.
type leftBucket struct {
	id     bucketID
	holder string
	epoch  int64
	since  time.Time
}

// leftPatience is how long a bucket that held an unpublished segment at
// start is watched while one holder holds it under one epoch: a crashed
// writer's lease ends with its coord session (seconds), after which the
// bucket is taken here; a holder still there after this long is alive,
// and the segment is its own.
const leftPatience = time.Minute

// leftBuckets lists, on a dfs where synced bytes are acknowledged, the
// buckets that hold an unpublished segment: a crashed writer's holds
// acknowledged entries, which readers see only once the bucket's next
// owner salvages them, and the next entry for the bucket may never come
// (a category no app consumes, a bucket its agents no longer send to).
// So the writer takes those buckets itself (takeLeft), as it takes again
// a bucket where it left such a segment itself. It lists every bucket
// at start, and again whenever a writer has left the group (rebalance):
// one that died leaves its segments to the live writers.
func (c *Calligraphus) leftBuckets(ctx context.Context) []*leftBucket {
	fsys := c.deps.FS
	if !fsys.SyncDurable() {
		return nil // an unpublished segment holds nothing acknowledged
	}
	cats, _, err := layout.Categories(fsys)
	if err != nil {
		c.log.Warn("cannot list the categories for unpublished segments to salvage", "err", err)
		return nil
	}
	var out []*leftBucket
	for _, cat := range cats {
		names, err := dfs.ReadDirNames(fsys, cat.Dir)
		if err != nil {
			c.log.Warn("cannot list the buckets of a category for unpublished segments to salvage", "category", ratelog.Clip(cat.Name), "err", err)
			continue
		}
		for _, name := range names {
			if ctx.Err() != nil {
				return nil
			}
			if b, ok := layout.ParseBucket(name); ok {
				if left, err := c.leftIn(path.Join(cat.Dir, name)); err == nil && left {
					out = append(out, &leftBucket{id: bucketID{cat.Name, b}})
				}
			}
		}
	}
	return out
}

// departed reports whether a writer of the group before (sorted) is
// missing from the group now (sorted): it left, or died, perhaps leaving
// unpublished segments (leftBuckets).
func departed(before, now []string) bool {
	for _, id := range before {
		if _, found := slices.BinarySearch(now, id); !found {
			return true
		}
	}
	return false
}

// mergeLeft adds to left the buckets of more it does not hold already,
// keeping what it knows of the others (the holder as first seen).
func mergeLeft(left, more []*leftBucket) []*leftBucket {
	have := make(map[bucketID]bool, len(left))
	for _, l := range left {
		have[l.id] = true
	}
	for _, l := range more {
		if !have[l.id] {
			left = append(left, l)
		}
	}
	return left
}

// leftIn reports whether the bucket directory dir holds an unpublished
// segment.
func (c *Calligraphus) leftIn(dir string) (bool, error) {
	names, err := dfs.ReadDirNames(c.deps.FS, dir)
	if err != nil {
		return false, err
	}
	for _, name := range names {
		if _, ok := layout.ParseTempSegment(name); ok {
			return true, nil
		}
	}
	return false, nil
}

// takeLeft takes each bucket of left that nobody holds, which salvages
// its unpublished segments, and returns those to try again: held, as
// first seen, for less than leftPatience (perhaps by a crashed writer
// whose session has not ended yet). A bucket held here, or taken by
// another writer since it was listed, was salvaged as it was taken.
func (c *Calligraphus) takeLeft(ctx context.Context, left []*leftBucket) []*leftBucket {
	var out []*leftBucket
	for _, l := range left {
		if ctx.Err() != nil {
			return nil
		}
		if c.holds(l.id) {
			continue
		}
		holder, epoch, err := c.deps.Coord.Holder(ctx, layout.WriterLease(l.id.category, l.id.bucket))
		if err != nil {
			out = append(out, l)
			continue
		}
		if holder != "" {
			switch {
			case l.since.IsZero():
				l.holder, l.epoch, l.since = holder, epoch, c.now()
			case l.holder != holder || l.epoch != epoch:
				continue // taken since, so salvaged
			case c.now().Sub(l.since) > leftPatience:
				continue // a live holder's own segment
			}
			out = append(out, l)
			continue
		}
		if left, err := c.leftIn(layout.BucketDir(l.id.category, l.id.bucket)); err != nil {
			out = append(out, l)
			continue
		} else if !left {
			// Published by its writer as it left, or salvaged by a
			// writer that has released the bucket since: nothing to take.
			continue
		}
		w, err := c.reserve(l.id, 0)
		if err != nil {
			out = append(out, l)
			continue
		}
		if err := w.own(ctx); err != nil {
			out = append(out, l)
			c.rl.Warn("cannot take left", "cannot take a bucket holding an unpublished segment to salvage it", "category", ratelog.Clip(l.id.category), "bucket", l.id.bucket, "err", err)
		} else {
			c.log.Info("bucket taken to salvage an unpublished segment found at start", "category", ratelog.Clip(l.id.category), "bucket", l.id.bucket)
		}
		w.unreserve(0)
	}
	return out
}
