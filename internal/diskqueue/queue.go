package diskqueue

import (
	"cmp"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/freeway-dev/freeway/internal/ratelog"
)

var (
	// ErrFull is returned by Append when the entries would take the
	// unacknowledged bytes over Options.MaxBytes. Nothing was written.
	ErrFull = errors.New("queue full")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("queue closed")
	// ErrUnavailable is returned by Append while the queue cannot append:
	// a write failed and its rollback failed too (or, at Open, the
	// segment of the new incarnation could not be created). Appends are
	// refused, and the repair retried every Options.RetryInterval, until
	// the files are repaired. Nothing of a refused Append is kept.
	ErrUnavailable = errors.New("queue unavailable after a write error")
	// ErrTooLarge is returned by Append for an entry whose record would
	// exceed MaxRecordBytes.
	ErrTooLarge = errors.New("entry too large for the queue")
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
	// RetryInterval is how often appends retry repairing the files after
	// a rollback failed (default 1s).
	RetryInterval time.Duration
	// Logger receives warnings (torn tail truncated) and errors.
	Logger *slog.Logger
	// FileHook, if set, is called before each change the queue makes to
	// its files; an error it returns fails that operation as if the
	// operating system had returned it (a write then fails after writing
	// half its bytes, as on a disk that fills up). For fault-injection
	// tests.
	FileHook func(op FileOp, path string) error
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
	// Lost counts entries skipped because their records were damaged.
	Lost int64
	// WriteErrors counts group commits that failed (and were rolled back).
	WriteErrors int64
	// Unavailable is set while appends are refused until the files are
	// repaired (ErrUnavailable).
	Unavailable bool
}

// segment is one segment file and its format.
type segment struct {
	id      uint64 // unique in this Queue: a file replaced under one name gets a new id
	first   uint64
	path    string
	version int   // 1, 2, or 0 when its header is damaged
	hdrSize int64 // bytes before the first record
	recHdr  int   // bytes of a record header
	inc     string
	key     uint32 // CRC key: the incarnation's (v2), 0 (v1)
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

// waiter is one Append waiting for its group commit.
type waiter struct {
	end   uint64 // the sequence number after its last entry
	size  int64  // its record bytes
	state waitState
	err   error
}

type waitState int

const (
	waiting waitState = iota
	committed
	failed  // its records were written and rolled back
	discard // its records were dropped unwritten by a rollback: append again
)

// Queue is a durable FIFO of entries with one reader. Append is safe for
// concurrent use; Read and Ack belong to a single consumer.
//
// Lock order: rmu (the consumer) before mu.
type Queue struct {
	dir      string
	maxBytes int64
	segBytes int64
	retry    time.Duration
	log      *slog.Logger
	errlog   *ratelog.Limiter
	ops      fileOps
	id       string
	inc      incarnation // secret: never logged
	segIDs   uint64      // the last segment.id handed out
	key      uint32
	lock     *os.File
	ack      *ackFile
	wake     chan struct{} // a durable advance, for the reader
	done     chan struct{} // closed by Close

	mu        sync.Mutex
	cond      *sync.Cond // a commit or repair ended
	segs      []segment  // published segments, in order; the last is appended to
	w         *os.File   // the last segment; written by the syncing leader only
	lastSize  int64      // the last segment's durable size
	wSize     int64      // its size including pending chunks
	pending   []chunk
	waiters   []*waiter
	free      [][]byte
	nextSeq   uint64
	durable   uint64 // every sequence number below is fsynced
	syncing   bool   // a leader is committing or repairing, unlocked
	closed    bool
	depth     int64 // unacknowledged record bytes
	acked     uint64
	syncs     int64
	lost      int64
	writeErrs int64
	// repairErr is set while appends are refused until the files are
	// repaired: orphans (segment files a failed commit created) removed,
	// the last segment cut back to lastSize, and, if needSeg, a segment
	// for this incarnation started.
	repairErr  error
	repairedAt time.Time
	orphans    []string
	needSeg    bool

	rmu    sync.Mutex // the consumer's state below
	r      reader
	spans  []span
	intern map[string]string
}

// Open opens (or creates) the queue in opts.Dir and starts a new
// incarnation: a new segment whose header carries a new random
// incarnation, fsynced with the directory before Open returns. A torn
// tail of the last segment is truncated; damaged records are skipped
// when read.
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
	if opts.RetryInterval <= 0 {
		opts.RetryInterval = time.Second
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create queue directory: %w", err)
	}
	lock, err := lockDir(filepath.Join(opts.Dir, "LOCK"))
	if err != nil {
		return nil, err
	}
	q := &Queue{
		dir: opts.Dir, maxBytes: opts.MaxBytes, segBytes: opts.SegmentBytes, retry: opts.RetryInterval,
		log: opts.Logger, errlog: ratelog.New(opts.Logger, time.Minute, 5), ops: fileOps{hook: opts.FileHook},
		lock: lock, wake: make(chan struct{}, 1), done: make(chan struct{}),
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
	if _, err := rand.Read(q.inc[:]); err != nil {
		return fmt.Errorf("generate queue incarnation: %w", err)
	}
	q.key = q.inc.crcKey()
	var found bool
	q.ack, q.acked, found, err = openAckFile(filepath.Join(q.dir, "acked"), q.ops)
	if err != nil {
		return err
	}
	if !found {
		q.acked = 1
	}
	if err := q.listSegments(); err != nil {
		return err
	}
	q.nextSeq = q.acked
	if len(q.segs) > 0 {
		if q.nextSeq, q.lastSize, err = q.recoverLast(); err != nil {
			return err
		}
	}
	if len(q.segs) > 0 && q.nextSeq < q.acked {
		// Every record is below the acknowledged position: nothing here
		// is needed any more.
		q.log.Warn("queue ends before its acknowledged position; starting over there",
			"dir", q.dir, "end", q.nextSeq, "acked", q.acked)
		q.w.Close()
		q.w = nil
		for _, s := range q.segs {
			if err := os.Remove(s.path); err != nil {
				return fmt.Errorf("remove acknowledged segment: %w", err)
			}
		}
		q.segs = nil
		q.nextSeq = q.acked
	}
	if len(q.segs) > 0 {
		if first := q.segs[0].first; q.acked < first {
			q.log.Error("queue segments missing before the first one; entries lost",
				"dir", q.dir, "acked", q.acked, "first", first, "lost_entries", first-q.acked)
			q.lost += int64(first - q.acked)
			q.acked = first
		}
	}
	q.durable = q.nextSeq
	q.wSize = q.lastSize

	// Start this incarnation's segment. If that fails (a full disk), the
	// queue opens all the same: what is durable can be read and shipped,
	// which frees space, and appends are refused until a retry succeeds.
	q.needSeg = true
	q.mu.Lock()
	err = q.repairLocked()
	q.mu.Unlock()
	if err != nil {
		q.log.Error("cannot start a new queue segment; appends are refused until it can", "dir", q.dir, "err", err)
	}
	q.dropAckedSegments()
	if err := q.positionReader(); err != nil {
		return err
	}
	// Depth: the record bytes from the reader's position to the end.
	for _, s := range q.segs {
		if s.first < q.r.segFirst() {
			continue
		}
		size := q.lastSize
		if s.first != q.segs[len(q.segs)-1].first {
			st, err := os.Stat(s.path)
			if err != nil {
				return fmt.Errorf("stat segment: %w", err)
			}
			size = st.Size()
		}
		from := s.hdrSize
		if q.r.sc != nil && s.first == q.r.sc.seg.first {
			from = q.r.sc.off
		}
		q.depth += max(size-from, 0)
	}
	return nil
}

// listSegments finds the segment files and reads their headers. A leftover
// temporary file (a segment whose creation a crash interrupted) is removed.
func (q *Queue) listSegments() error {
	ents, err := os.ReadDir(q.dir)
	if err != nil {
		return fmt.Errorf("list queue directory: %w", err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), segSuffix+tmpSuffix) {
			if err := os.Remove(filepath.Join(q.dir, e.Name())); err != nil {
				return fmt.Errorf("remove unfinished segment: %w", err)
			}
			continue
		}
		if first, ok := parseSegName(e.Name()); ok && e.Type().IsRegular() {
			q.segIDs++
			q.segs = append(q.segs, segment{id: q.segIDs, first: first, path: filepath.Join(q.dir, e.Name())})
		}
	}
	slices.SortFunc(q.segs, func(a, b segment) int { return cmp.Compare(a.first, b.first) })
	for i := 0; i < len(q.segs); i++ {
		s := &q.segs[i]
		last := i == len(q.segs)-1
		err := readSegHeader(s)
		switch {
		case err == nil:
		case errors.Is(err, errTornHeader) && last:
			// Created just before a crash (v1 wrote the header in place):
			// nothing in it was ever durable.
			q.log.Warn("removing a queue segment whose header was never written", "segment", s.path)
			if err := os.Remove(s.path); err != nil {
				return fmt.Errorf("remove torn segment: %w", err)
			}
			if err := syncDir(q.dir); err != nil {
				return err
			}
			q.segs = q.segs[:i]
		case errors.Is(err, errDamaged) || errors.Is(err, errTornHeader):
			if last {
				return fmt.Errorf("open last queue segment %s: %w (move it away to start; its entries are then lost)", s.path, err)
			}
			q.log.Error("queue segment header damaged; its entries will be skipped", "segment", s.path, "err", err)
			s.version = 0
		default:
			return err
		}
	}
	return nil
}

// readSegHeader reads s's header and fills in its format.
func readSegHeader(s *segment) error {
	f, err := os.Open(s.path)
	if err != nil {
		return fmt.Errorf("open segment: %w", err)
	}
	defer f.Close()
	b := make([]byte, segHeaderSize)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read segment header %s: %w", s.path, err)
	}
	return parseSegHeader(b[:n], s)
}

// recoverLast scans the last segment at open. A bad record followed by
// valid ones is damage, kept for the reader to skip; a bad record with
// nothing valid after it is a torn tail (written after the last fsync),
// truncated. It leaves the segment open as q.w and returns the sequence
// number after its last record and its size.
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
	sc := newScanner(last, f, st.Size())
	prev := last.first - 1 // the last valid record's sequence number
	end := last.hdrSize    // and where it ends
	var scratch []byte
	var torn error
	for {
		off := sc.off
		h, err := sc.peek()
		if err == nil {
			scratch = slices.Grow(scratch[:0], h.pl)[:h.pl]
			if _, _, _, err = sc.take(scratch); err == nil {
				prev, end = h.seq, sc.off
				continue
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if !errors.Is(err, errDamaged) {
			f.Close()
			return 0, 0, fmt.Errorf("read segment %s: %w", last.path, err)
		}
		if last.version == segVersion {
			at, _, ok, rerr := sc.resync(off+1, prev+1, ^uint64(0))
			if rerr != nil {
				f.Close()
				return 0, 0, fmt.Errorf("read segment %s: %w", last.path, rerr)
			}
			if ok {
				q.log.Warn("damaged record inside the last queue segment; keeping the valid records after it",
					"segment", last.path, "offset", off, "reason", err.Error())
				sc.seek(at)
				continue
			}
		}
		torn = err
		break
	}
	if torn != nil {
		q.log.Warn("truncating torn queue tail", "segment", last.path, "offset", end,
			"dropped_bytes", st.Size()-end, "reason", torn.Error())
		err := q.ops.truncate(f, end)
		if err == nil {
			err = q.ops.sync(f)
		}
		if err != nil {
			// Not fatal: appends go to a new segment, and the reader
			// passes the tail without loss (it ends after the last record).
			q.log.Error("cannot truncate torn queue tail", "segment", last.path, "err", err)
		}
	}
	q.w = f
	return prev + 1, end, nil
}

// repairLocked brings the files to a state appends can continue from (see
// Queue.repairErr) and records the outcome. It is called with q.mu held
// by the only goroutine that may change the files (at Open, or a leader
// marked syncing), and releases q.mu during the I/O.
func (q *Queue) repairLocked() error {
	orphans, base, baseSize, needSeg, first := slices.Clone(q.orphans), q.w, q.lastSize, q.needSeg, q.nextSeq
	q.syncing = true
	q.mu.Unlock()
	err := q.repairFiles(orphans, base, baseSize)
	var nf *os.File
	var ns segment
	if err == nil && needSeg {
		var more []string
		nf, ns, more, err = q.createSegment(first)
		orphans = append(orphans, more...)
	}
	q.mu.Lock()
	q.syncing = false
	q.repairedAt = time.Now()
	defer q.cond.Broadcast()
	if err != nil {
		q.orphans = orphans
		q.repairErr = err
		return err
	}
	q.orphans = nil
	q.repairErr = nil
	if needSeg {
		q.needSeg = false
		if n := len(q.segs); n > 0 && q.segs[n-1].first == first {
			q.segs[n-1] = ns // replaces an empty segment of an earlier run
		} else {
			q.segs = append(q.segs, ns)
		}
		if q.w != nil {
			q.w.Close()
		}
		q.w, q.lastSize, q.wSize = nf, segHeaderSize, segHeaderSize
	}
	return nil
}

// repairFiles removes orphans and cuts base back to size, durably. It
// can be repeated after it failed.
func (q *Queue) repairFiles(orphans []string, base *os.File, size int64) error {
	var errs []error
	for _, p := range orphans {
		if err := q.ops.remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove segment of a failed write: %w", err))
		}
	}
	if len(orphans) > 0 {
		if err := q.ops.syncDir(q.dir); err != nil {
			errs = append(errs, err)
		}
	}
	if base != nil {
		if err := q.ops.truncate(base, size); err != nil {
			errs = append(errs, fmt.Errorf("truncate segment %s to %d: %w", base.Name(), size, err))
		} else if err := q.ops.sync(base); err != nil {
			errs = append(errs, fmt.Errorf("sync segment %s: %w", base.Name(), err))
		}
	}
	return errors.Join(errs...)
}

// createSegment starts a segment of this incarnation whose first record
// will be first: header written to a temporary file and fsynced, renamed,
// directory fsynced, so that a segment file that exists always has its
// whole header. It returns the open file, and the files that may exist
// and must be removed if it failed.
func (q *Queue) createSegment(first uint64) (*os.File, segment, []string, error) {
	path := filepath.Join(q.dir, segName(first))
	tmp := path + tmpSuffix
	f, err := q.ops.create(tmp)
	if err != nil {
		return nil, segment{}, []string{tmp}, fmt.Errorf("create segment %s: %w", tmp, err)
	}
	err = q.ops.writeAt(f, segHeader(first, q.inc), 0)
	if err == nil {
		err = q.ops.sync(f)
	}
	f.Close()
	if err == nil {
		err = q.ops.rename(tmp, path)
	}
	if err != nil {
		return nil, segment{}, []string{tmp}, fmt.Errorf("initialise segment %s: %w", path, err)
	}
	if err := q.ops.syncDir(q.dir); err != nil {
		return nil, segment{}, []string{path}, fmt.Errorf("initialise segment %s: %w", path, err)
	}
	if f, err = os.OpenFile(path, os.O_RDWR, 0); err != nil {
		return nil, segment{}, []string{path}, fmt.Errorf("open segment: %w", err)
	}
	q.mu.Lock()
	q.segIDs++
	id := q.segIDs
	q.mu.Unlock()
	s := segment{id: id, first: first, path: path, version: segVersion, hdrSize: segHeaderSize, recHdr: recHeaderSize,
		inc: q.inc.String(), key: q.key}
	return f, s, nil, nil
}

// dropAckedSegments deletes segments whose every record is acknowledged
// (never the last one, which is being appended to). A failure is logged:
// the file is left behind and removed at the next Open.
func (q *Queue) dropAckedSegments() {
	q.mu.Lock()
	var drop []segment
	for len(q.segs) > 1 && q.segs[1].first <= q.acked {
		drop = append(drop, q.segs[0])
		q.segs = q.segs[1:]
	}
	q.mu.Unlock()
	for _, s := range drop {
		if err := q.ops.remove(s.path); err != nil {
			q.errlog.Error("remove acknowledged segment", "cannot remove an acknowledged queue segment", "segment", s.path, "err", err)
		}
	}
}

// ID is the queue's stable identity, generated when it was created. Unlike
// the incarnation it is not secret.
func (q *Queue) ID() string { return q.id }

// Stats returns the queue's depth and counters.
func (q *Queue) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return Stats{
		Entries: int64(q.nextSeq - q.acked), Bytes: q.depth, NextSeq: q.nextSeq, Acked: q.acked,
		Segments: len(q.segs), Syncs: q.syncs, Lost: q.lost, WriteErrors: q.writeErrs,
		Unavailable: q.repairErr != nil,
	}
}

// Append adds entries and returns the sequence number of the first once
// all are fsynced. Concurrent callers share fsyncs (group commit). It
// fails with ErrFull, ErrClosed, ErrUnavailable, ErrTooLarge or the write
// error of its group commit; on any error nothing of the entries is kept
// (a failed group commit is rolled back).
func (q *Queue) Append(entries []Entry) (uint64, error) {
	if len(entries) == 0 {
		return 0, nil
	}
	var size int64
	for i := range entries {
		if entries[i].Category == "" {
			return 0, errors.New("append to queue: empty category")
		}
		rs := int64(RecordSize(&entries[i]))
		if rs > MaxRecordBytes {
			return 0, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, rs, MaxRecordBytes)
		}
		size += rs
	}
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
		first := q.enqueueLocked(entries)
		w := &waiter{end: q.nextSeq, size: size}
		q.depth += size
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

// enqueueLocked encodes entries into pending chunks with the next
// sequence numbers and returns the first.
func (q *Queue) enqueueLocked(entries []Entry) uint64 {
	first := q.nextSeq
	for i := range entries {
		rs := int64(RecordSize(&entries[i]))
		roll := q.wSize > segHeaderSize && q.wSize+rs > q.segBytes
		if len(q.pending) == 0 || roll {
			c := chunk{data: q.buffer()}
			if roll {
				c.newSeg = q.nextSeq
				q.wSize = segHeaderSize
			}
			q.pending = append(q.pending, c)
		}
		c := &q.pending[len(q.pending)-1]
		c.data = appendRecord(c.data, q.key, q.nextSeq, &entries[i])
		q.wSize += rs
		q.nextSeq++
	}
	return first
}

func (q *Queue) buffer() []byte {
	if n := len(q.free); n > 0 {
		b := q.free[n-1]
		q.free = q.free[:n-1]
		return b[:0]
	}
	return make([]byte, 0, 256<<10)
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
			f.Close()
		}
		rerr = q.repairFiles(c.orphans, base, baseSize)
	}
	q.mu.Lock()
	q.syncing = false
	for _, ch := range pending {
		if cap(ch.data) <= 4<<20 && len(q.free) < 4 {
			q.free = append(q.free, ch.data)
		}
	}
	defer q.cond.Broadcast()
	if err == nil {
		q.segs = append(q.segs, c.created...)
		if len(c.created) > 0 {
			for _, f := range c.files[:len(c.files)-1] {
				f.Close()
			}
			base.Close()
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
	for _, w := range q.waiters {
		if w.end <= end {
			w.state, w.err = failed, fmt.Errorf("append to queue: %w", err)
		} else {
			w.state = discard
		}
		q.depth -= w.size
	}
	q.waiters = nil
	for _, ch := range q.pending {
		if cap(ch.data) <= 4<<20 && len(q.free) < 4 {
			q.free = append(q.free, ch.data)
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
	close(q.done)
	q.mu.Unlock()
	q.rmu.Lock()
	defer q.rmu.Unlock()
	return q.closeFiles()
}

func (q *Queue) closeFiles() error {
	var err error
	if q.r.sc != nil {
		q.r.sc.close()
		q.r.sc = nil
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
