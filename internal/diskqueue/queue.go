package diskqueue

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
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
	// MaxBytes bounds the unacknowledged bytes on disk (records with
	// their headers, compressed as written; Stats.Bytes). An Append that
	// would exceed it fails with ErrFull, except into an empty queue, so
	// that one oversized call cannot wedge a client that retries
	// forever. Disk use can exceed it by up to one segment of
	// acknowledged records not yet deleted, and one more: an
	// acknowledged segment's file kept for reuse (Queue.spare).
	MaxBytes int64
	// Compress compresses each record's entries (Snappy, format v3) when
	// that makes it smaller, while the queue holds at least CompressAbove
	// unacknowledged bytes (0: always). Below that the reader keeps up and
	// takes the records from memory: compressing them would cost CPU for
	// nothing; a backlog, where the bytes stay on disk and count against
	// MaxBytes, is compressed.
	Compress      bool
	CompressAbove int64
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
	// Entries and Bytes are what is appended but not acknowledged; Bytes
	// counts the bytes on disk (records compressed as written), whole
	// records: a record is counted until all its entries are
	// acknowledged.
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
	version int   // 1, 2, 3, or 0 when its header is damaged
	hdrSize int64 // bytes before the first record
	recHdr  int   // bytes of a record header
	inc     string
	key     uint32 // CRC key: the incarnation's (v2, v3), 0 (v1)
}

// chunk is encoded records waiting for the group commit; newSeg != 0
// starts a new segment with that first sequence number before them.
type chunk struct {
	newSeg uint64
	data   []byte
}

// span is bytes read but not yet acknowledged, up to (excluding) end,
// and the entries slice of the batch that ends there.
type span struct {
	end     uint64
	bytes   int64
	entries []Entry
}

// waiter is one Append waiting for its group commit.
type waiter struct {
	end   uint64 // the sequence number after its last entry
	size  int64  // its record bytes, on disk
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
	dir           string
	compress      bool
	compressAbove int64
	// backlog mirrors depth, for Append to read before taking mu.
	backlog  atomic.Int64
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
	encoders encoders
	wake     chan struct{} // a durable advance, for the reader
	done     chan struct{} // closed by Close

	mu   sync.Mutex
	cond *sync.Cond // a commit or repair ended
	segs []segment  // published segments, in order; the last is appended to
	w    *os.File   // the last segment; written by the syncing leader only
	// spare is an acknowledged segment's file kept for the next segment
	// (spareName), "" if none: overwriting blocks a file already has
	// costs about half of appending to a new one (bench/PROFILE.md,
	// "(qreuse)"). Guarded by mu.
	spare     string
	lastSize  int64 // the last segment's durable size
	wSize     int64 // its size including pending chunks
	pending   []chunk
	waiters   []*waiter
	free      [][]byte
	mem       []memChunk // committed chunks kept for the reader (mem.go)
	memBytes  int64
	memTaken  int64 // bytes the reader took from mem instead of the files
	nextSeq   uint64
	durable   uint64 // every sequence number below is fsynced
	syncing   bool   // a leader is committing or repairing, unlocked
	closed    bool
	depth     int64 // unacknowledged record bytes, on disk
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

	rmu   sync.Mutex // the consumer's state below
	r     reader
	spans []span
	// entryBufs are the Entries slices of acknowledged batches, for the
	// next batches to reuse.
	entryBufs [][]Entry
	intern    map[string]string
	bufs      readBufs
}

// addDepth changes the unacknowledged bytes by n; with mu held, or at
// open, before the queue is shared.
func (q *Queue) addDepth(n int64) {
	q.depth += n
	q.backlog.Store(q.depth)
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
		q.mu.Lock()
		size, broken, orphans := q.lastSize, q.repairErr != nil, slices.Clone(q.orphans)
		q.mu.Unlock()
		if broken {
			// A rollback is pending: a failed commit's records may lie
			// after size, whole and valid, and the next Open would take
			// them for entries (whose callers were told they failed,
			// and append them again). One more try at cutting them.
			broken = q.repairFiles(orphans, q.w, size) != nil
		}
		// A reused file holds its old records after the new ones: cut
		// them, so that the next Open finds the segment as written.
		if st, serr := q.w.Stat(); serr == nil && st.Size() > size && !broken {
			if terr := q.ops.truncate(q.w, size); terr == nil {
				_ = q.ops.sync(q.w) // else the next Open cuts them
			}
		}
		if cerr := q.w.Close(); cerr != nil {
			err = fmt.Errorf("close segment: %w", cerr)
		}
		q.w = nil
	}
	if q.ack != nil {
		_ = q.ack.close() // every acknowledgement was synced when it was stored
	}
	_ = q.lock.Close() // the lock goes with the process anyway
	return err
}
