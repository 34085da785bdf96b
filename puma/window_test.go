package puma

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/ptail"
)

// seqBlock is a block of agent id with the given sequence numbers, one
// order line of amount 1 each.
func seqBlock(id string, seqs ...uint64) *segment.Block {
	b := agent(id, 1, ones(len(seqs), 1)...)
	b.Seqs = append([]uint64(nil), seqs...)
	return b
}

// bucketSeqs are the numbers of batch [first, first+n) that one bucket
// of three gets.
func bucketSeqs(first, n uint64) []uint64 {
	var out []uint64
	for s := first; s < first+n; s++ {
		if s%3 == 0 {
			out = append(out, s)
		}
	}
	return out
}

// reordered is what a bucket reads of one agent stream with four batches
// of 30 entries in flight: batches overtaking each other, retried after a
// later one was written, a retry of a partly written call.
func reordered(id string) (blocks []*segment.Block, want uint64) {
	b := func(i uint64) []uint64 { return bucketSeqs(1+30*i, 30) }
	for _, seqs := range [][]uint64{
		b(1), b(0), b(1), // batch 2 before batch 1, then batch 2 retried
		b(3), b(2), b(0), b(2), b(3), // 4 before 3, every one again
		b(4)[:5], b(6), b(4), // the first half of 5 (a partial write) then 7, then 5 whole
		b(5), b(6), b(5), // 6 after 7
	} {
		blocks = append(blocks, seqBlock(id, seqs...))
	}
	return blocks, 7 * 10
}

// TestSeenWindowCountsReorderedOnce: entries of one agent stream that
// reach a bucket out of order are each counted once: the high water alone
// dropped every batch overtaken by a later one.
func TestSeenWindowCountsReorderedOnce(t *testing.T) {
	e := newEnv(t, orders(t))
	s := testShard(t, e.node("n1"), 0)
	blocks, want := reordered("a/1")
	total := 0
	for i, b := range blocks {
		s.apply(b, ptail.Position{Offset: int64(i + 1)})
		total += len(b.Seqs)
	}
	if s.entries != want || s.dups != uint64(total)-want {
		t.Fatalf("entries %d dups %d, want %d and %d", s.entries, s.dups, want, uint64(total)-want)
	}
	equalRows(t, "rows", memRows(t, s, Query{}), []string{fmt.Sprintf("+0..+60s {kind=book region=eu} {hi=1 lo=1 mean=1 n=%d total=%d}", want, want)})
}

// TestSeenWindowAcrossRestarts: the same stream with a checkpoint and a
// recovery (on another node) after every block, and every block before
// the cut read again after it (a replay from an older position): each
// entry is counted exactly once whatever the cut.
func TestSeenWindowAcrossRestarts(t *testing.T) {
	blocks, want := reordered("a/1")
	for cut := 0; cut <= len(blocks); cut++ {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			e := newEnv(t, orders(t))
			ctx := context.Background()
			s1 := testShard(t, e.node("n1"), 0)
			for i, b := range blocks[:cut] {
				s1.apply(b, ptail.Position{Offset: int64(i + 1)})
			}
			if err := s1.checkpoint(ctx); err != nil {
				t.Fatal(err)
			}
			s2 := testShard(t, e.node("n2"), 0)
			for i, b := range append(blocks[:cut:cut], blocks...) {
				s2.apply(b, ptail.Position{Offset: int64(100 + i)})
			}
			if got := s1.entries + s2.entries; got != want {
				t.Fatalf("counted %d (%d before the cut, %d after), want %d", got, s1.entries, s2.entries, want)
			}
			equalRows(t, "rows", memRows(t, s2, Query{}), []string{fmt.Sprintf("+0..+60s {kind=book region=eu} {hi=1 lo=1 mean=1 n=%d total=%d}", want, want)})
		})
	}
}

// TestSeenWindowFailedCheckpoint: a checkpoint whose commit fails writes
// its windows again at the retry; a recovery reads the committed ones.
func TestSeenWindowFailedCheckpoint(t *testing.T) {
	e := newEnv(t, orders(t))
	ctx := context.Background()
	fst := &faultStore{Store: e.st}
	s1 := testShard(t, e.node("n1", func(c *Config, d *Deps) { d.Store = fst }), 0)
	s1.apply(seqBlock("a/1", 20, 23), ptail.Position{Offset: 1})
	fst.set(func(f *faultStore) { f.failPut = true })
	if err := s1.checkpoint(ctx); err == nil {
		t.Fatal("checkpoint succeeded through failing puts")
	}
	fst.set(func(f *faultStore) { f.failPut = false })
	if err := s1.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	s2 := testShard(t, e.node("n2"), 0)
	s2.apply(seqBlock("a/1", 20, 21, 22, 23), ptail.Position{Offset: 2})
	if s2.entries != 2 || s2.dups != 2 {
		t.Fatalf("after recovery: entries %d dups %d, want 2 and 2", s2.entries, s2.dups)
	}
}

// TestSeenWindowBelow: an entry further below the highest number than the
// window reaches is taken as a re-send and counted as such; one inside
// the window that was not seen is counted.
func TestSeenWindowBelow(t *testing.T) {
	e := newEnv(t, orders(t))
	p := e.node("n1")
	s := testShard(t, p, 0)
	top := uint64(segment.SeqWindow + 100)
	s.apply(seqBlock("a/1", 1, 2, top), ptail.Position{Offset: 1})
	// 3 and 100 are below the window, 101 its lowest number, the last 101 a repeat.
	s.apply(seqBlock("a/1", 3, 100, 101, top-10, top-segment.SeqWindow+1), ptail.Position{Offset: 2})
	if s.entries != 5 || s.dups != 3 {
		t.Fatalf("entries %d dups %d, want 5 and 3", s.entries, s.dups)
	}
	if got := testutil.ToFloat64(p.m.belowWindow); got != 2 {
		t.Fatalf("below window %v, want 2", got)
	}
}

// TestWindowEncoding: a window reads back as it was, in either encoding.
func TestWindowEncoding(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 200 {
		top := uint64(r.IntN(3 * segment.SeqWindow))
		if i%7 == 0 {
			top = uint64(r.IntN(10))
		}
		w := fullWindow()
		w.slide(0, top) // nothing seen yet: all numbers from 1 to top unseen
		density := []float64{0, 0.01, 0.3, 0.5, 0.99, 1}[i%6]
		for s := uint64(1); s <= top; s++ {
			if r.Float64() < density {
				w.set(s)
			}
		}
		b := encodeWindow(top, w)
		gotTop, got, err := decodeWindow(b)
		if err != nil || gotTop != top {
			t.Fatalf("top %d density %v: %v, top %d", top, density, err, gotTop)
		}
		lo := uint64(1)
		if top >= segment.SeqWindow {
			lo = top - segment.SeqWindow + 1
		}
		for s := lo; s <= top; s++ {
			if got.has(s) != w.has(s) {
				t.Fatalf("top %d density %v format %d: seq %d read back %v", top, density, b[0], s, got.has(s))
			}
		}
		if len(b) > 8*winWords+12 {
			t.Fatalf("top %d density %v: %d bytes", top, density, len(b))
		}
	}
}

// TestForgottenKeyWindowRowDeleted: the window row of a key forgotten at a
// checkpoint is deleted after its commit, and a recovery never gives it
// to a key of the same name seen again.
func TestForgottenKeyWindowRowDeleted(t *testing.T) {
	e := newEnv(t, orders(t))
	ctx := context.Background()
	p := e.node("n1", func(c *Config, d *Deps) { c.MaxAgentsPerShard = 1 })
	s := testShard(t, p, 0)
	s.apply(seqBlock("a/1", 5), ptail.Position{Offset: 1}) // 1..4 unseen: a window
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	rows := func() int {
		n := 0
		prefix := dedupPrefix("orders", 0)
		if err := e.st.Scan(ctx, "puma", prefix, store.PrefixEnd(prefix), store.Latest, func(string, []store.Cell) error { n++; return nil }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if rows() != 1 {
		t.Fatalf("%d window rows, want 1", rows())
	}
	s.apply(seqBlock("b/1", 1), ptail.Position{Offset: 2}) // a/1 forgotten
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if rows() != 0 {
		t.Fatalf("%d window rows after a/1 was forgotten, want 0", rows())
	}
	// a/1 again: a new key, every entry counted.
	s.apply(seqBlock("a/1", 1, 2, 5), ptail.Position{Offset: 3})
	if s.entries != 5 {
		t.Fatalf("entries %d, want 5", s.entries)
	}
}

// BenchmarkDedupAdmit is the seen-window's cost per entry: a stream read
// in order by a one-bucket category (no window kept), every eighth number
// (a bucket of eight), and batches of 1,000 arriving two at a time in
// swapped order.
//
//	go test -run '^$' -bench BenchmarkDedupAdmit ./puma
func BenchmarkDedupAdmit(b *testing.B) {
	for _, c := range []struct {
		name string
		seq  func(i uint64) uint64
	}{
		{"in-order", func(i uint64) uint64 { return i + 1 }},
		{"one-of-8", func(i uint64) uint64 { return 8*i + 3 }},
		{"swapped-batches", func(i uint64) uint64 {
			batch, off := i/1000, i%1000
			return (batch^1)*1000 + off + 1
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			d := newDedup(16, 1<<40)
			k, _, _, _ := d.touch("a/1", 1, 0)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if d.admit(k, c.seq(uint64(i))) != seqNew {
					b.Fatal("an entry seen once taken as a repeat")
				}
				if len(d.dirty) > 0 {
					d.dirty, k.dirty = d.dirty[:0], false
				}
			}
		})
	}
}

// TestBackfillReorderedResumes: a backfill reads an agent's batches out
// of order (pairs swapped, one re-sent late) and is stopped after a
// checkpoint taken between a batch and the one it overtook: resumed on
// another node, it still counts every entry once, because its windows
// are in the commit like the shard's. The high water alone dropped every
// overtaken batch.
func TestBackfillReorderedResumes(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, orders(t))
	r1 := start(t, e.node("n1"))
	var last ptail.Position
	for i := 0; i < 12; i += 2 {
		e.publish("orders", 0, bfBlock(i+1))
		last = e.publish("orders", 0, bfBlock(i))
		if i == 4 {
			last = e.publish("orders", 0, bfBlock(2)) // a late re-send
		}
	}
	waitCommitted(t, r1.p, last)
	equalRows(t, "orders live", rows(t, r1.p, Query{App: "orders", GroupBy: []string{}}), wantOrders(12, nil))
	r1.stop(t)

	e.apps = []*apps.App{orders(t), kindsApp(t, "orders")}
	p2 := e.node("n2")
	s := testShard(t, p2, 0)
	adopt(p2, s)
	bf := s.backfills[0]
	r := s.backfillReader(bf)
	if joined, err := s.backfillStep(bf, r, 3); joined || err != nil { // blocks 1, 0, 3
		t.Fatalf("step: %v %v", joined, err)
	}
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if joined, err := s.backfillStep(bf, r, 2); joined || err != nil {
		t.Fatalf("step: %v %v", joined, err)
	}
	_ = r.Close()
	// Stopped here: block 2, which block 3 overtook, comes after the
	// committed position.

	p3 := e.node("n3")
	s3 := testShard(t, p3, 0)
	s3.release()
	r3 := start(t, p3)
	waitLive(t, p3, "kinds")
	waitCommitted(t, p3, last)
	equalRows(t, "kinds", rows(t, p3, Query{App: "kinds"}), wantKinds(12))
	equalRows(t, "orders", rows(t, p3, Query{App: "orders", GroupBy: []string{}}), wantOrders(12, nil))
	r3.stop(t)
}

// encodeWindowV1 writes a window as the code before the window grew did
// (formats 1 and 2 over segment.SeqWindowV1 numbers): the rows an older
// checkpoint holds. seen says which numbers were seen.
func encodeWindowV1(top uint64, seen func(uint64) bool, bitsFormat bool) []byte {
	lo := lowest(top, segment.SeqWindowV1)
	if bitsFormat {
		b := binary.AppendUvarint([]byte{1}, top)
		ring := make([]uint64, segment.SeqWindowV1/64)
		for s := lo; s <= top; s++ {
			if seen(s) {
				i := s - lo
				ring[i/64] |= 1 << (i % 64)
			}
		}
		for _, x := range ring {
			b = binary.LittleEndian.AppendUint64(b, x)
		}
		return b
	}
	b := binary.AppendUvarint([]byte{2}, top)
	cur, n := false, uint64(0)
	for s := lo; s <= top; s++ {
		if seen(s) != cur {
			b = binary.AppendUvarint(b, n)
			cur, n = !cur, 0
		}
		n++
	}
	return binary.AppendUvarint(b, n)
}

// TestWindowV1RowsRead: a window row of a checkpoint written before the
// window grew (formats 1 and 2, 65,536 numbers) reads back with what it
// held, and the numbers below its span, which that key took as repeats,
// stay repeats; numbers above its top are new. The grown window keeps
// the span it has from then on.
func TestWindowV1RowsRead(t *testing.T) {
	seen := func(s uint64) bool { return s%3 != 0 } // every third unseen
	for _, c := range []struct {
		name string
		top  uint64
		bits bool
	}{{"runs", 300_000, false}, {"bits", 300_000, true}, {"runs, young stream", 1000, false}, {"bits, young stream", 1000, true}} {
		t.Run(c.name, func(t *testing.T) {
			top, w, err := decodeWindow(encodeWindowV1(c.top, seen, c.bits))
			if err != nil || top != c.top {
				t.Fatalf("decode: top %d, %v", top, err)
			}
			lo := lowest(c.top, segment.SeqWindowV1)
			for s := lo; s <= c.top; s++ {
				if w.has(s) != seen(s) {
					t.Fatalf("seq %d read back %v, want %v", s, w.has(s), seen(s))
				}
			}
			d := newDedup(10, 0)
			k := &agentKey{key: "a/1", seq: top}
			d.setWin(k, w)
			// Below the old span: seen then (a repeat), within the grown
			// window now, so checked, and still a repeat.
			if lo > 1 {
				if v := d.admit(k, lo-1); v != seqRepeat {
					t.Errorf("seq %d, below the old window: verdict %d, want a repeat", lo-1, v)
				}
				if v := d.admit(k, lo-3000); v != seqRepeat {
					t.Errorf("seq %d, below the old window: verdict %d, want a repeat", lo-3000, v)
				}
			}
			unseen := c.top - c.top%3 // a multiple of 3 at or below top
			if v := d.admit(k, unseen); v != seqNew {
				t.Errorf("seq %d, unseen inside the old window: verdict %d, want new", unseen, v)
			}
			if v := d.admit(k, unseen); v != seqRepeat {
				t.Errorf("seq %d again: verdict %d, want a repeat", unseen, v)
			}
			if v := d.admit(k, c.top+1); v != seqNew {
				t.Errorf("seq %d above the top: verdict %d, want new", c.top+1, v)
			}
			// Written again, it is in the grown window's format.
			if b := encodeWindow(k.seq, k.win); b[0] != winBits && b[0] != winRuns {
				t.Errorf("written as format %d", b[0])
			}
		})
	}
}
