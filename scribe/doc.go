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
// (group commit). When the queue holds MaxQueueBytes of unshipped entries
// it answers TRY_LATER and keeps nothing of that call; it never drops an
// acceptable entry.
//
// Invalid entries are dropped, counted (freeway_agent_entries_rejected_total
// by reason) and logged with their category and size, and the rest of the
// call is accepted: an empty category, a category calligraphus would refuse
// (over 200 bytes or outside [A-Za-z0-9_.-]), or a message over
// MaxMessageBytes. Answering TRY_LATER instead would make a stock client,
// which retries TRY_LATER forever, resend the same poison entry forever.
// LogBatch (another agent forwarding, in an agent chain) is taken like Log.
//
// It can follow files like tail -F (Config.Tail): one entry per line,
// without the newline, into the same queue. It follows rotation by rename
// and truncation, holds a partial last line until its newline, splits a
// line over MaxMessageBytes into pieces of MaxMessageBytes (counted in
// freeway_agent_tail_lines_split_total) rather than dropping data, and
// persists each file's identity and offset once the lines before it are
// durable in the queue. A file with no saved position is read from its
// start.
//
// A shipper reads the queue in order and sends it upstream with LogBatch,
// one batch in flight at a time, to the first address of Config.Upstream
// that answers (the next one on connection errors), over the process's
// TLS when it has one (verifying the writer against tls.ca_file and the
// address's host, offering the agent's certificate when asked: a writer
// verifying client certificates honours sequence numbers only from
// verified agents). A batch is bounded by
// BatchBytes and BatchEntries and carries the agent's id (random, created
// once in QueueDir) and first_seq, the queue sequence number of its first
// entry; entry i of a batch has number first_seq+i. Numbers start at 1 and
// grow by one per entry forever, across restarts. On TRY_LATER or any
// error the same batch is retried, with capped exponential backoff and
// jitter (RetryMin to RetryMax), reconnecting as needed; nothing is ever
// skipped. Only after OK does the queue's acknowledged position advance
// (fsynced) and fully shipped segment files get deleted. An upstream that
// answers LogBatch with "unknown method" (a stock Scribe server) gets Log
// instead, which loses the deduplication (at-least-once).
//
// # What survives a crash
//
// Everything acknowledged OK to an app: it was fsynced before the answer.
// After a restart the shipper starts at the acknowledged position, so it
// re-sends at most the batch that was in flight, with its original
// sequence numbers; calligraphus stores them with the entries and Puma
// drops what is at or below each agent's high-water mark, so from an app's
// OK to the aggregates the path is exactly-once. This relies on each
// agent's entries reaching a bucket in increasing order, which the single
// batch in flight guarantees. A write torn by the crash
// (never acknowledged) is found by its length and CRC and truncated when
// the queue opens, with a warning.
//
// A tailed file resumes at its saved offset: after a clean stop nothing is
// lost or repeated. After a crash, the lines queued between the queue's
// fsync and the position's save (at most one batch) are queued again
// (at-least-once); nothing is lost. If the file was rotated while the
// agent was down, the rotated file is found in the same directory by its
// identity (device and inode) and finished first.
//
// A disk write or fsync error stops the agent (Run returns it): after a
// failed fsync the page cache cannot be trusted. The restart truncates
// whatever was not made durable.
//
// # Limits
//
// Truncation is detected only if the file is shorter than what was read
// when it is next polled; a copytruncate rotation that is refilled past
// the old offset within one poll interval goes unnoticed (as with tail -F).
// A file identity (inode) reused by another file while the agent is down
// makes the agent resume that file at the saved offset.
//
// # Use
//
//	cfg := scribe.DefaultConfig()
//	cfg.QueueDir = "/var/lib/freeway/agent"
//	a, err := scribe.New(cfg, logger, prometheus.DefaultRegisterer)
//	if err != nil { ... }
//	err = a.Run(ctx) // until ctx ends; the queue is closed when it returns
package scribe
