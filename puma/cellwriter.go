package puma

import (
	"context"
	"fmt"
	"strconv"
	"sync"

	"github.com/freeway-dev/freeway/internal/store"
)

// putChunk is how many cells a checkpoint puts at once: one transaction
// each on the embedded store (a Put of 1,000 was 1,000 commits and
// fsyncs for 1 M cells; one Put of them all makes bbolt copy every node
// it holds whenever the file grows), and requests of the store's size on
// HBase.
const putChunk = 1 << 16

// queueChunks is how many chunks a checkpoint's taker queues ahead of
// the writer before it waits for the store (cellWriter): 1 Mi cells,
// about 48 MB of count+sum cells with short keys. A taker that waits
// holds the shard's lock (applies and queries of the shard wait too), so
// the bound is set where a shard's checkpoint of up to a million changed
// cells never waits, and only larger ones trade that wait for memory.
const queueChunks = 16

// cellWriter writes a checkpoint's cells on a goroutine of its own while
// the checkpoint is still taking them: the attempt marker first, then
// each chunk in the order it was given, one Put each. Taking a million
// changed cells (sorting and encoding them, under the shard's lock) and
// writing them (the store's work, outside it) then overlap on two cores
// instead of following each other; the checkpoint waits for the last
// Put before it commits, so that what is committed is what it was
// before: every cell at the epoch, then the commit row.
//
// The queue is bounded: at most queueChunks chunks wait besides the one
// being put, one built for the next Put and one being built (build), and
// the one the taker is building. A span's chunk waits in
// the form it was taken in (cellChunk: its cells' values, windows and
// key views, about 45 bytes a count+sum cell) and becomes store cells
// (about 140) only when the writer takes it, so that a checkpoint holds
// a few chunks of cells rather than every cell it took in their store
// form (a million changed cells were 150 MB of transient heap, and
// twice that of heap the runtime then kept). A taker that finds the
// queue full waits for the store, with the shard's lock held: only a
// checkpoint of more than queueChunks chunks whose store lags that far
// behind its taking holds the lock longer than it takes to take the
// cells. A failure wakes a waiting taker, which then drops what it
// sends: the checkpoint marks every cell it took changed again whatever
// was put.
type cellWriter struct {
	s     *shard
	ctx   context.Context
	epoch int64
	limit int // chunks queued at most (queueChunks)

	mu      sync.Mutex
	queue   []queued
	closed  bool
	started bool
	failed  bool          // the writer stopped putting (err or fenced): sends are dropped
	waiting int           // takers waiting for room (tests)
	room    *sync.Cond    // on mu: a chunk was taken from the queue, or failed
	wake    chan struct{} // a chunk queued or the queue closed
	done    chan struct{} // closed when the goroutine has ended

	// Set by the goroutine before done is closed.
	err    error // the marker's or a Put's; the cells are to be marked again
	fenced bool  // the marker was refused: another owner committed
	// putFailed: a Put of cells failed, and may be written still (HBase
	// applies a put its gateway received after the caller gave up on it).
	putFailed bool
	puts      int // chunks put
}

func newCellWriter(ctx context.Context, s *shard, epoch int64) *cellWriter {
	w := &cellWriter{s: s, ctx: ctx, epoch: epoch, limit: queueChunks, wake: make(chan struct{}, 1), done: make(chan struct{})}
	w.room = sync.NewCond(&w.mu)
	return w
}

// queued is a chunk waiting for the writer: cells ready to put, or a
// chunk taken from a span to build them from.
type queued struct {
	cells []store.Cell
	taken *cellChunk
}

// sendChunk queues a chunk taken from a span (send, built by the writer).
func (w *cellWriter) sendChunk(c *cellChunk) {
	if len(c.keys) > 0 {
		w.push(queued{taken: c}, false)
	}
}

// send queues cells, which are not written again by the caller, to be
// put after those queued before; the first send starts the goroutine.
// It waits while the queue is full, and drops the cells once the writer
// has failed.
func (w *cellWriter) send(cells []store.Cell) {
	if len(cells) == 0 {
		return
	}
	w.push(queued{cells: cells}, false)
}

// push queues a chunk (zero: none), closes the queue if closing, and
// starts the goroutine unless it runs already.
func (w *cellWriter) push(q queued, closing bool) {
	w.mu.Lock()
	if q.cells != nil || q.taken != nil {
		for w.started && !w.failed && len(w.queue) >= w.limit {
			w.waiting++
			w.room.Wait()
			w.waiting--
		}
		if !w.failed {
			w.queue = append(w.queue, q)
		}
	}
	if closing {
		w.closed = true
	}
	start := !w.started
	w.started = true
	w.mu.Unlock()
	if start {
		go w.run()
	}
	w.signal()
}

// sendChunks sends cells in chunks of putChunk.
func (w *cellWriter) sendChunks(cells []store.Cell) {
	for i := 0; i < len(cells); i += putChunk {
		w.send(cells[i:min(i+putChunk, len(cells)):min(i+putChunk, len(cells))])
	}
}

func (w *cellWriter) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// finish closes the queue and waits until every chunk is put (or the
// first failure). It starts the goroutine if nothing was sent, so that
// the marker is written: a checkpoint without cells still commits.
func (w *cellWriter) finish() {
	w.push(queued{}, true)
	<-w.done
}

// abandon is finish for a checkpoint that commits nothing: it waits for
// a goroutine that was started and does not start one.
func (w *cellWriter) abandon() {
	w.mu.Lock()
	w.closed = true
	started := w.started
	w.mu.Unlock()
	if started {
		w.signal()
		<-w.done
	}
}

func (w *cellWriter) run() {
	defer close(w.done)
	s := w.s
	st, tbl := s.p.deps.Store, s.p.cfg.Table
	// 1. Record the epoch being written, so that a crash before the commit
	// never lets a later owner reuse it; fenced on the commit, so that an
	// owner that lost the shard writes no cells.
	row := commitRow(s.category, s.bucket)
	marker := []store.Cell{{Row: row, Column: "attempt", Timestamp: w.epoch, Value: []byte(strconv.FormatInt(w.epoch, 10))}}
	ok, err := st.CheckAndPut(w.ctx, tbl, row, "commit", s.commitBytes, marker)
	switch {
	case err != nil:
		w.err = fmt.Errorf("write attempt marker: %w", err)
	case !ok:
		w.fenced = true
	}
	if w.err == nil && !w.fenced {
		if h := s.p.afterMark; h != nil {
			h(s.category, s.bucket)
		}
	}
	if w.err != nil || w.fenced {
		w.fail()
	}
	// 2. The cells, at the epoch, in the order sent. A goroutine of its
	// own takes each chunk from the queue (which makes room for the taker)
	// and builds its store cells while the chunk before is being put, so
	// that the Puma side of the writing is on the other core while the
	// store writes (a million cells: ~0.05 s of building, otherwise on the
	// store's path). After a failure the rest is dropped (the checkpoint
	// marks every cell it took changed again).
	built := make(chan []store.Cell, 1)
	go w.build(built)
	for cells := range built {
		if w.failed {
			continue // only after a failure: drained and dropped
		}
		if err := st.Put(w.ctx, tbl, cells); err != nil {
			w.err = fmt.Errorf("write cells: %w", err)
			w.putFailed = true
			w.fail()
			continue
		}
		w.puts++
	}
}

// build takes the chunks from the queue, one at a time, in the order
// sent, and hands each one's store cells to out, until the queue is
// closed and empty; then it closes out. At most one built chunk waits in
// out (besides the one being put and the one being built).
func (w *cellWriter) build(out chan<- []store.Cell) {
	defer close(out)
	for {
		w.mu.Lock()
		var q queued
		ok := len(w.queue) > 0
		if ok {
			q = w.queue[0]
			w.queue[0] = queued{}
			w.queue = w.queue[1:]
			w.room.Signal()
		}
		closed, failed := w.closed, w.failed
		w.mu.Unlock()
		if !ok {
			if closed {
				return
			}
			<-w.wake
			continue
		}
		if failed {
			continue
		}
		cells := q.cells
		if q.taken != nil {
			cells = q.taken.build()
		}
		out <- cells
	}
}

// fail stops the writer's puts: what is queued and what is sent after is
// dropped, and a taker waiting for room goes on.
func (w *cellWriter) fail() {
	w.mu.Lock()
	w.failed = true
	w.queue = nil
	w.room.Broadcast()
	w.mu.Unlock()
}
