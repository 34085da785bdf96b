package diskqueue

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
)

// TestBatchesKeepTheirBytes: the reader hands out payloads where they
// lie in its buffer, not copied; a batch kept while later ones are read
// (the shipper keeps up to max_in_flight batches) must still hold its
// entries as appended. Messages of every size, one in each bulk larger
// than the buffer, so that records straddle its refills; appended in small
// commits while the reader is at the durable end (reads that append to
// a half-filled buffer) and in large ones; over several segments.
func TestBatchesKeepTheirBytes(t *testing.T) {
	q, _ := open(t, t.TempDir(), func(o *Options) { o.SegmentBytes = 3 << 20 })
	defer q.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	var want [][]byte
	var kept []Batch
	add := func(n int) {
		es := make([]Entry, n)
		for i := range es {
			size := rng.IntN(600)
			switch {
			case n > 100 && i == n/2:
				size = scanBuf + rng.IntN(scanBuf) // larger than a buffer
			case rng.IntN(100) == 0:
				size = minRead + rng.IntN(minRead)
			}
			// A pattern of its own per message: a reused buffer shows.
			m := bytes.Repeat(fmt.Appendf(nil, "%d.", len(want)), size/2+1)[:size]
			m = fmt.Appendf(m, "#%d", len(want))
			want = append(want, m)
			es[i] = Entry{Category: fmt.Sprintf("c%d", rng.IntN(3)), Message: m, Time: int64(len(want))}
		}
		mustAppend(t, q, es)
	}
	readUpTo := func(n int) {
		for got := 0; got < n; {
			b := read(t, q, 1<<20, 1+rng.IntN(300))
			kept = append(kept, b)
			got += len(b.Entries)
		}
	}
	for round := range 30 {
		if round%2 == 0 {
			add(1 + rng.IntN(3)) // a trickle: the reader waits at the end
			readUpTo(len(want) - entriesIn(kept))
		} else {
			add(200 + rng.IntN(400))
			readUpTo(len(want) - entriesIn(kept))
		}
	}
	next := uint64(1)
	for _, b := range kept {
		if b.First != next {
			t.Fatalf("batch starts at %d, want %d", b.First, next)
		}
		for i, e := range b.Entries {
			k := int(b.First) - 1 + i
			if !bytes.Equal(e.Message, want[k]) || e.Time != int64(k+1) {
				t.Fatalf("entry %d (seq %d) changed after later reads: %d bytes, time %d; want %d bytes, time %d",
					k, b.First+uint64(i), len(e.Message), e.Time, len(want[k]), k+1)
			}
		}
		next = b.End()
	}
	if int(next-1) != len(want) {
		t.Fatalf("read %d entries, appended %d", next-1, len(want))
	}
}

func entriesIn(bs []Batch) int {
	n := 0
	for _, b := range bs {
		n += len(b.Entries)
	}
	return n
}

// TestBatchesKeepTheirBytesUntilAcked reads as the shipper does: up to
// four batches read and not acknowledged, the oldest acknowledged (one at
// a time or several at once) while more are read. Buffers are read into
// again once their payloads are acknowledged; every batch must still be
// what was appended when it is acknowledged, and the last ones at the
// end.
func TestBatchesKeepTheirBytesUntilAcked(t *testing.T) {
	q, _ := open(t, t.TempDir(), func(o *Options) { o.SegmentBytes = 3 << 20 })
	defer q.Close()
	rng := rand.New(rand.NewPCG(3, 4))
	var want [][]byte
	add := func(n int) {
		es := make([]Entry, n)
		for i := range es {
			size := rng.IntN(3000)
			if rng.IntN(200) == 0 {
				size = minRead + rng.IntN(scanBuf)
			}
			m := bytes.Repeat(fmt.Appendf(nil, "%d.", len(want)), size/2+1)[:size]
			m = fmt.Appendf(m, "#%d", len(want))
			want = append(want, m)
			es[i] = Entry{Category: "c", Message: m, Time: int64(len(want))}
		}
		mustAppend(t, q, es)
	}
	check := func(b Batch) {
		t.Helper()
		for i, e := range b.Entries {
			k := int(b.First) - 1 + i
			if !bytes.Equal(e.Message, want[k]) {
				t.Fatalf("entry %d (seq %d) changed before it was acknowledged: %.40q..., want %.40q...", k, b.First+uint64(i), e.Message, want[k])
			}
		}
	}
	var window []Batch
	nread := 0
	for range 60 {
		add(100 + rng.IntN(500))
		for nread < len(want) {
			for len(window) < 4 && nread < len(want) {
				b := read(t, q, 256<<10, 1+rng.IntN(400))
				window = append(window, b)
				nread += len(b.Entries)
			}
			n := 1 + rng.IntN(len(window))
			for _, b := range window {
				check(b)
			}
			if err := q.Ack(window[n-1]); err != nil {
				t.Fatal(err)
			}
			window = append(window[:0], window[n:]...)
		}
	}
	for _, b := range window {
		check(b)
	}
}

// TestReadBuffersAreReused: a reader whose batches are acknowledged reads
// into the buffers it read before, instead of a new megabyte for each
// megabyte read.
func TestReadBuffersAreReused(t *testing.T) {
	q, _ := open(t, t.TempDir(), func(o *Options) { o.SegmentBytes = 64 << 20 })
	defer q.Close()
	msg := bytes.Repeat([]byte("x"), 1000)
	es := make([]Entry, 1000)
	for i := range es {
		es[i] = Entry{Category: "c", Message: msg}
	}
	const rounds = 32 // about 32 MB through the reader
	var before, after runtime.MemStats
	for r := range rounds + 4 {
		if r == 4 { // the buffers warmed up
			runtime.ReadMemStats(&before)
		}
		mustAppend(t, q, es)
		for got := 0; got < len(es); {
			b := read(t, q, 256<<10, 10000)
			got += len(b.Entries)
			if err := q.Ack(b); err != nil {
				t.Fatal(err)
			}
		}
	}
	runtime.ReadMemStats(&after)
	// Appending and reading allocate a little per batch and entry; a new
	// buffer for each megabyte read would be 32 MB.
	if got := after.TotalAlloc - before.TotalAlloc; got > 8<<20 {
		t.Errorf("%d MB allocated to read %d MB", got>>20, rounds)
	}
}
