package diskqueue

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

var (
	// ErrFull is returned by Append when the entries would take the
	// unacknowledged bytes over Options.MaxBytes. Nothing was written.
	ErrFull = errors.New("queue full")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("queue closed")
)

// Options configure a queue.
type Options struct {
	// Dir holds the queue's files; it is created if missing.
	Dir string
	// MaxBytes bounds the unacknowledged record bytes (RecordSize summed).
	// An Append that would exceed it fails with ErrFull, except into an
	// empty queue, so that one oversized call cannot wedge a client that
	// retries forever. Disk use can exceed it by up to one segment of
	// acknowledged records not yet deleted.
	MaxBytes int64
	// SegmentBytes is the size at which a new segment file is started.
	SegmentBytes int64
	// Logger receives warnings (torn tail truncated) and errors.
	Logger *slog.Logger
}

// Stats describe the queue at one moment.
type Stats struct {
	// Entries and Bytes are what is appended but not acknowledged.
	Entries int64
	Bytes   int64
	// NextSeq is the number the next appended entry gets; Acked is the
	// first unacknowledged number.
	NextSeq uint64
	Acked   uint64
	// Segments is the number of segment files.
	Segments int
	// Syncs counts fsyncs of appended data (group commits).
	Syncs int64
	// Lost counts entries skipped because their segment was corrupt.
	Lost int64
}

type segment struct {
	first uint64
	path  string
}

// chunk is encoded records waiting for the group commit; newSeg != 0
// starts a new segment with that first sequence number before them.
type chunk struct {
	newSeg uint64
	data   []byte
}

// span is bytes read but not yet acknowledged, up to (excluding) end.
type span struct {
	end   uint64
	bytes int64
}

// Queue is a durable FIFO of entries with one reader. Append is safe for
// concurrent use; Read and Ack belong to a single consumer.
type Queue struct {
	dir      string
	maxBytes int64
	segBytes int64
	log      *slog.Logger
	id       string
	lock     *os.File
	ack      *ackFile
	wake     chan struct{} // a durable advance, for the reader
	failed   chan struct{} // closed with the sticky error
	done     chan struct{} // closed by Close

	mu      sync.Mutex
	cond    *sync.Cond // durable advanced, error, or syncing ended
	segs    []segment  // in order; the last is being appended to
	w       *os.File   // last segment; used by the syncing leader only
	wSize   int64      // last segment's size including pending chunks
	pending []chunk
	free    [][]byte
	nextSeq uint64
	durable uint64 // every sequence number below is fsynced
	syncing bool
	err     error
	closed  bool
	depth   int64 // unacknowledged record bytes
	acked   uint64
	syncs   int64
	lost    int64

	rmu    sync.Mutex // the consumer's state below
	r      reader
	spans  []span
	intern map[string]string
}

// reader is the consumer's position in the segment files.
type reader struct {
	seq   uint64 // next sequence number to read
	seg   uint64 // first sequence number of the open segment
	next  uint64 // first sequence number of the segment after it (0: none yet)
	pos   uint64 // sequence number of the record at off
	f     *os.File
	br    *bufio.Reader
	off   int64 // offset of seq's record in the open segment
	hdr   [recHeaderSize]byte
	arena []byte
}

// Open opens (or creates) the queue in opts.Dir, truncating a torn tail.
func Open(opts Options) (*Queue, error) {
	if opts.Dir == "" {
		return nil, errors.New("open queue: no directory")
	}
	if opts.MaxBytes <= 0 || opts.SegmentBytes <= 0 {
		return nil, errors.New("open queue: MaxBytes and SegmentBytes must be positive")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create queue directory: %w", err)
	}
	lock, err := lockDir(filepath.Join(opts.Dir, "LOCK"))
	if err != nil {
		return nil, err
	}
	q := &Queue{
		dir: opts.Dir, maxBytes: opts.MaxBytes, segBytes: opts.SegmentBytes, log: opts.Logger,
		lock: lock, wake: make(chan struct{}, 1), failed: make(chan struct{}), done: make(chan struct{}),
		intern: map[string]string{},
	}
	q.cond = sync.NewCond(&q.mu)
	if err := q.open(); err != nil {
		q.closeFiles()
		return nil, err
	}
	return q, nil
}

func (q *Queue) open() error {
	var err error
	if q.id, err = loadOrCreateID(q.dir); err != nil {
		return err
	}
	var found bool
	q.ack, q.acked, found, err = openAckFile(filepath.Join(q.dir, "acked"))
	if err != nil {
		return err
	}
	if !found {
		q.acked = 1
	}
	ents, err := os.ReadDir(q.dir)
	if err != nil {
		return fmt.Errorf("list queue directory: %w", err)
	}
	for _, e := range ents {
		if first, ok := parseSegName(e.Name()); ok && e.Type().IsRegular() {
			q.segs = append(q.segs, segment{first: first, path: filepath.Join(q.dir, e.Name())})
		}
	}
	slices.SortFunc(q.segs, func(a, b segment) int { return cmp.Compare(a.first, b.first) })

	if len(q.segs) == 0 {
		if err := q.createSegment(q.acked); err != nil {
			return err
		}
	} else {
		n, size, err := q.recoverLast()
		if err != nil {
			return err
		}
		last := q.segs[len(q.segs)-1]
		q.nextSeq = last.first + n
		q.wSize = size
		if q.nextSeq < q.acked {
			q.log.Warn("queue ends before its acknowledged position; starting over there",
				"dir", q.dir, "end", q.nextSeq, "acked", q.acked)
			q.w.Close()
			q.w = nil
			for _, s := range q.segs {
				os.Remove(s.path)
			}
			q.segs = nil
			if err := q.createSegment(q.acked); err != nil {
				return err
			}
		}
	}
	if first := q.segs[0].first; q.acked < first {
		q.log.Warn("queue segments missing before the first one; entries lost",
			"dir", q.dir, "acked", q.acked, "first", first, "lost", first-q.acked)
		q.lost += int64(first - q.acked)
		q.acked = first
	}
	q.durable = q.nextSeq
	if err := q.dropAckedSegments(); err != nil {
		return err
	}
	if err := q.positionReader(); err != nil {
		return err
	}
	// Depth: the record bytes from the reader's position to the end.
	for _, s := range q.segs {
		if s.first < q.r.seg {
			continue
		}
		st, err := os.Stat(s.path)
		if err != nil {
			return fmt.Errorf("stat segment: %w", err)
		}
		q.depth += st.Size() - segHeaderSize
		if s.first == q.r.seg {
			q.depth -= q.r.off - segHeaderSize
		}
	}
	return nil
}

// createSegment starts a new last segment whose first record is first
// (at open, before any other goroutine runs).
func (q *Queue) createSegment(first uint64) error {
	f, path, err := q.newSegmentFile(first)
	if err != nil {
		return err
	}
	q.segs = append(q.segs, segment{first: first, path: path})
	q.w = f
	q.nextSeq = first
	q.wSize = segHeaderSize
	return nil
}

// newSegmentFile creates a segment file: header written and fsynced,
// directory fsynced, so that a segment that exists after a crash always
// has a valid header.
func (q *Queue) newSegmentFile(first uint64) (*os.File, string, error) {
	path := filepath.Join(q.dir, segName(first))
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, "", fmt.Errorf("create segment: %w", err)
	}
	_, err = f.Write(segHeader(first))
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = syncDir(q.dir)
	}
	if err != nil {
		f.Close()
		return nil, "", fmt.Errorf("initialise segment %s: %w", path, err)
	}
	return f, path, nil
}

// recoverLast scans the last segment, truncates a torn tail, leaves it
// open for appending and returns its record count and size.
func (q *Queue) recoverLast() (uint64, int64, error) {
	last := q.segs[len(q.segs)-1]
	f, err := os.OpenFile(last.path, os.O_RDWR, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("open segment: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return 0, 0, fmt.Errorf("stat segment: %w", err)
	}
	hdr := make([]byte, segHeaderSize)
	n, _ := f.ReadAt(hdr, 0)
	if n < segHeaderSize || bytes.Equal(hdr, make([]byte, segHeaderSize)) {
		// Created but the header never reached the disk: nothing in it
		// was ever durable.
		q.log.Warn("rewriting torn queue segment header", "segment", last.path, "size", st.Size())
		if err := f.Truncate(0); err != nil {
			f.Close()
			return 0, 0, fmt.Errorf("truncate segment %s: %w", last.path, err)
		}
		if _, err := f.WriteAt(segHeader(last.first), 0); err != nil {
			f.Close()
			return 0, 0, fmt.Errorf("write segment header %s: %w", last.path, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return 0, 0, fmt.Errorf("sync segment %s: %w", last.path, err)
		}
	} else if !bytes.Equal(hdr, segHeader(last.first)) {
		f.Close()
		return 0, 0, fmt.Errorf("open segment %s: bad header %x", last.path, hdr)
	}
	br := bufio.NewReaderSize(io.NewSectionReader(f, segHeaderSize, 1<<62), 1<<20)
	off := int64(segHeaderSize)
	var count uint64
	var rh [recHeaderSize]byte
	var buf []byte
	var torn error
	for {
		if _, err := io.ReadFull(br, rh[:]); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			if errors.Is(err, io.ErrUnexpectedEOF) {
				torn = errors.New("record header cut short")
				break
			}
			f.Close()
			return 0, 0, fmt.Errorf("read segment %s: %w", last.path, err)
		}
		pl, err := checkHeader(rh[:])
		if err != nil {
			torn = err
			break
		}
		buf = slices.Grow(buf[:0], pl)[:pl]
		if _, err := io.ReadFull(br, buf); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				torn = errors.New("record cut short")
				break
			}
			f.Close()
			return 0, 0, fmt.Errorf("read segment %s: %w", last.path, err)
		}
		if _, _, _, err := decodePayload(buf, binary.LittleEndian.Uint32(rh[4:])); err != nil {
			torn = err
			break
		}
		off += recHeaderSize + int64(pl)
		count++
	}
	if torn != nil {
		q.log.Warn("truncating torn queue tail", "segment", last.path, "offset", off,
			"dropped_bytes", st.Size()-off, "reason", torn.Error())
		if err := f.Truncate(off); err != nil {
			f.Close()
			return 0, 0, fmt.Errorf("truncate segment %s: %w", last.path, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return 0, 0, fmt.Errorf("sync segment %s: %w", last.path, err)
		}
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		f.Close()
		return 0, 0, fmt.Errorf("seek segment %s: %w", last.path, err)
	}
	q.w = f
	return count, off, nil
}

// dropAckedSegments deletes segments whose every record is acknowledged
// (never the last one, which is being appended to).
func (q *Queue) dropAckedSegments() error {
	q.mu.Lock()
	var drop []segment
	for len(q.segs) > 1 && q.segs[1].first <= q.acked {
		drop = append(drop, q.segs[0])
		q.segs = q.segs[1:]
	}
	q.mu.Unlock()
	for _, s := range drop {
		if err := os.Remove(s.path); err != nil {
			return fmt.Errorf("remove acknowledged segment: %w", err)
		}
	}
	return nil
}

// ID is the queue's stable identity, generated when it was created.
func (q *Queue) ID() string { return q.id }

// Failed is closed when the queue has hit a write or fsync error; Err
// then returns it.
func (q *Queue) Failed() <-chan struct{} { return q.failed }

// Err returns the sticky error, if any.
func (q *Queue) Err() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.err
}

// Stats returns the queue's depth and counters.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return Stats{
		Entries: int64(q.nextSeq - q.acked), Bytes: q.depth, NextSeq: q.nextSeq, Acked: q.acked,
		Segments: len(q.segs), Syncs: q.syncs, Lost: q.lost,
	}
}

// Append adds entries and returns the sequence number of the first once
// all are fsynced. Concurrent callers share fsyncs (group commit). It
// fails with ErrFull, ErrClosed or the queue's sticky I/O error; on any
// error none of the entries is durable-acknowledged (after an I/O error
// some may still reach the disk and be delivered).
func (q *Queue) Append(entries []Entry) (uint64, error) {
	if len(entries) == 0 {
		return 0, nil
	}
	var size int64
	for i := range entries {
		if entries[i].Category == "" {
			return 0, errors.New("append to queue: empty category")
		}
		size += int64(RecordSize(&entries[i]))
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	switch {
	case q.err != nil:
		return 0, q.err
	case q.closed:
		return 0, ErrClosed
	case q.depth > 0 && q.depth+size > q.maxBytes:
		return 0, ErrFull
	}
	first := q.nextSeq
	for i := range entries {
		rs := int64(RecordSize(&entries[i]))
		if len(q.pending) == 0 || (q.wSize > segHeaderSize && q.wSize+rs > q.segBytes) {
			c := chunk{data: q.buffer()}
			if q.wSize > segHeaderSize && q.wSize+rs > q.segBytes {
				c.newSeg = q.nextSeq
				q.wSize = segHeaderSize
			}
			q.pending = append(q.pending, c)
		}
		c := &q.pending[len(q.pending)-1]
		c.data = appendRecord(c.data, &entries[i])
		q.wSize += rs
		q.nextSeq++
	}
	q.depth += size
	end := q.nextSeq
	for q.durable < end && q.err == nil {
		if q.syncing {
			q.cond.Wait()
			continue
		}
		q.commitLocked()
	}
	if q.durable < end {
		return 0, q.err
	}
	return first, nil
}

func (q *Queue) buffer() []byte {
	if n := len(q.free); n > 0 {
		b := q.free[n-1]
		q.free = q.free[:n-1]
		return b[:0]
	}
	return make([]byte, 0, 256<<10)
}

// commitLocked writes and fsyncs every pending chunk as the group's
// leader. It is called with q.mu held and releases it during the I/O.
func (q *Queue) commitLocked() {
	q.syncing = true
	pending := q.pending
	q.pending = nil
	end := q.nextSeq
	q.mu.Unlock()
	err := q.writeChunks(pending)
	q.mu.Lock()
	q.syncing = false
	for _, c := range pending {
		if cap(c.data) <= 4<<20 && len(q.free) < 4 {
			q.free = append(q.free, c.data)
		}
	}
	if err != nil {
		q.failLocked(err)
	} else {
		q.durable = end
		q.syncs++
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	q.cond.Broadcast()
}

func (q *Queue) writeChunks(pending []chunk) error {
	for _, c := range pending {
		if c.newSeg != 0 {
			if err := q.w.Sync(); err != nil {
				return fmt.Errorf("sync segment: %w", err)
			}
			if err := q.w.Close(); err != nil {
				return fmt.Errorf("close segment: %w", err)
			}
			q.w = nil
			f, path, err := q.newSegmentFile(c.newSeg)
			if err != nil {
				return err
			}
			q.mu.Lock()
			q.segs = append(q.segs, segment{first: c.newSeg, path: path})
			q.mu.Unlock()
			q.w = f
		}
		if _, err := q.w.Write(c.data); err != nil {
			return fmt.Errorf("write segment: %w", err)
		}
	}
	if err := q.w.Sync(); err != nil {
		return fmt.Errorf("sync segment: %w", err)
	}
	return nil
}

func (q *Queue) failLocked(err error) {
	if q.err != nil {
		return
	}
	q.err = err
	q.log.Error("queue write failed; refusing further appends", "dir", q.dir, "err", err)
	close(q.failed)
}

// Batch is a run of consecutive entries from the queue: entry i has
// sequence number First+i.
type Batch struct {
	First   uint64
	Entries []Entry
}

// End is the sequence number after the batch's last entry.
func (b Batch) End() uint64 { return b.First + uint64(len(b.Entries)) }

// segFor returns the segment holding seq and the first sequence number of
// the segment after it (0 if it is the last).
func (q *Queue) segFor(seq uint64) (segment, uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for i := len(q.segs) - 1; i >= 0; i-- {
		if q.segs[i].first <= seq {
			var next uint64
			if i+1 < len(q.segs) {
				next = q.segs[i+1].first
			}
			return q.segs[i], next
		}
	}
	return q.segs[0], 0
}

// openSeg points the reader at the start of s.
func (q *Queue) openSeg(s segment, next uint64) error {
	r := &q.r
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
	f, err := os.Open(s.path)
	if err != nil {
		return fmt.Errorf("open segment for reading: %w", err)
	}
	hdr := make([]byte, segHeaderSize)
	if _, err := io.ReadFull(f, hdr); err != nil || !bytes.Equal(hdr, segHeader(s.first)) {
		f.Close()
		return fmt.Errorf("read segment %s: bad header", s.path)
	}
	if r.br == nil {
		r.br = bufio.NewReaderSize(f, 1<<20)
	} else {
		r.br.Reset(f)
	}
	r.f, r.seg, r.next, r.pos, r.off = f, s.first, next, s.first, segHeaderSize
	return nil
}

// positionReader moves the reader to the acknowledged position at open.
func (q *Queue) positionReader() error {
	target := q.acked
	var scratch []byte
	for {
		s, next := q.segFor(target)
		if err := q.openSeg(s, next); err != nil {
			return err
		}
		var err error
		for q.r.pos < target && err == nil {
			var pl int
			if pl, err = q.r.peek(); err == nil {
				scratch = slices.Grow(scratch[:0], pl)
				_, _, _, err = q.r.take(pl, scratch[:pl])
			}
		}
		if err == nil {
			q.r.seq = target
			return nil
		}
		if !errors.Is(err, errCorrupt) || next == 0 {
			return fmt.Errorf("position queue reader in %s at offset %d: %w", s.path, q.r.off, err)
		}
		q.log.Error("skipping corrupt queue segment", "segment", s.path, "offset", q.r.off,
			"lost_entries", next-target, "err", err)
		q.lost += int64(next - target)
		target = next
	}
}

// peek returns the payload length of the record at the reader's position
// without consuming it.
func (r *reader) peek() (int, error) {
	h, err := r.br.Peek(recHeaderSize)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, fmt.Errorf("%w: segment ends inside its records", errCorrupt)
		}
		return 0, fmt.Errorf("read segment: %w", err)
	}
	copy(r.hdr[:], h)
	return checkHeader(h)
}

// take consumes the record peek measured, reading its payload into p.
func (r *reader) take(pl int, p []byte) (int64, []byte, []byte, error) {
	r.br.Discard(recHeaderSize)
	if _, err := io.ReadFull(r.br, p); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, nil, nil, fmt.Errorf("%w: segment ends inside a record", errCorrupt)
		}
		return 0, nil, nil, fmt.Errorf("read segment: %w", err)
	}
	t, cat, msg, err := decodePayload(p, binary.LittleEndian.Uint32(r.hdr[4:]))
	if err != nil {
		return 0, nil, nil, err
	}
	r.off += recHeaderSize + int64(pl)
	r.pos++
	return t, cat, msg, nil
}

// alloc hands out n bytes that no earlier batch references.
func (r *reader) alloc(n int) []byte {
	if cap(r.arena)-len(r.arena) < n {
		r.arena = make([]byte, 0, max(n, 1<<20))
	}
	p := r.arena[len(r.arena) : len(r.arena)+n]
	r.arena = r.arena[:len(r.arena)+n]
	return p
}

// Read returns the next entries after those already read, at least one,
// waiting until one is durable or ctx ends. The batch's record bytes
// (RecordSize summed) stay within maxBytes, except that a single entry is
// returned whatever its size; it holds at most maxEntries entries. The
// entries' memory is not reused by later reads.
func (q *Queue) Read(ctx context.Context, maxBytes, maxEntries int) (Batch, error) {
	q.rmu.Lock()
	defer q.rmu.Unlock()
	r := &q.r
	for {
		q.mu.Lock()
		avail, err, closed := q.durable, q.err, q.closed
		q.mu.Unlock()
		if closed {
			return Batch{}, ErrClosed
		}
		if r.seq >= avail {
			if err != nil {
				return Batch{}, err
			}
			select {
			case <-q.wake:
			case <-q.failed:
			case <-q.done:
			case <-ctx.Done():
				return Batch{}, ctx.Err()
			}
			continue
		}
		if r.next == 0 {
			_, r.next = q.segFor(r.seg)
		}
		b, err := q.readAvailable(avail, maxBytes, maxEntries)
		if err != nil || len(b.Entries) > 0 {
			return b, err
		}
		// Only a corrupt segment was skipped; wait for more.
	}
}

func (q *Queue) readAvailable(avail uint64, maxBytes, maxEntries int) (Batch, error) {
	r := &q.r
	b := Batch{First: r.seq}
	var bytes int64
	for r.seq < avail && len(b.Entries) < maxEntries {
		if r.next != 0 && r.pos >= r.next {
			s, next := q.segFor(r.pos)
			if err := q.openSeg(s, next); err != nil {
				return Batch{}, err
			}
		}
		pl, err := r.peek()
		if err == nil && len(b.Entries) > 0 && bytes+int64(recHeaderSize+pl) > int64(maxBytes) {
			break
		}
		var t int64
		var cat, msg []byte
		if err == nil {
			t, cat, msg, err = r.take(pl, r.alloc(pl))
		}
		if err != nil {
			if len(b.Entries) > 0 && errors.Is(err, errCorrupt) {
				break // deliver what precedes it; the next read skips it
			}
			if err := q.skipCorrupt(err); err != nil {
				return Batch{}, err
			}
			b.First = r.seq
			continue
		}
		c, ok := q.intern[string(cat)]
		if !ok {
			c = string(cat)
			if len(q.intern) < 4096 {
				q.intern[c] = c
			}
		}
		b.Entries = append(b.Entries, Entry{Category: c, Message: msg, Time: t})
		bytes += int64(recHeaderSize + pl)
		r.seq++
	}
	if len(b.Entries) > 0 {
		q.spans = append(q.spans, span{end: r.seq, bytes: bytes})
	}
	return b, nil
}

// skipCorrupt moves the reader past a corrupt sealed segment, or returns
// the error if the segment is the last (its records are the durable tail
// and nothing follows to resynchronise on).
func (q *Queue) skipCorrupt(cause error) error {
	r := &q.r
	if !errors.Is(cause, errCorrupt) || r.next == 0 {
		return fmt.Errorf("read queue segment %s at offset %d: %w", segName(r.seg), r.off, cause)
	}
	st, err := r.f.Stat()
	if err != nil {
		return fmt.Errorf("stat corrupt segment: %w", err)
	}
	lost := r.next - r.seq
	q.log.Error("skipping corrupt queue segment", "segment", segName(r.seg), "offset", r.off,
		"lost_entries", lost, "err", cause)
	q.mu.Lock()
	q.lost += int64(lost)
	q.mu.Unlock()
	q.spans = append(q.spans, span{end: r.next, bytes: st.Size() - r.off})
	r.seq = r.next
	s, next := q.segFor(r.seq)
	return q.openSeg(s, next)
}

// Ack acknowledges every entry up to b (b is the oldest batch read and
// not yet acknowledged, or a later one, which acknowledges those before
// it too). The position is fsynced before the segment files it frees are
// deleted.
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
	var freed int64
	for len(q.spans) > 0 && q.spans[0].end <= end {
		freed += q.spans[0].bytes
		q.spans = q.spans[1:]
	}
	if err := q.ack.store(end); err != nil {
		return err
	}
	q.mu.Lock()
	q.acked = end
	q.depth -= freed
	q.mu.Unlock()
	return q.dropAckedSegments()
}

// Close waits for appends in progress, then closes the files. Read and
// Append fail with ErrClosed afterwards.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	for q.syncing || len(q.pending) > 0 {
		if q.syncing {
			q.cond.Wait()
		} else {
			q.commitLocked()
		}
	}
	err := q.err
	close(q.done)
	q.mu.Unlock()
	q.rmu.Lock()
	defer q.rmu.Unlock()
	if cerr := q.closeFiles(); err == nil {
		err = cerr
	}
	return err
}

func (q *Queue) closeFiles() error {
	var err error
	if q.r.f != nil {
		q.r.f.Close()
		q.r.f = nil
	}
	if q.w != nil {
		if cerr := q.w.Close(); cerr != nil {
			err = fmt.Errorf("close segment: %w", cerr)
		}
		q.w = nil
	}
	if q.ack != nil {
		q.ack.close()
	}
	q.lock.Close()
	return err
}
