// Package copier copies the pipeline's closed segment files to a second
// dfs root (a warehouse HDFS, a backup directory), continuously and
// idempotently, as they are or merged into hourly (or other period)
// files: Data Freeway's Continuous Copier.
//
// Place in the data path: calligraphus publishes segments at
// <category>/<bucket>/<epoch>-<seq>.seg in the pipeline's dfs → the copier
// copies each one, once it is published, to the same path under the
// destination root, or merges them into one file per period of arrival
// (merge_period, below). Retention deletes a source segment only after
// the copier has done it (LastCopied) and Puma has committed past it.
//
// A pass lists every bucket (of Config.Categories, or of every category
// found: internal/layout names and lists the category directories, any
// category included) and copies, in name order, the published segments
// after the bucket's progress mark. A bucket whose last listing took d
// is listed again only d×layout.ListBudget later (a listing reads every
// name, millions in a local-disk bucket after days); the passes between
// copy what that listing found. CopyOnce and Backfill, and every merging
// pass, list every bucket. The directory of a category too long
// to be its own name holds a sidecar with the full name; the copier
// writes it at the destination before the category's first segment, so
// that the destination lists the same categories. Hidden names (files being written, ".x" and
// "_x", the writers' .fence directory) and names that are not segment
// names are never copied, nor a segment a stalled writer published after
// a newer one took its bucket: the copier lists through layout.Published,
// as ptail and retention do, so it copies what Puma counts (fence.go). Each copy
// streams from the source into a hidden temporary name at the
// destination (dfs.TempName of its name and the copier's lease epoch),
// is closed, checked (size, and with Verify "checksum" a CRC-32C of the
// file read back), and only then renamed to its name: the destination
// never shows a partial segment. The epoch keeps a copier that lost its
// lease without seeing it yet off the new holder's temporary files: were
// the name shared, it could replace the new holder's checked file with
// its own, which the new holder would then publish half-written. Buckets are copied Config.Concurrency at
// a time; within a bucket one segment at a time, so that the mark can
// advance past each segment as it is done.
//
// The destination must be another storage than the source, and neither
// inside the other: New refuses it otherwise, however the URLs spell it
// (a symbolic link, localhost for 127.0.0.1), for the copier would copy
// segments onto themselves, remove the writers' files in progress as
// temporary files of its own, and list its own files as the source's. It
// tells by writing a hidden probe file (_freeway-copier-probe-<random>)
// at the destination root and looking for it in the source, and, where
// the roots' paths nest (a local directory, symbolic links resolved; an
// HDFS path), where it would show there; the probe is removed. One that a
// copier crashing between writing and removing it left is removed by the
// first copier started once it is an hour old (by the destination's
// clock): younger, it may be another copier's, starting.
//
// One copier is active at a time: it holds the coord lease named after its
// progress table ("copier" by default). Others stand by and take over
// when the lease is released or lost. A copier that loses the lease stops
// its copies in flight, publishes nothing more, and its progress writes
// are refused (see the store layout in progress.go). A progress write the
// store made but answered with an error (an HBase timeout), or made after
// answering, is not taken for another copier's when the next one is
// refused: the copier reads the row again and knows its own writes by
// their owner, its id and lease epoch, which no newer holder's can have.
//
// Idempotence. A segment already at the destination with the same size
// (and contents, with Verify "checksum") is skipped, not copied again;
// one that differs is copied over, with a warning. So a pass from an
// empty progress table, after a crash or after an operator deleted it,
// copies nothing twice, it only reads. A segment removed from the source
// (retention) before it was copied is logged, counted in
// freeway_copier_segments_vanished_total and passed over, not retried.
//
// What survives a crash: every segment published at the destination, and
// the progress marks in the store. A crash between publishing a segment
// and recording it leaves the mark one segment behind; the next pass finds
// the segment at the destination and skips it. A temporary file a crash
// left at the destination is removed: when the segment is copied again
// under the same lease, and for every bucket when a copier takes the
// lease, copying or merging, those of its segments and of its period
// files (below) of earlier epochs: a later one's is a newer holder's.
//
// Assumption, shared with ptail: segment names sort in publish order
// within a bucket, so a segment that appears with a name at or before the
// bucket's mark is not copied. Writers are fenced by lease epochs, which
// makes this hold except for a writer that publishes after losing its
// lease, a segment ptail would skip as well.
//
// # Merging into periods
//
// With merge_period set (1h, say; any whole number of minutes that
// divides a day), the copier does not copy segments: it writes, for each
// bucket and period of arrival, one file in the warehouse layout
// Hive-style readers expect (layout.MergedFile):
//
//	<category>/dt=YYYY-MM-DD/hh=HH/part-<bucket>         (plus mm=MM/ under an hour)
//
// in UTC, with ".gz" appended when compression is "gzip". A file holds
// the bucket's messages one a line, as Scribe's file store wrote them: a
// message, then a newline unless it ends with one. Lines are in bucket
// order, and a bucket's files in period order are its lines in order,
// each exactly once: the merge reproduces the bucket, repeats included
// (a call re-written after a partial failure is in the segments twice,
// and in the files twice; Puma drops such repeats, the warehouse gets
// what the segments hold).
//
// Which period a line goes to. Periods are periods of arrival: a block's
// ArrivalMs (when the writer, or Freeway's agent, received the batch), as
// Scribe's file store filed lines by the time it received them. A block's
// period is the latest of
//
//   - the period of its arrival;
//   - the period of the block before it in the bucket: periods never go
//     back in bucket order, so a period's file is one stretch of the
//     bucket and a crash can never leave a line on both sides of a cut;
//   - the period that was open when its segment was published (its
//     modification time, less merge_delay): a segment published late, a
//     crashed writer's segment salvaged by the next one, an agent's
//     backlog, does not reopen a period that was closed;
//
// except that a block stamped ahead of the copier's clock (a writer's
// clock ahead) takes the period of the block before it, rather than
// holding the bucket back until the clock gets there; so does a segment
// whose modification time is more than merge_delay ahead of that clock
// (the dfs's clock ahead, or stepped back since it published the
// segment): that time is passed over, and the segment's blocks go by
// the other two. Lines filed later
// than their arrival are counted in
// freeway_copier_merge_lines_moved_total{reason="late"|"future"}: at a
// period's end, the lines of agents whose batches reached the writer
// after another agent's first batch of the next period, as in Scribe.
//
// When a period is closed. The copier writes a bucket's period once its
// own clock is merge_delay (2m) past the period's end. Until then a
// segment of the period may still be published: a writer publishes what
// it received within calligraphus.segment_max_age (1s), an agent retries
// a batch a failed writer did not acknowledge, the next writer salvages a
// crashed one's segment, and clocks differ by seconds. A line of the
// period published later than that is not lost: it goes to the period
// still open (see above), counted as late. So merge_delay trades how
// soon a period's file appears against how many late lines move.
//
// Exactly once. A bucket's merge progress (column "merge" of its progress
// row) is the position in the bucket (segment, offset) of the first line
// not in a published file, and the first period not written. Writing a
// period is four steps: (1) its lines go to a temporary file
// (dfs.TempName of the final name and the lease epoch) at the
// destination, which is closed
// and verified (its size, and with verify "checksum" the CRC-32C of the
// file read back and of its lines decompressed, against what was read);
// (2) the period and its range of the bucket [from, to), with the size
// and CRC of its lines, are recorded in the progress row; (3) the file is
// renamed to its final name; (4) the progress moves past the range. A
// crash before (2) leaves a temporary file, removed by the next copier
// to take the lease, whatever its merge_period and compression (which
// name the file), or copying segments: it lists the category's period
// directories from the period the bucket's progress has open, before
// which no merge writes, for its bucket's temporary files of earlier
// epochs. Those of a period recorded in (2) go as well: no copier renames
// another epoch's temporary file, a period not published is written
// again under the new epoch's name. A copier whose (2) fails or is refused
// removes the file at once: fenced, it cannot count on the new holder
// looking where it wrote. A copier that lost its lease without
// seeing it yet never touches the new holder's temporary file (its epoch
// is later), so the new holder renames only the file it verified, never
// one the stale copier is still writing; the stale copier's own rename
// publishes only a file it verified, of a range it recorded before its
// progress writes were fenced. After (2) the period is decided: a restarted copier
// publishes it before anything else of the bucket, keeping a file already
// published with the recorded lines (under any name the period file can
// have: merge_period or compression may have changed across the restart)
// and otherwise writing the range again
// (the segments are immutable, and retention keeps them: they are after
// the bucket's "last"). So a crash at any point neither loses nor repeats
// a line. A final file found with other lines and no progress saying it
// was written (the progress was lost with a damaged store, after
// retention deleted merged segments) is kept, never rewritten on a guess:
// logged as an error and counted in freeway_copier_merge_conflicts_total.
//
// Progress for retention. "last" names the last segment read to its end
// whose lines are all in published files; retention deletes no segment
// after it. Switching from copying segments to merging starts the merge
// after the last segment copied (and after the next one, if it is at the
// destination as in the source: copying published it and stopped before
// recording it, a crash or a stop), also when it merged before: merge
// progress stored then, behind segments copied since (and perhaps deleted
// by retention), is passed over, period files it had decided and not
// published included (their lines were copied in their segments).
// Switching from merging to copying goes on where the merge stopped, so
// that no line is both in a period file and in a copied segment: the
// segment the merge was inside, if any, is copied without its blocks
// already merged (its file header, then its blocks from the merge's
// position on: a segment of its own, smaller than the source's); a
// period file the merge had decided and published without recording it
// (a crash between steps 3 and 4) counts as merged when a file under one
// of the names it can have holds exactly its lines, and otherwise its
// lines are copied in their segments. Where the merge stopped is in the
// progress row, kept there until the copies pass it: a pass from an empty
// progress table knows nothing of the merge, and copies every segment
// whole, the one cut short included.
//
// # Lag and backfill
//
// Each pass lists every bucket (as layout.ListBudget allows);
// freeway_copier_lag_segments and
// freeway_copier_lag_seconds (the age of the oldest segment not done)
// give, per category, how far the copier is behind the writers; Lag
// returns the same, and Status (for /api/v1/status) adds whether this
// copier is the active one. Both are figures of the last pass, set when
// it has listed the buckets and again when it ends; a standby has none.
// When merging, the period still open
// (and merge_delay after it) is part of the lag.
//
// Backfill makes one pass like CopyOnce, reporting its progress (the
// segments found, and done, with their bytes) as it goes: `freeway copier
// --backfill` draws it. It can be interrupted at any point; the next run
// goes on from the progress recorded. What a backfill can reach is what
// the dfs still holds: retention deletes segments older than
// dfs_retention (7d) once their consumers are past them. A bucket without
// progress whose first segments retention already deleted is copied from
// the first one left, with a warning.
package copier
