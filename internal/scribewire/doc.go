// Package scribewire decodes the arguments of the Scribe calls Log
// (list<LogEntry>) and LogBatch (Batch) from the bytes of a call's frame,
// binary protocol, without a struct and a []byte allocated per entry: an
// entry is two slices into the call's bytes, and a decoder's slices are
// reused from call to call.
//
// It is a fast path, not a second grammar: it decodes only the shapes
// Freeway's agents and stock Scribe clients send (fields of the expected
// type, each at most once per struct; a LogEntry's optional metadata map,
// unknown fields and anything else make it give up), and it succeeds only
// where the generated Thrift code (thrift/gen/scribe) would decode the
// same bytes to the same values, under the same limits (container size,
// sizes past the end of the frame, the minimum size of a list's elements).
// Where it gives up, the caller decodes with the generated code, which
// gives malformed input exactly the error it always had.
// FuzzMatchesGenerated checks both claims on arbitrary bytes.
//
// Decoded slices point into the bytes given: they are valid as long as
// those are. Nothing here is persistent.
package scribewire
