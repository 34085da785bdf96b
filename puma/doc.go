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
// Exactly-once. A shard's checkpoint is committed atomically: an attempt
// marker records the epoch about to be written, then the changed cells are
// written with the checkpoint's epoch as their store timestamp, then one
// commit row (epoch, ptail position, per-agent sequence high waters,
// watermarks) is written. The marker and the commit are both CheckAndPut
// against the previous commit value. Recovery claims the shard by
// rewriting that value (with its owner and lease epoch), so that a stale
// owner can neither start an attempt nor commit one afterwards; it then
// deletes any cell versions newer than the committed epoch (an attempt
// that never committed), loads the cells as of the epoch and resumes
// ptail at the committed position. A failed attempt is retried at the
// same epoch, overwriting its own versions. Windows dropped by retention
// are deleted from the store after the commit that drops them.
//
// What the store cannot fence: an attempt that a stale owner had already
// marked before the new owner's claim may still be writing cells, at an
// epoch below the new owner's, after the new owner's purge; those versions
// would show through the new owner's later commits. Ownership leases are
// what keeps that window closed in practice (a stale owner stops when its
// session expires, before the lease can be granted again). Entries from Freeway's agent carry sequence
// numbers; an entry at or below its agent's high water was counted already
// and is skipped, so retried batches are not counted twice. Entries from
// stock Scribe clients have no sequence and are counted once per copy
// that reaches the dfs.
//
// Shard states. A node keeps, for every shard of its apps, a state
// (Statuses): recovering (taken here and loading its committed state, or
// not tried yet), running, failed (the last attempt to take, recover or
// run it failed: the error, when, how many times in a row; Run tries it
// again after 2s, doubling up to a minute, so that a shard that cannot
// recover logs a line a minute), or elsewhere (another node holds its
// lease). Readiness is not ready while a shard is recovering or failed,
// or held by nobody, and names those shards; /readyz shows it, and
// freeway_puma_shards{state} counts the shards in each state.
//
// Answers. Query answers from the memory of the shards running here. A
// shard of the app's category that is not (recovering, failed, elsewhere)
// is listed in Result.Missing with its state and error: an answer that
// lacks data says so, never a silent fraction. Committed answers from the
// store: a shard whose commit row or cells cannot be read or decoded is
// left out whole and listed as failed; one that never committed has no
// committed state and is not missing; when no shard can be read the query
// fails. A limit is applied without sorting every row: with one row per
// window, windows are merged oldest first until the limit is reached;
// otherwise a bounded heap keeps the first rows.
//
// What survives a crash: everything up to the last commit; what came after
// is read again from the bucket files. A lost or damaged store (the
// embedded one moves a damaged file aside and starts afresh) is rebuilt
// exactly: with no commit row a shard starts at the first segment of its
// bucket and re-reads them all, deduplicating as it did the first time.
// That holds while the dfs still holds every segment, which it does as
// long as nothing deletes segments (there is no segment retention yet; one
// must keep the checkpoints' segments or give up this rebuild).
package puma
