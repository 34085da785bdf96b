package calligraphus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/internal/segment"
)

// appendReq is one call's share of a bucket: its entries, in blocks.
type appendReq struct {
	blocks  []*segment.Block
	size    int64 // upper bound of the encoded blocks
	entries int
	bound   int // of the last block's body
	done    chan error
}

// add appends a message to the request, in a new block when the last one
// would exceed the block size limit. It reports false if the message
// cannot fit in a block at all.
func (r *appendReq) add(info callInfo, msg []byte, seq uint64) bool {
	need := segment.EntrySizeBound(len(msg))
	if len(r.blocks) == 0 || r.bound+need > segment.MaxBlockSize {
		b := &segment.Block{Agent: info.agent, ArrivalMs: info.arrivalMs}
		if info.agent != "" {
			b.Seqs = []uint64{}
		}
		r.blocks = append(r.blocks, b)
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

	lease     coord.Lease
	nextTry   time.Time
	epoch     int64
	seq       uint64
	file      dfs.File
	enc       *segment.Encoder
	tmp       string
	final     string
	size      int64
	firstData time.Time
	buf       []byte
}

func newBucketWriter(c *Calligraphus, id bucketID, prev <-chan struct{}) *bucketWriter {
	label := c.label(id.category)
	return &bucketWriter{
		c:       c,
		id:      id,
		dir:     layout.BucketDir(id.category, id.bucket),
		label:   label,
		log:     c.log.With("category", ratelog.Clip(id.category), "bucket", id.bucket),
		reqs:    make(chan *appendReq, queueCap),
		ownReqs: make(chan chan error),
		prev:    prev,
		done:    make(chan struct{}),
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
	defer w.stop()
	roll := time.NewTimer(time.Hour)
	roll.Stop()
	defer roll.Stop()
	idleClose := w.c.cfg.IdleClose.D()
	idle := time.NewTimer(idleClose)
	defer idle.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.lost():
			w.abandon()
		case <-roll.C:
			if w.file != nil {
				if err := w.publish(); err != nil {
					w.log.Error("cannot publish segment", "segment", w.final, "err", err)
				}
			}
		case <-idle.C:
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
		case req := <-w.reqs:
			if w.isLost() {
				// Lost while req waited: it and the rest get TRY_LATER.
				w.abandon()
				w.finish([]*appendReq{req}, errNotOwner)
				continue
			}
			batch := w.collect(ctx, req)
			if err := w.ensureOwner(ctx); err != nil {
				w.finish(batch, err)
				continue
			}
			wasOpen := w.file != nil
			start := time.Now()
			err := w.write(batch)
			w.c.m.commit.Observe(time.Since(start).Seconds())
			if err != nil {
				w.log.Error("cannot write batch to segment", "segment", w.final, "err", err)
			}
			w.finish(batch, err)
			if !wasOpen && w.file != nil {
				roll.Reset(w.c.cfg.SegmentMaxAge.D())
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
	var size int64 = first.size
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

// ensureOwner takes the bucket's lease if this writer does not hold it.
func (w *bucketWriter) ensureOwner(ctx context.Context) error {
	if w.lease != nil {
		return nil
	}
	if time.Now().Before(w.nextTry) {
		return errNotOwner
	}
	if w.prev != nil {
		// The bucket's previous writer of this process is still
		// publishing; it releases the lease when done.
		select {
		case <-w.prev:
			w.prev = nil
		case <-ctx.Done():
			return errStopping
		}
	}
	name := layout.WriterLease(w.id.category, w.id.bucket)
	lease, err := w.c.deps.Coord.Acquire(ctx, name, w.c.cfg.ID)
	if err != nil {
		w.nextTry = time.Now().Add(time.Second)
		if errors.Is(err, coord.ErrHeld) {
			return fmt.Errorf("%w: %v", errNotOwner, err)
		}
		return fmt.Errorf("acquire %s: %w", name, err)
	}
	maxEpoch, err := w.recover(lease.Epoch())
	if err != nil {
		lease.Release(ctx)
		w.nextTry = time.Now().Add(time.Second)
		return fmt.Errorf("recover bucket %s: %w", w.dir, err)
	}
	w.lease = lease
	w.owned.Store(true)
	w.epoch = max(lease.Epoch(), maxEpoch+1)
	w.seq = 0
	if w.epoch != lease.Epoch() {
		w.log.Warn("lease epoch below existing segments; using a higher one", "lease_epoch", lease.Epoch(), "epoch", w.epoch)
	}
	w.log.Info("bucket writer started", "epoch", w.epoch)
	return nil
}

// recover deals with what earlier writers left in the bucket and returns
// the highest epoch found there. It first makes sure a long category's
// directory has its sidecar, so that the category can be listed.
func (w *bucketWriter) recover(leaseEpoch int64) (int64, error) {
	fsys := w.c.deps.FS
	if err := layout.WriteSidecar(fsys, w.id.category, strconv.FormatInt(leaseEpoch, 16)); err != nil {
		return 0, err
	}
	if err := fsys.MkdirAll(w.dir); err != nil {
		return 0, err
	}
	infos, err := fsys.ReadDir(w.dir)
	if err != nil {
		return 0, err
	}
	var maxEpoch int64
	for _, fi := range infos {
		name := fi.Name()
		if !dfs.Hidden(name) {
			if e, _, ok := layout.ParseSegmentName(name); ok {
				maxEpoch = max(maxEpoch, e)
			}
			continue
		}
		if _, ok := layout.ParseSalvageSegment(name); ok {
			// A salvage interrupted by a crash; its source is still there.
			if err := fsys.Remove(path.Join(w.dir, name)); err != nil {
				return 0, err
			}
			continue
		}
		segName, ok := layout.ParseTempSegment(name)
		if !ok {
			continue
		}
		e, _, _ := layout.ParseSegmentName(segName)
		maxEpoch = max(maxEpoch, e)
		p := path.Join(w.dir, name)
		if !fsys.SyncDurable() {
			// Only a publish acknowledges on this dfs: nothing in here was
			// acknowledged, and its senders retry it.
			w.log.Info("removing an unpublished segment of an earlier writer", "file", p)
			if err := fsys.Remove(p); err != nil {
				return 0, err
			}
			continue
		}
		if err := w.salvage(p, path.Join(w.dir, segName)); err != nil {
			return 0, fmt.Errorf("salvage %s: %w", p, err)
		}
	}
	return maxEpoch, nil
}

// salvage publishes the valid blocks of an earlier writer's unpublished
// segment, which on a local disk hold acknowledged entries. It is safe to
// repeat after a crash at any step: the copy goes through its own hidden
// name, and a segment already published means only the leftover remains.
func (w *bucketWriter) salvage(tmp, final string) error {
	fsys := w.c.deps.FS
	if _, err := fsys.Stat(final); err == nil {
		w.log.Info("removing the leftover of a segment already salvaged", "file", tmp)
		return fsys.Remove(tmp)
	}
	data, err := dfs.ReadFile(fsys, tmp)
	if err != nil {
		return err
	}
	// Keep every valid block: in a v2 segment a damaged block in the
	// middle costs that block only; a torn tail (the crash) ends it.
	var out []byte
	blocks, damaged := 0, 0
	if r, err := segment.NewReader(bytes.NewReader(data), 0); err == nil {
		out = r.Header()
		var b segment.Block
		for {
			start := r.Offset()
			err := r.Next(&b)
			if errors.Is(err, io.EOF) {
				break
			}
			var de *segment.DamageError
			if errors.As(err, &de) {
				if de.Resumed {
					damaged++
					w.log.Error("damaged block in an unpublished segment; salvaging the others", "file", tmp, "offset", de.Offset, "err", de.Err)
					continue
				}
				w.log.Warn("salvaged segment ends in a torn block", "file", tmp, "offset", de.Offset, "err", de.Err)
				break
			}
			if err != nil {
				return err
			}
			blocks++
			out = append(out, data[start:r.Offset()]...)
		}
	}
	if blocks == 0 {
		w.log.Info("removing an unpublished segment without a valid block", "file", tmp)
		return fsys.Remove(tmp)
	}
	copyName := salvageName(final)
	if err := fsys.Remove(copyName); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	f, err := fsys.Create(copyName)
	if err != nil {
		return err
	}
	if _, err := f.Write(out); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := fsys.Rename(copyName, final); err != nil {
		return err
	}
	w.c.m.salvaged.Inc()
	w.log.Warn("published the unpublished segment of a crashed writer", "segment", final, "blocks", blocks, "damaged_blocks", damaged, "bytes", len(out))
	return fsys.Remove(tmp)
}

// salvageName is the hidden name a salvaged segment is written under.
func salvageName(final string) string {
	dir, base := path.Split(final)
	return dir + layout.SalvageSegment(base)
}

// write appends the batch's blocks and makes them durable.
func (w *bucketWriter) write(batch []*appendReq) error {
	fsys := w.c.deps.FS
	if w.file == nil {
		if err := w.open(); err != nil {
			return err
		}
	}
	w.buf = w.buf[:0]
	entries := 0
	for _, r := range batch {
		for _, b := range r.blocks {
			w.buf = w.enc.AppendBlock(w.buf, b)
		}
		entries += r.entries
	}
	if _, err := w.file.Write(w.buf); err != nil {
		w.fail()
		return fmt.Errorf("write %s: %w", w.tmp, err)
	}
	w.size += int64(len(w.buf))
	if !fsys.SyncDurable() {
		// Only the publish makes the batch durable.
		if err := w.publish(); err != nil {
			return err
		}
		w.written(entries, len(w.buf))
		return nil
	}
	if err := w.file.Sync(); err != nil {
		w.fail()
		return fmt.Errorf("sync %s: %w", w.tmp, err)
	}
	// A new owner salvages this segment when it takes the bucket; bytes
	// that reach it after that are not in the salvaged copy. The lease
	// still held after the sync means they were there first.
	if w.isLost() {
		return fmt.Errorf("write %s: %w", w.tmp, errNotOwner)
	}
	w.written(entries, len(w.buf))
	if w.size >= int64(w.c.cfg.SegmentMaxBytes) {
		// The batch is durable whatever happens here: a segment that
		// cannot be published is salvaged (see publish).
		if err := w.publish(); err != nil {
			w.log.Error("cannot publish segment", "segment", w.final, "err", err)
		}
	}
	return nil
}

func (w *bucketWriter) written(entries, bytes int) {
	w.c.m.written.WithLabelValues(w.label).Add(float64(entries))
	w.c.m.bytes.WithLabelValues(w.label).Add(float64(bytes))
}

func (w *bucketWriter) open() error {
	w.seq++
	name := layout.SegmentName(w.epoch, w.seq)
	w.final = path.Join(w.dir, name)
	w.tmp = path.Join(w.dir, layout.TempSegment(name))
	f, err := w.c.deps.FS.Create(w.tmp)
	if err != nil {
		return fmt.Errorf("create segment %s: %w", w.tmp, err)
	}
	w.enc = segment.NewEncoder()
	hdr := w.enc.AppendHeader(nil)
	if _, err := f.Write(hdr); err != nil {
		f.Close()
		w.c.deps.FS.Remove(w.tmp)
		return fmt.Errorf("write segment header %s: %w", w.tmp, err)
	}
	w.file = f
	w.size = int64(len(hdr))
	w.firstData = time.Now()
	return nil
}

// publish closes the open segment and renames it to its final name, unless
// the lease was lost meanwhile (a newer writer owns the bucket: publishing
// under an older epoch could slip behind what readers have passed).
//
// A segment that cannot be published on a dfs where synced bytes are
// acknowledged is left for salvage, and the writer gives up the lease: the
// next write takes the bucket again, which salvages the segment before
// anything later is written, so readers cannot have passed its name.
func (w *bucketWriter) publish() error {
	f := w.file
	w.file = nil
	if err := f.Close(); err != nil {
		w.discard()
		w.giveUp()
		return fmt.Errorf("close segment %s: %w", w.tmp, err)
	}
	if w.isLost() {
		w.discard()
		return fmt.Errorf("publish %s: %w", w.final, errNotOwner)
	}
	if err := w.c.deps.FS.Rename(w.tmp, w.final); err != nil {
		w.discard()
		w.giveUp()
		return fmt.Errorf("publish %s: %w", w.final, err)
	}
	w.c.m.segments.WithLabelValues(w.label).Inc()
	return nil
}

// giveUp releases the lease after a failure that may leave acknowledged
// bytes in an unpublished segment, so that the next write re-takes the
// bucket and salvages them first. Elsewhere the failed segment was
// removed, and the writer keeps its lease.
func (w *bucketWriter) giveUp() {
	if !w.c.deps.FS.SyncDurable() || w.lease == nil {
		return
	}
	w.lease.Release(context.Background())
	w.lease = nil
	w.owned.Store(false)
}

// fail abandons the open segment after a write error: on a dfs where
// synced bytes are acknowledged, what is in it is salvaged at the next
// start; elsewhere it is removed.
func (w *bucketWriter) fail() {
	if w.file == nil {
		return
	}
	w.file.Close()
	w.file = nil
	w.discard()
	// Re-take ownership (and salvage) before the next write.
	if w.lease != nil {
		w.lease.Release(context.Background())
		w.lease = nil
		w.owned.Store(false)
	}
}

// discard removes an unpublished segment, unless it holds acknowledged
// bytes (a dfs where Sync is durable), which the next owner salvages.
func (w *bucketWriter) discard() {
	if w.c.deps.FS.SyncDurable() {
		return
	}
	if err := w.c.deps.FS.Remove(w.tmp); err != nil {
		w.log.Warn("cannot remove unpublished segment", "file", w.tmp, "err", err)
	}
}

// abandon drops the open segment after the lease was lost and refuses what
// is queued; the next request takes the bucket again (with a new epoch) if
// nobody else has.
func (w *bucketWriter) abandon() {
	w.log.Warn("bucket lease lost; writer stops until it takes the bucket again", "epoch", w.epoch)
	if w.file != nil {
		w.file.Close()
		w.file = nil
		w.discard()
	}
	w.lease = nil
	w.owned.Store(false)
	// Refuse what was queued when the loss was noticed, not what arrives
	// meanwhile: that is served after taking the bucket again.
	for n := len(w.reqs); n > 0; n-- {
		w.finish([]*appendReq{<-w.reqs}, errNotOwner)
	}
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

// stop publishes the open segment, refuses what is queued and what comes,
// and releases the lease.
func (w *bucketWriter) stop() {
	if w.file != nil {
		if err := w.publish(); err != nil {
			w.log.Error("cannot publish segment at stop", "segment", w.final, "err", err)
		}
	}
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	w.failQueued(errStopping)
	if w.lease != nil {
		w.lease.Release(context.Background())
		w.lease = nil
	}
	w.owned.Store(false)
	w.buf = nil
}

func metricValue(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		return 0
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	}
	return 0
}
