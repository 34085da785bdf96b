package copier

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/store"
)

// Store layout, in table Config.Table (default "copier"):
//
//	<category>/<bucket>   "last":  name of the last segment done, in name order
//	                      "owner": "<copier id>@<lease epoch>" that wrote it
//
// A segment is done when it is at the destination (copied, or found there
// already identical) or when it vanished from the source before it could
// be copied. Every published segment of the bucket whose name sorts at or
// before "last" is therefore at the destination or gone: that is what
// retention may read (LastCopied) before deleting source segments.
//
// Both columns are written together by one CheckAndPut on "last" against
// the value this copier read or wrote before. Only the lease holder
// writes, but a holder can lose its lease (a ZooKeeper session expiry)
// and not notice before its next write; the CheckAndPut turns that write
// into a refusal instead of moving a newer holder's mark, and the stale
// copier stops its pass. Each write's timestamp is the wall clock in ms,
// but always above the previous version's, so that the newest version is
// the last one written even across clock skew between hosts (HBase keeps
// a few old versions: a short history of who copied what when).
const (
	colLast  = "last"
	colOwner = "owner"
)

// errFenced means another copier wrote a progress row under this one:
// this copier no longer holds the lease, whether or not it has been told.
var errFenced = errors.New("progress row changed by another copier")

// mark is the progress of one bucket as last read or written.
type mark struct {
	last string // segment name; "" before the first
	raw  []byte // the stored "last" value, nil if none: the CheckAndPut expectation
	ts   int64  // timestamp of the stored version
}

func progressRow(dir string) string { return dir }

// loadMarks reads every progress row of table.
func loadMarks(ctx context.Context, st store.Store, table string) (map[string]mark, error) {
	marks := map[string]mark{}
	err := st.Scan(ctx, table, "", "", store.Latest, func(row string, cells []store.Cell) error {
		if m, ok := markFromCells(cells); ok {
			marks[row] = m
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read copier progress from %s table %s: %w", st, table, err)
	}
	return marks, nil
}

func markFromCells(cells []store.Cell) (mark, bool) {
	for _, c := range cells {
		if c.Column == colLast {
			return mark{last: string(c.Value), raw: c.Value, ts: c.Timestamp}, true
		}
	}
	return mark{}, false
}

// advance records that every segment of dir up to name is done.
func advance(ctx context.Context, st store.Store, table, dir string, prev mark, name, owner string, nowMs int64) (mark, error) {
	ts := max(nowMs, prev.ts+1)
	row := progressRow(dir)
	next := mark{last: name, raw: []byte(name), ts: ts}
	ok, err := st.CheckAndPut(ctx, table, row, colLast, prev.raw, []store.Cell{
		{Row: row, Column: colLast, Timestamp: ts, Value: next.raw},
		{Row: row, Column: colOwner, Timestamp: ts, Value: []byte(owner)},
	})
	if err != nil {
		return prev, fmt.Errorf("record progress of %s at %s: %w", dir, name, err)
	}
	if !ok {
		return prev, fmt.Errorf("record progress of %s at %s: %w", dir, name, errFenced)
	}
	return next, nil
}

// LastCopied returns the name of the last segment of a bucket that the
// copier has done, in name order ("" if none): every published segment of
// the bucket named at or before it is at the destination, or was already
// gone from the source. Retention reads it before deleting segments.
func LastCopied(ctx context.Context, st store.Store, table, category string, bucket int) (string, error) {
	dir := layout.BucketDir(category, bucket)
	cells, err := st.Get(ctx, table, progressRow(dir), store.Latest)
	if err != nil {
		return "", fmt.Errorf("read copier progress of %s: %w", dir, err)
	}
	m, _ := markFromCells(cells)
	return m.last, nil
}

func ownerTag(id string, epoch int64) string { return id + "@" + strconv.FormatInt(epoch, 10) }
