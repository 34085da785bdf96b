package calligraphus

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/internal/segment"
)

// appendReq is one call's share of a bucket: its entries, in blocks.
// Requests are pooled (Calligraphus.newReq, recycle) with their blocks
// and the blocks' slices, so that grouping a call's entries allocates
// nothing per entry once the pool is warm.
type appendReq struct {
	blocks  []*segment.Block
	size    int64 // upper bound of the encoded blocks
	entries int
	bound   int // of the last block's body
	// enc is the blocks encoded (segment.AppendUnstamped) by the calling
	// goroutine while the call's bytes are still there: the bucket
	// writer writes these bytes, stamped for its segment, and never
	// reads the messages, which may alias a frame reused once the call
	// has returned (an answer given before the write: a cancelled call).
	enc  []byte
	done chan error
	// queued is when it was handed to its bucket's run loop (enqueue).
	queued time.Time
}

// maxKeptEnc bounds the encoding buffer a pooled request keeps.
const maxKeptEnc = 4 << 20

// encode encodes the blocks into r.enc, compressed as comp says, and
// drops the references to the messages: from here on the request holds
// its entries' bytes itself.
func (r *appendReq) encode(comp segment.Compression) {
	if cap(r.enc) < int(r.size) {
		r.enc = make([]byte, 0, r.size)
	}
	r.enc = r.enc[:0]
	for _, b := range r.blocks {
		r.enc = segment.AppendUnstampedAs(r.enc, b, comp)
		clear(b.Messages)
		b.Messages = b.Messages[:0] // recycle has nothing more to clear
	}
}

// add appends a message to the request, in a new block when the last one
// would exceed the block size limit. It reports false if the message
// cannot fit in a block at all.
func (r *appendReq) add(info callInfo, msg []byte, seq uint64) bool {
	need := segment.EntrySizeBound(len(msg))
	if len(r.blocks) == 0 || r.bound+need > segment.MaxBlockSize {
		r.newBlock(info)
		r.bound = segment.BodySizeBound(len(info.agent))
		r.size += int64(segment.BlockHeaderSize + r.bound)
		if r.bound+need > segment.MaxBlockSize {
			return false
		}
	}
	b := r.blocks[len(r.blocks)-1]
	b.Messages = append(b.Messages, msg)
	if info.agent != "" {
		b.Seqs = append(b.Seqs, seq)
	}
	r.bound += need
	r.size += int64(need)
	r.entries++
	return true
}

// newBlock starts a block, reusing one a recycled request left.
func (r *appendReq) newBlock(info callInfo) {
	var b *segment.Block
	if n := len(r.blocks); n < cap(r.blocks) && r.blocks[:n+1][n] != nil {
		r.blocks = r.blocks[:n+1]
		b = r.blocks[n]
	} else {
		b = &segment.Block{}
		r.blocks = append(r.blocks, b)
	}
	b.Agent, b.ArrivalMs = info.agent, info.arrivalMs
	b.Messages = b.Messages[:0]
	b.Seqs = b.Seqs[:0]
	if info.agent == "" {
		b.Seqs = nil // stock clients' entries have no sequence numbers
	} else if b.Seqs == nil {
		b.Seqs = []uint64{}
	}
}

// newReq returns an empty request.
func (c *Calligraphus) newReq() *appendReq {
	if r, ok := c.reqs.Get().(*appendReq); ok {
		return r
	}
	return &appendReq{done: make(chan error, 1)}
}

// recycle gives back a request nothing refers to any more: answered, or
// never handed to a writer. It drops its references to the messages.
func (c *Calligraphus) recycle(r *appendReq) {
	for _, b := range r.blocks {
		clear(b.Messages)
		b.Messages = b.Messages[:0]
	}
	r.blocks = r.blocks[:0]
	r.size, r.entries, r.bound = 0, 0, 0
	if cap(r.enc) > maxKeptEnc {
		r.enc = nil
	}
	r.enc = r.enc[:0]
	c.reqs.Put(r)
}

// queueCap bounds the requests a bucket writer has reserved, queued or
// in progress; more are refused as busy.
const queueCap = 256

// bucketWriter owns one bucket's segment stream. Its run loop is the only
// goroutine touching the open segment and the lease.
type bucketWriter struct {
	c     *Calligraphus
	id    bucketID
	dir   string
	label string
	log   *slog.Logger
	reqs  chan *appendReq
	// ownReqs asks the run loop to take the bucket's lease if it does not
	// hold it; the answer goes to the channel sent.
	ownReqs chan chan error
	// handoffReqs asks the run loop to hand the bucket off: another live
	// writer is preferred for it.
	handoffReqs chan struct{}
	// owned: the run loop holds the lease, as far as it knows.
	owned atomic.Bool
	// prev is closed when the bucket's previous writer, ended for
	// idleness, has released the lease; nil if there is none.
	prev <-chan struct{}
	done chan struct{} // closed when run has returned

	mu      sync.Mutex // orders reserve and enqueue against retire and stop
	pending int64      // bytes reserved and not yet answered
	slots   int        // requests reserved and not yet answered
	closed  bool       // reserve refuses: the run loop has ended or is ending
	retired bool       // it ends for idleness (a new writer may follow)

	// lease is the grant the writer acts under, nil when none. The run
	// loop watches its Lost itself: what coord.WhileHeld gives, without a
	// goroutine more per bucket (max_categories bounds them).
	lease   coord.Lease
	nextTry time.Time
	takeErr error // why the last take of the lease failed; nil once one succeeds
	epoch   int64
	seq     uint64
	file    dfs.File
	enc     *segment.Encoder
	tmp     string
	final   string
	size    int64
	opened  int64    // the open segment's size when opened: its header
	buf     []byte   // small requests gathered into one write
	bufs    [][]byte // a batch's requests for one WriteBuffers
	// closing holds the segments being closed, oldest first, at most
	// maxClosing (a dfs where only a close makes bytes durable).
	closing []*closing
	// ahead is the next segment, created while the last one closes; nil
	// when there is none.
	ahead *ahead
	// discards counts the unused segments created ahead being closed and
	// removed by goroutines of their own (discardAheadLater); drop waits
	// for them.
	discards sync.WaitGroup
	// left: on a dfs where synced bytes are acknowledged, the writer
	// stopped acting as the bucket's owner (a failed write or publish,
	// the lease lost) and left a segment of acknowledged bytes
	// unpublished, which whoever takes the bucket next salvages. Until
	// someone has, the writer takes the bucket again itself (retake)
	// rather than wait for a batch that may never come, and does not end
	// for idleness.
	left bool
}

// maxClosing bounds a bucket's segments being closed at once. While that
// many close, requests wait in the queue, and the next segment takes all
// that waited: one publish serves them together (group commit). Two lets
// a segment be created and written while the one before it closes (on
// HDFS each takes tens of ms, much of it NameNode calls); more make more,
// smaller segments for the same entries, and the NameNode's calls are
// what they all wait on.
const maxClosing = 2

func newBucketWriter(c *Calligraphus, id bucketID, prev <-chan struct{}) *bucketWriter {
	label := c.label(id.category)
	return &bucketWriter{
		c:           c,
		id:          id,
		dir:         layout.BucketDir(id.category, id.bucket),
		label:       label,
		log:         c.log.With("category", ratelog.Clip(id.category), "bucket", id.bucket),
		reqs:        make(chan *appendReq, queueCap),
		ownReqs:     make(chan chan error),
		handoffReqs: make(chan struct{}, 1),
		prev:        prev,
		done:        make(chan struct{}),
	}
}

// reserve makes room for a request of size bytes, or refuses at once if
// the bucket is over its budget or its writer is ending. A reservation is
// given back by unreserve, or by answering the request after enqueue.
func (w *bucketWriter) reserve(size int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		if w.retired {
			return errRetired
		}
		return errStopping
	}
	if w.slots >= cap(w.reqs) {
		return errBusy
	}
	// A request alone may exceed the budget, or it could never pass.
	if w.pending > 0 && w.pending+size > int64(w.c.cfg.MaxPendingBytes) {
		return errBusy
	}
	w.pending += size
	w.slots++
	w.c.m.pending.WithLabelValues(w.label).Add(float64(size))
	return nil
}

// unreserve gives back a reservation that was not used.
func (w *bucketWriter) unreserve(size int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pending -= size
	w.slots--
	w.c.m.pending.WithLabelValues(w.label).Sub(float64(size))
}

// own makes sure the writer holds its bucket's lease, taking it if
// needed. The caller holds a reservation, so the writer does not end for
// idleness meanwhile.
func (w *bucketWriter) own(ctx context.Context) error {
	if w.owned.Load() {
		return nil
	}
	ch := make(chan error, 1)
	select {
	case w.ownReqs <- ch:
	case <-w.done:
		return errStopping
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// enqueue hands a reserved request to the run loop; it never blocks, as
// reservations are bounded by the queue's capacity. A writer that is
// stopping answers it at once.
func (w *bucketWriter) enqueue(req *appendReq) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		w.finish([]*appendReq{req}, errStopping)
		return
	}
	req.queued = w.c.now()
	w.reqs <- req
	w.mu.Unlock()
}

// finish answers requests and gives back their reservations.
func (w *bucketWriter) finish(reqs []*appendReq, err error) {
	var n int64
	for _, r := range reqs {
		n += r.size
	}
	w.mu.Lock()
	w.pending -= n
	w.slots -= len(reqs)
	w.mu.Unlock()
	w.c.m.pending.WithLabelValues(w.label).Sub(float64(n))
	for _, r := range reqs {
		r.done <- err
	}
}

func (w *bucketWriter) lost() <-chan struct{} {
	if w.lease == nil {
		return nil
	}
	return w.lease.Lost()
}

// isLost reports whether the lease this writer holds has been lost.
func (w *bucketWriter) isLost() bool {
	select {
	case <-w.lost():
		return true
	default:
		return false
	}
}

func (w *bucketWriter) run(ctx context.Context) {
	defer w.stop(ctx)
	roll := time.NewTimer(time.Hour)
	roll.Stop()
	defer roll.Stop()
	idleClose := w.c.cfg.IdleClose.D()
	idle := time.NewTimer(idleClose)
	defer idle.Stop()
	retake := time.NewTimer(time.Hour)
	retake.Stop()
	defer retake.Stop()
	retaking := false // retake is set
	for {
		if w.left && w.lease == nil && !retaking {
			retake.Reset(max(w.nextTry.Sub(w.c.now()), 0))
			retaking = true
		}
		// Take requests only while a segment more may close; settle the
		// oldest closing one once its close has returned.
		reqs := w.reqs
		if len(w.closing) >= maxClosing || w.aheadDone() != nil {
			// While the next segment is being created ahead, the next
			// batch waits for it rather than creating one more.
			reqs = nil
		}
		var closed <-chan error
		if len(w.closing) > 0 {
			closed = w.closing[0].done
		}
		select {
		case <-ctx.Done():
			return
		case err := <-closed:
			w.settle(err)
			idle.Reset(idleClose)
		case <-w.lost():
			w.abandon()
		case <-w.aheadDone():
			if w.aheadReady() {
				roll.Reset(aheadIdle)
			}
		case <-roll.C:
			if w.file != nil {
				if err := w.publish(); err != nil {
					w.log.Log(context.Background(), failureLevel(err), "cannot publish segment", "segment", w.final, "err", err)
				}
			} else if left := w.expireAhead(); left > 0 {
				roll.Reset(left)
			}
		case <-w.handoffReqs:
			w.handoff()
		case <-retake.C:
			retaking = false
			if w.left && w.lease == nil {
				w.retake(ctx)
				idle.Reset(idleClose)
			}
		case <-idle.C:
			if len(w.closing) > 0 || w.left || w.owned.Load() && w.c.keeps(w.id) {
				// Not idle while segments close, or while acknowledged
				// bytes wait for a salvage. Its preferred writer keeps a
				// routed bucket, idle or not: it would take it again at
				// the next rebalance.
				idle.Reset(idleClose)
				continue
			}
			if w.c.retire(w) {
				w.log.Debug("bucket writer idle; ending")
				return
			}
			idle.Reset(idleClose)
		case ch := <-w.ownReqs:
			if w.isLost() {
				w.abandon()
			}
			ch <- w.ensureOwner(ctx)
			idle.Reset(idleClose)
		case req := <-reqs:
			if w.isLost() {
				// Lost while req waited: it and the rest get TRY_LATER.
				w.abandon()
				w.finish([]*appendReq{req}, errNotOwner)
				continue
			}
			batch := w.collect(ctx, req)
			if !w.c.deps.FS.SyncDurable() {
				taken := w.c.now()
				for _, r := range batch {
					w.c.m.queueStep.Observe(taken.Sub(r.queued).Seconds())
				}
			}
			if err := w.ensureOwner(ctx); err != nil {
				w.finish(batch, err)
				continue
			}
			wasOpen := w.file != nil
			start := w.c.now()
			pending, err := w.write(batch, start)
			if pending {
				idle.Reset(idleClose)
				continue // answered when its segment is published
			}
			w.c.m.commit.Observe(w.c.now().Sub(start).Seconds())
			if err != nil {
				w.log.Log(context.Background(), failureLevel(err), "cannot write batch to segment", "segment", w.final, "err", err)
			}
			w.finish(batch, err)
			if !wasOpen && w.file != nil {
				// The age counts from when the first batch was taken, not
				// from when its write (and fsync) returned: a segment is
				// published segment_max_age after its first block came,
				// as often as the age allows and no later.
				roll.Reset(w.c.cfg.SegmentMaxAge.D() - w.c.now().Sub(start))
			}
			idle.Reset(idleClose)
		}
	}
}

// collect takes req and whatever else is queued; on a dfs where only a
// close makes bytes durable, it lingers to let more batches share the
// segment.
func (w *bucketWriter) collect(ctx context.Context, first *appendReq) []*appendReq {
	batch := []*appendReq{first}
	var linger <-chan time.Time
	if !w.c.deps.FS.SyncDurable() && w.c.cfg.Linger > 0 {
		t := time.NewTimer(w.c.cfg.Linger.D())
		defer t.Stop()
		linger = t.C
	}
	size := first.size
	for size < int64(w.c.cfg.SegmentMaxBytes) {
		select {
		case r := <-w.reqs:
			batch = append(batch, r)
			size += r.size
			continue
		default:
		}
		if linger == nil {
			break
		}
		select {
		case r := <-w.reqs:
			batch = append(batch, r)
			size += r.size
			continue
		case <-linger:
		case <-ctx.Done():
		}
		break
	}
	return batch
}

func (w *bucketWriter) failQueued(err error) {
	for {
		select {
		case r := <-w.reqs:
			w.finish([]*appendReq{r}, err)
		default:
			return
		}
	}
}

// retakeAtStop bounds the last try of a writer that ends (for idleness,
// or with the process) to take its bucket again for the salvage of a
// segment it left unpublished (left).
const retakeAtStop = 10 * time.Second

// stop publishes the open segment, refuses what is queued and what comes,
// and releases the lease. A segment of acknowledged bytes left
// unpublished is salvaged first if the bucket can be taken again: once
// the writer has ended, only a batch for the bucket, which may never
// come, would make a writer take it.
func (w *bucketWriter) stop(ctx context.Context) {
	w.settleAll()
	if w.file != nil {
		if err := w.publish(); err != nil {
			w.log.Log(context.Background(), failureLevel(err), "cannot publish segment at stop", "segment", w.final, "err", err)
		}
	}
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.failQueued(errStopping)
	w.drop(true)
	if w.left {
		// Left as the writer ended, or before (the lease lost since,
		// say): taken under a lease of its own, and given back.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), retakeAtStop)
		w.nextTry = time.Time{}
		w.retake(rctx)
		cancel()
		w.drop(true)
	}
	w.buf = nil
}

// handoffHold is how long a writer that handed a bucket off leaves it to
// the preferred writer: requests already queued here are refused (the
// senders' retries reach the holder) rather than taking the bucket back.
const handoffHold = 2 * time.Second

// handoff publishes the open segment and releases the lease, for the
// live writer preferred for the bucket to take it.
func (w *bucketWriter) handoff() {
	if w.lease == nil {
		return
	}
	w.settleAll()
	if w.file != nil {
		if err := w.publish(); err != nil {
			w.log.Log(context.Background(), failureLevel(err), "cannot publish segment at hand-off", "segment", w.final, "err", err)
		}
	}
	w.drop(true)
	w.nextTry = w.c.now().Add(handoffHold)
	w.c.m.handoffs.Inc()
	w.log.Info("bucket handed off to the writer preferred for it", "epoch", w.epoch)
}

// hold makes l the lease the writer acts under; the run loop stops
// acting as owner once l is lost.
func (w *bucketWriter) hold(l coord.Lease) {
	w.lease = l
	w.owned.Store(true)
}

// drop stops acting under the lease, releasing it first if release (a
// lease not released ends with the coord session).
func (w *bucketWriter) drop(release bool) {
	// Segments created ahead and discarded earlier are removed before the
	// bucket can be taken again (and before the writer ends).
	w.discards.Wait()
	if w.lease == nil {
		return
	}
	// The segment created ahead is named under this lease's epoch: removed
	// here, not by a goroutine, for the same reason.
	w.discardAhead(w.ahead)
	w.ahead = nil
	if release {
		if err := coord.Release(context.Background(), w.lease); err != nil {
			w.log.Warn("cannot release bucket lease", "err", err)
		}
	}
	w.lease = nil
	w.owned.Store(false)
	// Segments still closing were written under the lease dropped: none
	// is published now (settle refuses them).
	w.settleAll()
}
