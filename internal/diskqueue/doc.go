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
// # Sequence numbers
//
// Every entry gets a sequence number, one more than the previous entry's,
// starting at 1 and never reused once durable: a segment's file name is
// the sequence number of its first record and a record's number is its
// index in the segment plus that. The acknowledged position (the first
// sequence number not yet acknowledged) is persisted, so after a restart
// the reader starts exactly there and re-delivers the unacknowledged
// entries with the numbers they had before.
//
// # Files
//
//	LOCK                    flock held while the queue is open
//	id                      the queue's random 128-bit identity, hex (created once)
//	acked                   the acknowledged position: two 32-byte slots
//	                        {generation u64, seq u64, crc32c u32, 12 zero bytes},
//	                        written alternately, the valid one with the
//	                        higher generation wins (a torn slot write
//	                        leaves the other intact)
//	<seq %020d>.seg         a segment; seq is its first record's number
//
// A segment starts with a 16-byte header, "FWDQ", version u32 (1) and
// the first sequence number u64, then records:
//
//	length u32 | crc32c(payload) u32 | payload
//	payload = received unix ms u64 | uvarint len(category) | category | message
//
// Integers are little-endian; the CRC is CRC-32C (Castagnoli).
//
// # What survives a crash
//
// Append writes a group of records (every caller waiting at that moment:
// group commit) and fsyncs once; it returns only after the fsync, so every
// entry Append accepted survives. A crash in the middle of a write leaves
// a torn tail on the last segment; Open detects it (length, CRC, or a
// record shorter than any valid one, as the zeros a crash can leave are)
// and truncates it with a warning. Those entries were never acknowledged
// to anyone. A new segment is created (header fsynced, directory fsynced)
// only after the previous one was fsynced, so only the last segment can
// be torn. The acknowledged position is fsynced before the segments it
// releases are deleted, so at worst the entries of the last unpersisted
// Ack are delivered again, with the same sequence numbers.
//
// A write or fsync error is sticky: the queue refuses further appends and
// Failed is closed, because after a failed fsync the page cache can no
// longer be trusted to reach the disk. The owner is expected to stop and
// be restarted, which reopens the queue and truncates what was not durable.
//
// A record that fails its CRC inside a sealed segment (bit rot, not a
// crash) cannot be resynchronised past; the reader logs an error, counts
// the entries from there to the segment's end as lost (Stats.Lost), and
// continues with the next segment.
package diskqueue
