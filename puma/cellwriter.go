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

// cellWriter writes a checkpoint's cells on a goroutine of its own while
// the checkpoint is still taking them: the attempt marker first, then
// each chunk in the order it was given, one Put each. Taking a million
// changed cells (sorting and encoding them, under the shard's lock) and
// writing them (the store's work, outside it) then overlap on two cores
// instead of following each other; the checkpoint waits for the last
// Put before it commits, so that what is committed is what it was
// before: every cell at the epoch, then the commit row.
//
// The queue is not bounded: the cells of a checkpoint are all held at
// once anyway (as they were before), and the taker, which holds the
// shard's lock, never waits for the store.
type cellWriter struct {
	s     *shard
	ctx   context.Context
	epoch int64

	mu      sync.Mutex
	queue   [][]store.Cell
	closed  bool
	started bool
	wake    chan struct{} // a chunk queued or the queue closed
	done    chan struct{} // closed when the goroutine has ended

	// Set by the goroutine before done is closed.
	err    error // the marker's or a Put's; the cells are to be marked again
	fenced bool  // the marker was refused: another owner committed
	puts   int   // chunks put
}

func newCellWriter(ctx context.Context, s *shard, epoch int64) *cellWriter {
	return &cellWriter{s: s, ctx: ctx, epoch: epoch, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// send queues cells, which are not written again by the caller, to be
// put after those queued before; the first send starts the goroutine.
func (w *cellWriter) send(cells []store.Cell) {
	if len(cells) == 0 {
		return
	}
	w.push(cells, false)
}

// push queues cells (nil: none), closes the queue if closing, and starts
// the goroutine unless it runs already.
func (w *cellWriter) push(cells []store.Cell, closing bool) {
	w.mu.Lock()
	if cells != nil {
		w.queue = append(w.queue, cells)
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
	w.push(nil, true)
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
	// 2. The cells, at the epoch, in the order sent. After a failure the
	// rest is dropped (the checkpoint marks every cell it took changed
	// again).
	for {
		w.mu.Lock()
		q, closed := w.queue, w.closed
		w.queue = nil
		w.mu.Unlock()
		for _, cells := range q {
			if w.err != nil || w.fenced {
				break
			}
			if err := st.Put(w.ctx, tbl, cells); err != nil {
				w.err = fmt.Errorf("write cells: %w", err)
				break
			}
			w.puts++
		}
		if closed && len(q) == 0 {
			return
		}
		if len(q) == 0 {
			<-w.wake
		}
	}
}
