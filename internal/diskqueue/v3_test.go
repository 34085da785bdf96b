package diskqueue

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"runtime"
	"strings"
	"testing"
)

// jsonEntries is n entries like the bench's lines: compressible, of
// about 180 bytes, message i numbered from from.
func jsonEntries(from, n int) []Entry {
	es := make([]Entry, n)
	for i := range es {
		es[i] = Entry{Category: "bench", Time: int64(1_700_000_000_000 + from + i),
			Message: fmt.Appendf(nil, `{"ts":%d,"key":"user%04d","value":%d,"pad":"%s"}`, from+i, (from+i)%97, from+i, strings.Repeat("abcdefgh", 16))}
	}
	return es
}

// recordsOf returns the offsets of the v3 records in a segment file, and
// their headers.
func recordsOf(t *testing.T, path string) ([]int64, []recHeader) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var offs []int64
	var hs []recHeader
	for off := int64(segHeaderSize); off < int64(len(b)); {
		h, err := parseV3Header(b[off:off+v3RecHeaderSize], 0, false)
		if err != nil {
			t.Fatalf("record at %d: %v", off, err)
		}
		offs, hs = append(offs, off), append(hs, h)
		off += int64(v3RecHeaderSize + h.pl)
	}
	return offs, hs
}

// An Append call is one record, split at maxRecordRaw bytes of entries,
// compressed when that is smaller; what is read back is what was
// appended, and the bytes counted are those of the file.
func TestAppendWritesCompressedRecords(t *testing.T) {
	dir := t.TempDir()
	q, _ := open(t, dir, nil)
	es := jsonEntries(0, 4000) // about 720 KB: three records
	mustAppend(t, q, es)
	mustAppend(t, q, randomMessages(3, 100)) // does not compress
	seg := lastSegment(t, dir)
	_, hs := recordsOf(t, seg)
	var counts []int
	var compressed []bool
	for _, h := range hs {
		counts = append(counts, h.count)
		compressed = append(compressed, h.compressed)
	}
	if len(hs) != 4 || counts[0]+counts[1]+counts[2] != 4000 || counts[3] != 3 || fmt.Sprint(compressed) != "[true true true false]" {
		t.Fatalf("records of %v entries, compressed %v", counts, compressed)
	}
	if st := q.Stats(); st.Bytes != statSize(t, seg)-segHeaderSize {
		t.Fatalf("queue bytes %d, segment holds %d", st.Bytes, statSize(t, seg)-segHeaderSize)
	}
	got := readAll(t, q, 4003, true)
	for i, e := range es {
		if got[i] != string(e.Message) {
			t.Fatalf("entry %d reads %q, want %q", i, got[i], e.Message)
		}
	}
	// And from the file, after a restart.
	mustAppend(t, q, es[:1000])
	q.Close()
	q, _ = open(t, dir, nil)
	defer q.Close()
	b := read(t, q, 1<<30, 100000)
	if b.First != 4004 || len(b.Entries) != 1000 || string(b.Entries[999].Message) != string(es[999].Message) || b.Entries[999].Time != es[999].Time || b.Entries[0].Category != "bench" {
		t.Fatalf("read from disk: first %d, %d entries", b.First, len(b.Entries))
	}
}

// Read's maxBytes bounds a batch by its entries' decoded sizes
// (RecordSize), not by the compressed bytes they take on disk: a batch
// of compressed entries stays within it, delivering a record's entries
// over several batches.
func TestReadBoundCountsDecodedEntries(t *testing.T) {
	q, _ := open(t, t.TempDir(), nil)
	defer q.Close()
	es := jsonEntries(0, 2000)
	mustAppend(t, q, es)
	const maxBytes = 16 << 10
	next := uint64(1)
	for next <= 2000 {
		b := read(t, q, maxBytes, 100000)
		size := 0
		for i := range b.Entries {
			size += RecordSize(&b.Entries[i])
		}
		if b.First != next || size > maxBytes || len(b.Entries) == 0 {
			t.Fatalf("batch from %d (want %d) of %d entries, %d bytes of entries, more than %d", b.First, next, len(b.Entries), size, maxBytes)
		}
		for i, e := range b.Entries {
			if string(e.Message) != string(es[int(b.First)-1+i].Message) {
				t.Fatalf("entry %d differs", int(b.First)+i)
			}
		}
		next = b.End()
		if err := q.Ack(b); err != nil {
			t.Fatal(err)
		}
	}
	if st := q.Stats(); st.Bytes != 0 {
		t.Fatalf("stats after acknowledging everything: %+v", st)
	}
}

// A record whose entries are partly acknowledged is counted whole until
// its last entry is, and after a restart the reader starts inside it,
// at the first unacknowledged entry.
func TestPartlyAcknowledgedRecord(t *testing.T) {
	dir := t.TempDir()
	q, _ := open(t, dir, nil)
	es := jsonEntries(0, 100)
	mustAppend(t, q, es)
	whole := q.Stats().Bytes
	b := read(t, q, 1<<20, 30)
	if err := q.Ack(b); err != nil {
		t.Fatal(err)
	}
	if st := q.Stats(); st.Bytes != whole || st.Entries != 70 {
		t.Fatalf("after acknowledging 30 of the record's 100 entries: %+v, want %d bytes", st, whole)
	}
	q.Close()
	q, _ = open(t, dir, nil)
	defer q.Close()
	if st := q.Stats(); st.Bytes != whole || st.Acked != 31 {
		t.Fatalf("after a restart: %+v, want %d bytes", st, whole)
	}
	b = read(t, q, 1<<20, 1000)
	if b.First != 31 || len(b.Entries) != 70 || string(b.Entries[0].Message) != string(es[30].Message) {
		t.Fatalf("read from %d, %d entries", b.First, len(b.Entries))
	}
	if err := q.Ack(b); err != nil {
		t.Fatal(err)
	}
	if st := q.Stats(); st.Bytes != 0 {
		t.Fatalf("after acknowledging the rest: %+v", st)
	}
}

// A damaged compressed record costs exactly its entries, counted and
// logged; the records around it are read.
func TestDamagedCompressedRecordLosesItsEntries(t *testing.T) {
	for _, where := range []string{"body", "header"} {
		t.Run(where, func(t *testing.T) {
			dir := t.TempDir()
			q, _ := open(t, dir, nil)
			for i := range 3 {
				mustAppend(t, q, jsonEntries(i*50, 50))
			}
			q.Close()
			seg := lastSegment(t, dir)
			offs, hs := recordsOf(t, seg)
			if len(offs) != 3 || !hs[1].compressed {
				t.Fatalf("records %v", hs)
			}
			at := offs[1] + v3RecHeaderSize + int64(hs[1].pl)/2
			if where == "header" {
				at = offs[1] + 13 // the count
			}
			flipByte(t, seg, at)
			q, lb := open(t, dir, nil)
			defer q.Close()
			got := drain(t, q)
			want := append(messages(jsonEntries(0, 50)), messages(jsonEntries(100, 50))...)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("read %d entries, want the 100 of the first and last records", len(got))
			}
			if st := q.Stats(); st.Lost != 50 || st.Bytes != 0 {
				t.Fatalf("stats %+v, want 50 lost", st)
			}
			if !strings.Contains(lb.String(), "checksum mismatch") || !strings.Contains(lb.String(), "lost_entries=50") {
				t.Fatalf("log: %s", lb.String())
			}
		})
	}
}

// A record whose checksums pass but whose compressed body claims a
// decoded length beyond the bound (damage in memory before the checksum
// was computed, or a bug) is refused before anything is allocated for it:
// its entries are lost, the records after it read.
func TestCorruptDecodedLengthAllocatesNothing(t *testing.T) {
	dir := t.TempDir()
	q, _ := open(t, dir, nil)
	mustAppend(t, q, jsonEntries(0, 50))
	key := q.key
	q.Close()
	body := binary.AppendUvarint(nil, 1<<30)
	body = append(body, make([]byte, 64)...)
	forged := make([]byte, v3RecHeaderSize, v3RecHeaderSize+len(body))
	binary.LittleEndian.PutUint32(forged[0:], uint32(len(body)))
	binary.LittleEndian.PutUint64(forged[4:], 51)
	binary.LittleEndian.PutUint32(forged[12:], 50)
	binary.LittleEndian.PutUint32(forged[16:], flagCompressed)
	binary.LittleEndian.PutUint32(forged[20:], crc32.Update(key, crcTable, body))
	binary.LittleEndian.PutUint32(forged[24:], crc32.Update(key, crcTable, forged[:24]))
	forged = append(forged, body...)
	seg := lastSegment(t, dir)
	appendBytes(t, seg, forged)
	appendBytes(t, seg, v3Record(key, 101, true, jsonEntries(100, 50)))

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	q, lb := open(t, dir, nil)
	defer q.Close()
	got := drain(t, q)
	runtime.ReadMemStats(&after)
	if len(got) != 100 || q.Stats().Lost != 50 {
		t.Fatalf("read %d entries, lost %d; want 100 and 50", len(got), q.Stats().Lost)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 64<<20 {
		t.Fatalf("%d MB allocated to read 100 small entries past a record claiming 1 GiB", n>>20)
	}
	if !strings.Contains(lb.String(), "compressed body of 1073741824 bytes decoded") {
		t.Fatalf("log: %s", lb.String())
	}
}

// The reader keeps for reuse only buffers of the usual size: one decoded
// for a large record is left to the garbage collector once its entries
// are acknowledged.
func TestLargeDecodedRecordIsNotKept(t *testing.T) {
	dir := t.TempDir()
	q, _ := open(t, dir, nil)
	defer q.Close()
	big := Entry{Category: "cat", Message: []byte(strings.Repeat("0123456789abcdef", 1<<20))} // 16 MiB, compresses well
	for range 3 {
		mustAppend(t, q, []Entry{big})
	}
	for range 3 {
		b := read(t, q, 1<<20, 10)
		if len(b.Entries) != 1 || len(b.Entries[0].Message) != len(big.Message) {
			t.Fatalf("read %d entries", len(b.Entries))
		}
		if err := q.Ack(b); err != nil {
			t.Fatal(err)
		}
	}
	q.rmu.Lock()
	defer q.rmu.Unlock()
	for _, b := range q.bufs.free {
		if cap(b) > scanBuf {
			t.Fatalf("a buffer of %d MiB kept for reuse", cap(b)>>20)
		}
	}
}

// tailRecord is compressed: the torn tail cases cut and damage a
// compressed record.
func TestTailRecordIsCompressed(t *testing.T) {
	h, err := parseV3Header(tailRecord(0)[:v3RecHeaderSize], 0, true)
	if err != nil || !h.compressed || h.count != 2 {
		t.Fatalf("tail record %+v, %v", h, err)
	}
}

// A record's body holds exactly its count of entries: fewer, more, or
// bytes left after the last fail its check (a record whose checksums
// pass but whose body a bug made inconsistent is refused, not delivered
// in part).
func TestCheckEntries(t *testing.T) {
	var body []byte
	for _, e := range jsonEntries(0, 3) {
		body = appendEntry(body, &e)
	}
	for _, c := range []struct {
		name  string
		body  []byte
		count int
		ok    bool
	}{
		{"exact", body, 3, true},
		{"one more than counted", body, 2, false},
		{"one fewer than counted", body, 4, false},
		{"a byte after the last", append(append([]byte(nil), body...), 0), 3, false},
		{"cut in the last", body[:len(body)-1], 3, false},
	} {
		if err := checkEntries(c.body, c.count); (err == nil) != c.ok {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

// With CompressAbove, a record is compressed only while the queue holds
// at least that many unacknowledged bytes: a queue its reader keeps up
// with writes plain records, a backlog compressed ones, and once it is
// acknowledged away the records are plain again. A restart counts what
// the files still hold.
func TestCompressAboveBacklog(t *testing.T) {
	dir := t.TempDir()
	const above = 300 << 10
	q, _ := open(t, dir, func(o *Options) { o.CompressAbove = above })
	es := jsonEntries(0, 1000) // about 180 KB a call, plain
	mustAppend(t, q, es)       // backlog 0: plain
	mustAppend(t, q, es)       // ~180 KB: plain
	mustAppend(t, q, es)       // ~360 KB: compressed
	mustAppend(t, q, es)       // compressed
	if got := lastCompressed(t, dir, 4); got != "[false false true true]" {
		t.Fatalf("records compressed %v, want [false false true true] (from %d bytes of backlog)", got, above)
	}
	// Acknowledged away, below the bound again: plain.
	for q.Stats().Entries > 0 {
		b := read(t, q, 1<<30, 100000)
		if err := q.Ack(b); err != nil {
			t.Fatal(err)
		}
	}
	mustAppend(t, q, es)
	mustAppend(t, q, es)
	if got := lastCompressed(t, dir, 2); got != "[false false]" {
		t.Fatalf("after the backlog was acknowledged: records compressed %v, want [false false]", got)
	}
	// A restart counts the backlog the files hold: compressed at once.
	q.Close()
	q, _ = open(t, dir, func(o *Options) { o.CompressAbove = above })
	defer q.Close()
	mustAppend(t, q, es)
	if got := lastCompressed(t, dir, 1); got != "[true]" {
		t.Fatalf("after a restart with %d bytes queued: records compressed %v, want [true]", q.Stats().Bytes, got)
	}
	got := readAll(t, q, 3000, true)
	for i := range 3000 {
		if got[i] != string(es[i%1000].Message) {
			t.Fatalf("entry %d reads %q", i, got[i])
		}
	}
}

// lastCompressed says which of the last n records of dir's last segment
// are compressed.
func lastCompressed(t *testing.T, dir string, n int) string {
	t.Helper()
	_, hs := recordsOf(t, lastSegment(t, dir))
	if len(hs) < n {
		t.Fatalf("%d records in the last segment, want at least %d", len(hs), n)
	}
	var compressed []bool
	for _, h := range hs[len(hs)-n:] {
		compressed = append(compressed, h.compressed)
	}
	return fmt.Sprint(compressed)
}
