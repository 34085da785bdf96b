// Package diskqueue is the agent's durable local queue: an append-only log
// of Scribe entries on the local disk, split into segment files, read in
// order by one consumer that acknowledges what it has shipped.
//
// # Where it sits
//
// Apps log to the agent (package scribe); the agent appends their entries
// here and answers OK only once Append has returned, that is once the
// entries are fsynced. The agent's shipper reads the queue in order, sends
// batches upstream to calligraphus and acknowledges them; acknowledged
// segments are deleted.
//
// # Identity: queue id, incarnation, sequence number
//
// An entry's identity upstream is (queue id, incarnation, sequence
// number). The queue id is random, created once with the directory, and
// may be logged. The incarnation is a random 128-bit id drawn from
// crypto/rand at every Open: Open starts a new segment whose header
// carries it, fsynced with the directory before any append is accepted.
// Entries keep the incarnation of the segment they were appended to, so
// after a restart the unacknowledged entries are read again with their
// original incarnation and sequence numbers (a re-sent entry is
// recognised as such) while new entries carry the new one; Read never
// returns a batch spanning two incarnations (Batch.Incarnation). A queue
// directory restored from a backup, or copied (a VM image) and run twice,
// therefore never gives two different entries one identity. The
// incarnation is a secret (a client that knew it could forge entries
// Puma would take for this queue's): it is never logged, never in an
// error, and leaves the package only in Batch.
//
// Sequence numbers start at 1 and grow by one per entry; a number handed
// out by a successful Append is never reused. The acknowledged position
// (the first sequence number not yet acknowledged) is persisted, so after
// a restart the reader starts exactly there.
//
// # Files
//
//	LOCK                    flock held while the queue is open
//	id                      the queue's random 128-bit identity, hex (created once)
//	acked                   the acknowledged position: two 32-byte slots
//	                        {generation u64, seq u64, crc32c u32, 12 zero bytes},
//	                        written alternately, the valid one with the
//	                        higher generation wins (a torn slot write
//	                        leaves the other intact); both slots are
//	                        allocated at open, so that acknowledging never
//	                        needs disk space
//	<seq %020d>.seg         a segment; seq is its first record's number
//	<seq %020d>.seg.tmp     a segment being created (removed at open)
//	spare-<seq>.seg.tmp     an acknowledged segment's file, kept to be
//	                        reused as the next segment (removed at open)
//
// Format v3 (written now). A segment starts with a 36-byte block written
// twice (a damaged copy costs nothing):
//
//	"FWDQ" | version u32 (3) | first seq u64 | incarnation [16] | crc32c(the 32 bytes before) u32
//
// then records, one per Append call (a call of more than 256 KiB of
// entries is split into records of at most that much, or of one larger
// entry):
//
//	length u32 | first seq u64 | count u32 | flags u32 | crc32c(K || body) u32 | crc32c(K || the 24 header bytes before) u32 | body
//	body     = entries, Snappy-compressed (block format) if flags & 1
//	entries  = count × (received unix ms u64 | uvarint len(category) | category | uvarint len(message) | message)
//
// The record holds the entries first .. first+count-1. With
// Options.Compress, while at least Options.CompressAbove bytes are
// unacknowledged (a backlog, read back from disk; below it the reader
// takes records from memory and compressing would only cost CPU), the
// body is compressed when that makes it smaller (s2's Snappy-compatible
// encoding), before the caller takes the queue's
// lock, so that concurrent callers compress in parallel. K is the
// segment's incarnation: a record verifies only in a segment of its own
// run, and bytes a client chose (a message that embeds something shaped
// like a record) do not pass for one when the reader scans for the next
// valid record after damage. The body CRC is over the bytes on disk, so
// damage is found before anything is decoded, and the decoded length (the
// compressed block's own header) is checked against MaxRecordBytes before
// anything is allocated for it. A body holds at most MaxRecordBytes
// (256 MiB + 1 MiB: a Scribe call may be 256 MiB), encoded or decoded.
//
// Bytes are counted as they lie on disk: Options.MaxBytes bounds, and
// Stats.Bytes reports, the unacknowledged records with their headers,
// compressed; a record counts until its last entry is acknowledged. A
// batch's size (Read's maxBytes) counts its entries decoded (RecordSize),
// whatever they take on disk: it bounds what the consumer holds and
// sends.
//
// Format v2 (earlier versions; still read, never written): v2's segment
// header is v3's with version 2; each record is one entry:
//
//	length u32 | seq u64 | crc32c(K || payload) u32 | crc32c(K || the 16 header bytes before) u32 | payload
//	payload = received unix ms u64 | uvarint len(category) | category | message
//
// A segment holds records of one format; a queue upgraded from v2 holds
// v2 segments followed by v3 ones, read in order.
//
// Format v1 (earlier versions; still read, never written): a 16-byte
// header "FWDQ" | version u32 (1) | first seq u64, then records
// length u32 | crc32c(payload) u32 | payload, numbered by position. Their
// entries have incarnation "", so that an upgraded agent's re-sent
// entries keep deduplicating against what the old one shipped.
//
// Integers are little-endian; the CRC is CRC-32C (Castagnoli).
//
// # What survives a crash
//
// Open makes the queue directory, if missing, with its missing parents,
// fsyncing the parent of each, so that the directory's name is as
// durable as the segments in it. Append writes a group of records (every
// caller waiting at that moment: group commit) and fsyncs once; it
// returns only after the fsync, so every entry Append accepted survives. A new segment is created under a
// temporary name, its header fsynced, renamed, and the directory fsynced,
// so a segment file always has its whole header; it is created only after
// the previous segment was fsynced, so only the last segment can have a
// torn tail. The acknowledged position is fsynced before the segments it
// releases are deleted, so at worst the entries of the last unpersisted
// Ack are delivered again, with the same identity.
//
// At open the last segment is scanned. A bad record (length, CRCs,
// sequence number, or cut short) with nothing valid after it is a torn
// tail, written after the last fsync and never acknowledged: it is
// truncated with a warning. A bad record followed by valid ones is damage:
// it is skipped and the rest kept. After a machine crash the pages of one
// group commit can reach the disk out of order, so a record of a commit
// that never completed (never acknowledged to its caller, who will retry)
// can survive behind a torn one and be delivered: an unacknowledged
// record can be delivered, an acknowledged one is never lost. The same
// holds if the process dies while a rollback (below) is pending.
//
// # Damage
//
// A record that fails its checks costs only itself: in v3 the entries of
// one Append call (at most 256 KiB of them), in v2 one entry. A damaged
// record is resynchronised past by scanning for the next valid record:
// header CRC, plausible length, sequence numbers above the last good one
// and below the segment's end, body CRC (in v2, a damaged payload under
// a valid header is skipped exactly: the header CRC vouches for the
// length). A v3 record is checked whole, its body decoded and its
// entries counted, before any of its entries is delivered. The entries
// in between are counted exactly (Stats.Lost, from the sequence numbers)
// and logged as an error with the file and offset. This holds in sealed
// segments and in the last one at open. A v1 record carries neither its
// number nor a header CRC: damage in a v1 segment loses the rest of that
// segment (counted exactly from the next segment's first number). A v2 or
// v3 segment whose two header copies are both damaged loses its entries if
// sealed; if it is the last one, Open refuses it (move it away to start).
//
// # Reading back what was just written
//
// The reader usually reads records a few milliseconds after their group
// commit wrote them. A commit therefore keeps its buffers, once their
// fsync has succeeded, with the segment and offset they were written at
// (up to 8 MiB; mem.go), and the reader takes such a buffer instead of
// reading the file when its next read starts exactly there: they are the
// file's bytes. A failed commit's
// buffers are never kept; a reader further behind, and every read after
// a restart, reads the files. A buffer goes back to the appenders once
// every entry it holds is acknowledged. Records taken from such a buffer
// are not CRC-checked again: this process encoded them into it and
// nothing has written it since; lengths, sequence numbers and the
// body's structure are (a compressed body is decoded as always). The
// buffers are 256 KiB each: up to 8 MiB kept for the reader, and up to
// 32 free ones (8 MiB) for the appenders.
//
// The reader decodes compressed records, one after the other, into
// buffers of 1 MiB (a larger record: one of its size) and hands out
// entries where they lie, as it does from the buffers it reads files
// into. A buffer is reused once every entry it holds is acknowledged;
// only buffers of the usual size are kept for reuse (at most 4), so a
// large record's memory goes back to the garbage collector.
//
// # Write errors and a full disk
//
// A write or fsync error in a group commit rolls the files back to their
// durable state: segment files the commit created are removed, the last
// segment is truncated to its last durable size and fsynced. Only that
// group's callers fail (nothing of theirs remains); callers whose records
// were still pending append again. The reader never reads past the
// durable size of the last segment, so it never sees rolled-back bytes.
// If the rollback itself fails, Append returns ErrUnavailable at once and
// retries the repair every Options.RetryInterval (the files stay as they
// are until then); reading and acknowledging go on meanwhile, and deleting
// acknowledged segments frees space. Close tries the repair once more, so
// that only a crash can leave a failed commit's records to the next Open. If Open cannot start its segment
// (a full disk), it opens all the same in that state. Options.FileHook
// injects such faults in tests.
package diskqueue
