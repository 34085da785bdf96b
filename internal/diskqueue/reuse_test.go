package diskqueue

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// appendLong appends n entries of about 230 bytes, one an Append call
// each: a 2 KiB segment holds eight.
func appendLong(t *testing.T, q *Queue, prefix string, n int) []string {
	return appendSized(t, q, prefix, n, 220)
}

// appendSized appends n entries of size bytes and a prefix, one an
// Append call each.
func appendSized(t *testing.T, q *Queue, prefix string, n, size int) []string {
	t.Helper()
	var want []string
	for i := range n {
		m := fmt.Sprintf("%s-%03d-%s", prefix, i, strings.Repeat("x", size))
		mustAppend(t, q, []Entry{{Category: "cat", Message: []byte(m), Time: int64(i)}})
		want = append(want, m)
	}
	return want
}

// holdsOld reports whether the segment file at path holds an old entry
// (appendLong's "old" prefix; the tests' queues do not compress).
func holdsOld(t *testing.T, path string) bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(b, []byte("old-"))
}

// copyDir copies the queue's files as they are: what a crash of the
// machine would leave of them, all synced.
func copyDir(t *testing.T, from, to string) {
	t.Helper()
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAcknowledgedSegmentFileIsReused: an acknowledged segment's file is
// kept and becomes the next segment (the same file), its old records left
// after the new ones, and those are never read: not while the queue runs
// (the reused segment completed and cut at its records when the next
// began, and read through), not after a clean stop, and not after a
// crash (the machine's files as they were, the reused segment still the
// one before the last, and the last holding nothing old).
func TestAcknowledgedSegmentFileIsReused(t *testing.T) {
	dir := t.TempDir()
	opts := func(o *Options) { o.SegmentBytes, o.Compress = 2048, false }
	q, _ := open(t, dir, opts)
	old := appendLong(t, q, "old", 30)
	if got := drain(t, q); strings.Join(got, ",") != strings.Join(old, ",") {
		t.Fatalf("read %d old entries, want %d", len(got), len(old))
	}
	spares, _ := filepath.Glob(filepath.Join(dir, "spare-*"+segSuffix+tmpSuffix))
	if len(spares) != 1 {
		t.Fatalf("spare files after acknowledging three segments: %v, want one", spares)
	}
	spare, err := os.Stat(spares[0])
	if err != nil {
		t.Fatal(err)
	}
	// Ten new entries of 700 bytes: the first roll takes the spare, the
	// next ones make new files, so the reused segment is complete, not
	// the last; two of them take less of it than its eight old ones did.
	want := appendSized(t, q, "new", 10, 700)
	if left, _ := filepath.Glob(filepath.Join(dir, "spare-*")); len(left) != 0 {
		t.Fatalf("spare not taken by the next segment: %v", left)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "*"+segSuffix))
	reused := ""
	for _, s := range segs {
		if fi, err := os.Stat(s); err == nil && os.SameFile(fi, spare) {
			reused = s
		}
	}
	if reused == "" || reused == segs[len(segs)-1] {
		t.Fatalf("the spare file is segment %q of %v: want one before the last", reused, segs)
	}
	if holdsOld(t, reused) {
		t.Errorf("the reused segment, complete, still holds old records after its own")
	}
	crashed := t.TempDir()
	copyDir(t, dir, crashed)

	if got := readAll(t, q, len(want), true); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("read %q..., want %q...", got[:2], want[:2])
	}
	if st := q.Stats(); st.Lost != 0 || st.Entries != 0 {
		t.Fatalf("stats after reading the new entries: %+v", st)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q, lb := open(t, dir, opts)
	if strings.Contains(lb.String(), "torn") {
		t.Errorf("reopened after a clean stop: %s", lb.String())
	}
	after := appendLong(t, q, "after", 3)
	if got := readAll(t, q, 3, true); strings.Join(got, ",") != strings.Join(after, ",") {
		t.Errorf("after a restart read %q", got)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}

	q, _ = open(t, crashed, opts)
	defer q.Close()
	if got := readAll(t, q, len(want), true); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("after the crash read %q..., want %q...", got[:2], want[:2])
	}
	if st := q.Stats(); st.Lost != 0 || st.Entries != 0 {
		t.Fatalf("stats after the crash and reading the new entries: %+v", st)
	}
}

// TestReusedLastSegmentAfterACrash: the reused file is the last segment
// when the machine stops, its old records after the new: Open cuts them
// as a torn tail, and only the new entries are read.
func TestReusedLastSegmentAfterACrash(t *testing.T) {
	dir := t.TempDir()
	opts := func(o *Options) { o.SegmentBytes, o.Compress = 2048, false }
	q, _ := open(t, dir, opts)
	appendLong(t, q, "old", 30)
	drain(t, q)
	// The last segment holds a few old entries; one more fills it, the
	// next roll takes the spare.
	var want []string
	for len(want) < 30 {
		want = append(want, appendLong(t, q, fmt.Sprint("new", len(want)), 1)...)
		if left, _ := filepath.Glob(filepath.Join(dir, "spare-*")); len(left) == 0 {
			break
		}
	}
	last := lastSegment(t, dir)
	if !holdsOld(t, last) {
		t.Fatal("the reused last segment holds no old records: nothing is tested")
	}
	crashed := t.TempDir()
	copyDir(t, dir, crashed)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	// A clean stop cuts them itself.
	if holdsOld(t, last) {
		t.Error("the reused last segment still holds old records after Close")
	}
	q, lb := open(t, dir, opts)
	if strings.Contains(lb.String(), "torn") {
		t.Errorf("reopened after a clean stop: %s", lb.String())
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(filepath.Join(crashed, filepath.Base(last)))
	if err != nil {
		t.Fatal(err)
	}
	q, lb = open(t, crashed, opts)
	defer q.Close()
	after, err := os.Stat(filepath.Join(crashed, filepath.Base(last)))
	if err != nil {
		t.Fatal(err)
	}
	if after.Size() >= before.Size() {
		t.Fatalf("the reused last segment was %d bytes and is %d: it held no old records to cut", before.Size(), after.Size())
	}
	if !strings.Contains(lb.String(), "torn") {
		t.Errorf("the old records were cut without a word: %s", lb.String())
	}
	if got := readAll(t, q, len(want), true); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("after the crash read %q, want %q", got, want)
	}
	if st := q.Stats(); st.Lost != 0 || st.Entries != 0 {
		t.Fatalf("stats: %+v", st)
	}
}

// TestFailedReuseMakesANewSegment: a spare whose header cannot be
// written (or synced, or renamed) is given up, removed, and the segment
// is made anew: every entry is still appended and read once.
func TestFailedReuseMakesANewSegment(t *testing.T) {
	for _, op := range []FileOp{OpWrite, OpSync, OpRename} {
		t.Run(string(op), func(t *testing.T) {
			dir := t.TempDir()
			f := &faults{only: "spare-"} // a write or sync of the spare file
			if op == OpRename {
				f.only = "" // checked on the new name: the first rename is the reuse's
			}
			q, lb := open(t, dir, func(o *Options) { o.SegmentBytes, o.Compress, o.FileHook = 2048, false, f.hook })
			defer q.Close()
			appendLong(t, q, "old", 30)
			drain(t, q)
			if spares, _ := filepath.Glob(filepath.Join(dir, "spare-*")); len(spares) != 1 {
				t.Fatalf("spares %v, want one", spares)
			}
			f.set(op, 1)
			want := appendSized(t, q, "new", 10, 700)
			if !strings.Contains(lb.String(), "cannot reuse an acknowledged queue segment file") {
				t.Errorf("the failed reuse was not logged: %s", lb.String())
			}
			if spares, _ := filepath.Glob(filepath.Join(dir, "spare-*")); len(spares) != 0 {
				t.Errorf("spare left after a failed reuse: %v", spares)
			}
			if got := readAll(t, q, len(want), true); strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("read %d entries, want %d", len(got), len(want))
			}
			if st := q.Stats(); st.Lost != 0 || st.Entries != 0 || st.WriteErrors != 0 {
				t.Fatalf("stats: %+v", st)
			}
		})
	}
}

// TestReaderLeftOnAReusedSegmentFile: the consumer read a segment to its
// end while it was the last, and acknowledged it once the next one
// existed, without reading again (a consumer that acknowledges now and
// reads later, or a reader goroutine that is slow to run): its file
// became the spare and the segment after the next reused it before the
// reader looked again. The reader must go on from the next segment, not
// read the reused file through the handle it kept: that file now holds
// the new segment's records, which would pass for ones after the old
// segment's (same incarnation, higher numbers), so the reader jumped to
// them and counted everything before them as lost.
func TestReaderLeftOnAReusedSegmentFile(t *testing.T) {
	dir := t.TempDir()
	q, _ := open(t, dir, func(o *Options) { o.SegmentBytes, o.Compress = 2048, false })
	defer q.Close()
	// Records of one "cat" entry take 42+len(message) bytes (a message
	// of 128 to 16383 bytes): A is one record of 642 bytes, so that
	// offset 714 (its end) is the start of the third of a later
	// segment's records of 321 bytes, laid out from offset 72.
	msg := func(prefix string, i, size int) []Entry {
		m := fmt.Sprintf("%s-%03d-", prefix, i)
		m += strings.Repeat("x", size-len(m))
		return []Entry{{Category: "cat", Message: []byte(m), Time: int64(i)}}
	}
	var want []string
	add := func(es []Entry) {
		mustAppend(t, q, es)
		want = append(want, string(es[0].Message))
	}
	add(msg("a", 0, 600))
	b := read(t, q, 1<<20, 1000) // the reader is at A's end, A the last segment
	if len(b.Entries) != 1 {
		t.Fatalf("read %d entries, want 1", len(b.Entries))
	}
	want = want[1:]
	add(msg("b", 0, 1500)) // does not fit in A: B starts
	if st := q.Stats(); st.Segments != 2 {
		t.Fatalf("%d segments, want 2", st.Segments)
	}
	if err := q.Ack(b); err != nil { // A is acknowledged: its file is the spare
		t.Fatal(err)
	}
	if spares, _ := filepath.Glob(filepath.Join(dir, "spare-*")); len(spares) != 1 {
		t.Fatalf("spares %v, want one", spares)
	}
	for i := range 6 { // one more in B, then C reuses A's file
		add(msg("c", i, 279))
	}
	if spares, _ := filepath.Glob(filepath.Join(dir, "spare-*")); len(spares) != 0 {
		t.Fatalf("spare not taken: %v", spares)
	}
	got := drain(t, q)
	if st := q.Stats(); st.Lost != 0 {
		t.Errorf("%d entries counted lost", st.Lost)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("read\n%.20q\nwant\n%.20q", got, want)
	}
}

// TestReusedSegmentIsWrittenUnderItsName: once the spare file is the new
// segment, the queue's writes and syncs to it name the segment, not the
// spare it was (FileHook, errors and logs): a fault injected on a
// segment's name reaches it (TestLargeAndSmallCallsThroughRollsAndFailedCommits
// skips the spare's own operations), and an error names the file that holds
// the entries.
func TestReusedSegmentIsWrittenUnderItsName(t *testing.T) {
	dir := t.TempDir()
	f := &faults{}
	q, _ := open(t, dir, func(o *Options) { o.SegmentBytes, o.Compress, o.FileHook = 2048, false, f.hook })
	defer q.Close()
	appendLong(t, q, "old", 30)
	drain(t, q)
	if spares, _ := filepath.Glob(filepath.Join(dir, "spare-*")); len(spares) != 1 {
		t.Fatalf("spares %v, want one", spares)
	}
	n := len(f.seen())
	want := appendLong(t, q, "new", 12)
	if spares, _ := filepath.Glob(filepath.Join(dir, "spare-*")); len(spares) != 0 {
		t.Fatalf("spare not taken: %v", spares)
	}
	ops := f.seen()[n:]
	renamed := false
	for _, op := range ops {
		switch {
		case strings.HasPrefix(op, "rename ") && !strings.Contains(op, "spare-") && !strings.HasSuffix(op, tmpSuffix):
			renamed = true // the spare's, or a new file's
		case renamed && strings.Contains(op, "spare-"):
			t.Fatalf("%q after the spare became a segment (operations %q)", op, ops)
		}
	}
	if got := readAll(t, q, len(want), true); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("read %q, want %q", got, want)
	}
}
