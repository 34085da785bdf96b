package scribewire

import "encoding/binary"

// The encoder writes a LogBatch call's arguments (the struct after the
// message header) in the binary protocol, byte for byte as the generated
// ScribeLogBatchArgs.Write does for a Batch with agent_id, first_seq,
// messages (without metadata), received_at_ms and optionally incarnation:
// AppendBatchHead, then AppendEntry for each of the n entries, then
// AppendBatchTail. It spares the agent's shipper a LogEntry per entry and
// a protocol call per field. TestEncodeMatchesGenerated checks the bytes.

// AppendLogHead appends the start of a Log call's arguments up to the
// header of a list of n messages; AppendEntry each, then AppendLogTail.
// The bytes are the generated ScribeLogArgs.Write's for entries without
// metadata.
func AppendLogHead(b []byte, n int) []byte {
	b = append(b, tList, 0, 1, tStruct)
	return binary.BigEndian.AppendUint32(b, uint32(n))
}

// AppendLogTail appends the end of a Log call's arguments.
func AppendLogTail(b []byte) []byte { return append(b, tStop) }

// AppendBatchHead appends the arguments' start up to the header of a
// list of n messages.
func AppendBatchHead(b []byte, agentID string, firstSeq int64, n int) []byte {
	b = append(b, tStruct, 0, 1) // args field 1: batch
	b = append(b, tString, 0, 1)
	b = binary.BigEndian.AppendUint32(b, uint32(len(agentID)))
	b = append(b, agentID...)
	b = append(b, tI64, 0, 2)
	b = binary.BigEndian.AppendUint64(b, uint64(firstSeq))
	b = append(b, tList, 0, 3, tStruct)
	return binary.BigEndian.AppendUint32(b, uint32(n))
}

// AppendEntry appends one LogEntry of the list.
func AppendEntry(b []byte, category string, message []byte) []byte {
	b = append(b, tString, 0, 1)
	b = binary.BigEndian.AppendUint32(b, uint32(len(category)))
	b = append(b, category...)
	b = append(b, tString, 0, 2)
	b = binary.BigEndian.AppendUint32(b, uint32(len(message)))
	b = append(b, message...)
	return append(b, tStop)
}

// AppendEntryStart appends a LogEntry up to its message, for the caller
// to append the message itself right after (no copy of it from
// elsewhere) and then call EndEntry with the message's start, len(b)
// as AppendEntryStart returned it. The bytes are AppendEntry's.
func AppendEntryStart(b []byte, category string) []byte {
	b = append(b, tString, 0, 1)
	b = binary.BigEndian.AppendUint32(b, uint32(len(category)))
	b = append(b, category...)
	b = append(b, tString, 0, 2)
	return append(b, 0, 0, 0, 0) // the message's size, set by EndEntry
}

// EndEntry ends the entry whose message, appended after
// AppendEntryStart, starts at msgStart and runs to the end of b: it sets
// the message's size and appends the entry's end.
func EndEntry(b []byte, msgStart int) []byte {
	binary.BigEndian.PutUint32(b[msgStart-4:], uint32(len(b)-msgStart))
	return append(b, tStop)
}

// EntrySize is the bytes AppendEntry appends.
func EntrySize(category string, message []byte) int {
	return 3 + 4 + len(category) + 3 + 4 + len(message) + 1
}

// AppendBatchTail appends the rest of the arguments: received_at_ms,
// the incarnation unless nil, and the ends of the batch and of the
// arguments.
func AppendBatchTail(b []byte, receivedAtMs int64, incarnation *string) []byte {
	b = append(b, tI64, 0, 4)
	b = binary.BigEndian.AppendUint64(b, uint64(receivedAtMs))
	if incarnation != nil {
		b = append(b, tString, 0, 5)
		b = binary.BigEndian.AppendUint32(b, uint32(len(*incarnation)))
		b = append(b, *incarnation...)
	}
	return append(b, tStop, tStop)
}
