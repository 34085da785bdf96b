package puma

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/store"
)

// putLog is a store that reports each Put of cell rows and can fail the
// n-th of them.
type putLog struct {
	store.Store
	mu     sync.Mutex
	puts   [][]store.Cell
	failAt int // the Put of cell rows that fails (1-based; 0: none)
	seen   chan int
}

func (p *putLog) Put(ctx context.Context, table string, cells []store.Cell) error {
	if len(cells) == 0 || !strings.HasPrefix(cells[0].Row, "s/") {
		return p.Store.Put(ctx, table, cells)
	}
	p.mu.Lock()
	p.puts = append(p.puts, cells)
	n, fail := len(p.puts), len(p.puts) == p.failAt
	p.mu.Unlock()
	if p.seen != nil {
		p.seen <- n
	}
	if fail {
		return errInjected
	}
	return p.Store.Put(ctx, table, cells)
}

// TestCellWriterPutsWhileTaking: the writer puts a chunk as soon as it
// is sent, before the checkpoint has sent the rest (the marker first):
// taking the cells and writing them overlap.
func TestCellWriterPutsWhileTaking(t *testing.T) {
	e := newEnv(t, orders(t))
	pl := &putLog{Store: e.st, seen: make(chan int, 4)}
	s := testShard(t, e.node("n1", func(c *Config, d *Deps) { d.Store = pl }), 0)
	w := newCellWriter(context.Background(), s, s.nextEpoch)
	chunk := func(i int) []store.Cell {
		return []store.Cell{{Row: fmt.Sprintf("s/x/%d", i), Column: "v", Timestamp: s.nextEpoch, Value: []byte{1}}}
	}
	w.send(chunk(1))
	select {
	case n := <-pl.seen:
		if n != 1 {
			t.Fatalf("put %d, want the first chunk", n)
		}
	case <-time.After(time.Minute):
		t.Fatal("the first chunk was not put while the checkpoint was still taking cells")
	}
	w.send(chunk(2))
	w.finish()
	if w.err != nil || w.fenced || w.puts != 2 {
		t.Fatalf("err %v, fenced %v, %d puts; want 2 puts", w.err, w.fenced, w.puts)
	}
	_, _, attempt, err := readCommit(context.Background(), e.st, s.p.cfg.Table, s.category, s.bucket)
	if err != nil || attempt != s.nextEpoch {
		t.Fatalf("attempt marker %d (%v), want %d", attempt, err, s.nextEpoch)
	}
}

// TestCellWriterBuildsWhilePutting: while the store holds a chunk's Put,
// the writer takes the next chunk from the queue and builds its store
// cells, so that the Puma side of the writing overlaps the store's; the
// chunks are put in the order sent.
func TestCellWriterBuildsWhilePutting(t *testing.T) {
	e := newEnv(t, orders(t))
	pl := &putLog{Store: e.st, seen: make(chan int)} // each Put waits for the test
	s := testShard(t, e.node("n1", func(c *Config, d *Deps) { d.Store = pl }), 0)
	w := newCellWriter(context.Background(), s, s.nextEpoch)
	chunk := func(key string) *cellChunk {
		return &cellChunk{prefix: "s/x/", epoch: w.epoch, windows: []int64{0}, keys: []string{key}, ends: []int32{1}, vals: []byte{1}}
	}
	w.sendChunk(chunk("a"))
	w.sendChunk(chunk("b"))
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) { // polling only: nothing is asserted on time
		w.mu.Lock()
		queued := len(w.queue)
		w.mu.Unlock()
		if queued == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second chunk stayed in the queue while the store held the first one's Put")
		}
	}
	for i := 1; i <= 2; i++ {
		if got := <-pl.seen; got != i {
			t.Fatalf("put %d, want %d", got, i)
		}
	}
	w.finish()
	if w.err != nil || w.fenced || w.puts != 2 {
		t.Fatalf("err %v, fenced %v, %d puts; want 2", w.err, w.fenced, w.puts)
	}
	for i, key := range []string{"a", "b"} {
		if want := "s/x/" + windowKey(0) + "/" + key; pl.puts[i][0].Row != want {
			t.Fatalf("put %d is %s, want %s", i+1, pl.puts[i][0].Row, want)
		}
	}
}

// TestCheckpointPutFailsMidway: a checkpoint of several chunks, whose
// second Put fails, returns the error,
// writes no commit and marks every cell it took changed again; the next
// checkpoint writes them all, in chunks in row order, and a new owner
// recovers exactly what was in memory. Memory is returned to the OS
// after the large checkpoint that succeeded and after the large
// recovery, not after the failed or a small checkpoint.
func TestCheckpointPutFailsMidway(t *testing.T) {
	e := newEnv(t, orders(t))
	pl := &putLog{Store: e.st, failAt: 2}
	ctx := context.Background()
	p1 := e.node("n1", func(c *Config, d *Deps) { d.Store = pl })
	var released int
	p1.releaseMemory = func() { released++ }
	s := testShard(t, p1, 0)
	// Several chunks, at least releaseCells cells.
	n := max(3*putChunk, releaseCells) + 1000
	lines := make([][]byte, 0, 1000)
	for i := 0; i < n; i += 1000 {
		lines = lines[:0]
		for j := i; j < min(i+1000, n); j++ {
			lines = append(lines, order(t0, fmt.Sprint("r", j%1000), fmt.Sprint("k", j/1000), j))
		}
		feed(s, int64(i+1), lines...)
	}
	E := s.committed.Epoch
	if err := s.checkpoint(ctx); !errors.Is(err, errInjected) {
		t.Fatalf("checkpoint: %v, want the injected failure", err)
	}
	if s.committed.Epoch != E {
		t.Fatalf("committed epoch %d after a failed put, want %d", s.committed.Epoch, E)
	}
	if released != 0 {
		t.Fatalf("memory released %d times before a checkpoint succeeded, want none", released)
	}
	pl.mu.Lock()
	pl.puts, pl.failAt = nil, 0
	pl.mu.Unlock()
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	var last string
	total := 0
	for i, p := range pl.puts {
		if len(p) > putChunk || (i < len(pl.puts)-1 && len(p) != putChunk) {
			t.Fatalf("put %d of %d cells, want chunks of %d", i, len(p), putChunk)
		}
		for _, c := range p {
			if c.Row <= last {
				t.Fatalf("row %q put after %q", c.Row, last)
			}
			last = c.Row
		}
		total += len(p)
	}
	if total != n {
		t.Fatalf("the checkpoint after the failure put %d cells, want every one of the %d", total, n)
	}
	// A checkpoint of at least releaseCells cells returns its memory to
	// the OS; a small one does not.
	if released != 1 {
		t.Fatalf("memory released %d times after a checkpoint of %d cells, want once", released, n)
	}
	feed(s, int64(n+1), order(t0, "r0", "k0", 1))
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if released != 1 {
		t.Fatalf("memory released after a checkpoint of one cell (%d in all), want only after the large one", released)
	}
	want := memRows(t, s, Query{App: "orders", GroupBy: []string{}, AllWindows: true})
	p2 := e.node("n2")
	var released2 int
	p2.releaseMemory = func() { released2++ }
	s2 := testShard(t, p2, 0)
	if released2 != 1 {
		t.Fatalf("memory released %d times after recovering %d cells, want once", released2, n)
	}
	equalRows(t, "recovered", memRows(t, s2, Query{App: "orders", GroupBy: []string{}, AllWindows: true}), want)
	if got := s2.tables[0].ncells; got != n {
		t.Fatalf("recovered %d cells, want %d", got, n)
	}
}

// sendAll sends n one-cell chunks to w on a goroutine of its own and
// returns a channel closed once every send has returned.
func sendAll(w *cellWriter, n int) <-chan struct{} {
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := 1; i <= n; i++ {
			w.send([]store.Cell{{Row: fmt.Sprintf("s/x/%03d", i), Column: "v", Timestamp: w.epoch, Value: []byte{1}}})
		}
	}()
	return sent
}

// waitForTaker waits until a send waits for room in w's full queue, and fails
// the test if every send returned instead (the queue took them all while
// the store held the first Put).
func waitForTaker(t *testing.T, w *cellWriter, sent <-chan struct{}) {
	t.Helper()
	for {
		select {
		case <-sent:
			t.Fatal("every chunk was queued while the store held the first Put: the queue is not bounded")
		default:
		}
		w.mu.Lock()
		waiting, queued := w.waiting, len(w.queue)
		w.mu.Unlock()
		if queued > w.limit {
			t.Fatalf("%d chunks queued, more than the limit %d", queued, w.limit)
		}
		if waiting > 0 && queued == w.limit {
			return
		}
		time.Sleep(time.Millisecond) // polling only: nothing is asserted on time
	}
}

// TestCellWriterQueueIsBounded: while the store holds a Put, the taker
// queues queueChunks chunks (besides the one being put, the one built for
// the next Put and the one being built) and then waits for room; once
// the store goes on, every chunk is put, in the order sent.
func TestCellWriterQueueIsBounded(t *testing.T) {
	e := newEnv(t, orders(t))
	pl := &putLog{Store: e.st, seen: make(chan int)} // each Put waits for the test
	s := testShard(t, e.node("n1", func(c *Config, d *Deps) { d.Store = pl }), 0)
	w := newCellWriter(context.Background(), s, s.nextEpoch)
	n := queueChunks + 5 // 3 out of the queue, then 2 more than it holds
	sent := sendAll(w, n)
	waitForTaker(t, w, sent)
	for i := 1; i <= n; i++ {
		if got := <-pl.seen; got != i {
			t.Fatalf("put %d, want %d", got, i)
		}
	}
	<-sent
	w.finish()
	if w.err != nil || w.fenced || w.puts != n {
		t.Fatalf("err %v, fenced %v, %d puts; want %d", w.err, w.fenced, w.puts, n)
	}
	for i, p := range pl.puts {
		if want := fmt.Sprintf("s/x/%03d", i+1); p[0].Row != want {
			t.Fatalf("put %d is %s, want %s", i, p[0].Row, want)
		}
	}
}

// TestCellWriterFailureReleasesTaker: a Put that fails while the taker
// waits for room lets the taker go on (it does not wait for a writer
// that puts nothing more), nothing after the failure is put, and the
// writer reports the error (the checkpoint then marks every cell it took
// changed again: TestCheckpointPutFailsMidway).
func TestCellWriterFailureReleasesTaker(t *testing.T) {
	e := newEnv(t, orders(t))
	pl := &putLog{Store: e.st, seen: make(chan int), failAt: 1}
	s := testShard(t, e.node("n1", func(c *Config, d *Deps) { d.Store = pl }), 0)
	w := newCellWriter(context.Background(), s, s.nextEpoch)
	sent := sendAll(w, queueChunks+5)
	waitForTaker(t, w, sent)
	if got := <-pl.seen; got != 1 { // the first Put goes on, and fails
		t.Fatalf("put %d, want 1", got)
	}
	<-sent // hangs (and the test times out) if the taker is left waiting
	w.finish()
	if !errors.Is(w.err, errInjected) || w.puts != 0 {
		t.Fatalf("err %v, %d puts; want the injected failure and none", w.err, w.puts)
	}
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if len(pl.puts) != 1 {
		t.Fatalf("%d Puts tried, want only the one that failed", len(pl.puts))
	}
}

// TestCheckpointPutsCellsAsTaken: the writer builds the store cells of a
// chunk after the shard's lock is released (here it stalls past the
// marker), while lines add keys to the same window (its key bytes grow)
// and change the cells taken; what is put and committed is what was
// taken: a new owner recovers exactly the state at the checkpoint.
func TestCheckpointPutsCellsAsTaken(t *testing.T) {
	e := newEnv(t, orders(t))
	ctx := context.Background()
	p1 := e.node("n1")
	marked, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	p1.afterMark = func(string, int) {
		once.Do(func() {
			close(marked)
			<-resume
		})
	}
	s := testShard(t, p1, 0)
	const n = 3000
	lines := make([][]byte, 0, n)
	for j := range n {
		lines = append(lines, order(t0, fmt.Sprint("r", j%100), fmt.Sprint("k", j/100), j))
	}
	feed(s, 1, lines...)
	q := Query{App: "orders", GroupBy: []string{}, AllWindows: true}
	want := memRows(t, s, q)
	done := make(chan error, 1)
	go func() { done <- s.checkpoint(ctx) }()
	<-marked
	// Each apply waits for the lock, which the checkpoint holds until it
	// has taken every cell.
	for i := range 20 {
		lines = lines[:0]
		for j := range 1000 {
			lines = append(lines, order(t0, fmt.Sprint("new", i, "-", j), "k0", 1), order(t0, fmt.Sprint("r", j%100), fmt.Sprint("k", j%30), 1000))
		}
		feed(s, int64(2+i), lines...)
	}
	close(resume)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := memRows(t, s, q); slices.Equal(got, want) {
		t.Fatal("the lines after the checkpoint changed nothing in memory")
	}
	s2 := testShard(t, e.node("n2"), 0)
	equalRows(t, "recovered", memRows(t, s2, q), want)
	if got := s2.tables[0].ncells; got != n {
		t.Fatalf("recovered %d cells, want the %d taken", got, n)
	}
}
