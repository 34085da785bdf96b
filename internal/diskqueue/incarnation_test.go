package diskqueue

import (
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Every Open starts a new incarnation with its own segment; entries keep
// the incarnation they were appended under, so re-sent ones keep theirs
// while new ones carry the new one, and no batch spans two.
func TestEveryOpenStartsANewIncarnation(t *testing.T) {
	dir := t.TempDir()
	q, lb := open(t, dir, nil)
	mustAppend(t, q, entries("a", 3))
	first := read(t, q, 1<<20, 100) // in flight, never acknowledged
	if len(first.Incarnation) != 32 || first.First != 1 || len(first.Entries) != 3 {
		t.Fatalf("first batch: %d entries from %d, incarnation of %d characters", len(first.Entries), first.First, len(first.Incarnation))
	}
	q.Close()
	segsBefore, _ := filepath.Glob(filepath.Join(dir, "*.seg"))

	q, lb2 := open(t, dir, nil)
	defer q.Close()
	segsAfter, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	if len(segsAfter) != len(segsBefore)+1 {
		t.Fatalf("open started no segment: %v then %v", segsBefore, segsAfter)
	}
	mustAppend(t, q, entries("b", 2))
	resent := read(t, q, 1<<20, 100)
	if resent.First != 1 || resent.Incarnation != first.Incarnation || strings.Join(messages(resent.Entries), ",") != "a-0,a-1,a-2" {
		t.Fatalf("re-sent batch: %d %v, incarnation kept: %v", resent.First, messages(resent.Entries), resent.Incarnation == first.Incarnation)
	}
	fresh := read(t, q, 1<<20, 100)
	if fresh.First != 4 || len(fresh.Entries) != 2 || fresh.Incarnation == first.Incarnation || len(fresh.Incarnation) != 32 {
		t.Fatalf("new batch: %d %v, incarnation new: %v", fresh.First, messages(fresh.Entries), fresh.Incarnation != first.Incarnation)
	}
	for _, logs := range []string{lb.String(), lb2.String()} {
		if strings.Contains(logs, first.Incarnation) || strings.Contains(logs, fresh.Incarnation) {
			t.Fatalf("an incarnation was logged: %s", logs)
		}
	}
	for _, s := range segsAfter {
		if name := filepath.Base(s); strings.Contains(name, first.Incarnation) || strings.Contains(name, fresh.Incarnation) {
			t.Fatalf("an incarnation names a file: %s", name)
		}
	}
}

// The new incarnation's segment is durable (header fsynced, renamed into
// place, directory fsynced) before Open returns, so before any append.
func TestNewIncarnationIsDurableBeforeOpenReturns(t *testing.T) {
	dir := t.TempDir()
	f := &faults{}
	q, _ := openFaulty(t, dir, f, nil)
	defer q.Close()
	want := []string{
		"create " + segName(1) + tmpSuffix, "write " + segName(1) + tmpSuffix, "sync " + segName(1) + tmpSuffix,
		"rename " + segName(1), "syncdir " + filepath.Base(dir),
	}
	if got := f.seen(); !slices.Equal(got[len(got)-len(want):], want) {
		t.Fatalf("file operations at open %v, want them to end with %v", got, want)
	}
}

// A dir copied (or restored) and opened twice gets two incarnations: the
// copies number their new entries alike but under different incarnations.
func TestCopiedQueueDirGetsAnotherIncarnation(t *testing.T) {
	dir := t.TempDir()
	q, _ := open(t, dir, nil)
	mustAppend(t, q, entries("shared", 2))
	q.Close()
	cp := t.TempDir()
	for _, name := range []string{"id", "acked"} {
		copyFile(t, filepath.Join(dir, name), filepath.Join(cp, name))
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	for _, s := range segs {
		copyFile(t, s, filepath.Join(cp, filepath.Base(s)))
	}
	var incs []string
	for _, d := range []string{dir, cp} {
		q, _ := open(t, d, nil)
		mustAppend(t, q, entries("own", 1))
		shared := read(t, q, 1<<20, 100)
		own := read(t, q, 1<<20, 100)
		q.Close()
		if shared.First != 1 || own.First != 3 {
			t.Fatalf("batches from %d and %d", shared.First, own.First)
		}
		incs = append(incs, shared.Incarnation, own.Incarnation)
	}
	if incs[0] != incs[2] || incs[1] == incs[3] || incs[1] == incs[0] || incs[3] == incs[0] {
		t.Fatal("the copies do not keep the shared entries' incarnation and give their own entries distinct ones")
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeV1Segment writes a segment of format v1, as earlier agents did.
func writeV1Segment(t *testing.T, dir string, first uint64, es []Entry) string {
	t.Helper()
	b := v1SegHeader(first)
	for _, e := range es {
		var p []byte
		p = binary.LittleEndian.AppendUint64(p, uint64(e.Time))
		p = binary.AppendUvarint(p, uint64(len(e.Category)))
		p = append(p, e.Category...)
		p = append(p, e.Message...)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(p)))
		b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(p, crcTable))
		b = append(b, p...)
	}
	path := filepath.Join(dir, segName(first))
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Segments of format v1 stay readable after an upgrade; their entries have
// no incarnation (so that re-sent ones deduplicate against what the old
// agent shipped), and new entries continue their numbering in a new
// incarnation, in batches of their own.
func TestV1SegmentsStayReadable(t *testing.T) {
	dir := t.TempDir()
	writeV1Segment(t, dir, 1, entries("v1a", 3))
	last := writeV1Segment(t, dir, 4, entries("v1b", 2))
	appendBytes(t, last, []byte{40, 0, 0, 0, 1, 2}) // a torn tail
	q, lb := open(t, dir, nil)
	defer q.Close()
	if !strings.Contains(lb.String(), "truncating torn queue tail") {
		t.Errorf("the v1 torn tail was not truncated: %s", lb.String())
	}
	if first := mustAppend(t, q, entries("v3", 2)); first != 6 {
		t.Fatalf("first v3 entry numbered %d, want 6", first)
	}
	old := read(t, q, 1<<20, 100)
	if old.First != 1 || old.Incarnation != "" || strings.Join(messages(old.Entries), ",") != "v1a-0,v1a-1,v1a-2,v1b-0,v1b-1" || old.Entries[0].Time != 1000 {
		t.Fatalf("v1 batch: %d %q %v", old.First, old.Incarnation, messages(old.Entries))
	}
	fresh := read(t, q, 1<<20, 100)
	if fresh.First != 6 || fresh.Incarnation == "" || len(fresh.Entries) != 2 {
		t.Fatalf("v3 batch: %d %v", fresh.First, messages(fresh.Entries))
	}
	if err := q.Ack(fresh); err != nil {
		t.Fatal(err)
	}
	if st := q.Stats(); st.Segments != 1 || st.Bytes != 0 || st.Lost != 0 {
		t.Fatalf("stats after acknowledging everything: %+v", st)
	}
}

// A damaged record in a sealed v1 segment cannot be resynchronised past
// (its headers have no sequence number or CRC): the rest of that segment
// is lost, counted exactly, and reading goes on with the next segment.
func TestDamagedV1SegmentSkipsToItsEnd(t *testing.T) {
	dir := t.TempDir()
	seg := writeV1Segment(t, dir, 1, entries("v1a", 5))
	writeV1Segment(t, dir, 6, entries("v1b", 2))
	b, _ := os.ReadFile(seg)
	rec := v1RecHeaderSize + 8 + 1 + 3 + len("v1a-0")
	b[v1HeaderSize+2*rec+v1RecHeaderSize+12] ^= 0xff // the third record's payload
	if err := os.WriteFile(seg, b, 0o644); err != nil {
		t.Fatal(err)
	}
	q, _ := open(t, dir, nil)
	defer q.Close()
	got := drain(t, q)
	if strings.Join(got, ",") != "v1a-0,v1a-1,v1b-0,v1b-1" {
		t.Fatalf("read %v", got)
	}
	if st := q.Stats(); st.Lost != 3 || st.Bytes != 0 {
		t.Fatalf("stats %+v, want 3 lost", st)
	}
}
