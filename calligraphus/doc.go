// Package calligraphus is Freeway's writer tier: a Scribe server that
// routes each entry of a category to a bucket by the category's shard key
// and appends it to that bucket's segment files in the dfs.
//
// Place in the data path: agents (or any Scribe client) → calligraphus →
// dfs <category>/<bucket>/<epoch>-<seq>.seg → ptail → puma, copier.
//
// Its Scribe port has the limits of internal/thriftsrv (max_call_bytes,
// which also bounds a message, max_connections, idle_timeout,
// read_timeout, and the process's in-flight byte budget): a call too
// large, or without room in the budget, is answered TRY_LATER.
//
// Each bucket has one writer at a time, held as a coord lease
// ("calligraphus/<category>/<bucket>"); segment names carry the writer's
// fencing epoch, so a newer writer's segments sort after an older one's.
// A batch is acknowledged only once its bytes are durable: after an fsync
// where the dfs makes synced bytes durable (local disk), after the segment
// is closed and published where it does not (HDFS, which has no hflush
// through colinmarc/hdfs). Writes of concurrent batches to one bucket share
// one sync or publish (group commit).
//
// What survives a crash: every acknowledged entry. On a local disk an
// unpublished segment holds acknowledged entries, so the next owner of the
// bucket salvages it (its valid blocks, under its own name) before writing;
// on HDFS an unpublished segment holds only unacknowledged entries, which
// the sender retries, so it is deleted.
//
// A writer that loses its lease (a session expiry) acknowledges nothing
// written after that, since the new owner may already have salvaged the
// segment; it answers TRY_LATER to what was waiting and takes the bucket
// again, with a new epoch, on the next request if nobody else holds it.
package calligraphus
