// Package retention deletes segment files from the pipeline's dfs once
// nothing needs them, so that the dfs holds a bounded number of files
// under a steady load: at a segment a second per bucket, writers publish
// hundreds of thousands of files a day per category, the small-files load
// that brings a NameNode down.
//
// Place in the data path: calligraphus publishes segments → ptail (Puma)
// and the copier read them → retention deletes them.
//
// The rule. A published segment is deleted once every consumer of its
// bucket is past it and it is older than dfs_retention (7d by default;
// its age is its modification time, when it was published, against this
// process's clock). The consumers (Deps.Consumers) are, as the wiring
// builds them from the configuration:
//
//   - Puma, for every bucket of a category an app consumes: a segment is
//     past once the shard's committed position (its commit row in the
//     store) is in a later segment. A shard without a commit row has
//     consumed nothing. The segment of the committed position itself is
//     kept, so a shard recovering from its checkpoint always finds it.
//   - The copier, when configured (copier.destination), for the categories
//     it copies: a segment is past once its progress row's "last" is at or
//     after it (copied, or merged into published period files).
//
// A category no consumer reads is kept only by dfs_retention, which is
// also how far back a copier backfill (or a new Puma app) can reach.
// Consumers only ever move forward, so a segment past them stays past,
// and no reader of a consumer can need a segment retention deleted: Puma
// reads from its committed position on, the copier after its "last". A
// store that loses its rows (a damaged store.db moved aside) makes every
// consumer start again from nothing: retention then deletes nothing more
// until they are past again, but what it deleted before is gone (see the
// retention mark).
//
// Fenced segments. A segment a stale writer published after a newer
// writer sealed the bucket (internal/layout/fence.go) is never listed to
// readers, so no consumer ever passes it; its writer answered TRY_LATER
// for its entries, which were sent again. Retention deletes such segments
// once they are older than dfs_retention, outside the contiguous run and
// the mark (readers never meet them either way).
//
// Deletion keeps each bucket a contiguous run of segments: a bucket's
// segments are deleted oldest first, up to the first one that must stay.
// Before deleting, retention writes the bucket's retention mark
// (layout.RetentionMark: the last segment deleted and its publish time)
// through a temporary file and a rename; then it removes the segments,
// ignoring those already gone. The mark never moves back: the one there
// just before the rename is merged in, so a pass that lost the lease
// without seeing it yet (a pause) does not undo the later mark of the
// new holder's pass (it can still, if paused right between that read and
// the rename: the dfs has no conditional replace). So deletion is idempotent and a crash at
// any point leaves a mark at or after every segment deleted: the next
// pass deletes what is left of the run. A Puma shard that starts without
// a commit row, or whose committed segment is at or before the mark,
// learns from the mark that the start of its bucket is gone and reports
// its answers as partial over that time rather than presenting partial
// totals as whole.
//
// One retention runs at a time: it holds the coord lease "retention".
// Every process of targets all, puma and copier (and the retention
// target) runs one, reading the same configuration; the others stand by.
//
// What survives a crash: the dfs (segments, marks) is the state;
// retention keeps none of its own.
package retention
