package copier

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/ptail"
)

// Store layout, in table Config.Table (default "copier"):
//
//	<category>/<bucket>   "last":  name of the last segment done, in name order
//	                      "merge": the bucket's merge progress (mergeState, JSON)
//	                      "owner": "<copier id>@<lease epoch>" that wrote it
//
// A segment is done when it is at the destination (copied, or found there
// already identical) or when it vanished from the source before it could
// be copied. Every published segment of the bucket whose name sorts at or
// before "last" is therefore at the destination or gone: that is what
// retention may read (LastCopied) before deleting source segments. When
// merging (merge_period set), "last" names the last segment whose lines
// are all in published period files, which is what retention reads
// either way, and "merge" where in the bucket the merge is; when copying
// segments, "merge" is the position after "last", or where merging
// stopped while that is still ahead (merge_period just removed, see
// mergedTo).
//
// The three columns are written together by one CheckAndPut on "merge"
// against the value this copier read or wrote before. A write changes it
// (its position moves, or the period file it decides), but for segments
// a copier passes over at one merge position, which any copier would
// record the same. Only the lease
// holder writes, but a holder can lose its lease (a ZooKeeper session
// expiry) and not notice before its next write; the CheckAndPut turns
// that write into a refusal instead of moving a newer holder's mark, and
// the stale copier stops its pass. A write the store made and then
// answered with an error (an HBase timeout can; or one it makes after
// answering) would have this copier's next write refused the same way:
// so after a write fails or is refused the copier reads the row again,
// and a row whose owner is this copier under this grant holds its own
// write, the one just tried or an earlier one whose answer was lost, not
// a newer holder's. The owner carries the lease epoch, above this
// grant's for every later one (the same copier id restarted included):
// a stale copier never takes a newer holder's write for its own, however
// alike their progress. Copying and merging fence on the same
// column, so that a stale copier configured the other way (merge_period
// changed in a rolling restart) is refused too. Each write's timestamp is
// the wall clock in ms, but always above the previous version's, so that
// the newest version is the last one written even across clock skew
// between hosts (HBase keeps a few old versions: a short history of who
// copied what when).
const (
	colLast  = "last"
	colOwner = "owner"
	colMerge = "merge"
)

// errFenced means another copier wrote a progress row under this one:
// this copier no longer holds the lease, whether or not it has been told.
var errFenced = errors.New("progress row changed by another copier")

// errAnswerLost means a progress write was refused because the row holds
// an earlier write of this copier's under this grant, which the store
// made but answered with an error: not a fence. The bucket goes on from
// what the row holds at its next pass.
var errAnswerLost = errors.New("progress row holds an earlier write of this copier whose answer was lost")

// mark is the progress of one bucket as last read or written.
type mark struct {
	last string // segment name; "" before the first
	raw  []byte // the stored "last" value (nil if none, or perhaps if empty)
	ts   int64  // timestamp of the stored version

	merge    *mergeState // decoded "merge", nil if none
	mergeRaw []byte      // the stored "merge" value, nil if none: the CheckAndPut expectation

	owner string // who wrote it: ownerTag of the copier and its lease epoch
}

func progressRow(dir string) string { return dir }

// loadMarks reads every progress row of table.
func loadMarks(ctx context.Context, st store.Store, table string) (map[string]mark, error) {
	marks := map[string]mark{}
	err := st.Scan(ctx, table, "", "", store.Latest, func(row string, cells []store.Cell) error {
		if m, ok := markFromCells(cells); ok {
			if m.mergeRaw != nil && m.merge == nil {
				return fmt.Errorf("row %s: merge progress %q does not decode", row, m.mergeRaw)
			}
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
	var m mark
	found := false
	for _, c := range cells {
		switch c.Column {
		case colLast:
			m.last, m.raw, m.ts = string(c.Value), c.Value, max(m.ts, c.Timestamp)
			found = true
		case colMerge:
			st := &mergeState{}
			if err := json.Unmarshal(c.Value, st); err != nil {
				// Kept as the CheckAndPut expectation, so that nothing
				// overwrites it unseen; loadMarks reports it.
				st = nil
			}
			m.merge, m.mergeRaw, m.ts = st, c.Value, max(m.ts, c.Timestamp)
			found = true
		case colOwner:
			m.owner = string(c.Value)
		}
	}
	return m, found
}

// advance records that every segment of dir up to name is done: copied
// segments, with the merge progress after them (a merge after a switch
// goes on from there, in no earlier period than before), or at merged if
// that is later: where merging left the bucket, still ahead of the
// segments copied (mergedTo), is kept for the copies after a crash.
func advance(ctx context.Context, st store.Store, table, dir string, prev mark, name string, merged ptail.Position, owner string, nowMs int64) (mark, error) {
	next := mergeState{Pos: ptail.After(name)}
	if next.Pos.Before(merged) {
		next.Pos = merged
	}
	if prev.merge != nil {
		next.OpenMs = prev.merge.OpenMs
	}
	return saveMerge(ctx, st, table, dir, prev, next, name, owner, nowMs)
}

// LastCopied returns the name of the last segment of a bucket that the
// copier has done, in name order ("" if none): every published segment of
// the bucket named at or before it is at the destination, or was already
// gone from the source. Retention reads it before deleting segments.
func LastCopied(ctx context.Context, st store.Store, table, category string, bucket int) (string, error) {
	last, _, err := BucketProgress(ctx, st, table, category, bucket)
	return last, err
}

// BucketProgress is LastCopied, and whether the copier has recorded progress
// in the bucket at all: a bucket it has read, where "last" may still be
// "" (a merge whose first period file ended inside the bucket's first
// segment, or whose first file is decided and not yet published), is
// not one it has never read.
func BucketProgress(ctx context.Context, st store.Store, table, category string, bucket int) (last string, recorded bool, err error) {
	dir := layout.BucketDir(category, bucket)
	cells, err := st.Get(ctx, table, progressRow(dir), store.Latest)
	if err != nil {
		return "", false, fmt.Errorf("read copier progress of %s: %w", dir, err)
	}
	m, found := markFromCells(cells)
	return m.last, found, nil
}

func ownerTag(id string, epoch int64) string { return id + "@" + strconv.FormatInt(epoch, 10) }

// saveMerge records a bucket's progress: the merge's (next), with "last"
// (the last segment wholly done) and the owner, fenced on the merge value
// this copier read or wrote before. It returns the bucket's progress as
// stored: after a failure, prev, or the row as read again when it holds
// an earlier write of this copier's (errAnswerLost).
func saveMerge(ctx context.Context, st store.Store, table, dir string, prev mark, next mergeState, last, owner string, nowMs int64) (mark, error) {
	val, err := json.Marshal(next)
	if err != nil {
		return prev, err
	}
	ts := max(nowMs, prev.ts+1)
	row := progressRow(dir)
	ok, err := st.CheckAndPut(ctx, table, row, colMerge, prev.mergeRaw, []store.Cell{
		{Row: row, Column: colMerge, Timestamp: ts, Value: val},
		{Row: row, Column: colLast, Timestamp: ts, Value: []byte(last)},
		{Row: row, Column: colOwner, Timestamp: ts, Value: []byte(owner)},
	})
	if err == nil && ok {
		n := next
		return mark{last: last, raw: []byte(last), ts: ts, merge: &n, mergeRaw: val, owner: owner}, nil
	}
	// Made perhaps, its answer lost; or refused for an earlier write that
	// was: the row tells, its owner first (see the store layout above).
	if cells, gerr := st.Get(ctx, table, row, store.Latest); gerr == nil {
		stored, _ := markFromCells(cells)
		switch {
		case stored.owner == owner && bytes.Equal(stored.mergeRaw, val) && stored.last == last:
			return stored, nil // made
		case err != nil && bytes.Equal(stored.mergeRaw, prev.mergeRaw):
			// Not made: the store's error stands.
		case stored.owner == owner:
			return stored, fmt.Errorf("record progress of %s at %s: %w", dir, next.Pos, errAnswerLost)
		default:
			err = errFenced
		}
	}
	if err == nil {
		err = errFenced
	}
	return prev, fmt.Errorf("record progress of %s at %s: %w", dir, next.Pos, err)
}
