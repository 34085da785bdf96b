// Package puma keeps Freeway's aggregations: in-memory hash tables of
// (app, window, group key) → aggregate states, fed by ptail from the
// bucket files and checkpointed to the store.
//
// Place in the data path: dfs bucket files → ptail → puma shard →
// store (checkpoints) and serving (queries).
//
// Aggregates and windows. The functions are internal/agg's: count, sum,
// min, max and avg keep fixed float slots in a cell (the fast path);
// count_distinct, topk, percentile, first and last a variable-size state
// each, which merges (a query's rows merge the cells of their windows,
// keys and shards), and is stored and read back exactly. An app may have
// several window lengths (windows: [1m, 1h]): a line goes to one window
// of each, all or none of them (a line that would need a new cell beyond
// puma.max_cells in any is refused in all). Each length is a span of the
// app's table with its own rows in the store, under the fingerprint of
// its state's shape (window length, group key, aggregates and the
// parameters that shape them: topk's k), so that an app that adds a
// window keeps the cells of those it had. A query reads one span: the
// app's shortest windows by default; window=L reads the span of length L,
// or rolls up the longest span that divides L; window=all reads the
// longest span whose windows cover the range exactly (both ends on its
// boundaries), else the shortest. A stored cell is a format byte (1: the
// fixed slots only, as before the variable states, so that the cells of
// such apps read both ways; 2: the slots, then each state, its length
// first) and is bounded (agg.MaxCellBytes) so that one fits a store
// request.
//
// Backfill (backfill.go). A span the shard's commit row does not list as
// built (an app added, or changed so that a window's state has another
// fingerprint), and every span of an app that now reads its lines
// otherwise (its where filter, time field, format or pattern changed: the
// commit row's reads, by app; cells of the same shape holding other
// lines; a where filter only written otherwise, in white space, quotes or
// parentheses, is no change: reads_form), is built from the bucket's segments still in the dfs by a
// backfill: its own reader from the first segment, its own dedup high
// waters and watermark; live lines skip the span until the backfill
// reaches the shard's position and joins. Its cells are checkpointed
// with the shard's, its progress is in the same commit row (backfill), so
// a restart resumes it exactly once. Rows of spans no app has any more
// are deleted after the next commit (removed, in the commit row, until
// done). A commit row without spans (older code) takes every span as
// built. A backfill that starts after retention deleted segments gives
// its app a gap of its own (app_gaps): answers list the shard as
// incomplete for that app. Until a backfill joins, answers over its
// spans list the shard as incomplete (memory and store alike: a commit
// row that does not list the span as built). Puma.AppState says whether
// an app is live or backfilling.
//
// A shard is one bucket of one category; it aggregates for every app that
// consumes the category, parsing each line once for the apps that read
// lines alike (apps.ParseGroups; parse.go) rather than once per app. A node owns a shard through a coord lease
// ("puma/<category>/<bucket>", the category encoded by internal/layout),
// and runs it only while it holds the lease: the shard stops when the
// lease is lost.
//
// Balance (balance.go). A node with a query listener (puma.listen; its
// advertised address in Deps.Advertise) joins layout.PumaMembers and
// spreads the shards over the live members: every node computes the same
// preferred member for each shard (rendezvous hashing of lease name and
// member id, bounded so that none is preferred for more than its share
// rounded up). A node takes the shards it is preferred for, stands by for
// the others (state elsewhere), and takes one whose lease nobody has held
// for puma.takeover_grace (a dead node's shards: within the session
// timeout plus the grace). A node preferred for a shard another node
// holds asks for it (joins the ephemeral group layout.PumaWants of the
// shard, until it runs the shard or is no longer preferred), and a shard
// preferred elsewhere is handed off only to a preferred member that asks:
// its run stops, takes its final checkpoint, and releases the lease, so
// that the new owner resumes where this one had read. A member that never
// asks (hung) is never handed a shard. freeway_puma_shards_owned and
// freeway_puma_handoffs_total count them. A node without a listener
// (`freeway all`) takes every shard it can.
//
// Partial states (partial.go). Partial answers a query over some buckets
// before order and limit: the merged rows of those shards, each cell in
// its stored form; MergePartials merges partials of disjoint shards and
// then orders and limits, so that serving's fan-out answers exactly what
// one node with every shard would. PartialHandler serves them on
// puma.listen (POST PartialPath, JSON; behind the process's TLS and query
// tokens): a shard asked for but not running here is listed in Missing,
// for serving to read from the store. The same port answers GET AppsPath
// with the node's app reports (appreport.go: state, memory, rejections;
// Handler serves both), which a standalone serving merges for its
// /api/v1/apps.
//
// Exactly-once. A shard's checkpoint is committed atomically: an attempt
// marker records the epoch about to be written, then the changed cells are
// written with the checkpoint's epoch as their store timestamp, then one
// commit row (epoch, ptail position, per-agent sequence high waters,
// watermarks) is written. The marker and the commit are both CheckAndPut
// against the previous commit value. Recovery claims the shard by
// rewriting that value (with its owner and lease epoch), so that a stale
// owner can neither start an attempt nor commit one afterwards; it then
// reads the attempt marker, with its claim still standing (else it
// stops), and deletes the cell versions above the committed epoch up to
// that marker (attempts that never committed; not beyond it, so that a
// recovery stalled there cannot delete the cells of an owner that claimed
// the shard after it), loads the cells as of the epoch and resumes
// ptail at the committed position. A failed attempt is retried at the
// same epoch, overwriting its own versions, unless one of its Puts
// failed: that Put may still land (the HBase gateway applies a put it
// received after its caller gave up), over the retry's newer values if
// they had the same epoch; the retry then deletes the failed attempt's
// versions and writes at the next epoch, which its commit lists as
// aborted (below). A commit that fails is looked for in the commit row
// (a reply lost); if it is not there it may still land, over the
// retry's cells or after their purge: the next attempt first rewrites
// the commit value that commit expects (unchanged but for a fence
// count), so that it never can, and then purges and writes at the next
// epoch; if the commit landed first, the shard stops and recovers from
// it. The marker and the cells are
// written by a goroutine of the checkpoint's own (cellwriter.go) while
// it is still taking the changed cells under the shard's lock, in Puts
// of 64 Ki cells in row order; the commit waits for the last Put, and
// any failure marks every cell taken changed again. A chunk waits for
// the writer as taken (values, windows and views of the windows' key
// bytes), and a goroutine of the writer builds its rows while the chunk
// before is being put; at most sixteen chunks (1 Mi cells) wait besides
// the one being put and two being built: a taker that finds the queue
// full waits for the store (with the lock held, so a shard's applies
// wait as well), so that a checkpoint of more changed cells holds about
// sixteen chunks rather than all it took in their store form. After a checkpoint or a
// recovery of at least 256 Ki cells the heap's free pages go back to
// the OS at once (debug.FreeOSMemory, at most once every 30 s for all
// the node's shards: each is a collection, and the pages are faulted in
// again as the heap grows back): its transient memory would otherwise
// stay resident for tens of seconds or more. Windows dropped
// by retention are deleted from the store after the commit that drops
// them; a crash or a failed delete leaves their rows to a later
// checkpoint (a new owner's first), so every read of the store (recovery,
// the evicted windows of an answer from memory, Committed) skips the
// windows retention drops under the watermark it reads with, and no
// answer shows them.
//
// Fencing a stale owner's cells. An attempt that a stale owner had
// already marked before the new owner's claim may still be writing cells
// after the new owner's purge (a process stalled past its session
// timeout): plain puts to cell rows, which nothing at the store can
// refuse. They are written at the attempt's epoch, and that epoch was
// begun and never committed: the new owner starts above every marked
// attempt, and each commit lists the epochs between it and the commit
// before it as aborted (the commit row's "aborted" ranges, carried from
// commit to commit, the last 1024 of them). Every read as of a commit
// (recovery, Committed) replaces a version at an aborted epoch by the
// newest one below it (fence.go), so a stale owner's cells never show in
// the new owner's state nor in an answer from the store, however late
// they land. TestStaleOwnerFenced stalls an owner after its marker, lets
// another claim and commit, resumes it, on bbolt and HBase. A recovery
// purges only up to the last attempt it read marked after its claim, so
// that one stalled there deletes nothing a later owner committed; the
// claim of a shard without a commit row marks the newest version stored
// under it as attempted (a state lost with its commit row), for the same
// bound (TestStaleRecoveryPurgeFenced).
//
// Deduplication. Entries from Freeway's agent carry sequence numbers, and
// each block names its sender: "agent_id/incarnation", the incarnation
// being a secret of the run of the agent's queue that numbered the
// entries, or "agent_id" alone from older agents. A shard keeps a high
// water per such key (keys over 128 bytes, or not UTF-8, are kept as the
// agent id and a hash), the highest number seen, and which of the
// segment.SeqWindow (131,072; 65,536 before this version) numbers below it were seen (a seen-window,
// window.go): agents keep several batches in flight, so one stream's
// entries may reach a bucket out of order (a batch retried after the
// next one was written). An entry seen already is skipped, so retried
// batches are not counted twice; one not seen is counted, whatever its
// order; one further below the high water than the window is taken as a
// re-send unchecked (agents never let a first copy come that late;
// counted in freeway_puma_dedup_below_window_total as well as in
// freeway_puma_duplicates_total). A key whose entries all came in order
// keeps no window. Only the agent id, before the first "/", is ever logged. A new
// incarnation whose first entry is at or below the high water of another
// incarnation of the same agent id (a queue restored from a backup, or
// copied to a second host) is counted in freeway_puma_sequence_regressions_total
// and logged; its entries are counted under their own key, never dropped
// for it, and a forged block cannot suppress another incarnation's
// entries. The keys are bounded, so that made-up agent ids cannot bloat
// the commit row every checkpoint rewrites: a key not seen for
// puma.dedup_horizon (7d), measured in block arrival time so that a replay
// of old segments behaves as the first reading did, is forgotten at a
// checkpoint, and beyond puma.max_agents_per_shard keys the least recently
// seen are forgotten at once. What that costs: an entry re-sent after its
// key was forgotten is counted again (at-least-once for that entry);
// freeway_puma_dedup_keys_forgotten_total counts the keys. Entries from
// stock Scribe clients have no sequence and are counted once per copy
// that reaches the dfs. A key is kept as the agent sent it only if JSON
// writes it byte for byte and it is at most 128 bytes; any other is kept
// as its agent id, clipped, with the characters JSON escapes as '?', and
// a hash of the whole (dedupKey), so that a key costs at most 165 bytes
// of each high-water map of the commit row (the shard's, and one per
// backfill). Keys the code before kept as sent with such characters are
// hashed on recovery, their windows carried over (storedKey); the code
// before, run again, keeps such an agent's entries under the key as sent,
// and counts again what it re-sends around the downgrade. The commit row
// keeps the high waters in the map
// the code before wrote (high_water), with the keys' last-seen times in a
// list beside it, so that either version reads the other's rows. A key's
// window is a row of its own (d/<category>/<bucket>/<key>, up to 16 KiB;
// rows of the 65,536-number window of older versions read as such),
// written like a cell at the epoch of a checkpoint that changed it, read
// as of the committed epoch and deleted after the commit that forgets its
// key (a backfill keeps its own, under d/<category>/<bucket>/0xff<app>/);
// a key without one (rows of the code before windows) counts every
// number up to its high water as seen. The code before reads the commit
// rows of this one and ignores the windows (so, downgraded while agents
// kept several batches in flight, it could skip entries that came out of
// order).
//
// Bad lines. No single line can move an app's watermark far: an event
// time more than the app's max_future ahead of its block's arrival time
// (or of this node's clock, when the arrival time is later or missing) is
// rejected (reason future), and so are event times that are not a moment
// after 1970 in int64 ms (bad_time: NaN, zero, negative, overflowing).
// A rejected line changes nothing but the counters: not the watermark,
// not a cell, so retention cannot drop windows because of it. A watermark
// committed in the future by an older version is reset on recovery to the
// latest window loaded. Every line not aggregated is counted in
// freeway_puma_records_dropped_total by app and reason, logged
// (rate-limited, clipped) and kept as a sample: the last SamplesPerReason
// lines per app and reason, clipped, with the reason and the error
// (Puma.Rejections, and GET /api/v1/apps).
//
// Memory. puma.max_cells bounds the cells a node holds over all its
// shards and apps (a cell is one window of one length × group key). Once
// reached, a line that would create a new cell is refused (reason
// max_cells), while existing cells keep aggregating; the refused line
// still moves the watermark, so that retention frees room as time goes
// on. puma.memory_limit (0: none) refuses new cells the same way once
// the approximate bytes below reach it, and an app's max_cells (0: none)
// bounds that app's cells over the node's shards; the sample's error
// names the bound. Before a line is refused, closed windows are evicted
// to make room (evict.go): a window that ends at or before the last
// commit's watermark minus the allowed lateness is closed (no on-time
// line can land in it again) and committed; a checkpoint evicts its
// shard's closed windows when the node (or an app) is at 3/4 of a bound,
// and a line that finds no room evicts its shard's closed windows first.
// Each table keeps one horizon: windows that end at or before it are in
// the store only, the others in memory only; Query reads the first from
// the store as of the shard's committed epoch. The horizon is in the
// commit row (evicted_ms); recovery loads only the windows after it (the
// committed cells after it whole, even beyond the bounds) and takes any
// line before it as late, whatever the watermark (an allowed_lateness
// raised since leaves it as it was), so that no evicted window is opened
// again and overwritten. Bytes are counted
// approximately (Puma.Cells, Puma.Memory, freeway_puma_cell_bytes): a
// fixed overhead per cell and key, and the stored size of its variable
// states at their last checkpoint (or load); and, beside the cells, the
// shards' agent dedup state (a key, and its 16 KiB seen-window once its
// entries came out of order: freeway_puma_dedup_bytes, Puma.DedupBytes),
// which puma.memory_limit bounds with them. Dedup state is never refused
// nor forgotten to make room (that would count re-sends twice): when it
// fills the limit, new cells are refused (max_cells); it is bounded by
// max_agents_per_shard and dedup_horizon. The cells a backfill builds
// count with its app's (freeway_puma_cells, the bounds) from the start;
// a shard that stops, or fails to recover, gives back what it was
// charged, its backfills' cells and dedup state included.
//
// Stalled reading (stall.go). A dfs error while reading a bucket is
// retried from the same position with a back-off, never skipped; while
// it lasts (a checksum error until the dfs repairs the block) the
// shard's Status.ReadStalls, freeway_puma_read_stalled_seconds and
// freeway_puma_shards_read_stalled show it stuck, and the log names the
// file and offset, at most once a minute.
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
// fails. A shard that commits so often while its cells are read that the
// store may no longer keep a cell's version as of the commit read
// (store.MinVersions, an attempt in flight counted) is read again as of
// its newer commit; after three such reads it is listed as failed. A limit is applied without sorting every row: with one row per
// window and no OrderBy, windows are merged oldest first until the limit
// is reached; otherwise a bounded heap keeps the first rows (with OrderBy,
// by the aggregate's value: a top-N). When each row is one cell (the
// app's key, its windows, one shard) the heap takes the cells as they
// are read, and a row is built only for a cell that enters it (the rows
// become a heap only once they reach the limit: a limit at least the
// cells read, as max_rows is for a query without one, sorts once); ordered
// by a count, sum, min or max without a where, a window's slot array is
// read in one loop that passes by a cell worse than the heap's top on its
// value alone. Where
// filters the cells on their group keys before they are merged; a where
// that fixes every group key looks its keys up in each window instead of
// testing every cell (the store's evicted windows are scanned and
// filtered). Every answer says how recent it is
// (Result.AsOf): the time of its data (memory: when it was read; store:
// the oldest commit of the shards that answered) and the app's watermark.
// ShardStatuses adds to Statuses the owner of shards held elsewhere (asked
// of the coordinator); Committed.ShardStatuses reads the shards' last
// commits from the store.
//
// What survives a crash: everything up to the last commit (cells of every
// span with their sketches, position, high waters with their last-seen
// times and windows, watermarks, eviction horizons, backfills' progress); what came after is read again from the bucket files,
// and since a state reads back exactly as it was, the answers are those
// the node would have given without the crash. Counters and samples of
// rejected lines live in memory only.
//
// A lost or damaged store (the embedded one moves a damaged file aside
// and starts afresh) is rebuilt from the dfs: with no commit row a shard
// starts at the first segment of its bucket and re-reads them all,
// deduplicating as it did the first time. That is exact only while the
// dfs still holds every segment of the bucket, and segment retention
// (dfs_retention, internal/retention) deletes the segments every consumer
// is past. So a shard that recovers without a commit row, or with one
// whose segment is at or before its bucket's retention mark (a store
// restored from an old backup), knows that segments it needs are gone:
// it runs on what is left, and says so rather than presenting partial
// totals as whole. Its Status.Incomplete names the last segment lost and
// the time its lines arrived by; answers from memory and from the store
// list the shard in Missing with state "incomplete" (its data is in the
// answer) whenever the query reaches windows starting before that time
// plus the app's max_future (and a minute for clocks); answers over later
// windows are whole. The same holds for a segment that vanished before
// the shard read it (ptail reports it; counted in
// freeway_puma_segments_lost_total). The gap is kept in the commit row
// (gap), so a restart does not forget it.
//
// Retention reads the commit rows (CommittedPosition) and deletes no
// segment at or after a shard's committed position, so a shard
// recovering from its checkpoint always finds its segment.
package puma
