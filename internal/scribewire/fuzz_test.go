package scribewire_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"reflect"
	"testing"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/internal/scribewire"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// limits of the compared decodes: a small container limit, so that
// fuzzed inputs reach it.
var fuzzLimits = thriftsrv.Limits{MaxContainerSize: 64}

// encode writes a call's arguments as a client does (without the message
// header, which the server reads before the arguments).
func encode(t testing.TB, args thrift.TStruct) []byte {
	t.Helper()
	buf := thrift.NewTMemoryBuffer()
	if err := args.Write(context.Background(), thrift.NewTBinaryProtocolConf(buf, nil)); err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func str(s string) *string { return &s }
func yes() *bool           { v := true; return &v }

func seedLog() []*scribethrift.LogEntry {
	return []*scribethrift.LogEntry{
		{Category: "web", Message: []byte(`{"a":1}`)},
		{Category: "web", Message: []byte{}},
		{Category: "", Message: []byte("x")},
		{Category: "db"},
	}
}

// compare decodes b with the generated code through the server's
// protocol and with d; where d succeeds, the generated code must too,
// with the same values and the same charge to the budget.
func compare(t *testing.T, b []byte, batch bool) bool {
	t.Helper()
	ctx := context.Background()
	d := &scribewire.Decoder{MaxContainerSize: fuzzLimits.MaxContainerSize}
	p, charged := thriftsrv.MemoryProtocol(b, fuzzLimits)
	var genErr error
	var gen []*scribethrift.LogEntry
	var genBatch *scribethrift.Batch
	var ok bool
	if batch {
		var args scribethrift.ScribeLogBatchArgs
		genErr = args.Read(ctx, p)
		genBatch = args.Batch
		if genBatch != nil {
			gen = genBatch.Messages
		}
		ok = d.DecodeLogBatch(b)
	} else {
		var args scribethrift.ScribeLogArgs
		genErr = args.Read(ctx, p)
		gen = args.Messages
		ok = d.DecodeLog(b)
	}
	if !ok {
		return false
	}
	if genErr != nil {
		t.Fatalf("fast path decoded what the generated code refuses (%v): % x", genErr, b)
	}
	if d.Charge != charged() {
		t.Fatalf("fast path charges %d, the generated decode %d", d.Charge, charged())
	}
	if len(gen) != len(d.Entries) {
		t.Fatalf("%d entries, the generated code %d", len(d.Entries), len(gen))
	}
	for i, g := range gen {
		e := d.Entries[i]
		if string(e.Category) != g.Category || !bytes.Equal(e.Message, g.Message) || (e.Message == nil) != (g.Message == nil) {
			t.Fatalf("entry %d: %q %q, the generated code %q %q", i, e.Category, e.Message, g.Category, g.Message)
		}
	}
	if !batch {
		return true
	}
	if (genBatch == nil) != (d.Batch == nil) {
		t.Fatalf("batch %v, the generated code %v", d.Batch, genBatch)
	}
	if genBatch == nil {
		return true
	}
	want := scribewire.Batch{AgentID: genBatch.AgentID, FirstSeq: genBatch.FirstSeq, ReceivedAtMs: genBatch.ReceivedAtMs,
		Incarnation: genBatch.Incarnation, Seqs: genBatch.Seqs, Forwarded: genBatch.Forwarded}
	if !reflect.DeepEqual(*d.Batch, want) {
		t.Fatalf("batch %+v, the generated code %+v", *d.Batch, want)
	}
	if d.Batch.IsSetSeqs() != genBatch.IsSetSeqs() || d.Batch.GetForwarded() != genBatch.GetForwarded() ||
		d.Batch.GetIncarnation() != genBatch.GetIncarnation() {
		t.Fatalf("batch accessors differ: %+v, the generated code %+v", *d.Batch, genBatch)
	}
	return true
}

// FuzzMatchesGenerated: on arbitrary bytes (after a flag byte choosing
// Log or LogBatch), wherever the fast path decodes, the generated code
// decodes the same values with the same budget charge (and so, where the
// fast path gives up, the server's generated decode gives malformed input
// its usual error).
func FuzzMatchesGenerated(f *testing.F) {
	f.Add(append([]byte{0}, encode(f, &scribethrift.ScribeLogArgs{Messages: seedLog()})...))
	f.Add(append([]byte{0}, encode(f, &scribethrift.ScribeLogArgs{})...))
	f.Add(append([]byte{1}, encode(f, &scribethrift.ScribeLogBatchArgs{Batch: &scribethrift.Batch{
		AgentID: "agent", FirstSeq: 7, Messages: seedLog(), ReceivedAtMs: 99, Incarnation: str("inc"),
		Seqs: []int64{1, 2, 3, 4}, Forwarded: yes()}})...))
	f.Add(append([]byte{1}, encode(f, &scribethrift.ScribeLogBatchArgs{Batch: &scribethrift.Batch{Seqs: []int64{}}})...))
	f.Add(append([]byte{1}, encode(f, &scribethrift.ScribeLogBatchArgs{})...))
	f.Add(append([]byte{0}, encode(f, &scribethrift.ScribeLogArgs{Messages: []*scribethrift.LogEntry{
		{Category: "c", Message: []byte("m"), Metadata: map[string]string{"k": "v"}}}})...))
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) == 0 {
			return
		}
		compare(t, in[1:], in[0]&1 == 1)
	})
}

// TestDecodesWhatClientsSend: what the generated client code writes, the
// fast path decodes (it is no use if it gives up on ordinary calls), and
// it gives up on what it leaves to the generated code.
func TestDecodesWhatClientsSend(t *testing.T) {
	for _, c := range []struct {
		name  string
		args  thrift.TStruct
		batch bool
		fast  bool
	}{
		{"log", &scribethrift.ScribeLogArgs{Messages: seedLog()}, false, true},
		{"empty log", &scribethrift.ScribeLogArgs{Messages: []*scribethrift.LogEntry{}}, false, true},
		{"no list", &scribethrift.ScribeLogArgs{}, false, true},
		{"batch", &scribethrift.ScribeLogBatchArgs{Batch: &scribethrift.Batch{AgentID: "a", FirstSeq: 1, Messages: seedLog(),
			ReceivedAtMs: 5, Incarnation: str("i")}}, true, true},
		{"forwarded batch", &scribethrift.ScribeLogBatchArgs{Batch: &scribethrift.Batch{AgentID: "a", Messages: seedLog(),
			Seqs: []int64{4, 3, 2, 1}, Forwarded: yes()}}, true, true},
		{"nil batch", &scribethrift.ScribeLogBatchArgs{}, true, true},
		{"metadata", &scribethrift.ScribeLogArgs{Messages: []*scribethrift.LogEntry{
			{Category: "c", Message: []byte("m"), Metadata: map[string]string{"k": "v"}}}}, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := compare(t, encode(t, c.args), c.batch); got != c.fast {
				t.Fatalf("fast path decoded: %v, want %v", got, c.fast)
			}
		})
	}
}

// TestGivesUpOnBadInput: truncated frames and sizes past the end are left
// to the generated code (which refuses them).
func TestGivesUpOnBadInput(t *testing.T) {
	b := encode(t, &scribethrift.ScribeLogArgs{Messages: seedLog()})
	for n := range len(b) - 1 {
		if compare(t, b[:n], false) {
			t.Fatalf("decoded a frame cut at %d of %d bytes", n, len(b))
		}
	}
	// A list header claiming more entries than the limit.
	over := []byte{15, 0, 1, 12, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(over[4:], uint32(fuzzLimits.MaxContainerSize+1))
	over = append(over, bytes.Repeat([]byte{0}, 100)...)
	if compare(t, over, false) {
		t.Fatal("decoded a list over the container limit")
	}
}

// TestEncodeMatchesGenerated: the encoder's bytes are the generated
// code's, for batches with and without an incarnation, empty or not.
func TestEncodeMatchesGenerated(t *testing.T) {
	for _, c := range []struct {
		inc *string
		es  []*scribethrift.LogEntry
	}{
		{str("0123456789abcdef0123456789abcdef"), seedLog()},
		{nil, seedLog()},
		{str(""), nil},
		{nil, []*scribethrift.LogEntry{{Category: "web", Message: bytes.Repeat([]byte("m"), 70000)}}},
	} {
		want := encode(t, &scribethrift.ScribeLogBatchArgs{Batch: &scribethrift.Batch{
			AgentID: "agent-1", FirstSeq: 1 << 40, Messages: c.es, ReceivedAtMs: 1700000000123, Incarnation: c.inc}})
		got := scribewire.AppendBatchHead([]byte("x"), "agent-1", 1<<40, len(c.es))
		size := 0
		for _, e := range c.es {
			got = scribewire.AppendEntry(got, e.Category, e.Message)
			size += scribewire.EntrySize(e.Category, e.Message)
		}
		got = scribewire.AppendBatchTail(got, 1700000000123, c.inc)
		if !bytes.Equal(got[1:], want) {
			t.Fatalf("encoded\n% x\nthe generated code\n% x", got[1:], want)
		}
		d := &scribewire.Decoder{}
		if !d.DecodeLogBatch(got[1:]) || len(d.Entries) != len(c.es) {
			t.Fatal("the fast path does not decode the encoder's batch")
		}
		var entries int
		for _, e := range c.es {
			entries += len(scribewire.AppendEntry(nil, e.Category, e.Message))
		}
		if entries != size {
			t.Fatalf("EntrySize sums to %d, AppendEntry wrote %d", size, entries)
		}
	}
}

// TestEncodeLogMatchesGenerated: the same for Log's arguments.
func TestEncodeLogMatchesGenerated(t *testing.T) {
	for _, es := range [][]*scribethrift.LogEntry{seedLog(), nil} {
		want := encode(t, &scribethrift.ScribeLogArgs{Messages: es})
		got := scribewire.AppendLogHead(nil, len(es))
		for _, e := range es {
			got = scribewire.AppendEntry(got, e.Category, e.Message)
		}
		got = scribewire.AppendLogTail(got)
		if es == nil {
			// The generated code writes no list for a nil one; an empty
			// list decodes the same.
			want = encode(t, &scribethrift.ScribeLogArgs{Messages: []*scribethrift.LogEntry{}})
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("encoded\n% x\nthe generated code\n% x", got, want)
		}
	}
}

// TestEntryStartEndMatchesAppendEntry: a message appended in place
// between AppendEntryStart and EndEntry makes the generated code's Log
// arguments, as AppendEntry does (empty and large messages too).
func TestEntryStartEndMatchesAppendEntry(t *testing.T) {
	es := append(seedLog(), &scribethrift.LogEntry{Category: "web", Message: []byte{}},
		&scribethrift.LogEntry{Category: "web", Message: bytes.Repeat([]byte("m"), 70000)})
	want := encode(t, &scribethrift.ScribeLogArgs{Messages: es})
	got := scribewire.AppendLogHead(nil, len(es))
	for _, e := range es {
		got = scribewire.AppendEntryStart(got, e.Category)
		start := len(got)
		got = append(got, e.Message...)
		got = scribewire.EndEntry(got, start)
	}
	got = scribewire.AppendLogTail(got)
	if !bytes.Equal(got, want) {
		t.Fatalf("encoded\n% x\nthe generated code\n% x", got, want)
	}
}

// A decoder that a huge call grew is not kept for reuse; one that a
// usual call used is.
func TestPoolable(t *testing.T) {
	many := make([]*scribethrift.LogEntry, scribewire.MaxPooledEntries+1)
	for i := range many {
		many[i] = &scribethrift.LogEntry{Category: "c", Message: []byte("m")}
	}
	for _, c := range []struct {
		name     string
		args     thrift.TStruct
		batch    bool
		poolable bool
	}{
		{"usual log", &scribethrift.ScribeLogArgs{Messages: seedLog()}, false, true},
		{"huge log", &scribethrift.ScribeLogArgs{Messages: many}, false, false},
		{"huge batch", &scribethrift.ScribeLogBatchArgs{Batch: &scribethrift.Batch{AgentID: "a", FirstSeq: 1, Messages: many}}, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			var d scribewire.Decoder
			b := encode(t, c.args)
			decode := d.DecodeLog
			if c.batch {
				decode = d.DecodeLogBatch
			}
			ok := decode(b)
			if !ok {
				t.Fatal("not decoded")
			}
			d.Release()
			if d.Poolable() != c.poolable {
				t.Fatalf("Poolable() = %v, want %v (room for %d entries)", d.Poolable(), c.poolable, cap(d.Entries))
			}
		})
	}
}
