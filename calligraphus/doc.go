// Package calligraphus is Freeway's writer tier: a Scribe server that
// routes each entry of a category to a bucket by the category's shard key
// and appends it to that bucket's segment files in the dfs.
//
// Place in the data path: agents (or any Scribe client) → calligraphus →
// dfs <category>/<bucket>/<epoch>-<seq>.seg → ptail → puma, copier. Every
// name (directories, segments, leases) comes from internal/layout.
//
// Routing. A category consumed by an app is bucketed by a hash of its
// shard key, the same in every process. For JSON lines the router reads
// the key fields in one pass over the line that builds nothing
// (jsonkey.go), and only as far as the last of them: it gives exactly the
// key the apps' full parse gives for every line the full parse takes (a
// fuzz target holds the two equal); the few lines it cannot read alone go
// to the full parse. A line whose key cannot be read goes to bucket 0 and
// is counted (freeway_calligraphus_entries_unroutable_total): a line the
// full parse refuses before the key's last field. One it refuses only
// after it is placed by that key, like any other: the writer takes every
// line, and Puma refuses and counts the bad ones.
//
// Categories. Every non-empty category is taken, as a stock Scribe server
// takes it: "web/access", "a b", "_internal" and a 10 KB name all get a
// directory, under the reversible encoding of internal/layout (a long one
// is hashed, and its directory gets a sidecar holding the full name). An
// entry without a category is dropped and counted
// (freeway_calligraphus_entries_rejected_total{reason="empty_category"}),
// as stock Scribe drops it; the call is still answered OK.
//
// Any writer takes any entry. Writers join the coord group
// members/calligraphus (layout.WriterMembers) with their id and the Scribe
// address they advertise (calligraphus.listen, or --advertise with its
// port when it binds every interface). A call's entries are grouped by
// bucket, and each bucket's go where its lease holder is: here, or
// forwarded to the holder (coord Holder, then its address in the group).
// A bucket nobody holds goes to its preferred writer (below), which takes
// it. Forwarded entries travel as one LogBatch per holder with
// forwarded=true, the agent id and incarnation, each entry's own sequence
// number (seqs) and the arrival time (received_at_ms); as several, one
// after another, where one would be over max_call_bytes (the sequence
// numbers make a call's entries larger than they were in the call), so
// the holder writes the blocks it would have written had the agent sent
// them there, and Puma's deduplication holds. An entry too large to
// forward even alone (one filling a call at the limit: the forwarded
// fields make it larger) is answered TRY_LATER (too_large) and logged as
// an error, before anything of the call is written or sent. A writer receiving a forwarded batch
// never forwards it again (no loops): it writes it, taking the bucket if
// nobody holds it, or answers TRY_LATER (not_owner) when the holder has
// changed meanwhile; the sender's retry finds the new holder. The call is
// answered OK only once the holders answered OK, that is once the entries
// are durable there, so a sender's next batch cannot overtake it.
// Connections to other writers are pooled (8 per peer at most), time out
// after forward_timeout (all of one call's batches to a holder), and use the process's TLS and certificate: a
// holder verifying client certificates (tls.ca_file) honours forwarded
// agent ids only from a verified peer, like an agent's. A holder's
// address is looked up again after 500ms, or after a failed forward.
//
// Balance. The preferred writer of each bucket is computed alike by every
// writer from the live group: rendezvous hashing of (lease name, writer
// id), bounded so that no writer is preferred for more than ceil(buckets /
// writers) buckets of a category. A writer holding a bucket another live
// writer is preferred for hands it off (at each change of the group and
// every 2s): it publishes the open segment and releases the lease, and
// refuses the bucket for 2s; the next entries reach the preferred writer.
// The buckets of a category an app consumes are all known, so a writer
// takes those it is preferred for and nobody holds without waiting for
// entries (at each change of the group and every 2s), and keeps them
// while idle (idle_close ends only other buckets' writers). A joining
// writer so takes its share, a leaving one (Run ending) leaves the group
// and publishes and releases what it holds, and a dead one's leases and
// membership end with its coord session, after which its buckets are
// taken by their new preferred writers within a rebalance round (other
// categories' on their next entries). A writer restarted with the same id
// cannot join the group until then (a second live process with the same
// id never can: it logs a warning every second); it reads the group all
// the same, forwarding to the holders it sees there, but neither takes
// nor hands off buckets as a preferred writer until it has joined.
//
// A call is all or nothing, as far as the writer can know in advance.
// Its entries are grouped by bucket; the route of every bucket is decided
// (here or forwarded, every forwarded entry checked to fit a forwarded
// batch), every local bucket's capacity (max_pending_bytes) is reserved
// and this process's ownership of every local bucket is checked (taking
// the lease if needed) before any bucket is written or forwarded. So a
// call answered TRY_LATER because one bucket is busy, held by a writer
// that is not live, has an entry too large to forward, or would need a
// writer for one category more than max_categories has written nothing,
// and the sender's
// retry writes nothing twice. What remains: after the check, a bucket's
// write can still fail (a dfs error), its lease be lost, or a forward
// fail (the holder refused, did not answer in time, or changed), while
// another bucket of the same call was written; the call is answered
// TRY_LATER and the retry writes the other bucket's entries again. Puma
// drops those repeats for entries from Freeway's agent (by sequence
// number); a stock client's are counted twice. Every TRY_LATER is counted
// by reason in freeway_calligraphus_try_later_total (busy, not_owner,
// fenced, max_categories, stopping, write_error, forward_error,
// too_large) and logged, rate-limited. Nothing is answered OK and then
// dropped.
//
// Arrival and identity. A stock client's entries (Log) arrive at this
// writer's clock. An agent's batch (LogBatch) arrives at its
// received_at_ms, but never later than this writer's clock, and at this
// writer's clock when it is not positive. A block's Agent is agent_id +
// "/" + incarnation when the batch carries an incarnation (sequence
// numbers restart with each incarnation of the agent's queue), else
// agent_id; Puma deduplicates per that string. The incarnation is never
// logged. When the process verifies client certificates (tls.ca_file),
// a batch keeps its agent id and sequence numbers only if its connection
// showed a verified client certificate: any other batch is taken as from
// a stock client (no Agent, no sequences, this writer's clock), counted
// in freeway_calligraphus_entries_unverified_total and logged,
// rate-limited, since a client free to name any agent id could otherwise
// make Puma drop that agent's entries as repeats. With tls.client_auth
// every connection has one.
//
// Its Scribe port has the limits of internal/thriftsrv (max_call_bytes,
// which also bounds a message, max_connections, idle_timeout,
// read_timeout, and the process's in-flight byte budget): a call too
// large, or without room in the budget, is answered TRY_LATER. With the
// process's TLS (Deps.Shared.TLS, internal/auth) it speaks TLS.
//
// Each bucket has one writer at a time, held as a coord lease
// ("calligraphus/<category>/<bucket>", encoded category); segment names
// carry the writer's fencing epoch, so a newer writer's segments sort
// after an older one's. A batch is acknowledged only once its bytes are
// durable: after an fsync where the dfs makes synced bytes durable (local
// disk), after the segment is closed and published where it does not
// (HDFS, which has no hflush through colinmarc/hdfs). Writes of
// concurrent batches to one bucket share one sync or publish (group
// commit). On HDFS a bucket's writer hands each segment to be closed
// (the slow part: the DataNodes' acknowledgements and the NameNode's
// complete) and goes on writing the next while at most two close;
// batches that arrive while two close wait and share the next segment.
// That next segment is created (a create, an addBlock and a DataNode
// connection) as soon as the one before it is handed to be closed, so
// that the next batch does not wait for a create of its own (one that
// arrives while it is still being created waits for the rest of that
// create, and nothing else is written meanwhile); it holds only its header
// until a batch is written into it, and one left unused for a second,
// or when the writer stops acting under the lease it is named under, is
// removed: one left unused by a goroutine of its own, so that a batch
// arriving meanwhile does not wait for its close (which on HDFS can
// retry for seconds); the writer waits for those before it releases the
// lease or ends, and removes the one named under the lease it stops
// acting under itself, so that the bucket is not taken again while such
// a file is still there. A create ahead that fails (the next batch then
// creates its own segment) is counted in
// freeway_calligraphus_ahead_failures_total and logged rate-limited. A
// close or a rename that fails because a newer owner removed the segment
// as it took the bucket counts as fenced.
// Closed segments are renamed strictly in the order they were written,
// each only while the writer still holds the lease it was written under,
// and a batch is answered OK only once its segment is renamed and counts
// (see the fencing below); a segment whose close fails, or that is left
// from a lease lost or dropped, is removed and its batches are answered
// TRY_LATER. Its readers in the same process (freeway all) are woken
// when a segment is published (a salvaged one too) instead of waiting for
// their next poll.
//
// A segment is published when it holds segment_max_bytes, or once it is
// segment_max_age old, counted from when the writer took its first
// batch (not from when that batch's write returned): 0 (the default)
// lets the dfs choose, 100ms where an fsync acknowledges (a local disk:
// waiting would only keep acknowledged entries from readers), 1s where
// only a close does (HDFS, where every acknowledgement publishes its
// segment anyway).
//
// Bounded writers. A bucket writer (a goroutine, a lease, about 12 KiB)
// that received nothing for idle_close publishes its segment, releases its
// lease and ends (unless it is its preferred writer's bucket of a category
// an app consumes: those are bounded by the configuration); the next entry for the bucket starts a new one, with a
// new epoch. max_categories bounds the categories with running writers:
// a call that needs a writer for one more gets TRY_LATER (reason
// max_categories) until idle writers end, so a client inventing
// categories cannot exhaust the process. Metric series per category stop
// at 1024 categories; later ones share the label "_other".
//
// What survives a crash: every acknowledged entry. On a local disk an
// unpublished segment holds acknowledged entries, so the next owner of the
// bucket salvages it (every valid block, copied under a hidden name of
// the taker's epoch, then renamed to the segment's own) before writing: a
// superseded taker salvaging at the same time never touches the newer
// one's copy, and the next taker removes the copies of crashed ones. One
// damaged where no block can be found (its file header and its first
// block's, as one bad sector can) is set aside as .<segment>.damaged,
// logged and counted (freeway_calligraphus_segments_damaged_total), never
// removed: blocks after may hold acknowledged entries. On
// HDFS an unpublished segment holds only unacknowledged entries, which
// the sender retries, so it is deleted. A running writer that leaves such
// a segment on a local disk (its publish or a write failed, its lease was
// lost) does not wait for the next entry for the bucket, which may never
// come: unless another writer holds the bucket (and so has salvaged it),
// it takes the bucket again itself, every second until that succeeds, and
// ends for idleness (or with the process) only after one try more. Nor
// does a writer that starts over a crashed one's segments: at start, and
// whenever a writer leaves the group (one that dies while others live
// leaves its segments to them), it lists the buckets on a local disk and
// takes each holding an unpublished segment that nobody holds (once the
// crashed writer's session has ended; one held by the same holder for
// over a minute is a live writer's), which salvages it, and releases it
// when idle; calls
// for the bucket meanwhile are refused for what failed the last try
// (write_error for a full disk), not as not_owner. A
// segment left after a failed write or fsync (or a fence check that
// failed after the fsync, the batch refused) is first cut back to its
// size before the refused batch (dfs.Truncater), so that its salvage
// publishes the acknowledged entries and not the refused batch's,
// which its senders write again; if the cut fails too (logged), the
// salvage may publish those as well as their retry.
//
// A writer that loses its lease (a session expiry) acknowledges nothing
// written after that, since the new owner may already have salvaged the
// segment; it answers TRY_LATER to what was waiting and takes the bucket
// again, with a new epoch, on the next request if nobody else holds it
// (on a local disk at once: see above).
//
// Fencing at the storage. Hearing of the loss can come late: a writer
// stalled past its session (SIGSTOP, a long pause) wakes up believing it
// holds its buckets. The dfs has no compare-and-set, but its namespace is
// linearizable, and the protocol of internal/layout/fence.go makes it
// enough. A writer taking a bucket at epoch E creates the fence intent
// <bucket>/.fence/<E, 16 hex>.intent (exclusively), then salvages, then
// lists the bucket and publishes the seal <E>.seal: JSON {"epoch":E,
// "last":[segment names]}, the last segment that counts of each older
// epoch. Readers (layout.Published: ptail, the copier, retention) count
// an older epoch's segment only if the newest seal covers it, and wait
// before one while a newer intent is unsealed. A writer answers OK for a
// published segment (HDFS) only once the same verdict, read after the
// rename, says readers count it: no newer intent (a later owner's listing
// sees the segment), or a newer seal covering it; fenced, it removes the
// segment, answers TRY_LATER (counted as fenced, and in
// freeway_calligraphus_fenced_total) and stops acting as owner. Where an
// fsync acknowledges (local disk), the check follows the sync: a newer
// intent may predate the salvage, so the batch is refused, and its
// segment cut back to before it; one then holding nothing acknowledged
// is removed (it may have been created after the newer owner listed the
// bucket, and nobody would take it up again), another is the newer
// owner's to salvage. A publish whose rename fails because the newer
// owner salvaged the segment counts as fenced too. So a stale
// writer publishes nothing a reader counts, and is never answered OK for
// entries no reader counts; its senders' retries reach the new owner. An
// owner that dies between its intent and its seal holds readers of the
// bucket back until the bucket's next owner seals, which the next entry
// for the bucket brings about.
package calligraphus
