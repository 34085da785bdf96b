// Package scribe is Freeway's Scribe agent: the sidecar that applications
// log to, first hop of the data path.
//
//	app ──Log()──▶ agent ──LogBatch()──▶ calligraphus ──▶ dfs ──▶ ptail ──▶ puma
//	                │ disk queue (ack after fsync)
//	      tailed files
//
// # What it does
//
// It serves the Scribe Thrift protocol (service scribe, framed binary,
// strict and non-strict headers, fb303) on Config.Listen, 127.0.0.1:1463
// by default, so any stock Scribe client works unchanged. The port's
// limits (max_call_bytes, max_connections, idle_timeout, read_timeout,
// and the process's in-flight byte budget) are internal/thriftsrv's: a
// call too large, or without room in the budget, is answered TRY_LATER.
// With the process's TLS (tls.cert_file) the port speaks TLS, unless
// agent.tls is false: stock Scribe clients speak no TLS. Log appends the
// entries to a durable local disk queue (package internal/diskqueue) and
// answers OK only once they are fsynced; concurrent calls share one fsync
// (group commit). A call's entries are one queue record (split at 256 KiB
// of entries), Snappy-compressed when that is smaller while the queue
// holds a backlog of agent.queue_compress_above (256 MiB; 0: always) and
// agent.queue_compress is true (the default); agent.max_queue_bytes and
// freeway_agent_queue_bytes count the bytes on disk. A message is never
// answered OK and then dropped.
//
// Every category stock Scribe accepts is queued as it is: any non-empty
// string of any bytes ("web/access", "a b", "_internal", long names). A
// message is bounded only by the size of the call (MaxMessageBytes bounds
// tailed lines, not Scribe entries), less what shipping it adds (see
// Limits). Only an entry with an empty category
// is dropped, as stock Scribe drops it ("received blank category"),
// counted (freeway_agent_entries_rejected_total{reason="empty_category"},
// fb303 "received blank category") and logged rate-limited. What cannot
// be accepted makes the whole call TRY_LATER, and nothing of it is kept:
// the queue holding MaxQueueBytes of unshipped entries, a full or failing
// disk, an entry too large to ship, the agent stopping (counted in freeway_agent_try_later_sent_total
// by reason, logged rate-limited). LogBatch (another agent forwarding, in
// an agent chain) is taken like Log. The agent stamps every entry with
// its own clock as its arrival time, for Log and LogBatch alike (a client
// of this port does not choose arrival times: LogBatch's received_at_ms
// is ignored).
//
// It can follow files like tail -F (Config.Tail, a path each: a pattern
// such as *.log is refused, not waited for): one entry per line, without
// the newline (LF or CR LF), into the same queue. It follows rotation by
// rename (reading the renamed file until it has been idle for
// agent.tail_rotate_wait, 5s: the app writes to it until it reopens its
// log; the new file is read after it, and each file the path names
// meanwhile, also while a full queue holds the tailer up, is held open
// and read in turn) and truncation (a copy copytruncate left beside the
// file is read to its end first), holds a partial last line until its
// newline, splits a line over MaxMessageBytes into pieces of
// MaxMessageBytes (counted in freeway_agent_tail_lines_split_total)
// rather than dropping data, and persists each file's identity and offset
// once the lines before it are durable in the queue, and in the file: it
// fsyncs the file (fdatasync, once a batch, as the queue) before saving
// an offset past what it read, since an app does not, and a machine
// crash would otherwise leave the file shorter than the saved offset
// (taken for truncated: read again from its start) or, the app writing on
// before the agent restarts, with new lines before it (skipped). A file
// that cannot be synced is warned about and its offset saved all the
// same. A file with no saved position is read from its start.
//
// A shipper reads the queue in order and sends it upstream with LogBatch,
// up to Config.MaxInFlight batches in flight (4; each on a connection of
// its own, since a Thrift connection carries one call at a time), to the
// first address of Config.Upstream that answers (the next one on
// connection errors) or, when Upstream is the writers' coordinator URL
// (zk://host:port/root), to the live writers of the layout.WriterMembers
// group in turn, a batch each (watched; a writer that goes away costs
// the batch a retry to the next; with none live the queue is kept,
// freeway_agent_upstream_writers is 0 and the agent is not ready), over
// the process's
// TLS when it has one (verifying the writer against tls.ca_file and the
// address's host, offering the agent's certificate when asked: a writer
// verifying client certificates honours sequence numbers only from
// verified agents). A batch is bounded by
// BatchBytes and BatchEntries (a single larger entry goes alone) and
// carries the agent's id (random, created once in QueueDir), the
// incarnation of the queue run that numbered its entries, and first_seq,
// the queue sequence number of its first entry; entry i of a batch has
// number first_seq+i, and its identity upstream is (agent id,
// incarnation, number). Every start of the agent is a new incarnation
// (random, secret: it is sent upstream and never logged, put in a metric
// or exposed through fb303), so a queue directory restored from a backup
// or copied to a second machine never reuses an identity for another
// entry, and a client that forges a LogBatch with this agent's id cannot
// make Puma drop this agent's entries. Numbers grow by one per entry,
// across restarts. On TRY_LATER or any error the same batch is retried,
// with capped exponential backoff and jitter (RetryMin to RetryMax),
// reconnecting as needed (with a coordinator URL upstream, on another
// live writer once one failed or answered TRY_LATER three times in a
// row: upstreams.go); nothing is ever skipped. Every tenth TRY_LATER in
// a row to one batch is warned about (rate-limited), with the batch's
// first sequence number, entries and bytes: a writer it is too large
// for (over its max_call_bytes) never takes it. Only after OK does the
// queue's acknowledged position advance (fsynced) and fully shipped
// segment files get deleted, and only over the batches, oldest first,
// that were answered OK: a batch answered OK behind one still retried
// waits for it. Batches in flight together may reach a writer in any
// order; Puma's seen-window takes that as long as no entry comes more
// than segment.SeqWindow (131,072; 65,536 in Pumas before it) numbers
// behind a later one, so a batch other than the oldest in flight is sent
// only while it ends at most agent.seq_window numbers past the oldest's
// first (65,536 by default, what every Puma tells apart; up to SeqWindow
// where every Puma is of this version or later). An upstream that answers LogBatch with
// "unknown method" (a stock Scribe server) gets Log instead, which loses
// the deduplication (at-least-once).
//
// # What survives a crash
//
// Everything acknowledged OK to an app: it was fsynced before the answer.
// After a restart the shipper starts at the acknowledged position, so it
// re-sends at most the batches that were in flight, with their original
// incarnation and sequence numbers; calligraphus stores them with the
// entries and Puma drops those it has seen of that agent id and
// incarnation, so from an app's OK to the aggregates the path is
// exactly-once. This relies on no entry reaching a bucket more than
// segment.SeqWindow numbers after a later one, which the bound above
// guarantees, and on a batch sent again reaching the bucket it first
// went to: Puma deduplicates per bucket. A stop (a reload too) therefore
// takes no new batch but waits up to 5s for the answers to the calls in
// progress and acknowledges those answered OK, so that a reload that
// routes the category otherwise (its shard key, bucket count or apps
// changed) has nothing to send again; after a crash, or a stop whose
// calls did not answer in time, a batch sent again under a changed
// route is counted twice. Entries queued by an agent before incarnations existed (a
// v1 queue segment) are sent without one, and keep deduplicating against
// what the old agent shipped. A write torn by a crash (never
// acknowledged) is truncated when the queue opens, with a warning; after
// a machine crash a record of a commit that never completed can survive
// behind a torn one and be delivered (the app, never answered OK, retries
// it: at-least-once for that call), but an acknowledged entry is never
// lost. A record damaged on disk costs only itself (the entries of one
// call, at most 256 KiB of them): it is skipped, its entries counted in
// freeway_agent_queue_lost_entries_total (fb303 agent.queue_lost) and
// logged as an error with its file and offset.
//
// A tailed file resumes at its saved offset: after a clean stop nothing is
// lost or repeated. After a crash, of the process or of the machine (the
// file was synced up to the offset), the lines queued between the queue's
// fsync and the position's save (at most one batch; all those since the
// last save while a full disk refuses the saves) are queued again
// (at-least-once); nothing is lost (but lines a machine crash took from
// the file before the agent read them: the app never synced them). A
// position is saved whole (a
// temporary file fsynced, renamed over the old one, the directory
// fsynced), so a crash, of the process or of the machine, leaves the old
// one or the new one, never a torn one. One damaged otherwise (a bad
// disk, an edit) is ignored with a warning, and the file the path names
// is read from its start: its lines are queued again, and the rest of a
// rotated file being read, and of the files held after it all but the
// one the path names, are not read. If the file was rotated while the
// agent was down, the rotated file is found in the same directory by its
// identity (device and inode) and finished first. So are the files it held
// open to read after it (saved with the position), also when renamed away
// again meanwhile; one that the path still names but whose first bytes
// changed (copytruncate) is read from its start, without the lines it had
// before (only in the copy). A file that has the saved identity but is
// shorter than the saved offset, or whose first bytes (up to 1 KiB)
// differ from those read before (truncated and written again while the
// agent was down, as copytruncate does; or another file given the old
// one's inode), is read from its start
// (freeway_agent_tail_truncations_total), after the rest of its copy when
// copytruncate left one beside it (a file that starts with the same first
// KiB, looked for when the agent had read that much); a start of zeros is
// the hole a writer without O_APPEND leaves in front of its lines after a
// truncation, and the file is resumed at the saved offset (after the rest
// of the copy, if found), the hole's zeros skipped.
//
// A full or failing disk does not stop the agent. A queue write or fsync
// that fails is rolled back and only the calls of that group commit are
// answered TRY_LATER (freeway_agent_queue_write_errors_total); if the
// rollback fails too, every call is answered TRY_LATER
// (freeway_agent_queue_unavailable) until a periodic retry repairs the
// queue. Meanwhile the agent keeps shipping what is durable, which frees
// space as shipped segments are deleted, keeps serving fb303, and retries
// the writes of tail positions and of the acknowledged position. The
// backlog drains and calls are accepted again once there is space.
// Nothing of a call answered TRY_LATER is kept, so the client's retry
// never makes an entry count twice.
//
// # Limits
//
// Truncation is noticed when the file is shorter than what was read, or
// no longer starts with the bytes read (up to 1 KiB); a copytruncate
// rotation refilled past the tailer's offset (between two polls, while a
// full queue holds the tailer up, or while the agent is down) with the
// same first bytes goes unnoticed, as does another file given the old
// one's identity (inode) while the agent is down and starting with them.
// Lines written after the tailer's last read and before a copytruncate
// are only in the copy: it is read on from where the file was read, then
// the file from its start, if it is beside the file and the agent had
// read at least 1 KiB of it (the first KiB tells the copy; less could be
// the start of another file); a copy compressed at once or moved away is
// not read, and lines written between the copy and the truncation are in
// neither (copytruncate's own loss). Zeros where the tailer reads next
// are the hole a writer without O_APPEND leaves after a truncation: they
// are skipped, not sent (the line read before them is sent as it is);
// the copy is looked for only at the first such truncation the agent sees
// (the file's start is zeros after it, which tell no copy), and a log that
// has NUL bytes loses those that a read of the tailer starts with. A
// renamed file that
// is still written to (a process that never reopens its log) holds up the
// new one: files are read one at a time, in order, so the new file's
// lines wait until the old one has been idle for tail_rotate_wait, and a
// log rotated more often than that falls further behind at each rotation
// (lower tail_rotate_wait for it). At most 64 files rotated in behind the
// one read are held open (a warning says when the path names one more):
// a file rotated in after those and renamed away again before its turn
// is not read. The files the path names while the agent is down are not
// seen: one rotated in and renamed away again meanwhile (two rotations)
// is not read, and the rest of one rotated and then compressed or moved
// to another directory while the agent is down is lost (with a warning):
// a rotated file is looked for only beside the path (and, the path a
// symlink, beside the file it named: saved with the position), so with
// logrotate's olddir (or compress without delaycompress) a rotation while
// the agent is down costs the lines it had not read yet. While the agent
// runs it holds the file open, and neither loses anything.
//
// A batch holds whole entries, and an entry larger than BatchBytes is
// shipped alone; an entry larger than the upstream accepts in one call
// cannot be shipped (the shipper retries it), so the upstream's call
// limit must be at least the agent's, and at least BatchBytes (a file
// configuring the writers too is refused otherwise). An entry that fills a call at the
// agent's own limit is refused (TRY_LATER, counted as too_large, logged
// as an error): a batch of it alone, with the agent id, incarnation and
// sequence number (and forwarded between writers, each entry's number),
// would be over that limit by a few hundred bytes at most, and, were it
// acknowledged, every entry queued after it would wait forever.
//
// # Use
//
//	cfg := scribe.DefaultConfig()
//	cfg.QueueDir = "/var/lib/freeway/agent"
//	a, err := scribe.New(cfg, scribe.Deps{Common: component.Common{Log: logger, Metrics: prometheus.DefaultRegisterer}})
//	if err != nil { ... }
//	err = a.Run(ctx) // until ctx ends; the queue is closed when it returns
package scribe
