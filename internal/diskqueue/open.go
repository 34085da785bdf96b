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
	if err := (fileOps{hook: opts.FileHook}).mkdirAll(opts.Dir); err != nil {
		return nil, fmt.Errorf("create queue directory: %w", err)
	}
	lock, err := lockDir(filepath.Join(opts.Dir, "LOCK"))
	if err != nil {
		return nil, err
	}
	q := &Queue{
		dir: opts.Dir, compress: opts.Compress, compressAbove: opts.CompressAbove, maxBytes: opts.MaxBytes, segBytes: opts.SegmentBytes, retry: opts.RetryInterval,
		log: opts.Logger, errlog: ratelog.New(opts.Logger, time.Minute, 5), ops: fileOps{hook: opts.FileHook},
		lock: lock, wake: make(chan struct{}, 1), done: make(chan struct{}),
		intern: map[string]string{},
	}
	q.cond = sync.NewCond(&q.mu)
	q.bufs.giveBack = q.recycle
	if err := q.open(); err != nil {
		_ = q.closeFiles() // the open error is the one to report
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
		_ = q.w.Close() // its segments are removed below
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
		q.addDepth(max(size-from, 0))
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
	defer f.Close() //nolint:errcheck // opened for reading
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
		_ = f.Close() // nothing written to it yet
		return 0, 0, fmt.Errorf("stat segment: %w", err)
	}
	sc := newScanner(last, f, st.Size(), false)
	prev := last.first - 1 // the last valid record's sequence number
	end := last.hdrSize    // and where it ends
	var torn error
	for {
		off := sc.off
		h, err := sc.peek()
		if err == nil {
			if _, _, _, err = sc.take(); err == nil {
				prev, end = h.seq, sc.off
				continue
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if !errors.Is(err, errDamaged) {
			_ = f.Close() // nothing written to it yet
			return 0, 0, fmt.Errorf("read segment %s: %w", last.path, err)
		}
		if last.version >= v2Version {
			at, _, ok, rerr := sc.resync(off+1, prev+1, ^uint64(0))
			if rerr != nil {
				_ = f.Close() // nothing written to it yet
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
		q.log.Warn("truncating torn queue tail (a write cut by a crash, or the old records of a reused segment file)", "segment", last.path, "offset", end,
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
			_ = q.w.Close() // synced when it was written
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
	q.mu.Lock()
	spare := q.spare
	q.spare = ""
	q.mu.Unlock()
	if spare != "" {
		f, s, err := q.reuseSegment(spare, path, first)
		if err == nil {
			return f, s, nil, nil
		}
		q.log.Warn("cannot reuse an acknowledged queue segment file; creating a new one", "file", spare, "err", err)
		if err := q.ops.remove(spare); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, segment{}, []string{spare, path}, fmt.Errorf("remove spare segment %s: %w", spare, err)
		}
		if err := q.ops.remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, segment{}, []string{path}, fmt.Errorf("remove segment %s: %w", path, err)
		}
	}
	tmp := path + tmpSuffix
	f, err := q.ops.create(tmp)
	if err != nil {
		return nil, segment{}, []string{tmp}, fmt.Errorf("create segment %s: %w", tmp, err)
	}
	err = q.ops.writeAt(f, segHeader(first, q.inc, segVersion), 0)
	if err == nil {
		err = q.ops.sync(f)
	}
	_ = f.Close() // synced above, or failed there
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
	return f, q.newSegment(first, path), nil, nil
}

// newSegment describes the segment of this incarnation at path, whose
// first record will be first.
func (q *Queue) newSegment(first uint64, path string) segment {
	q.mu.Lock()
	q.segIDs++
	id := q.segIDs
	q.mu.Unlock()
	return segment{id: id, first: first, path: path, version: segVersion, hdrSize: segHeaderSize, recHdr: v3RecHeaderSize,
		inc: q.inc.String(), key: q.key}
}

// reuseSegment makes the spare file (an acknowledged segment's) the
// segment at path whose first record will be first: the directory synced
// (the spare's name durable), the header overwritten in place and synced,
// then the rename, the directory synced, and the file opened again under
// its new name.
// The old records after the header stay until overwritten: the reader
// stops at the first that does not follow (its sequence number is
// lower), and writeChunks cuts them off when the segment is complete,
// so that only the last segment can hold them (where recoverLast cuts
// them as a torn tail after a crash, Close before).
func (q *Queue) reuseSegment(spare, path string, first uint64) (*os.File, segment, error) {
	// The spare's name first: until the directory is synced, a crash of
	// the machine can bring back the acknowledged segment's name
	// (dropAckedSegments does not sync it), which would then hold the
	// new header: a segment whose header fails its checks, reported as
	// damage that loses entries.
	if err := q.ops.syncDir(q.dir); err != nil {
		return nil, segment{}, fmt.Errorf("reuse segment file %s as %s: %w", spare, path, err)
	}
	f, err := os.OpenFile(spare, os.O_RDWR, 0)
	if err != nil {
		return nil, segment{}, fmt.Errorf("open spare segment: %w", err)
	}
	err = q.ops.writeAt(f, segHeader(first, q.inc, segVersion), 0)
	if err == nil {
		err = q.ops.sync(f)
	}
	if err == nil {
		err = q.ops.rename(spare, path)
	}
	if err == nil {
		err = q.ops.syncDir(q.dir)
	}
	_ = f.Close() // synced above, or failed there
	if err == nil {
		// Opened again under its name: the file's name is what its
		// writes and syncs report (FileHook, errors), and the spare's
		// is gone.
		f, err = os.OpenFile(path, os.O_RDWR, 0)
	}
	if err != nil {
		return nil, segment{}, fmt.Errorf("reuse segment file %s as %s: %w", spare, path, err)
	}
	return f, q.newSegment(first, path), nil
}
