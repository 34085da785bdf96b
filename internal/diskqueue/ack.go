package diskqueue

import (
	"fmt"
	"path/filepath"
)

// Ack acknowledges every entry up to b (b is the oldest batch read and
// not yet acknowledged, or a later one, which acknowledges those before
// it too). The position is fsynced before the segment files it frees are
// deleted. The entries acknowledged are not to be used after: their
// memory is read into again. On error nothing changed, and the same Ack may be retried.
func (q *Queue) Ack(b Batch) error {
	q.rmu.Lock()
	defer q.rmu.Unlock()
	end := b.End()
	q.mu.Lock()
	acked := q.acked
	q.mu.Unlock()
	if end <= acked || end > q.r.seq {
		return fmt.Errorf("acknowledge up to %d: outside the read range [%d, %d]", end, acked, q.r.seq)
	}
	if err := q.ack.store(end); err != nil {
		return err
	}
	var freed int64
	k := 0
	for ; k < len(q.spans) && q.spans[k].end <= end; k++ {
		freed += q.spans[k].bytes
		if es := q.spans[k].entries; len(q.entryBufs) < maxEntryBufs {
			clear(es) // nothing of the batch stays reachable (beyond len: zero)
			q.entryBufs = append(q.entryBufs, es[:0])
		}
	}
	// Moved to the front, so that appending reuses the slice.
	n := copy(q.spans, q.spans[k:])
	clear(q.spans[n:])
	q.spans = q.spans[:n]
	q.mu.Lock()
	q.acked = end
	q.addDepth(-freed)
	q.mu.Unlock()
	q.bufs.acked(end)
	q.dropAckedSegments()
	return nil
}

// dropAckedSegments deletes segments whose every record is acknowledged
// (never the last one, which is being appended to), but for one kept as
// the spare, renamed, for createSegment to reuse. A failure is logged:
// the file is left behind and removed at the next Open. It is called
// with rmu held (Ack), or at open.
func (q *Queue) dropAckedSegments() {
	q.mu.Lock()
	var drop []segment
	for len(q.segs) > 1 && q.segs[1].first <= q.acked {
		drop = append(drop, q.segs[0])
		q.segs = q.segs[1:]
	}
	keep := q.spare == "" && !q.closed && len(drop) > 0
	q.mu.Unlock()
	if sc := q.r.sc; sc != nil {
		// The reader is still on a dropped segment if it has not read
		// since it took the segment's last entry (it is at its end: all
		// is acknowledged). Its handle must go: the file is about to be
		// reused as a later segment of this incarnation, whose records,
		// read through it as the old segment's, would pass for the ones
		// after them. The next read opens the segment of its position.
		for _, s := range drop {
			if sc.seg.id == s.id {
				sc.close()
				q.r.sc = nil
				break
			}
		}
	}
	for i, s := range drop {
		if keep && i == len(drop)-1 {
			// The newest: the most of its pages are still cached. A
			// crash before or after the rename leaves either name, which
			// the next Open removes (spareName ends in tmpSuffix).
			spare := filepath.Join(q.dir, spareName(s.first))
			if err := q.ops.rename(s.path, spare); err == nil {
				q.mu.Lock()
				q.spare = spare
				q.mu.Unlock()
				continue
			}
		}
		if err := q.ops.remove(s.path); err != nil {
			q.errlog.Error("remove acknowledged segment", "cannot remove an acknowledged queue segment", "segment", s.path, "err", err)
		}
	}
}
