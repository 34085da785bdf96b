package diskqueue

import (
	"crypto/rand"
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The writers of earlier formats, as earlier versions had them, to test
// that what they wrote is still read.

// appendRecord appends e's v2 record with sequence number seq to b: the
// record earlier versions wrote for every entry.
func appendRecord(b []byte, key uint32, seq uint64, e *Entry) []byte {
	start := len(b)
	b = append(b, make([]byte, recHeaderSize)...)
	b = binary.LittleEndian.AppendUint64(b, uint64(e.Time))
	b = binary.AppendUvarint(b, uint64(len(e.Category)))
	b = append(b, e.Category...)
	b = append(b, e.Message...)
	h, p := b[start:start+recHeaderSize], b[start+recHeaderSize:]
	binary.LittleEndian.PutUint32(h[0:], uint32(len(p)))
	binary.LittleEndian.PutUint64(h[4:], seq)
	binary.LittleEndian.PutUint32(h[12:], crc32.Update(key, crcTable, p))
	binary.LittleEndian.PutUint32(h[16:], crc32.Update(key, crcTable, h[:16]))
	return b
}

// writeV2Segment writes a segment of format v2 holding es from first on,
// as the agents before format v3 did, in incarnation inc.
func writeV2Segment(t testing.TB, dir string, first uint64, inc incarnation, es []Entry) string {
	t.Helper()
	b := segHeader(first, inc, v2Version)
	for i := range es {
		b = appendRecord(b, inc.crcKey(), first+uint64(i), &es[i])
	}
	path := filepath.Join(dir, segName(first))
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func newIncarnation(t testing.TB) incarnation {
	t.Helper()
	var inc incarnation
	if _, err := rand.Read(inc[:]); err != nil {
		t.Fatal(err)
	}
	return inc
}

// v3Record is the v3 record of es numbered from seq, as Append writes it.
func v3Record(key uint32, seq uint64, compress bool, es []Entry) []byte {
	enc := new(encoded)
	encodeRecords(enc, es, key, compress)
	var b []byte
	for _, r := range enc.recs {
		b = append(b, enc.number(r, key, seq)...)
		seq += uint64(r.count)
	}
	return b
}

// A queue written by an agent before format v3 (v2 segments of two runs,
// the last with a torn tail) is read after the upgrade, in order and with
// the old entries' incarnations, followed by what the new version
// appends in v3; acknowledging everything leaves no bytes counted.
func TestV2SegmentsStayReadable(t *testing.T) {
	dir := t.TempDir()
	inc1, inc2 := newIncarnation(t), newIncarnation(t)
	writeV2Segment(t, dir, 1, inc1, entries("a", 3))
	last := writeV2Segment(t, dir, 4, inc2, entries("b", 2))
	appendBytes(t, last, appendRecord(nil, inc2.crcKey(), 6, &Entry{Category: "cat", Message: []byte("torn")})[:30])
	q, lb := open(t, dir, nil)
	defer q.Close()
	if !strings.Contains(lb.String(), "truncating torn queue tail") {
		t.Errorf("the v2 torn tail was not truncated: %s", lb.String())
	}
	if first := mustAppend(t, q, entries("c", 4)); first != 6 {
		t.Fatalf("first v3 entry numbered %d, want 6", first)
	}
	var got []string
	for _, want := range []struct {
		first uint64
		inc   string
		n     int
	}{{1, inc1.String(), 3}, {4, inc2.String(), 2}, {6, q.inc.String(), 4}} {
		b := read(t, q, 1<<20, 100)
		if b.First != want.first || b.Incarnation != want.inc || len(b.Entries) != want.n {
			t.Fatalf("batch from %d of %d entries (incarnation ok: %v), want from %d, %d entries", b.First, len(b.Entries), b.Incarnation == want.inc, want.first, want.n)
		}
		if b.Entries[0].Time != 1000 || b.Entries[0].Category != "cat" {
			t.Fatalf("entry %+v", b.Entries[0])
		}
		got = append(got, messages(b.Entries)...)
		if err := q.Ack(b); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Join(got, ",") != "a-0,a-1,a-2,b-0,b-1,c-0,c-1,c-2,c-3" {
		t.Fatalf("read %v", got)
	}
	if st := q.Stats(); st.Bytes != 0 || st.Lost != 0 || st.Entries != 0 {
		t.Fatalf("stats after acknowledging everything: %+v", st)
	}
	// The v3 segment is read from disk too, after a restart.
	mustAppend(t, q, entries("d", 2))
	q.Close()
	q, _ = open(t, dir, nil)
	defer q.Close()
	if got := strings.Join(readAll(t, q, 2, true), ","); got != "d-0,d-1" {
		t.Fatalf("after a restart: %s", got)
	}
}
