package diskqueue

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
)

// checkKeptChunks checks that every committed chunk kept for the reader
// is, byte for byte, what the file holds where the chunk says it was
// written, and returns the bytes kept.
func checkKeptChunks(t *testing.T, q *Queue) int64 {
	t.Helper()
	q.mu.Lock()
	defer q.mu.Unlock()
	paths := map[uint64]string{}
	for _, s := range q.segs {
		paths[s.id] = s.path
	}
	var n int64
	for i, m := range q.mem {
		p, ok := paths[m.seg]
		if !ok {
			t.Fatalf("kept chunk %d: segment %d is not the queue's", i, m.seg)
		}
		f, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		end := m.off + int64(len(m.data))
		if end > int64(len(f)) {
			t.Fatalf("kept chunk %d: [%d, %d) of %s, which has %d bytes", i, m.off, end, p, len(f))
		}
		if !bytes.Equal(f[m.off:end], m.data) {
			t.Fatalf("kept chunk %d: [%d, %d) of %s differs from the file", i, m.off, end, p)
		}
		n += int64(len(m.data))
	}
	if n != q.memBytes {
		t.Fatalf("kept %d bytes, counted %d", n, q.memBytes)
	}
	return n
}

func randomEntries(rng *rand.Rand, tag string, n int) []Entry {
	es := make([]Entry, n)
	for i := range es {
		m := bytes.Repeat([]byte(tag), 1+rng.IntN(400))
		es[i] = Entry{Category: fmt.Sprintf("c%d", rng.IntN(3)), Message: fmt.Appendf(m, "#%d", i), Time: int64(i)}
	}
	return es
}

// TestKeptChunksAreTheFileBytes: what the commits keep for the reader is
// exactly what they wrote, at the segment and offset recorded, through
// segment rolls within one commit, concurrent appends sharing commits,
// and failed commits (whose chunks must not be kept).
func TestKeptChunksAreTheFileBytes(t *testing.T) {
	f := &faults{}
	dir := t.TempDir()
	q, _ := openFaulty(t, dir, f, func(o *Options) { o.SegmentBytes = 40 << 10 })
	defer q.Close()
	rng := rand.New(rand.NewPCG(5, 6))
	var mu sync.Mutex
	var want []string
	for round := range 12 {
		if round%4 == 3 {
			f.set(OpWrite, 1) // this round's first commit fails and is rolled back
		}
		var wg sync.WaitGroup
		for g := range 3 {
			mu.Lock()
			es := randomEntries(rng, fmt.Sprintf("r%dg%d.", round, g), 20+rng.IntN(200))
			mu.Unlock()
			wg.Go(func() {
				if _, err := q.Append(es); err != nil {
					return // a failed commit: nothing of it is kept
				}
				mu.Lock()
				want = append(want, messages(es)...)
				mu.Unlock()
			})
		}
		wg.Wait()
		f.clear()
		if n := checkKeptChunks(t, q); n == 0 {
			t.Fatalf("round %d: nothing kept for the reader", round)
		}
	}
	if st := q.Stats(); st.WriteErrors == 0 || st.Segments < 3 {
		t.Fatalf("the test did not exercise failed commits and rolls: %+v", st)
	}
	// The reader then reads everything, from memory where it can.
	got := readAll(t, q, len(want), true)
	if len(got) != len(want) {
		t.Fatalf("read %d entries, want %d", len(got), len(want))
	}
	counts := func(s []string) map[string]int {
		m := map[string]int{}
		for _, x := range s {
			m[x]++
		}
		return m
	}
	gm, wm := counts(got), counts(want)
	for k, v := range wm {
		if gm[k] != v {
			t.Fatalf("entry %q read %d times, appended %d", k, gm[k], v)
		}
	}
}

// TestReadBackFromMemory: a reader at the durable end takes what each
// commit wrote from memory, not from the file, and delivers exactly what
// was appended.
func TestReadBackFromMemory(t *testing.T) {
	q, _ := open(t, t.TempDir(), func(o *Options) { o.SegmentBytes = 1 << 20 })
	defer q.Close()
	rng := rand.New(rand.NewPCG(7, 8))
	var total int64
	for round := range 40 {
		es := randomEntries(rng, fmt.Sprintf("r%d.", round), 1+rng.IntN(500))
		mustAppend(t, q, es)
		total += q.Stats().Bytes // the records on disk: the rounds before are acknowledged
		got := readAll(t, q, len(es), true)
		if fmt.Sprint(got) != fmt.Sprint(messages(es)) {
			t.Fatalf("round %d: read %d entries that differ from those appended", round, len(got))
		}
	}
	q.mu.Lock()
	taken := q.memTaken
	q.mu.Unlock()
	if taken != total {
		t.Fatalf("took %d record bytes from memory, want all %d appended", taken, total)
	}
}

// TestReadBackFallsBackToDisk: a reader more than memBytesMax behind
// reads what was not kept from the files; at a restart nothing is in
// memory and everything unacknowledged comes from the files.
func TestReadBackFallsBackToDisk(t *testing.T) {
	dir := t.TempDir()
	// Uncompressed, so that RecordSize is the bytes on disk.
	q, _ := open(t, dir, func(o *Options) { o.SegmentBytes, o.Compress = 4<<20, false })
	rng := rand.New(rand.NewPCG(9, 10))
	var want []string
	var total int64
	for round := 0; total < 3*memBytesMax/2; round++ {
		es := randomEntries(rng, fmt.Sprintf("r%d.", round), 1000)
		for i := range es {
			total += int64(RecordSize(&es[i]))
		}
		mustAppend(t, q, es)
		want = append(want, messages(es)...)
	}
	if kept := checkKeptChunks(t, q); kept > memBytesMax || kept < memBytesMax/2 {
		t.Fatalf("kept %d bytes for the reader, want at most %d and most of them", kept, memBytesMax)
	}
	half := len(want) / 2
	got := readAll(t, q, half, true) // acknowledges the first half
	got = append(got, readAll(t, q, len(want)-half, false)...)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatal("read entries that differ from those appended")
	}
	q.mu.Lock()
	taken, mem := q.memTaken, len(q.mem)
	q.mu.Unlock()
	if taken == 0 || taken >= total || mem != 0 {
		t.Fatalf("took %d of %d bytes from memory, %d chunks left kept; want some, not all, none left", taken, total, mem)
	}
	// A restart: the unacknowledged half from the files.
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q, _ = open(t, dir, func(o *Options) { o.SegmentBytes = 4 << 20 })
	defer q.Close()
	got = readAll(t, q, len(want)-half, true)
	if fmt.Sprint(got) != fmt.Sprint(want[half:]) {
		t.Fatal("after a restart, read entries that differ from those appended")
	}
	q.mu.Lock()
	taken = q.memTaken
	q.mu.Unlock()
	if taken != 0 {
		t.Fatalf("took %d bytes from memory after a restart", taken)
	}
}

// TestDamageOnDiskIsFoundOnceReadFromDisk: a byte of a record flipped on
// disk after its commit does not touch the copy the reader takes from
// memory (the entry is delivered as appended); once the reader has to
// read the file (after a restart), the damage is found and the record
// alone is lost.
func TestDamageOnDiskIsFoundOnceReadFromDisk(t *testing.T) {
	dir := t.TempDir()
	q, _ := open(t, dir, nil)
	var want []string
	for seq := uint64(1); seq <= 20; seq++ {
		mustAppend(t, q, []Entry{{Category: "cat", Message: []byte(msgOf(seq)), Time: int64(seq)}})
		want = append(want, msgOf(seq))
	}
	path, off := findRecord(t, dir, 7, formats[0])
	flipByte(t, path, off+formats[0].msgOff+1) // in record 7's message
	got := readAll(t, q, len(want), false)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("read from memory %v, want %v", got, want)
	}
	if st := q.Stats(); st.Lost != 0 {
		t.Fatalf("lost %d entries reading from memory", st.Lost)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q, logs := open(t, dir, nil)
	defer q.Close()
	got = nil
	for len(got) < len(want)-1 { // no numbering check: record 7 is skipped
		b := read(t, q, 1<<20, 100)
		got = append(got, messages(b.Entries)...)
	}
	wantAfter := append(append([]string{}, want[:6]...), want[7:]...)
	if fmt.Sprint(got) != fmt.Sprint(wantAfter) {
		t.Fatalf("read from disk %v, want %v", got, wantAfter)
	}
	if st := q.Stats(); st.Lost != 1 || !strings.Contains(logs.String(), "checksum mismatch") {
		t.Fatalf("after a restart: lost %d entries, want 1; log:\n%s", st.Lost, logs.String())
	}
}

// TestAcknowledgedBatchesAreReused: once a batch is acknowledged, its
// Entries slice serves a later batch; reading and acknowledging in the
// steady state allocates nothing.
func TestAcknowledgedBatchesAreReused(t *testing.T) {
	q, _ := open(t, t.TempDir(), nil)
	defer q.Close()
	for range 50 {
		mustAppend(t, q, entries("x", 1000))
	}
	ctx := context.Background()
	cycle := func() {
		b, err := q.Read(ctx, 1<<20, 100)
		if err != nil || len(b.Entries) == 0 {
			t.Fatalf("read: %d entries, %v", len(b.Entries), err)
		}
		if err := q.Ack(b); err != nil {
			t.Fatal(err)
		}
	}
	for range 10 {
		cycle() // warm up: buffers taken
	}
	if n := testing.AllocsPerRun(200, cycle); n != 0 {
		t.Fatalf("a read and its acknowledgement allocate %.1f times, want 0", n)
	}
}

// TestLargeAndSmallCallsThroughRollsAndFailedCommits: calls from a few
// entries to several records (records encoded in place, or compressed,
// several to a chunk), segment rolls between two records of one chunk,
// failed commits (whose callers fail, or append again), and a reader
// right behind that gives the chunks back to the appenders once
// acknowledged. Every entry Append accepted is read back at its number,
// and every kept chunk is the file's bytes.
func TestLargeAndSmallCallsThroughRollsAndFailedCommits(t *testing.T) {
	for _, compress := range []bool{false, true} {
		t.Run(fmt.Sprintf("compress=%v", compress), func(t *testing.T) {
			// Commits fail, acknowledgements do not. Nor do spare files:
			// a spare's failure does not fail its commit (a new file is
			// made instead, TestFailedReuseMakesANewSegment).
			f := &faults{only: ".seg", skip: "spare-"}
			q, _ := openFaulty(t, t.TempDir(), f, func(o *Options) {
				o.SegmentBytes = 300 << 10
				o.Compress, o.CompressAbove = compress, 0
			})
			defer q.Close()
			rng := rand.New(rand.NewPCG(7, 8))
			var mu sync.Mutex
			want := map[uint64]string{} // by sequence number
			got := map[uint64]string{}
			appended := make(chan struct{})
			readerDone := make(chan struct{})
			go func() {
				defer close(readerDone)
				for {
					ctx, cancel := context.WithCancel(context.Background())
					go func() {
						select {
						case <-appended:
						case <-readerDone:
						}
						cancel()
					}()
					b, err := q.Read(ctx, 1<<20, 5000)
					cancel()
					if err != nil {
						return // appended: the rest is read below
					}
					mu.Lock()
					for i, e := range b.Entries {
						got[b.First+uint64(i)] = string(e.Message)
					}
					mu.Unlock()
					if err := q.Ack(b); err != nil {
						t.Error(err)
						return
					}
				}
			}()
			for round := range 16 {
				if round%4 == 3 {
					f.set(OpWrite, 1) // a commit fails: its callers fail, the pending ones append again
				}
				var wg sync.WaitGroup
				for g := range 4 {
					n := 5 + rng.IntN(50)
					if g%2 == 0 {
						n = 600 + rng.IntN(3000) // half a chunk to several
					}
					es := make([]Entry, n)
					for i := range es {
						// Half random, half repeated: compressed records are
						// about half their size, several to a buffer.
						m := make([]byte, 100+rng.IntN(300))
						for j := range len(m) / 2 {
							m[j] = byte(rng.IntN(256))
						}
						es[i] = Entry{Category: "c", Message: fmt.Appendf(m, "r%dg%d#%d", round, g, i), Time: int64(i)}
					}
					wg.Go(func() {
						first, err := q.Append(es)
						if err != nil {
							return // a failed commit: nothing of it is kept
						}
						mu.Lock()
						for i, e := range es {
							want[first+uint64(i)] = string(e.Message)
						}
						mu.Unlock()
					})
				}
				wg.Wait()
				f.clear()
				checkKeptChunks(t, q)
			}
			close(appended)
			<-readerDone
			st := q.Stats()
			rolls := 0
			for _, op := range f.seen() {
				if strings.HasPrefix(op, string(OpRename)+" ") {
					rolls++
				}
			}
			if st.WriteErrors == 0 || rolls < 10 {
				t.Fatalf("the test did not exercise failed commits and rolls: %d rolls, %+v", rolls, st)
			}
			rest := readAll(t, q, int(st.NextSeq-1-uint64(len(got))), true)
			next := uint64(len(got)) + 1
			for i, m := range rest {
				got[next+uint64(i)] = m
			}
			if len(got) != len(want) {
				t.Fatalf("read %d entries, appended %d", len(got), len(want))
			}
			for seq, m := range want {
				if got[seq] != m {
					t.Fatalf("entry %d: read %.20q, appended %.20q", seq, got[seq], m)
				}
			}
		})
	}
}
