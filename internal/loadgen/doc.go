// Package loadgen is Freeway's load generator: `freeway load` (pointed at
// any Scribe agent or writer), `make bench` and `make soak` use it.
//
// Lines are made from a seed: line i of a Lines spec is always the same
// bytes (its key, value and other fields come from a hash of the seed and
// i), so a lines file written once (--out, or Lines.Write) can be read by
// other systems, and the ground truth of any set of lines (Truth: count and
// sum of value per key per minute) can be computed without keeping them.
// Event times are either fixed (a start and a step per line) or the time
// the line is made (live).
//
// A Loader sends lines over several Scribe connections in Log calls of a
// batch size, flat out or paced to a rate, for a count of lines or a
// duration. It counts what was acknowledged (OK), retries a batch
// answered TRY_LATER, and counts the entries of a call that failed
// without an answer as of unknown fate (the agent may or may not have
// them); a server it cannot connect to for Timeout ends the run with
// that error. Paced, the connections' first batches are spread over the
// pacing interval. It keeps a histogram of Log call latencies. Each connection
// makes its batch's lines straight into one reused frame of the Log
// call's arguments (scribewire.AppendEntryStart, EndEntry) and sends it
// as it is (scribeapi.Client.LogFrame): no allocation and no copy per
// line, so that the generator costs far less CPU than what it measures.
//
// Nothing here survives a crash: it is a client, and what it sent is
// wherever the agent put it.
package loadgen
