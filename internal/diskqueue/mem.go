package diskqueue

// The reader's read-back from memory.
//
// The records a group commit writes are, once it has fsynced them, the
// very bytes the reader is about to read back from the same file, usually
// within milliseconds. Rather than handing the commit's buffers back to
// the appenders at once, the commit keeps them (committed chunks, at most
// memBytesMax), each with the segment and offset it was written at. When
// the reader's next read starts exactly where a kept chunk starts, it
// takes the chunk as its read buffer instead of reading the file: the
// bytes are the same (the commit succeeded). The reader checks their
// lengths, sequence numbers and payload structure as it checks what it
// reads from disk, but not their CRCs: this process computed them over
// this very buffer, which nothing has written since. It hands out
// payloads where they lie, as it does in its own buffers.
// A chunk the reader is done with goes back to the appenders only after
// every payload of it is acknowledged (readBufs).
//
// Nothing else changes: a chunk is kept only after its commit's fsync, so
// it never holds bytes that are not durable; what is not kept (a reader
// lagging more than memBytesMax behind, a failed commit, the records
// before a restart) is read from disk.

// memBytesMax bounds the committed chunks kept for the reader.
const memBytesMax = 8 << 20

// memChunk is the bytes of one committed chunk, written at off in the
// segment whose id is seg.
type memChunk struct {
	seg  uint64
	off  int64
	data []byte
}

// keepCommittedLocked keeps the chunks of a successful commit for the
// reader (or gives them back to the appenders when memBytesMax is
// reached). It is called with q.mu held, before the commit's new
// segments are added to q.segs: the first chunk without newSeg continues
// the last segment, at baseSize.
func (q *Queue) keepCommittedLocked(pending []chunk, created []segment, baseSize int64) {
	var seg uint64
	known := false
	if n := len(q.segs); n > 0 {
		seg, known = q.segs[n-1].id, true
	}
	off, next := baseSize, 0
	for _, ch := range pending {
		if ch.newSeg != 0 {
			seg, known, off = created[next].id, true, segHeaderSize
			next++
		}
		n := int64(len(ch.data))
		if known && n > 0 && q.memBytes+n <= memBytesMax {
			q.mem = append(q.mem, memChunk{seg: seg, off: off, data: ch.data})
			q.memBytes += n
		} else {
			q.recycleLocked(ch.data)
		}
		off += n
	}
}

// maxFreeChunks bounds the chunk buffers kept for reuse: enough for the
// ones the reader holds until their entries are acknowledged.
const maxFreeChunks = 32

// recycleLocked gives a chunk buffer back to the appenders. Only buffers
// of the usual size are kept: one grown for a large record is left to
// the garbage collector.
func (q *Queue) recycleLocked(b []byte) {
	if cap(b) == chunkBytes && len(q.free) < maxFreeChunks {
		q.free = append(q.free, b[:0])
	}
}

// recycle is recycleLocked for the reader, which does not hold q.mu.
func (q *Queue) recycle(b []byte) {
	q.mu.Lock()
	q.recycleLocked(b)
	q.mu.Unlock()
}

// takeCommitted returns the kept chunk written at off in segment seg if
// it ends within limit (the reader's readable end), and drops the kept
// chunks before it, which the reader has passed. The chunk is the
// reader's from then on (it never reads a file into one); nil if there
// is none.
func (q *Queue) takeCommitted(seg uint64, off, limit int64) []byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.mem) > 0 {
		m := q.mem[0]
		if m.seg > seg || (m.seg == seg && m.off >= off) {
			if m.seg != seg || m.off != off || m.off+int64(len(m.data)) > limit {
				return nil // ahead of the reader, or not readable yet
			}
		}
		q.mem[0] = memChunk{}
		q.mem = q.mem[1:]
		q.memBytes -= int64(len(m.data))
		if m.seg == seg && m.off == off {
			q.memTaken += int64(len(m.data))
			return m.data
		}
		q.recycleLocked(m.data) // behind the reader: it read those bytes from disk
	}
	return nil
}
