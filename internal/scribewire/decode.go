package scribewire

import (
	"encoding/binary"
	"math"
)

// Thrift type ids of the binary protocol.
const (
	tStop   = 0
	tBool   = 2
	tI64    = 10
	tString = 11
	tStruct = 12
	tList   = 15
)

// What the server charges to its in-flight byte budget for decoded
// values (internal/thriftsrv's costPerString and costPerElement): a
// string its bytes plus 16, a list element 64.
const (
	costPerString  = 16
	costPerElement = 64
)

// Entry is one LogEntry: slices into the call's bytes.
type Entry struct {
	Category []byte
	Message  []byte
}

// Batch is a LogBatch call's Batch without its messages (Decoder.Entries
// holds them). Optional fields are nil when absent, as in the generated
// struct.
type Batch struct {
	AgentID      string
	FirstSeq     int64
	ReceivedAtMs int64
	Incarnation  *string
	Seqs         []int64
	Forwarded    *bool
}

// GetIncarnation is the incarnation, "" when unset.
func (b *Batch) GetIncarnation() string {
	if b.Incarnation == nil {
		return ""
	}
	return *b.Incarnation
}

// IsSetSeqs reports whether the batch carried seqs (even empty ones).
func (b *Batch) IsSetSeqs() bool { return b.Seqs != nil }

// GetForwarded is the forwarded mark, false when unset.
func (b *Batch) GetForwarded() bool { return b.Forwarded != nil && *b.Forwarded }

// Decoder decodes calls; its slices are reused by the next decode. It is
// not safe for concurrent use.
type Decoder struct {
	// MaxContainerSize is the server's limit on the elements of a list
	// (thrift.TConfiguration.MaxContainerSize); 0 means none beyond
	// int32.
	MaxContainerSize int32

	// Entries are the decoded call's entries.
	Entries []Entry
	// Batch is a LogBatch call's batch, nil when the call had none (the
	// generated code's nil *Batch).
	Batch *Batch
	// Charge is what the generated code's decode would have charged to
	// the server's budget: strings and list elements.
	Charge int64
	// Reserve, if set, is given a list's charge before its elements are
	// decoded (the entries allocated), as the generated code charges it
	// at the list's header; false stops the decode, and Refused is then
	// set: the call is to be refused, not decoded again.
	Reserve func(n int64) bool
	// Refused: Reserve stopped the decode.
	Refused bool

	batch Batch
	seqs  []int64
	b     []byte
	pos   int
	ok    bool
}

// DecodeLog decodes the arguments of a Log call (the struct after the
// message header). It reports false where it gives up: the caller must
// then decode b with the generated code.
func (d *Decoder) DecodeLog(b []byte) bool { return d.args(b, tList, d.entries) }

// DecodeLogBatch decodes the arguments of a LogBatch call; see DecodeLog.
func (d *Decoder) DecodeLogBatch(b []byte) bool { return d.args(b, tStruct, d.decodeBatch) }

// args decodes a call's arguments struct whose one field (id 1, of type
// want) body reads; any other field, or the field twice, gives up.
func (d *Decoder) args(b []byte, want byte, body func()) bool {
	d.reset(b)
	seen := false
	for d.ok {
		t, id := d.fieldBegin()
		if !d.ok || t == tStop {
			break
		}
		if id != 1 || t != want || seen {
			return false
		}
		seen = true
		body()
	}
	return d.ok
}

// Release drops the decoder's references to the last call's bytes, so
// that a pooled decoder does not keep them alive.
func (d *Decoder) Release() { d.reset(nil) }

// MaxPooledEntries bounds the entries a decoder kept for reuse may have
// room for (Poolable): an agent's batch of 16,384 and then some.
const MaxPooledEntries = 1 << 16

// Poolable reports whether d is worth keeping for the next call: not
// once a huge call (a stock client's millions of tiny entries, which the
// budget lets run alone) grew its slices, which a pool would otherwise
// hold, hundreds of MiB, until the garbage collector empties it.
func (d *Decoder) Poolable() bool {
	return cap(d.Entries) <= MaxPooledEntries && cap(d.seqs) <= MaxPooledEntries
}

// OwnMessages copies the entries' messages into one new allocation and
// points the entries at it: for a handler that keeps messages after the
// call's bytes are reused (categories it must copy itself).
func OwnMessages(es []Entry) {
	total := 0
	for i := range es {
		total += len(es[i].Message)
	}
	buf := make([]byte, 0, total)
	for i := range es {
		m := es[i].Message
		if m == nil {
			continue
		}
		start := len(buf)
		buf = append(buf, m...)
		es[i].Message = buf[start:len(buf):len(buf)]
	}
}

func (d *Decoder) reset(b []byte) {
	clear(d.Entries) // drop references to the last call's bytes
	d.Entries = d.Entries[:0]
	d.Batch, d.Charge, d.Refused = nil, 0, false
	d.batch = Batch{}
	d.seqs = d.seqs[:0]
	d.b, d.pos, d.ok = b, 0, true
}

func (d *Decoder) decodeBatch() {
	b := &d.batch
	d.Batch = b
	var seen uint8
	for d.ok {
		t, id := d.fieldBegin()
		if !d.ok || t == tStop {
			return
		}
		if id < 1 || id > 7 || seen&(1<<id) != 0 {
			d.ok = false
			return
		}
		seen |= 1 << id
		switch {
		case id == 1 && t == tString:
			b.AgentID = string(d.str())
		case id == 2 && t == tI64:
			b.FirstSeq = d.i64()
		case id == 3 && t == tList:
			d.entries()
		case id == 4 && t == tI64:
			b.ReceivedAtMs = d.i64()
		case id == 5 && t == tString:
			s := string(d.str())
			b.Incarnation = &s
		case id == 6 && t == tList:
			n := d.listBegin()
			if d.seqs == nil {
				d.seqs = []int64{} // set, if empty: as the generated code
			}
			for range n {
				if !d.ok {
					return
				}
				d.seqs = append(d.seqs, d.i64())
			}
			b.Seqs = d.seqs
		case id == 7 && t == tBool:
			v := d.byte() == 1
			b.Forwarded = &v
		default:
			d.ok = false
		}
	}
}

// entries decodes a list<LogEntry>.
func (d *Decoder) entries() {
	n := d.listBegin()
	// The generated code replaces the list; a list seen twice was given
	// up on by the callers.
	for range n {
		if !d.ok {
			return
		}
		var e Entry
		for d.ok {
			t, id := d.fieldBegin()
			if !d.ok || t == tStop {
				break
			}
			switch {
			case id == 1 && t == tString:
				e.Category = d.str()
			case id == 2 && t == tString:
				e.Message = d.str()
			default:
				d.ok = false // metadata, unknown fields: the generated code
			}
		}
		d.Entries = append(d.Entries, e)
	}
}

func (d *Decoder) byte() byte {
	if !d.ok || d.pos >= len(d.b) {
		d.ok = false
		return 0
	}
	c := d.b[d.pos]
	d.pos++
	return c
}

func (d *Decoder) i32() int32 {
	if !d.ok || len(d.b)-d.pos < 4 {
		d.ok = false
		return 0
	}
	v := int32(binary.BigEndian.Uint32(d.b[d.pos:]))
	d.pos += 4
	return v
}

func (d *Decoder) i64() int64 {
	if !d.ok || len(d.b)-d.pos < 8 {
		d.ok = false
		return 0
	}
	v := int64(binary.BigEndian.Uint64(d.b[d.pos:]))
	d.pos += 8
	return v
}

func (d *Decoder) fieldBegin() (t byte, id int16) {
	t = d.byte()
	if !d.ok || t == tStop {
		return t, 0
	}
	if len(d.b)-d.pos < 2 {
		d.ok = false
		return t, 0
	}
	id = int16(binary.BigEndian.Uint16(d.b[d.pos:]))
	d.pos += 2
	return t, id
}

// str reads a string or binary as the server's protocol does: a negative
// size or one past the end of the frame fails.
func (d *Decoder) str() []byte {
	n := d.i32()
	if !d.ok || n < 0 || int64(n) > int64(len(d.b)-d.pos) {
		d.ok = false
		return nil
	}
	s := d.b[d.pos : d.pos+int(n) : d.pos+int(n)]
	d.pos += int(n)
	d.Charge += int64(n) + costPerString
	return s
}

// listBegin reads a list header with the generated code's checks: the
// element type is not checked against the schema, but its minimum size
// bounds the count by the bytes left.
func (d *Decoder) listBegin() int {
	et := d.byte()
	n := d.i32()
	if !d.ok {
		return 0
	}
	size := int64(n)
	switch {
	case size < 0,
		d.MaxContainerSize > 0 && size > int64(d.MaxContainerSize),
		size*minSize(et) > math.MaxInt32,
		size*minSize(et) > int64(len(d.b)-d.pos):
		d.ok = false
		return 0
	}
	d.Charge += size * costPerElement
	if d.Reserve != nil && !d.Reserve(size*costPerElement) {
		d.ok, d.Refused = false, true
		return 0
	}
	return int(size)
}

// minSize is the binary protocol's minimum encoded size of an element of
// type t (thrift.TBinaryProtocol.getMinSerializedSize).
func minSize(t byte) int64 {
	switch t {
	case 6: // i16
		return 2
	case 8, 11, 13, 14, 15: // i32, string, map, set, list
		return 4
	case 4, 10: // double, i64
		return 8
	case 16: // uuid
		return 16
	default: // stop, void, bool, byte, struct, unknown
		return 1
	}
}
