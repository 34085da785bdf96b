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
	// Encoded and compressed before the lock: callers compress in
	// parallel, and the group commit only copies their records.
	enc := q.encoders.get()
	defer q.encoders.put(enc) // the chunks hold copies of its records
	encodeRecords(enc, entries, q.key, q.compress && q.backlog.Load() >= q.compressAbove)
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
func (q *Queue) enqueueLocked(enc *encoded) uint64 {
	first := q.nextSeq
	for _, r := range enc.recs {
		rs := int64(r.n)
		roll := q.wSize > segHeaderSize && q.wSize+rs > q.segBytes
		// A full chunk is followed by a new one rather than grown: its
		// buffer is reused as it is (and kept for the reader, mem.go).
		full := len(q.pending) > 0 && q.pending[len(q.pending)-1].full(rs)
		if len(q.pending) == 0 || roll || full {
			c := chunk{data: q.buffer()}
			if roll {
				c.newSeg = q.nextSeq
				q.wSize = segHeaderSize
			}
			q.pending = append(q.pending, c)
		}
		c := &q.pending[len(q.pending)-1]
		c.data = append(c.data, enc.number(r, q.key, q.nextSeq)...)
		q.wSize += rs
		q.nextSeq += uint64(r.count)
	}
	return first
}

// chunkBytes is the capacity of a chunk's buffer: a record of
// maxRecordRaw entry bytes fits.
const chunkBytes = 256 << 10

// full reports whether a record of rs bytes would not fit in the chunk's
// buffer. A record larger than a buffer gets one of its own, grown.
func (c *chunk) full(rs int64) bool {
	return len(c.data) > 0 && int64(len(c.data))+rs > int64(cap(c.data))
}

func (q *Queue) buffer() []byte {
	if n := len(q.free); n > 0 {
		b := q.free[n-1]
		q.free = q.free[:n-1]
		return b[:0]
	}
	return make([]byte, 0, chunkBytes)
}

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
	for _, ch := range pending {
		q.recycleLocked(ch.data)
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
		q.recycleLocked(ch.data)
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
			// one exists, so that only the last segment can be torn. A
			// reused file is cut to its records first: the old ones after
			// them are the last segment's only (reuseSegment).
			if st, err := c.w.Stat(); err != nil {
				return c, fmt.Errorf("stat segment %s: %w", c.w.Name(), err)
			} else if st.Size() > c.size {
				if err := q.ops.truncate(c.w, c.size); err != nil {
					return c, fmt.Errorf("cut segment %s to its records: %w", c.w.Name(), err)
				}
			}
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
