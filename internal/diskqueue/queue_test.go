package diskqueue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/testkit"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t testing.TB, dir string, mut func(*Options)) (*Queue, *testkit.LogBuffer) {
	t.Helper()
	lb := &testkit.LogBuffer{}
	o := Options{Dir: dir, MaxBytes: 1 << 30, SegmentBytes: 64 << 20, Compress: true, Logger: slog.New(slog.NewTextHandler(lb, nil))}
	if mut != nil {
		mut(&o)
	}
	q, err := Open(o)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return q, lb
}

func entries(prefix string, n int) []Entry {
	es := make([]Entry, n)
	for i := range es {
		es[i] = Entry{Category: "cat", Message: fmt.Appendf(nil, "%s-%d", prefix, i), Time: int64(1000 + i)}
	}
	return es
}

// drain reads and acknowledges every entry the queue holds and returns
// their messages, in order.
func drain(t *testing.T, q *Queue) []string {
	t.Helper()
	var got []string
	for st := q.Stats(); st.Acked < st.NextSeq; st = q.Stats() {
		b := read(t, q, 1<<20, 1000)
		got = append(got, messages(b.Entries)...)
		if err := q.Ack(b); err != nil {
			t.Fatal(err)
		}
	}
	return got
}

func mustAppend(t *testing.T, q *Queue, es []Entry) uint64 {
	t.Helper()
	first, err := q.Append(es)
	if err != nil {
		t.Fatalf("append: %v", err)
	}
	return first
}

func read(t *testing.T, q *Queue, maxBytes, maxEntries int) Batch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := q.Read(ctx, maxBytes, maxEntries)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return b
}

// readAll reads until n entries were returned and checks the numbering.
func readAll(t *testing.T, q *Queue, n int, ack bool) []string {
	t.Helper()
	var got []string
	var next uint64
	for len(got) < n {
		b := read(t, q, 1<<20, min(1000, n-len(got)))
		if next != 0 && b.First != next {
			t.Fatalf("batch starts at %d, want %d", b.First, next)
		}
		next = b.End()
		for _, e := range b.Entries {
			got = append(got, string(e.Message))
		}
		if ack {
			if err := q.Ack(b); err != nil {
				t.Fatalf("ack: %v", err)
			}
		}
	}
	return got
}

func messages(es []Entry) []string {
	var s []string
	for _, e := range es {
		s = append(s, string(e.Message))
	}
	return s
}

func TestAppendReadAck(t *testing.T) {
	q, _ := open(t, t.TempDir(), nil)
	defer q.Close()
	if first := mustAppend(t, q, entries("a", 3)); first != 1 {
		t.Fatalf("first sequence number = %d, want 1", first)
	}
	if first := mustAppend(t, q, entries("b", 2)); first != 4 {
		t.Fatalf("second append starts at %d, want 4", first)
	}
	b := read(t, q, 1<<20, 4)
	if b.First != 1 || len(b.Entries) != 4 || string(b.Entries[3].Message) != "b-0" || b.Entries[0].Category != "cat" || b.Entries[0].Time != 1000 {
		t.Fatalf("first read = %d %v", b.First, messages(b.Entries))
	}
	st := q.Stats()
	if st.Entries != 5 || st.NextSeq != 6 || st.Acked != 1 {
		t.Fatalf("stats before ack = %+v", st)
	}
	if err := q.Ack(b); err != nil {
		t.Fatal(err)
	}
	b2 := read(t, q, 1<<20, 100)
	if b2.First != 5 || len(b2.Entries) != 1 {
		t.Fatalf("second read = %d %v", b2.First, messages(b2.Entries))
	}
	if err := q.Ack(b2); err != nil {
		t.Fatal(err)
	}
	if st := q.Stats(); st.Entries != 0 || st.Bytes != 0 || st.Acked != 6 {
		t.Fatalf("stats after acks = %+v", st)
	}
	if err := q.Ack(b2); err == nil {
		t.Fatal("acknowledging the same batch twice was accepted")
	}
}

func TestReadLimits(t *testing.T) {
	q, _ := open(t, t.TempDir(), nil)
	defer q.Close()
	es := entries("x", 10)
	mustAppend(t, q, es)
	rs := RecordSize(&es[0])
	if b := read(t, q, 3*rs, 100); len(b.Entries) != 3 {
		t.Fatalf("byte bound of 3 records returned %d entries", len(b.Entries))
	}
	if b := read(t, q, 1<<20, 2); len(b.Entries) != 2 || b.First != 4 {
		t.Fatalf("entry bound 2 returned %d from %d", len(b.Entries), b.First)
	}
	if b := read(t, q, 1, 100); len(b.Entries) != 1 || b.First != 6 {
		t.Fatalf("a bound below one record must still return one: %d from %d", len(b.Entries), b.First)
	}
}

func TestReadWaitsForAppend(t *testing.T) {
	q, _ := open(t, t.TempDir(), nil)
	defer q.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := q.Read(ctx, 1<<20, 10); !errors.Is(err, context.Canceled) {
		t.Fatalf("read on an empty queue with a cancelled context = %v", err)
	}
	got := make(chan Batch, 1)
	go func() {
		b, err := q.Read(context.Background(), 1<<20, 10)
		if err != nil {
			t.Error(err)
		}
		got <- b
	}()
	mustAppend(t, q, entries("late", 1))
	if b := <-got; b.First != 1 || string(b.Entries[0].Message) != "late-0" {
		t.Fatalf("waiting read got %+v", b)
	}
}

func TestRestartRedeliversUnacked(t *testing.T) {
	dir := t.TempDir()
	q, _ := open(t, dir, nil)
	id := q.ID()
	mustAppend(t, q, entries("e", 10))
	b := read(t, q, 1<<20, 4)
	if err := q.Ack(b); err != nil {
		t.Fatal(err)
	}
	read(t, q, 1<<20, 3) // in flight, never acknowledged
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}

	q, _ = open(t, dir, nil)
	defer q.Close()
	if q.ID() != id {
		t.Fatalf("id changed across restart: %s then %s", id, q.ID())
	}
	if st := q.Stats(); st.Entries != 6 || st.Acked != 5 || st.NextSeq != 11 {
		t.Fatalf("stats after restart = %+v", st)
	}
	b = read(t, q, 1<<20, 100)
	if b.First != 5 || strings.Join(messages(b.Entries), ",") != "e-4,e-5,e-6,e-7,e-8,e-9" {
		t.Fatalf("redelivered %d %v", b.First, messages(b.Entries))
	}
	if first := mustAppend(t, q, entries("f", 1)); first != 11 {
		t.Fatalf("numbering after restart continues at %d, want 11", first)
	}
}

func TestSegmentsRollAndAreDeletedOnceAcked(t *testing.T) {
	dir := t.TempDir()
	q, _ := open(t, dir, func(o *Options) { o.SegmentBytes, o.Compress = 512, false })
	for i := range 20 {
		mustAppend(t, q, entries(fmt.Sprint("r", i), 5))
	}
	st := q.Stats()
	if st.Segments < 5 {
		t.Fatalf("only %d segments for 100 entries with 512-byte segments", st.Segments)
	}
	got := readAll(t, q, 60, true)
	if got[0] != "r0-0" || got[59] != "r11-4" {
		t.Fatalf("read %v...%v", got[0], got[59])
	}
	if mid := q.Stats(); mid.Segments >= st.Segments {
		t.Fatalf("acknowledging 60 entries deleted no segment (%d then %d)", st.Segments, mid.Segments)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q, _ = open(t, dir, func(o *Options) { o.SegmentBytes = 512 })
	defer q.Close()
	got = readAll(t, q, 40, true)
	if got[0] != "r12-0" || got[39] != "r19-4" {
		t.Fatalf("after restart read %v...%v", got[0], got[39])
	}
	if st := q.Stats(); st.Segments != 1 || st.Entries != 0 || st.Bytes != 0 {
		t.Fatalf("after acknowledging everything: %+v", st)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	if len(segs) != 1 {
		t.Fatalf("segment files left: %v", segs)
	}
}

func lastSegment(t *testing.T, dir string) string {
	t.Helper()
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	if len(segs) == 0 {
		t.Fatal("no segment")
	}
	return segs[len(segs)-1]
}

func appendBytes(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

func TestTornTailIsTruncated(t *testing.T) {
	cases := map[string]func(key uint32) []byte{
		"half a header": func(key uint32) []byte { return tailRecord(key)[:5] },
		"header only":   func(key uint32) []byte { return tailRecord(key)[:v3RecHeaderSize] },
		"half a payload": func(key uint32) []byte {
			r := tailRecord(key)
			return r[:len(r)-4]
		},
		"checksum mismatch": func(key uint32) []byte {
			r := tailRecord(key)
			r[len(r)-1] ^= 0xff
			return r
		},
		"zeros":       func(uint32) []byte { return make([]byte, 4096) },
		"huge length": func(uint32) []byte { return []byte{0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0} },
	}
	for name, tail := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			q, _ := open(t, dir, nil)
			mustAppend(t, q, entries("ok", 3))
			key := q.key
			q.Close()
			seg := lastSegment(t, dir)
			before, _ := os.Stat(seg)
			appendBytes(t, seg, tail(key))

			q, lb := open(t, dir, nil)
			defer q.Close()
			if !strings.Contains(lb.String(), "truncating torn queue tail") {
				t.Errorf("no warning logged: %q", lb.String())
			}
			if strings.Contains(lb.String(), "level=ERROR") {
				t.Errorf("a torn tail logged an error: %q", lb.String())
			}
			if after, _ := os.Stat(seg); after.Size() != before.Size() {
				t.Errorf("segment is %d bytes after recovery, want %d", after.Size(), before.Size())
			}
			if first := mustAppend(t, q, entries("new", 1)); first != 4 {
				t.Errorf("append after recovery got sequence %d, want 4", first)
			}
			if got := strings.Join(readAll(t, q, 4, true), ","); got != "ok-0,ok-1,ok-2,new-0" {
				t.Errorf("read %s", got)
			}
			if st := q.Stats(); st.Lost != 0 || st.Bytes != 0 {
				t.Errorf("stats after reading everything: %+v", st)
			}
		})
	}
}

// tailRecord is the record a crash interrupted: numbers 4 and 5, after
// three, compressed.
func tailRecord(key uint32) []byte {
	m := []byte(strings.Repeat("never acknowledged ", 10))
	return v3Record(key, 4, true, []Entry{{Category: "cat", Message: m, Time: 1}, {Category: "cat", Message: m, Time: 1}})
}

func TestTornSegmentHeaderIsRemoved(t *testing.T) {
	dir := t.TempDir()
	q, _ := open(t, dir, nil)
	mustAppend(t, q, entries("ok", 2))
	q.Close()
	// A crash while a v1 agent rolled: the next segment exists, its
	// header does not.
	if err := os.WriteFile(filepath.Join(dir, segName(3)), []byte("FW"), 0o644); err != nil {
		t.Fatal(err)
	}
	q, lb := open(t, dir, nil)
	defer q.Close()
	if !strings.Contains(lb.String(), "removing a queue segment whose header was never written") {
		t.Errorf("no warning: %q", lb.String())
	}
	if first := mustAppend(t, q, entries("new", 1)); first != 3 {
		t.Fatalf("append got %d, want 3", first)
	}
	if got := strings.Join(readAll(t, q, 3, true), ","); got != "ok-0,ok-1,new-0" {
		t.Fatalf("read %s", got)
	}
}

func TestFullQueueRefusesAndRecovers(t *testing.T) {
	q, _ := open(t, t.TempDir(), func(o *Options) { o.MaxBytes, o.Compress = 1000, false })
	defer q.Close()
	big := []Entry{{Category: "c", Message: bytes.Repeat([]byte("x"), 5000)}}
	if _, err := q.Append(big); err != nil {
		t.Fatalf("an empty queue must admit an oversized append: %v", err)
	}
	if _, err := q.Append(entries("y", 1)); !errors.Is(err, ErrFull) {
		t.Fatalf("append to a full queue = %v, want ErrFull", err)
	}
	before := q.Stats()
	b := read(t, q, 1<<20, 10)
	if err := q.Ack(b); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Append(entries("y", 10)); err != nil {
		t.Fatalf("append after draining: %v", err)
	}
	if _, err := q.Append(entries("z", 100)); !errors.Is(err, ErrFull) {
		t.Fatalf("a refused append must leave nothing behind: %v", err)
	}
	if st := q.Stats(); st.NextSeq != before.NextSeq+10 {
		t.Fatalf("refused appends consumed sequence numbers: %+v", st)
	}
}

// The bound counts the bytes on disk: compressed records take far fewer
// than their entries, and Stats.Bytes is what the segment files grew by.
func TestFullQueueCountsBytesOnDisk(t *testing.T) {
	dir := t.TempDir()
	q, _ := open(t, dir, func(o *Options) { o.MaxBytes = 64 << 10 })
	defer q.Close()
	seg := lastSegment(t, dir)
	es := make([]Entry, 1000)
	var raw int
	for i := range es {
		es[i] = Entry{Category: "cat", Message: fmt.Appendf(nil, `{"key":"k%d","value":1,"pad":"%s"}`, i%10, strings.Repeat("p", 150))}
		raw += RecordSize(&es[i])
	}
	mustAppend(t, q, es[:1]) // the queue is not empty: the bound applies
	if _, err := q.Append(es); err != nil {
		t.Fatalf("append of %d bytes of entries, compressed, into a queue of at most 64 KiB: %v", raw, err)
	}
	st, fi := q.Stats(), statSize(t, seg)
	if st.Bytes != fi-segHeaderSize || st.Bytes >= int64(raw)/4 {
		t.Fatalf("queue bytes %d, segment file %d bytes (%d of records), entries' RecordSize %d", st.Bytes, fi, fi-segHeaderSize, raw)
	}
	if _, err := q.Append(randomMessages(1, 64<<10)); !errors.Is(err, ErrFull) {
		t.Fatalf("append of 64 KiB that does not compress = %v, want ErrFull", err)
	}
}

func statSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// randomMessages is n entries of size random (incompressible) bytes.
func randomMessages(n, size int) []Entry {
	rng := mathrand.New(mathrand.NewPCG(uint64(n), uint64(size)))
	es := make([]Entry, n)
	for i := range es {
		m := make([]byte, size)
		for j := range m {
			m[j] = byte(rng.Uint32())
		}
		es[i] = Entry{Category: "cat", Message: m}
	}
	return es
}

func TestConcurrentAppendsShareSyncs(t *testing.T) {
	q, _ := open(t, t.TempDir(), func(o *Options) { o.SegmentBytes = 8 << 10 })
	defer q.Close()
	const writers, calls, per = 16, 20, 10
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for c := range calls {
				if _, err := q.Append(entries(fmt.Sprintf("w%d-c%d", w, c), per)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	got := readAll(t, q, writers*calls*per, true)
	seen := map[string]bool{}
	for _, m := range got {
		if seen[m] {
			t.Fatalf("%s read twice", m)
		}
		seen[m] = true
	}
	// Each call's entries are consecutive.
	for i := 0; i < len(got); i += per {
		p := strings.TrimSuffix(got[i], "-0")
		for j := range per {
			if got[i+j] != fmt.Sprintf("%s-%d", p, j) {
				t.Fatalf("call %s interleaved at %d: %v", p, i+j, got[i:i+per])
			}
		}
	}
	st := q.Stats()
	t.Logf("%d appends, %d fsyncs, %d segments", writers*calls, st.Syncs, st.Segments)
	if st.Syncs > writers*calls {
		t.Fatalf("more fsyncs (%d) than appends", st.Syncs)
	}
}

func TestSecondOpenOfADirectoryIsRefused(t *testing.T) {
	dir := t.TempDir()
	q, _ := open(t, dir, nil)
	defer q.Close()
	if q2, err := Open(Options{Dir: dir, MaxBytes: 1 << 20, SegmentBytes: 1 << 20}); err == nil {
		q2.Close()
		t.Fatal("a second queue opened the same directory")
	}
}

func TestTornAckSlotFallsBackToThePreviousPosition(t *testing.T) {
	dir := t.TempDir()
	q, _ := open(t, dir, nil)
	mustAppend(t, q, entries("a", 4))
	for range 2 {
		if err := q.Ack(read(t, q, 1<<20, 1)); err != nil {
			t.Fatal(err)
		}
	}
	q.Close()
	// The second Ack (generation 2) went to slot 0: tear it.
	b, _ := os.ReadFile(filepath.Join(dir, "acked"))
	b[5] ^= 0xff
	if err := os.WriteFile(filepath.Join(dir, "acked"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	q, _ = open(t, dir, nil)
	defer q.Close()
	if st := q.Stats(); st.Acked != 2 {
		t.Fatalf("acked after a torn slot = %d, want 2 (the previous position: redelivery, not loss)", st.Acked)
	}
}

// A Scribe call may be up to 256 MiB and a single message nearly that: the
// queue takes records up to MaxRecordBytes (the limit was 64 MiB).
func TestLargeRecords(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped in -short: moves a 65 MiB record")
	}
	q, _ := open(t, t.TempDir(), nil)
	defer q.Close()
	big := bytes.Repeat([]byte("x"), 65<<20)
	big[len(big)-1] = 'y'
	if _, err := q.Append([]Entry{{Category: "big", Message: big}}); err != nil {
		t.Fatalf("append of a 65 MiB entry: %v", err)
	}
	b := read(t, q, 1<<20, 10)
	if len(b.Entries) != 1 || !bytes.Equal(b.Entries[0].Message, big) {
		t.Fatalf("read %d entries back", len(b.Entries))
	}
	// Never touched, so never resident: only its length matters.
	huge := make([]byte, MaxRecordBytes)
	if _, err := q.Append([]Entry{{Category: "big", Message: huge}}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("append over MaxRecordBytes = %v, want ErrTooLarge", err)
	}
	if MaxRecordBytes < 256<<20+1<<20 {
		t.Fatalf("MaxRecordBytes %d is below 257 MiB", MaxRecordBytes)
	}
}

// TestAckWhileReadWaits: the shipper acknowledges a batch while another
// goroutine waits in Read for more (several batches in flight): the wait
// must not hold the acknowledgement up.
func TestAckWhileReadWaits(t *testing.T) {
	q, _ := open(t, t.TempDir(), nil)
	defer q.Close()
	mustAppend(t, q, entries("a", 3))
	b := read(t, q, 1<<20, 10)
	ctx, cancel := context.WithCancel(context.Background())
	waiting := make(chan error, 1)
	go func() {
		_, err := q.Read(ctx, 1<<20, 10)
		waiting <- err
	}()
	time.Sleep(100 * time.Millisecond) // let the Read reach its wait (not an assertion)
	acked := make(chan error, 1)
	go func() { acked <- q.Ack(b) }()
	select {
	case err := <-acked:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second): // a deadlock, not a slow machine
		t.Fatal("Ack blocked while Read waited")
	}
	cancel()
	if err := <-waiting; !errors.Is(err, context.Canceled) {
		t.Fatalf("waiting read = %v", err)
	}
	if st := q.Stats(); st.Entries != 0 {
		t.Fatalf("%d entries left after the ack", st.Entries)
	}
}
