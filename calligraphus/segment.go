package calligraphus

import (
	"fmt"
	"path"
	"time"

	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
)

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
		if err := w.counted(); err != nil {
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
	// The same at the storage, where a stalled writer that has not heard
	// of its loss yet is fenced: a newer owner's intent created after the
	// sync salvages these bytes; one created before may not have.
	if top, err := layout.FenceTop(fsys, w.dir); err != nil {
		return fmt.Errorf("check fence of %s: %w", w.tmp, err)
	} else if top > w.epoch {
		w.fenced("")
		return fmt.Errorf("write %s: %w", w.tmp, errFenced)
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
		_ = f.Close()
		_ = w.c.deps.FS.Remove(w.tmp) // the write error is the one to report
		return fmt.Errorf("write segment header %s: %w", w.tmp, err)
	}
	w.file = f
	w.size = int64(len(hdr))
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
	w.drop(true)
}

// fail abandons the open segment after a write error: on a dfs where
// synced bytes are acknowledged, what is in it is salvaged at the next
// start; elsewhere it is removed.
func (w *bucketWriter) fail() {
	if w.file == nil {
		return
	}
	_ = w.file.Close() // discarded: the write error that led here is reported
	w.file = nil
	w.discard()
	// Re-take ownership (and salvage) before the next write.
	w.drop(true)
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
func (w *bucketWriter) counted() error {
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
			return fmt.Errorf("check fence of %s: %w", w.final, err)
		}
		switch fence.Verdict(path.Base(w.final)) {
		case layout.Counted:
			return nil
		case layout.Fenced:
			w.fenced(w.final)
			return fmt.Errorf("publish %s: %w", w.final, errFenced)
		}
		if i == fenceWaitPolls {
			return fmt.Errorf("publish %s: %w", w.final, errUnsealed)
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
