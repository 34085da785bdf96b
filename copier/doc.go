// Package copier copies the pipeline's closed segment files to a second
// dfs root (a warehouse HDFS, a backup directory), continuously and
// idempotently.
//
// Place in the data path: calligraphus publishes segments at
// <category>/<bucket>/<epoch>-<seq>.seg in the pipeline's dfs → the copier
// copies each one, once it is published, to the same path under the
// destination root. Retention may delete a source segment only after the
// copier has done it (LastCopied) and Puma has read it.
//
// A pass lists every bucket (of Config.Categories, or of every category
// found: internal/layout names and lists the category directories, any
// category included) and copies, in name order, the published segments
// after the bucket's progress mark. The directory of a category too long
// to be its own name holds a sidecar with the full name; the copier
// writes it at the destination before the category's first segment, so
// that the destination lists the same categories. Hidden names (files being written, ".x" and
// "_x") and names that are not segment names are never copied. Each copy
// streams from the source into dfs.TempName(name) at the destination,
// is closed, checked (size, and with Verify "checksum" a CRC-32C of the
// file read back), and only then renamed to its name: the destination
// never shows a partial segment. Buckets are copied Config.Concurrency at
// a time; within a bucket one segment at a time, so that the mark can
// advance past each segment as it is done.
//
// One copier is active at a time: it holds the coord lease named after its
// progress table ("copier" by default). Others stand by and take over
// when the lease is released or lost. A copier that loses the lease stops
// its copies in flight, publishes nothing more, and its progress writes
// are refused (see the store layout in progress.go).
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
// left at the destination is removed: when the segment is copied again,
// and for every bucket when a copier takes the lease.
//
// Assumption, shared with ptail: segment names sort in publish order
// within a bucket, so a segment that appears with a name at or before the
// bucket's mark is not copied. Writers are fenced by lease epochs, which
// makes this hold except for a writer that publishes after losing its
// lease, a segment ptail would skip as well.
//
// Not built yet: the hourly merge ARCHITECTURE.md mentions (a bucket's
// segments concatenated into hourly newline-delimited files at the
// destination). It needs its own progress (the open hour, per-agent
// sequence high waters to drop re-sent entries) and a rule for when an
// hour is complete; the copy here is segment for segment.
package copier
