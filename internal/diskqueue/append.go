package diskqueue

import (
	"errors"
	"fmt"
	"os"
	"time"
)

// Append adds entries and returns the sequence number of the first once
// all are fsynced. Concurrent callers share fsyncs (group commit). It
// fails with ErrFull, ErrClosed, ErrUnavailable, ErrTooLarge or the write
// error of its group commit; on any error nothing of the entries is kept
// (a failed group commit is rolled back).
func (q *Queue) Append(entries []Entry) (uint64, error) {
	if len(entries) == 0 {
		return 0, nil
	}
	for i := range entries {
		if entries[i].Category == "" {
			return 0, errors.New("append to queue: empty category")
		}
		if rs := RecordSize(&entries[i]); rs > MaxRecordBytes {
			return 0, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, rs, MaxRecordBytes)
		}
	}
	// Encoded and compressed before the lock, so that callers compress
	// in parallel, into buffers the group commit writes as they are.
	enc := q.encoders.get()
	encodeRecords(enc, entries, q.key, q.compress && q.backlog.Load() >= q.compressAbove, q.chunks.get)
	done := false
	defer func() {
		// Handed to a commit that succeeded, the buffers are the queue's;
		// otherwise nothing else refers to them.
		for _, b := range enc.bufs {
			if !done || !enc.handed {
				q.chunks.put(b)
			}
		}
		clear(enc.bufs)
		enc.bufs = enc.bufs[:0]
		q.encoders.put(enc)
	}()
	size := enc.size()
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		switch {
		case q.closed:
			return 0, ErrClosed
		case q.syncing && q.repairErr != nil:
			q.cond.Wait() // a repair is under way
			continue
		case q.repairErr != nil:
			if time.Since(q.repairedAt) < q.retry {
				return 0, fmt.Errorf("%w: %w", ErrUnavailable, q.repairErr)
			}
			if err := q.repairLocked(); err != nil {
				q.errlog.Error("queue repair failed", "cannot repair the queue after a write error; appends refused", "dir", q.dir, "err", err)
				return 0, fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
			q.log.Info("queue repaired; accepting appends again", "dir", q.dir)
			continue
		case q.depth > 0 && q.depth+size > q.maxBytes:
			return 0, ErrFull
		}
		first := q.enqueueLocked(enc)
		w := &waiter{end: q.nextSeq, size: size}
		q.addDepth(size)
		q.waiters = append(q.waiters, w)
		for w.state == waiting {
			if q.syncing {
				q.cond.Wait()
				continue
			}
			q.commitLocked()
		}
		switch w.state {
		case committed:
			done = true
			return first, nil
		case failed:
			return 0, w.err
		}
		// discard: a commit before ours failed and took our pending
		// records with it; append them again.
	}
}

// enqueueLocked numbers enc's records with the next sequence numbers,
// adds them to the pending chunks and returns the first number.
//
// A small encoding (under half a chunk) is copied into the last pending
// chunk while it fits, so that the chunks of many small calls are few
// and full. A larger one is written from where it was encoded: each of
// its buffers becomes a chunk of its own (two where a segment ends
// between two of its records), which nothing is copied into. Such
// chunks are enc's until the commit succeeds (after a failed commit
// the caller appends them again, or gives them back), the queue's
// after.
func (q *Queue) enqueueLocked(enc *encoded) uint64 {
	first := q.nextSeq
	enc.handed = enc.size() >= chunkBytes/2
	from := 0 // where the handed buffer's next chunk starts
	for i, r := range enc.recs {
		rec := enc.number(r, q.key, q.nextSeq)
		rs := int64(r.n)
		roll := q.wSize > segHeaderSize && q.wSize+rs > q.segBytes
		if enc.handed {
			if i > 0 && r.buf != enc.recs[i-1].buf {
				q.pending[len(q.pending)-1].data = chunkOf(enc.bufs[r.buf-1], from)
				from = 0
			}
			if roll || r.off == 0 {
				if r.off > from {
					// The buffer's records before this one end the segment.
					q.pending[len(q.pending)-1].data = enc.bufs[r.buf][from:r.off:r.off]
					from = r.off
				}
				q.pending = append(q.pending, chunk{handed: true})
			}
		} else {
			last := len(q.pending) - 1
			if last < 0 || roll || q.pending[last].handed || q.pending[last].full(rs) {
				q.pending = append(q.pending, chunk{data: q.chunks.get()})
			}
			c := &q.pending[len(q.pending)-1]
			c.data = append(c.data, rec...)
		}
		if roll {
			q.pending[len(q.pending)-1].newSeg = q.nextSeq
			q.wSize = segHeaderSize
		}
		q.wSize += rs
		q.nextSeq += uint64(r.count)
	}
	if n := len(enc.recs); enc.handed && n > 0 {
		q.pending[len(q.pending)-1].data = chunkOf(enc.bufs[enc.recs[n-1].buf], from)
	}
	return first
}

// chunkOf is buffer b from its offset from on: b itself (the whole
// buffer, which goes back to the pool once done with) when from is 0.
func chunkOf(b []byte, from int) []byte {
	if from == 0 {
		return b
	}
	return b[from:len(b):len(b)]
}

// full reports whether a record of rs bytes would not fit in the chunk's
// buffer. A record larger than a buffer gets one of its own, grown.
func (c *chunk) full(rs int64) bool {
	return len(c.data) > 0 && int64(len(c.data))+rs > int64(cap(c.data))
}

// chunkBytes is the capacity of a chunk's buffer: a record of
// maxRecordRaw entry bytes fits.
const chunkBytes = 256 << 10

// commitFiles is the file state of one group commit.
type commitFiles struct {
	w       *os.File  // the file written last
	size    int64     // its size after the writes
	created []segment // segments this commit started, in order
	files   []*os.File
	orphans []string // files to remove if the commit fails
}

// commitLocked writes and fsyncs every pending chunk as the group's
// leader. It is called with q.mu held and releases it during the I/O. On
// a write or fsync error it rolls the files back to their durable state
// and fails the group's callers; callers whose records were only pending
// append again.
func (q *Queue) commitLocked() {
	q.syncing = true
	pending := q.pending
	q.pending = nil
	end := q.nextSeq
	base, baseSize := q.w, q.lastSize
	q.mu.Unlock()
	c, err := q.writeChunks(pending, base, baseSize)
	var rerr error
	if err != nil {
		for _, f := range c.files {
			_ = f.Close() // the write error is the one to report
		}
		rerr = q.repairFiles(c.orphans, base, baseSize)
	}
	q.mu.Lock()
	q.syncing = false
	defer q.cond.Broadcast()
	if err == nil {
		// The chunks are durable: kept for the reader (mem.go).
		q.keepCommittedLocked(pending, c.created, baseSize)
		q.segs = append(q.segs, c.created...)
		if len(c.created) > 0 {
			for _, f := range c.files[:len(c.files)-1] {
				_ = f.Close() // synced by writeChunks
			}
			_ = base.Close() // synced when it was written
			q.w = c.w
		}
		q.lastSize = c.size
		q.durable = end
		q.syncs++
		n := 0
		for _, w := range q.waiters {
			if w.end <= end {
				w.state = committed
			} else {
				q.waiters[n] = w
				n++
			}
		}
		clear(q.waiters[n:])
		q.waiters = q.waiters[:n]
		select {
		case q.wake <- struct{}{}:
		default:
		}
		return
	}
	q.writeErrs++
	// A handed chunk's buffer is its caller's: a failed one gives it
	// back, the others append it again.
	for _, ch := range pending {
		if !ch.handed {
			q.chunks.put(ch.data)
		}
	}
	for _, w := range q.waiters {
		if w.end <= end {
			w.state, w.err = failed, fmt.Errorf("append to queue: %w", err)
		} else {
			w.state = discard
		}
		q.addDepth(-w.size)
	}
	q.waiters = nil
	for _, ch := range q.pending {
		if !ch.handed {
			q.chunks.put(ch.data)
		}
	}
	q.pending = nil
	q.nextSeq = q.durable
	q.wSize = q.lastSize
	if rerr != nil {
		q.orphans = c.orphans
		q.repairErr = rerr
		q.repairedAt = time.Now()
		q.errlog.Error("queue write failed", "queue write failed and its rollback too; appends refused until the repair succeeds",
			"dir", q.dir, "err", err, "rollback_err", rerr)
		return
	}
	q.errlog.Error("queue write failed", "queue write failed; its appends are refused and rolled back", "dir", q.dir, "err", err)
}

func (q *Queue) writeChunks(pending []chunk, base *os.File, baseSize int64) (commitFiles, error) {
	c := commitFiles{w: base, size: baseSize}
	for _, ch := range pending {
		if ch.newSeg != 0 {
			// The segment before is complete and durable before the next
			// one exists, so that only the last segment can be torn.
			if err := q.ops.sync(c.w); err != nil {
				return c, fmt.Errorf("sync segment %s: %w", c.w.Name(), err)
			}
			f, s, orphans, err := q.createSegment(ch.newSeg)
			c.orphans = append(c.orphans, orphans...)
			if err != nil {
				return c, err
			}
			c.orphans = append(c.orphans, s.path)
			c.created = append(c.created, s)
			c.files = append(c.files, f)
			c.w, c.size = f, segHeaderSize
		}
		if err := q.ops.writeAt(c.w, ch.data, c.size); err != nil {
			return c, fmt.Errorf("write segment %s: %w", c.w.Name(), err)
		}
		c.size += int64(len(ch.data))
	}
	if err := q.ops.sync(c.w); err != nil {
		return c, fmt.Errorf("sync segment %s: %w", c.w.Name(), err)
	}
	return c, nil
}
