package calligraphus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path"
	"time"

	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/internal/segment"
)

// write appends the batch's blocks and makes them durable, or, where
// only a close does (HDFS), hands the segment to be closed and published
// (startClose): then it reports pending, and the batch is answered when
// its segment is published (settle).
func (w *bucketWriter) write(batch []*appendReq, start time.Time) (pending bool, err error) {
	fsys := w.c.deps.FS
	if w.file == nil {
		if err := w.open(); err != nil {
			return false, err
		}
	}
	durable := w.size // where a dfs.Truncater cuts back to if this batch fails
	entries, bytes, err := w.writeBlocks(batch)
	if err != nil {
		w.fail(durable)
		return false, fmt.Errorf("write %s: %w", w.tmp, err)
	}
	w.size += int64(bytes)
	if !fsys.SyncDurable() {
		// Only the publish makes the batch durable.
		w.startClose(batch, entries, bytes, start)
		return true, nil
	}
	if err := w.file.Sync(); err != nil {
		w.fail(durable)
		return false, fmt.Errorf("sync %s: %w", w.tmp, err)
	}
	// A new owner salvages this segment when it takes the bucket; bytes
	// that reach it after that are not in the salvaged copy. The lease
	// still held after the sync means they were there first.
	if w.isLost() {
		return false, fmt.Errorf("write %s: %w", w.tmp, errNotOwner)
	}
	// The same at the storage, where a stalled writer that has not heard
	// of its loss yet is fenced: a newer owner's intent created after the
	// sync salvages these bytes; one created before may not have.
	if top, err := layout.FenceTop(fsys, w.dir); err != nil {
		// Undecided, and refused: so its bytes must go too, or they
		// would be published with the segment beside their retry.
		w.fail(durable)
		return false, fmt.Errorf("check fence of %s: %w", w.tmp, err)
	} else if top > w.epoch {
		w.fencedWrite(durable)
		return false, fmt.Errorf("write %s: %w", w.tmp, errFenced)
	}
	w.written(entries, bytes)
	if w.size >= int64(w.c.cfg.SegmentMaxBytes) {
		// The batch is durable whatever happens here: a segment that
		// cannot be published is salvaged (see publish).
		if err := w.publish(); err != nil {
			w.log.Log(context.Background(), failureLevel(err), "cannot publish segment", "segment", w.final, "err", err)
		}
	}
	return false, nil
}

// directWrite is the size from which a request's blocks are written as
// they are, by a write of their own, rather than copied into w.buf to
// share one: a system call costs about what copying this many bytes
// does.
const directWrite = 16 << 10

// writeBlocks stamps the batch's blocks (encoded by the calls,
// appendReq.encode) for the open segment and writes them in order: on a
// file that writes several buffers at once (dfs.BuffersWriter: a local
// file's writev), all from their own bytes in one call; elsewhere runs of
// small requests gathered into one write, larger ones written from their
// own bytes. It returns the entries and bytes written.
func (w *bucketWriter) writeBlocks(batch []*appendReq) (entries, bytes int, err error) {
	if bw, ok := w.file.(dfs.BuffersWriter); ok {
		w.bufs = w.bufs[:0]
		for _, r := range batch {
			if err := w.enc.Stamp(r.enc); err != nil {
				return 0, 0, err // a defect: encode writes whole blocks
			}
			entries += r.entries
			bytes += len(r.enc)
			w.bufs = append(w.bufs, r.enc)
		}
		_, err := bw.WriteBuffers(w.bufs)
		clear(w.bufs) // the requests' bytes go back with them
		return entries, bytes, err
	}
	w.buf = w.buf[:0]
	flush := func() error {
		if len(w.buf) == 0 {
			return nil
		}
		_, err := w.file.Write(w.buf)
		w.buf = w.buf[:0]
		return err
	}
	for _, r := range batch {
		if err := w.enc.Stamp(r.enc); err != nil {
			return 0, 0, err // a defect: encode writes whole blocks
		}
		entries += r.entries
		bytes += len(r.enc)
		if len(r.enc) < directWrite {
			w.buf = append(w.buf, r.enc...)
			continue
		}
		if err := flush(); err != nil {
			return 0, 0, err
		}
		if _, err := w.file.Write(r.enc); err != nil {
			return 0, 0, err
		}
	}
	return entries, bytes, flush()
}

// closing is a segment being closed by a goroutine of its own, with the
// requests whose bytes it holds. A bucket's closing segments are
// published strictly in the order they were written (w.closing, oldest
// first): readers (layout.Published) pass a bucket's segments in name
// order and never look back, and a seal covers an epoch's segments up to
// the last one its owner listed.
type closing struct {
	file    dfs.File
	tmp     string
	final   string
	lease   coord.Lease // the lease it was written under
	reqs    []*appendReq
	entries int
	bytes   int
	start   time.Time
	// closeStart is when it was handed to be closed, closed when its
	// close returned (set before done is sent).
	closeStart, closed time.Time
	done               chan error // the close's result
}

// startClose hands the open segment, holding batch, to a goroutine that
// closes it (on HDFS the slow part: the DataNodes' acknowledgements and
// the NameNode's complete), so that the run loop goes on taking requests
// into the next segment meanwhile, which it creates ahead at once;
// settle publishes the closed one.
func (w *bucketWriter) startClose(batch []*appendReq, entries, bytes int, start time.Time) {
	c := &closing{file: w.file, tmp: w.tmp, final: w.final, lease: w.lease,
		reqs: batch, entries: entries, bytes: bytes, start: start, closeStart: w.c.now(), done: make(chan error, 1)}
	w.file = nil
	w.closing = append(w.closing, c)
	go func() {
		err := c.file.Close()
		c.closed = w.c.now()
		c.done <- err
	}()
	w.openAhead()
}

// settle publishes the oldest closing segment, whose close returned
// closeErr, and answers its requests: OK only once it is renamed to its
// final name under the lease it was written under and the fence verdict
// read after the rename says readers count it (counted).
func (w *bucketWriter) settle(closeErr error) {
	c := w.closing[0]
	w.closing[0] = nil
	w.closing = w.closing[1:]
	if !c.closed.IsZero() {
		w.c.m.closeStep.Observe(c.closed.Sub(c.closeStart).Seconds())
		w.c.m.waitStep.Observe(w.c.now().Sub(c.closed).Seconds())
	}
	err := w.publishClosed(c, closeErr)
	w.c.m.commit.Observe(w.c.now().Sub(c.start).Seconds())
	if err != nil {
		w.log.Log(context.Background(), failureLevel(err), "cannot publish segment", "segment", c.final, "err", err)
	}
	w.finish(c.reqs, err)
}

func (w *bucketWriter) publishClosed(c *closing, closeErr error) error {
	if closeErr != nil {
		w.remove(c.tmp)
		return w.newerOwner(c, fmt.Errorf("close segment %s: %w", c.tmp, closeErr))
	}
	// A writer that lost or dropped the lease since (or took the bucket
	// again, at a newer epoch) publishes nothing written under the old
	// one: a newer owner's listing may have passed its name already.
	if w.lease == nil || w.lease != c.lease || w.isLost() {
		w.remove(c.tmp)
		return fmt.Errorf("publish %s: %w", c.final, errNotOwner)
	}
	t := w.c.now()
	if err := w.c.deps.FS.Rename(c.tmp, c.final); err != nil {
		w.remove(c.tmp)
		return w.newerOwner(c, fmt.Errorf("publish %s: %w", c.final, err))
	}
	w.c.m.segments.WithLabelValues(w.label).Inc()
	renamed := w.c.now()
	w.c.m.renameStep.Observe(renamed.Sub(t).Seconds())
	err := w.counted(c.final)
	w.c.m.fenceStep.Observe(w.c.now().Sub(renamed).Seconds())
	if err != nil {
		return err
	}
	w.written(c.entries, c.bytes)
	w.notify()
	return nil
}

// newerOwner tells a segment that failed to close or publish because a
// newer owner took the bucket: that owner removed the writer's unpublished
// segments as it took it, among them one created ahead before this
// writer heard of the loss (or before it ever does: a stalled writer).
// Then, as when the fence check after a rename finds it, the writer
// stops acting as the bucket's owner and the batches are refused as
// fenced; else err stands.
func (w *bucketWriter) newerOwner(c *closing, err error) error {
	if w.lease == nil || w.lease != c.lease {
		return err
	}
	return w.fencedBy(err)
}

// fencedBy reports whether the storage shows, after err, a newer owner
// of the bucket, which removes (salvages) this writer's unpublished
// segments as it takes it: so a close or a rename of one fails. Then the
// writer stops acting as the bucket's owner (fenced), and err is
// returned marked fenced (errFenced); else as it is.
func (w *bucketWriter) fencedBy(err error) error {
	if top, ferr := layout.FenceTop(w.c.deps.FS, w.dir); ferr == nil && top > w.epoch {
		w.fenced("")
		return fmt.Errorf("%w: %w", errFenced, err)
	}
	return err
}

// failureLevel is the level a failed write or publish is logged at: an
// error, unless it failed because a newer writer has the bucket (fenced,
// or the lease lost), which the writer has said already (fenced,
// abandon) and which loses nothing: its senders' retries reach the newer
// writer, which salvages what was acknowledged here.
func failureLevel(err error) slog.Level {
	if errors.Is(err, errFenced) || errors.Is(err, errNotOwner) {
		return slog.LevelWarn
	}
	return slog.LevelError
}

// notify tells readers in this process that a segment was published.
func (w *bucketWriter) notify() {
	if f := w.c.deps.Published; f != nil {
		f(w.dir)
	}
}

// settleAll waits for every closing segment, oldest first, and settles
// it: published if the writer still holds the lease it was written
// under, refused otherwise.
func (w *bucketWriter) settleAll() {
	for len(w.closing) > 0 {
		w.settle(<-w.closing[0].done)
	}
}

// remove removes an unpublished segment that holds no acknowledged bytes.
func (w *bucketWriter) remove(tmp string) {
	if err := w.c.deps.FS.Remove(tmp); err != nil {
		w.log.Warn("cannot remove unpublished segment", "file", tmp, "err", err)
	}
}

func (w *bucketWriter) written(entries, bytes int) {
	w.c.m.written.WithLabelValues(w.label).Add(float64(entries))
	w.c.m.bytes.WithLabelValues(w.label).Add(float64(bytes))
}

// open starts the next segment: the one created ahead (openAhead) if it
// is ready and was created under the lease and epoch the writer holds,
// else a new one.
func (w *bucketWriter) open() error {
	if a := w.ahead; a != nil {
		// Never a segment past it while it may still be used: segments
		// are published in the order of their names.
		<-a.done
		w.ahead = nil
		if a.err == nil && a.lease == w.lease && a.epoch == w.epoch && !w.isLost() {
			w.file, w.enc, w.size, w.tmp, w.final = a.file, a.enc, a.size, a.tmp, a.final
			w.opened = w.size
			return nil
		}
		w.discardAheadLater(a)
	}
	w.seq++
	w.final, w.tmp = w.segmentNames(w.seq)
	f, enc, size, err := w.create(w.tmp)
	if err != nil {
		return err
	}
	w.file, w.enc, w.size, w.opened = f, enc, size, size
	return nil
}

// segmentNames are the final and the temporary name of segment seq of
// the writer's epoch.
func (w *bucketWriter) segmentNames(seq uint64) (final, tmp string) {
	name := layout.SegmentName(w.epoch, seq)
	return path.Join(w.dir, name), path.Join(w.dir, layout.TempSegment(name))
}

// create creates the segment file tmp and writes its header. It touches
// nothing of the writer's state but reads w.c and w.dir, so that
// openAhead can run it on a goroutine of its own.
func (w *bucketWriter) create(tmp string) (dfs.File, *segment.Encoder, int64, error) {
	f, err := w.c.deps.FS.Create(tmp)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("create segment %s: %w", tmp, err)
	}
	enc := segment.NewEncoder()
	hdr := enc.AppendHeader(nil)
	if _, err := f.Write(hdr); err != nil {
		_ = f.Close()
		_ = w.c.deps.FS.Remove(tmp) // the write error is the one to report
		return nil, nil, 0, fmt.Errorf("write segment header %s: %w", tmp, err)
	}
	return f, enc, int64(len(hdr)), nil
}

// ahead is the next segment of a bucket, created while the one before it
// closes (openAhead): on HDFS a create is two NameNode calls (create,
// then addBlock at the first write) and a DataNode connection, tens of
// ms under load that would otherwise be spent on the next
// acknowledgement's path. It holds only its header: nothing is answered
// for it until a batch is written into it and it is published.
type ahead struct {
	done  chan struct{} // closed once created (or failed)
	lease coord.Lease   // the lease and epoch it is named under
	epoch int64
	tmp   string
	final string
	file  dfs.File
	enc   *segment.Encoder
	size  int64
	err   error
	ready time.Time // when done was closed, set by the run loop
}

// openAhead creates the bucket's next segment on a goroutine of its own,
// unless one is already created or being created. Called when a segment
// is handed to be closed, that is while batches arrive: an idle writer
// creates nothing ahead, and one created ahead and left unused for
// aheadIdle is removed (expireAhead).
func (w *bucketWriter) openAhead() {
	if w.ahead != nil || w.lease == nil {
		return
	}
	w.seq++
	a := &ahead{done: make(chan struct{}), lease: w.lease, epoch: w.epoch}
	a.final, a.tmp = w.segmentNames(w.seq)
	w.ahead = a
	go func() {
		defer close(a.done)
		a.file, a.enc, a.size, a.err = w.create(a.tmp)
	}()
}

// aheadDone is closed once the segment being created ahead is created; nil
// when there is none, or it is ready already.
func (w *bucketWriter) aheadDone() <-chan struct{} {
	if w.ahead == nil || !w.ahead.ready.IsZero() {
		return nil
	}
	return w.ahead.done
}

// aheadIdle is how long a segment created ahead waits to be used before
// it is removed: the batches that made it were a burst that has ended. A
// DataNode keeps its connection open meanwhile.
const aheadIdle = time.Second

// expireAhead removes the segment created ahead if it has waited unused
// for aheadIdle; it reports how long until it would, or 0.
func (w *bucketWriter) expireAhead() time.Duration {
	a := w.ahead
	if a == nil || a.ready.IsZero() {
		return 0
	}
	if left := a.ready.Add(aheadIdle).Sub(w.c.now()); left > 0 {
		return left
	}
	w.ahead = nil
	w.discardAheadLater(a)
	return 0
}

// aheadReady records that the segment being created ahead is created;
// one that failed is forgotten (the next write creates its segment
// itself). It reports whether one is waiting to be used.
func (w *bucketWriter) aheadReady() bool {
	a := w.ahead
	if a.err != nil {
		w.ahead = nil
		w.aheadFailed(a)
		return false
	}
	a.ready = w.c.now()
	return true
}

// aheadFailed counts and logs a segment that could not be created ahead.
// Rate-limited: on a dfs that keeps refusing creates it would otherwise
// be a line per batch, each batch creating its own segment after it.
func (w *bucketWriter) aheadFailed(a *ahead) {
	w.c.m.aheadFailed.Inc()
	w.c.rl.Warn("cannot create segment ahead", "cannot create segment ahead", "category", ratelog.Clip(w.id.category), "bucket", w.id.bucket, "segment", a.tmp, "err", a.err)
}

// discardAhead waits for a segment created ahead and removes it: it holds
// no entry. Nil does nothing. It runs on the run loop, for drop: the
// bucket is not taken again (here or elsewhere) until the file is gone.
func (w *bucketWriter) discardAhead(a *ahead) {
	if a == nil {
		return
	}
	<-a.done
	w.closeAhead(a)
}

// discardAheadLater removes a segment created ahead, whose create has
// returned, on a goroutine of its own: on HDFS its close can retry for
// seconds, which a batch arriving meanwhile would otherwise wait for.
// Its name is taken for good (a later segment of the epoch has a higher
// sequence number, one of a later epoch another epoch), and drop waits
// for it (w.discards), so that the writer ends, or the bucket is taken
// again, only once it is removed.
func (w *bucketWriter) discardAheadLater(a *ahead) {
	if a.err != nil {
		w.aheadFailed(a)
		return
	}
	w.discards.Add(1)
	go func() {
		defer w.discards.Done()
		w.closeAhead(a)
	}()
}

// closeAhead closes and removes a segment created ahead, whose create has
// returned. It touches nothing of the writer's state but its logger and
// w.c, so that discardAheadLater can run it on a goroutine of its own.
func (w *bucketWriter) closeAhead(a *ahead) {
	if a.err != nil {
		w.aheadFailed(a)
		return
	}
	_ = a.file.Close() // discarded: it holds no entry
	w.remove(a.tmp)
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
		err = w.fencedBy(fmt.Errorf("publish %s: %w", w.final, err))
		if !errors.Is(err, errFenced) {
			w.giveUp()
		}
		return err
	}
	w.c.m.segments.WithLabelValues(w.label).Inc()
	if w.c.deps.FS.SyncDurable() {
		// Elsewhere the segment is not answered for yet (publishClosed).
		w.notify()
	}
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
	w.drop(true)
}

// fail abandons the open segment after a write or sync error (or a
// fence check that failed after the sync): on a dfs where synced bytes
// are acknowledged, what is in it is salvaged at the next start;
// elsewhere it is removed. durable is the segment's size before the
// failed batch: what the Syncs before it made durable. The salvage
// publishes every whole block it finds, and the failed batch, answered
// TRY_LATER, is written again by its senders' retries: so the segment is
// cut back to durable first where the dfs can (a local file; after a
// failed fsync the page cache holds the batch's blocks, and a write that
// fills the disk can stop after some of them), else a stock client's
// retried entries would be published twice.
func (w *bucketWriter) fail(durable int64) {
	if w.file == nil {
		return
	}
	w.cutBack(durable)
	_ = w.file.Close() // discarded: the write error that led here is reported
	w.file = nil
	w.discard()
	// Re-take ownership (and salvage) before the next write.
	w.drop(true)
}

// cutBack cuts the open segment back to durable, its size before a
// refused batch, where the dfs can and synced bytes are acknowledged
// (see fail).
func (w *bucketWriter) cutBack(durable int64) {
	if t, ok := w.file.(dfs.Truncater); ok && w.c.deps.FS.SyncDurable() {
		if err := t.Truncate(durable); err != nil {
			w.log.Warn("cannot cut a failed segment back to its durable size; its salvage may publish the refused batch's entries as well as their retry",
				"file", w.tmp, "size", durable, "err", err)
		}
	}
}

// fencedWrite gives up the open segment when the fence check after a
// batch's sync (a dfs where synced bytes are acknowledged) finds a newer
// owner: the batch is refused. The segment is cut back to durable, its
// size before the batch, as after a failed write. If a batch before
// passed its own check, the segment was there before the newer owner's
// intent, so that owner's listing saw it and salvages it. If none did
// (durable is its header), it may have been created after that listing,
// and no owner would ever take it up again: it holds nothing
// acknowledged, and is removed (a salvage of it under way finds it gone,
// or publishes the refused batch, which its senders write again).
func (w *bucketWriter) fencedWrite(durable int64) {
	w.cutBack(durable)
	_ = w.file.Close() // discarded: fenced
	w.file = nil
	if durable > w.opened {
		w.discard()
	} else if err := removeGone(w.c.deps.FS, w.tmp); err != nil {
		w.log.Warn("cannot remove a fenced segment holding nothing acknowledged", "file", w.tmp, "err", err)
	}
	w.fenced("")
}

// discard removes an unpublished segment, unless it holds acknowledged
// bytes (a dfs where Sync is durable), which the next owner salvages
// (see left).
func (w *bucketWriter) discard() {
	if w.c.deps.FS.SyncDurable() {
		w.left = true
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
		_ = w.file.Close() // discarded: the lease is lost
		w.file = nil
		w.discard()
	}
	w.drop(false) // lost: nothing to release
	// Refuse what was queued when the loss was noticed, not what arrives
	// meanwhile: that is served after taking the bucket again.
	for n := len(w.reqs); n > 0; n-- {
		w.finish([]*appendReq{<-w.reqs}, errNotOwner)
	}
}

// fenceWait bounds how long a writer waits for a newer owner's seal to
// decide its segment (fenceWaitPolls times fenceWaitPoll) before
// answering TRY_LATER.
const (
	fenceWaitPoll  = 50 * time.Millisecond
	fenceWaitPolls = 200
)

// counted makes sure the segment just published is one readers count
// (layout/fence.go): read after the rename, no newer owner's intent means
// any later owner lists it and seals it in; a newer owner's seal decides
// it either way. A fenced segment is removed (no reader will count it)
// and the writer stops acting as the bucket's owner.
func (w *bucketWriter) counted(name string) error {
	fsys := w.c.deps.FS
	// The usual case, no newer owner, takes one listing of the small
	// fence directory.
	if top, err := layout.FenceTop(fsys, w.dir); err == nil && top <= w.epoch {
		return nil
	}
	for i := 0; ; i++ {
		fence, err := layout.ReadFence(fsys, w.dir)
		if err != nil {
			// Undecided as far as this writer can tell: TRY_LATER, and the
			// retry may write the entries twice (deduplicated downstream
			// for Freeway's agents).
			return fmt.Errorf("check fence of %s: %w", name, err)
		}
		switch fence.Verdict(path.Base(name)) {
		case layout.Counted:
			return nil
		case layout.Fenced:
			w.fenced(name)
			return fmt.Errorf("publish %s: %w", name, errFenced)
		}
		if i == fenceWaitPolls {
			return fmt.Errorf("publish %s: %w", name, errUnsealed)
		}
		time.Sleep(fenceWaitPoll)
	}
}

// fenced stops the writer acting as owner once the storage shows a newer
// one, whether or not the coordinator has said so yet; segment, if not
// "", is a published segment no reader counts, removed best effort.
func (w *bucketWriter) fenced(segment string) {
	w.c.m.fenced.Inc()
	w.log.Warn("bucket fenced by a newer writer; this writer stops until it takes the bucket again", "epoch", w.epoch, "segment", segment)
	if segment != "" {
		if err := w.c.deps.FS.Remove(segment); err != nil {
			w.log.Warn("cannot remove fenced segment", "segment", segment, "err", err)
		}
	}
	if w.file != nil {
		_ = w.file.Close() // discarded: fenced
		w.file = nil
		w.discard()
	}
	w.drop(true)
	w.nextTry = w.c.now().Add(time.Second)
}
