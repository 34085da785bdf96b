// Scribe, wire-identical to Facebook's scribe.thrift: service "scribe",
// Log(1: list<LogEntry>), LogEntry {1: category, 2: message}, ResultCode
// {OK, TRY_LATER}. Any stock Scribe client works unchanged against Freeway.
//
// `binary` is the same as `string` on the wire; it spares a copy of every
// message into a Go string.
//
// LogBatch is Freeway's extension, used by its own agent: the same entries
// plus the agent's identity and the sequence number of the first entry, so
// that a retried batch can be recognised downstream. Stock clients never call
// it.

include "fb303.thrift"

namespace go scribe

enum ResultCode {
  OK = 0,
  TRY_LATER = 1,
}

struct LogEntry {
  1: string category,
  2: binary message,
  // Sent by some later Scribe forks; accepted and ignored.
  3: optional map<string, string> metadata,
}

struct Batch {
  // Stable identity of the sending agent (kept in its data directory).
  1: string agent_id,
  // Sequence number of messages[0]; entry i has sequence first_seq + i.
  // Sequence numbers of one agent increase by one per entry, forever.
  2: i64 first_seq,
  3: list<LogEntry> messages,
  // When the agent accepted messages[0], Unix milliseconds. A writer
  // never takes a time ahead of its own clock from it.
  4: i64 received_at_ms,
  // A secret random id of the run of the agent's queue that numbered these
  // entries (a new one at every start, so a restored or copied queue
  // directory never reuses numbers under the same identity). Entries are
  // deduplicated per (agent_id, incarnation). Never logged. Agents before
  // it was added leave it unset: agent_id alone is then the identity.
  5: optional string incarnation,
  // Set by a writer forwarding entries to the writer holding their
  // bucket: the sequence number of each entry (same length as messages),
  // which need not be consecutive; first_seq is then ignored.
  6: optional list<i64> seqs,
  // Set by a writer forwarding entries: the receiver writes them itself or
  // answers TRY_LATER, and never forwards them again (no loops).
  7: optional bool forwarded,
}

service scribe extends fb303.FacebookService {
  ResultCode Log(1: list<LogEntry> messages),
  ResultCode LogBatch(1: Batch batch),
}
