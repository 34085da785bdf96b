// Package puma keeps Freeway's aggregations: in-memory hash tables of
// (app, window, group key) → aggregate states, fed by ptail from the
// bucket files and checkpointed to the store.
//
// Place in the data path: dfs bucket files → ptail → puma shard →
// store (checkpoints) and serving (queries).
//
// A shard is one bucket of one category; it aggregates for every app that
// consumes the category. A node owns a shard through a coord lease
// ("puma/<category>/<bucket>").
//
// Exactly-once. A shard's checkpoint is committed atomically: the changed
// cells are written with the checkpoint's epoch as their store timestamp,
// then one commit row (epoch, ptail position, per-agent sequence high
// waters, watermarks) is written with CheckAndPut against the previous
// commit, which also fences off a stale owner. Recovery reads the commit
// row, deletes any cell versions newer than its epoch (an attempt that
// never committed), loads the cells as of the epoch and resumes ptail at
// the committed position. Entries from Freeway's agent carry sequence
// numbers; an entry at or below its agent's high water was counted already
// and is skipped, so retried batches are not counted twice. Entries from
// stock Scribe clients have no sequence and are counted once per copy
// that reaches the dfs.
//
// What survives a crash: everything up to the last commit; what came after
// is read again from the bucket files.
package puma
