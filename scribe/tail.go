package scribe

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/freeway-dev/freeway/internal/backoff"
	"github.com/freeway-dev/freeway/internal/diskqueue"
	"github.com/freeway-dev/freeway/internal/durable"
)

const tailReadChunk = 64 << 10

// maxHeld bounds the files a tailer holds open behind the one it reads
// (see tailer.next). An app that never reopens its renamed log keeps
// that file from going idle, and each rotation after would otherwise
// cost a descriptor (and pin a deleted file's space) for as long.
const maxHeld = 64

// headBytes is how much of a tailed file's start its saved position
// fingerprints (see position.Head).
const headBytes = 1 << 10

// tailer follows one file like tail -F, one queue entry per line (without
// its newline, LF or CR LF), and persists its position after the lines
// are durable in the queue.
//
// Rotation by rename (or delete and re-create) is noticed at end of file
// when the path names another file than the one open: the old file is
// read until it has been idle for tail_rotate_wait (the app writes to it
// until it reopens its log), to its end (an unterminated last line is
// then sent as it is), and the new one from its start. Each file the path
// names meanwhile (also while a full queue holds the tailer up) is held
// open (up to maxHeld) and read in turn, also after a restart (saved with
// the position). Truncation is noticed when the open file is shorter
// than what was read, or no longer starts with the bytes read (up to
// headBytes; written again past what was read): reading restarts at 0,
// after the rest of the copy logrotate's copytruncate left beside it, if
// any (see toCopy); zeros where it reads next are a writer's hole after
// a truncation, skipped (see skipHole). A partial last line waits for its
// newline. A line longer than max_message_bytes is split into pieces of
// max_message_bytes (counted in tail_lines_split_total).
type tailer struct {
	a        *Agent
	path     string
	category string
	posPath  string
	log      *slog.Logger

	f     *os.File
	id    fileID
	dir   string // the directory of f when the path is a symlink into another one (see dirOf)
	off   int64  // offset in f up to which lines are durable in the queue
	first []byte // f's first bytes as read (up to headBytes), fingerprinted with off
	head  []byte // rewritten's reading of f's first bytes
	buf   []byte // bytes of f from off on, read but not yet queued
	cut   int    // buf[:cut] is in batch
	batch []diskqueue.Entry
	bsize int   // record bytes of batch
	blns  int64 // lines (not pieces) in batch
	split bool  // the line at buf[cut:] was already split
	// splitAt is split as at off: saved, so that a restart does not count
	// the line, and warn about it, a second time.
	splitAt bool

	failing bool         // the last poll failed (to log a streak once)
	moved   time.Time    // since when f is at its end and another file is to follow
	next    []held       // files the path named since f, oldest first, read after it
	dirty   bool         // the position could not be saved (a full disk): save it again
	opening func(string) // a test's hook: runs just before restore opens a file, with its path

	lines, splits, rotations, truncations atomic.Int64
}

// position is what a tailer persists, in <queue_dir>/tail/<hash>.json.
type position struct {
	Path   string `json:"path"`
	Dev    uint64 `json:"dev"`
	Ino    uint64 `json:"ino"`
	Offset int64  `json:"offset"`
	// Head is the FNV-1a hash of the file's first HeadLen bytes (up to
	// headBytes of what was read). A file truncated and written again
	// while the agent was down, or another file given the old one's
	// inode, keeps the identity but not its first bytes. Positions saved
	// before it have HeadLen 0: not checked.
	Head    uint64 `json:"head,omitempty"`
	HeadLen int64  `json:"head_len,omitempty"`
	// Dir is the directory of the file when the path named it through a
	// symlink into another directory: rotated, it is renamed beside
	// itself, not beside the path.
	Dir string `json:"dir,omitempty"`
	// Split says the line at Offset had pieces split off before it
	// (counted in tail_lines_split_total once).
	Split bool `json:"split,omitempty"`
	// Held lists the files rotated in after this one and not read yet,
	// oldest first (see tailer.next): the agent may stop before their
	// turn, and one renamed away again meanwhile is no longer at the path.
	Held []heldPosition `json:"held,omitempty"`
}

// heldPosition is a held file in a saved position, read from its start
// in turn. Head and HeadLen fingerprint its first bytes as at the save,
// as in position.
type heldPosition struct {
	Dev     uint64 `json:"dev"`
	Ino     uint64 `json:"ino"`
	Dir     string `json:"dir,omitempty"`
	Head    uint64 `json:"head,omitempty"`
	HeadLen int64  `json:"head_len,omitempty"`
}

// held is a file rotated in while the one before it is still read.
type held struct {
	f   *os.File
	id  fileID
	dir string // as tailer.dir
	// head is its first headBytes once it has them (save reads them
	// until then: the app may still be writing its start).
	head []byte
}

func newTailer(a *Agent, tc TailConfig) *tailer {
	path := filepath.Clean(tc.Path)
	h := fnv.New64a()
	h.Write([]byte(path))
	return &tailer{
		a: a, path: path, category: tc.Category,
		posPath: filepath.Join(a.cfg.QueueDir, "tail", fmt.Sprintf("%016x.json", h.Sum64())),
		log:     a.log.With("path", path),
	}
}

func (t *tailer) run(ctx context.Context) error {
	defer func() {
		if t.f != nil {
			_ = t.f.Close() // opened for reading
		}
		for _, h := range t.next {
			_ = h.f.Close() // opened for reading
		}
	}()
	for {
		// Made durable in the queue's directory: a position saved in a
		// directory lost in a machine crash would have its file read again.
		err := durable.MkdirAll("", filepath.Dir(t.posPath), durable.SyncDir)
		if err != nil {
			err = fmt.Errorf("create tail position directory: %w", err)
		} else {
			err = t.restore()
		}
		if err == nil {
			break
		}
		// A full disk or a file not readable yet must not stop the agent.
		t.a.rl.Error("tail restore "+t.path, "cannot resume a tailed file, retrying", "path", t.path, "err", err)
		if !sleep(ctx, t.a.clock, t.a.cfg.RetryMax.D()) {
			return nil
		}
	}
	for {
		if t.dirty {
			t.save()
		}
		progressed, err := t.poll(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			if errors.Is(err, diskqueue.ErrClosed) {
				return nil // the agent is stopping
			}
			if !t.failing {
				t.log.Error("tailing failed, retrying", "err", err)
				t.failing = true
			}
		} else if t.failing {
			t.log.Info("tailing recovered")
			t.failing = false
		}
		if !progressed && !sleep(ctx, t.a.clock, t.a.cfg.TailPollInterval.D()) {
			return nil
		}
	}
}

// restore reopens the file and offset saved by a previous run.
func (t *tailer) restore() error {
	b, err := os.ReadFile(t.posPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // a new file is read from its start
	}
	if err != nil {
		return fmt.Errorf("read tail position: %w", err)
	}
	var p position
	if err := json.Unmarshal(b, &p); err != nil || p.Path != t.path {
		t.log.Warn("ignoring unreadable tail position; reading the file from its start", "position_file", t.posPath)
		return nil //nolint:nilerr // a damaged position file costs a re-read, not the tailer
	}
	if err := t.restoreFile(p); err != nil {
		return err
	}
	t.restoreHeld(p.Held)
	return nil
}

// restoreHeld finds the files held when the position was saved, by
// identity (see findByID), to be read in turn after the restored one.
func (t *tailer) restoreHeld(hs []heldPosition) {
	for _, h := range hs {
		id := fileID{dev: h.Dev, ino: h.Ino}
		if id == t.id || slices.ContainsFunc(t.next, func(n held) bool { return n.id == id }) {
			continue
		}
		f, _, dir := t.findByID(id, h.Dir)
		if f == nil {
			t.log.Warn("rotated file held while stopped not found; its lines are lost", "dev", h.Dev, "ino", h.Ino)
			continue
		}
		if _, same := sameHead(f, position{Head: h.Head, HeadLen: h.HeadLen}); !same {
			// Still the file the path names, it is ours, truncated and
			// written again (copytruncate), or the one the path names
			// now: read from its start either way, as a held file is.
			if fi, err := os.Stat(t.path); err != nil || idOf(fi) != id {
				_ = f.Close() // opened for reading
				t.log.Warn("rotated file held while stopped was replaced (its first bytes changed); its lines are lost", "dev", h.Dev, "ino", h.Ino)
				continue
			}
			t.truncations.Add(1)
			t.log.Warn("rotated-in file held while stopped was rewritten (its first bytes changed, as after copytruncate); reading it from its start in turn: the lines it had before are lost (a copy is not read)", "dev", h.Dev, "ino", h.Ino)
		}
		t.next = append(t.next, held{f: f, id: id, dir: dir})
	}
}

// restoreFile reopens the file and offset of p.
func (t *tailer) restoreFile(p position) error {
	saved := fileID{dev: p.Dev, ino: p.Ino}
	f, fi, err := t.openIf(saved)
	if err != nil {
		return err
	}
	if f != nil {
		first, same := sameHead(f, p)
		dir := t.dirOf(saved)
		// A start of zeros (see sameHead) is a truncation too.
		truncated := fi.Size() < p.Offset || !same || (p.HeadLen > 0 && hashOf(first) != p.Head)
		if truncated && p.HeadLen == headBytes {
			// Copytruncate while the agent was down: the lines after the
			// saved offset are in the copy, read first.
			if c, cfi, cdir, cfirst := t.findCopy(saved, p.Head, p.Offset, p.Dir); c != nil {
				t.truncations.Add(1)
				t.log.Warn("tailed file truncated while stopped; reading its copy from the saved offset, then the file from its start",
					"copy", filepath.Join(cdir, cfi.Name()), "offset", p.Offset, "size", fi.Size())
				t.next = append(t.next, held{f: f, id: saved, dir: dir})
				t.split, t.splitAt = p.Split, p.Split
				return t.resume(c, idOf(cfi), cdir, p.Offset, cfirst)
			}
		}
		if fi.Size() >= p.Offset && same {
			// Zeros from the saved offset on are skipped as read (skipHole).
			t.split, t.splitAt = p.Split, p.Split
			return t.resume(f, saved, dir, p.Offset, first)
		}
		t.truncations.Add(1)
		if fi.Size() < p.Offset {
			t.log.Warn("tailed file shrank while stopped; reading it from its start", "offset", p.Offset, "size", fi.Size())
		} else {
			t.log.Warn("tailed file rewritten while stopped (its first bytes changed); reading it from its start", "offset", p.Offset, "size", fi.Size())
		}
		return t.resume(f, saved, dir, 0, nil)
	}
	// The path names another file now: find ours by identity (see
	// findByID; rotated by rename while the agent was down) and finish it
	// first.
	if f, fi, dir := t.findByID(saved, p.Dir); f != nil {
		if first, same := sameHead(f, p); fi.Size() >= p.Offset && same {
			t.log.Info("resuming rotated file", "rotated_to", filepath.Join(dir, fi.Name()), "offset", p.Offset)
			t.split, t.splitAt = p.Split, p.Split
			return t.resume(f, saved, dir, p.Offset, first)
		}
		_ = f.Close() // opened for reading
	}
	t.log.Warn("tailed file replaced while stopped and the old one not found beside it (compressed, or moved away: logrotate's olddir); lines it had after the saved offset, if any, are lost", "offset", p.Offset)
	return nil
}

// openIf opens the file the path names if its identity is id (nil if
// not, or if there is none). It opens, then checks the file opened: the
// path may name another file by the time it is opened (a rotation as the
// agent starts), and the saved offset is not that file's.
func (t *tailer) openIf(id fileID) (*os.File, fs.FileInfo, error) {
	if t.opening != nil {
		t.opening(t.path)
	}
	f, err := os.Open(t.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		// Unreadable: if another file, ours may be beside it; if ours,
		// its offset is kept until it can be read.
		if fi, serr := os.Stat(t.path); serr == nil && idOf(fi) != id {
			return nil, nil, nil
		}
		return nil, nil, fmt.Errorf("open tailed file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil || idOf(fi) != id {
		_ = f.Close() // opened for reading
		if err != nil {
			return nil, nil, fmt.Errorf("stat tailed file: %w", err)
		}
		return nil, nil, nil
	}
	return f, fi, nil
}

// resume continues f, of identity id, in dir (as tailer.dir) and
// starting with first, at off.
func (t *tailer) resume(f *os.File, id fileID, dir string, off int64, first []byte) error {
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		_ = f.Close() // opened for reading
		return fmt.Errorf("seek tailed file: %w", err)
	}
	t.f, t.id, t.dir, t.off, t.first = f, id, dir, off, first
	return nil
}

// sameHead reads the first bytes of f that p fingerprinted, and reports
// whether they are the same. A start of zeros counts as the same: a
// writer without O_APPEND goes on at its own offset after a truncation,
// leaving a hole in front of its lines, which follow the saved offset.
func sameHead(f *os.File, p position) ([]byte, bool) {
	if p.HeadLen == 0 {
		return nil, true
	}
	b, err := headOf(f, p.HeadLen)
	return b, err == nil && (hashOf(b) == p.Head || zeros(b))
}

// rewritten reports whether f no longer starts with the bytes read from
// it: truncated and written again past what was read, between two polls
// or while a full queue held the tailer up. A start of zeros is not (see
// sameHead).
func (t *tailer) rewritten() bool {
	if len(t.first) == 0 {
		return false
	}
	// Read into a buffer of its own, kept: this runs before every read.
	t.head = slices.Grow(t.head[:0], len(t.first))[:len(t.first)]
	if _, err := t.f.ReadAt(t.head, 0); err != nil {
		return false
	}
	return !bytes.Equal(t.head, t.first) && !zeros(t.head)
}

// headOf reads the first n bytes of f (without moving its offset).
func headOf(f *os.File, n int64) ([]byte, error) {
	b := make([]byte, n)
	if _, err := f.ReadAt(b, 0); err != nil {
		return nil, fmt.Errorf("read start of tailed file: %w", err)
	}
	return b, nil
}

// headUpTo reads what f has of its first headBytes (none on an error:
// then not checked at restore).
func headUpTo(f *os.File) []byte {
	b := make([]byte, headBytes)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil
	}
	return b[:n]
}

func zeros(b []byte) bool { return !slices.ContainsFunc(b, func(c byte) bool { return c != 0 }) }

func hashOf(b []byte) uint64 {
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}

// poll reads what is new, then checks for rotation and truncation. It
// reports whether anything happened (so the caller polls again at once).
func (t *tailer) poll(ctx context.Context) (bool, error) {
	if t.f == nil {
		var f *os.File
		var dir string
		fromPath := len(t.next) == 0
		if !fromPath {
			f, dir = t.next[0].f, t.next[0].dir
			t.next = slices.Delete(t.next, 0, 1)
		} else {
			var err error
			f, err = os.Open(t.path)
			if errors.Is(err, fs.ErrNotExist) {
				return false, nil
			}
			if err != nil {
				return false, fmt.Errorf("open tailed file: %w", err)
			}
		}
		fi, err := f.Stat()
		if err != nil {
			_ = f.Close() // opened for reading
			return false, fmt.Errorf("stat tailed file: %w", err)
		}
		if fromPath {
			dir = t.dirOf(idOf(fi))
		}
		t.f, t.id, t.dir, t.off, t.first, t.buf, t.cut, t.split, t.splitAt = f, idOf(fi), dir, 0, t.first[:0], t.buf[:0], 0, false, false
		t.save()
	}
	n, err := t.readToEnd(ctx)
	if err != nil || n > 0 {
		t.moved = time.Time{}
		return n > 0, err
	}
	// The app writes to the old file until it reopens its log (logrotate
	// signals it after creating the new one): a rotated file is read until
	// it has been idle for tail_rotate_wait. The files rotated in are held
	// open meanwhile: renamed away in turn (an app rotating by size), each
	// is still read, also when no file follows it at the path yet.
	switch fi, err := os.Stat(t.path); {
	case errors.Is(err, fs.ErrNotExist):
		if len(t.next) == 0 {
			return false, nil // renamed away, not yet re-created: keep the old one
		}
	case err != nil:
		return false, fmt.Errorf("stat tailed path: %w", err)
	case idOf(fi) == t.id:
		return t.truncated()
	default:
		if err := t.hold(idOf(fi)); err != nil {
			return false, err
		}
	}
	now := t.a.clock.Now()
	if t.moved.IsZero() {
		t.moved = now
	}
	if now.Sub(t.moved) < t.a.cfg.TailRotateWait.D() {
		return false, nil
	}
	t.moved = time.Time{}
	// Lines may have landed since our last read; read to the end, send an
	// unterminated last line as is.
	if _, err := t.readToEnd(ctx); err != nil {
		return false, err
	}
	if t.cut < len(t.buf) {
		t.addLine(t.buf[t.cut:])
		t.cut = len(t.buf)
	}
	if err := t.flush(ctx); err != nil {
		return false, err
	}
	_ = t.f.Close() // opened for reading
	t.f = nil
	t.rotations.Add(1)
	t.log.Info("tailed file rotated, following the new one")
	return true, nil
}

// truncated reads f again from its start if it is shorter than what was
// read.
func (t *tailer) truncated() (bool, error) {
	st, err := t.f.Stat()
	if err != nil {
		return false, fmt.Errorf("stat tailed file: %w", err)
	}
	if read := t.off + int64(len(t.buf)); st.Size() < read {
		if t.toCopy() {
			return true, nil
		}
		t.log.Warn("tailed file truncated, reading it from its start", "offset", read, "size", st.Size())
		return true, t.restart()
	}
	return false, nil
}

// toCopy switches to the copy of f, if there is one beside it, that
// logrotate's copytruncate made before truncating f: lines the tailer had
// not read yet (it polls, and a full queue holds it up) are only there.
// The copy is read on from where f was read, as a rotated file, and f
// from its start after it. It reports whether it found one.
func (t *tailer) toCopy() bool {
	if len(t.first) < headBytes || zeros(t.first) {
		return false // too little to tell a copy from a file that starts alike
	}
	read := t.off + int64(len(t.buf))
	c, fi, dir, _ := t.findCopy(t.id, hashOf(t.first), read, t.dir)
	if c == nil {
		return false
	}
	if _, err := c.Seek(read, io.SeekStart); err != nil {
		_ = c.Close() // opened for reading
		return false
	}
	// f is held, to be read from its start, as a held file is.
	if _, err := t.f.Seek(0, io.SeekStart); err != nil {
		_ = c.Close() // opened for reading
		return false
	}
	t.truncations.Add(1)
	t.log.Warn("tailed file truncated; reading its copy to its end, then the file from its start", "copy", filepath.Join(dir, fi.Name()), "offset", read)
	t.next = slices.Insert(t.next, 0, held{f: t.f, id: t.id, dir: t.dir})
	t.f, t.id, t.dir, t.moved = c, idOf(fi), dir, time.Time{}
	t.save()
	return true
}

// restart reads f again from its start (truncated), dropping what was
// read and not queued: the batch is empty.
func (t *tailer) restart() error {
	t.truncations.Add(1)
	if _, err := t.f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("seek tailed file: %w", err)
	}
	t.off, t.first, t.buf, t.cut, t.split, t.splitAt = 0, t.first[:0], t.buf[:0], 0, false, false
	t.save()
	return nil
}

// hold opens the file the path names, of identity id, to be read after f
// and the files held before it.
func (t *tailer) hold(id fileID) error {
	if n := len(t.next); n > 0 && t.next[n-1].id == id {
		return nil
	}
	if len(t.next) >= maxHeld {
		// The file at the path is still read in its turn if it is there
		// then; one renamed away before is not.
		t.a.rl.Warn("tail held "+t.path, "many files rotated in while a rotated one is still read (an app that never reopens its log, or rotates more often than tail_rotate_wait?); not holding more open",
			"path", t.path, "held", len(t.next), "reading", t.f.Name())
		return nil
	}
	f, err := os.Open(t.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // renamed away again: seen at a later poll, if re-created
	}
	if err != nil {
		return fmt.Errorf("open tailed file: %w", err)
	}
	fi, err := f.Stat()
	if err != nil || idOf(fi) != id {
		_ = f.Close() // opened for reading
		if err != nil {
			return fmt.Errorf("stat tailed file: %w", err)
		}
		return nil // the path changed again: held at the next poll
	}
	t.next = append(t.next, held{f: f, id: id, dir: t.dirOf(id)})
	t.save()
	return nil
}

// readToEnd reads until end of file, queueing complete lines as batches
// fill, and returns the bytes read.
func (t *tailer) readToEnd(ctx context.Context) (int, error) {
	total := 0
	for ctx.Err() == nil {
		if t.rewritten() {
			// What was read is the old content: queue its lines, then
			// read the new content from its start.
			if err := t.flush(ctx); err != nil {
				return total, err
			}
			if !t.toCopy() {
				t.log.Warn("tailed file rewritten (its first bytes changed), reading it from its start", "offset", t.off)
				if err := t.restart(); err != nil {
					return total, err
				}
			}
		}
		if cap(t.buf)-len(t.buf) < tailReadChunk {
			// Grow into new memory: batch entries may point into buf.
			nb := make([]byte, len(t.buf), max(2*cap(t.buf), len(t.buf)+tailReadChunk))
			copy(nb, t.buf)
			t.buf = nb
		}
		at := t.off + int64(len(t.buf)) // f's offset of the bytes read next
		n, err := t.f.Read(t.buf[len(t.buf):cap(t.buf)])
		if n > 0 && t.buf[len(t.buf) : len(t.buf)+n][0] == 0 {
			if err := t.skipHole(ctx, at); err != nil {
				return total, err
			}
			continue
		}
		if k := min(int64(n), headBytes-at); k > 0 && at == int64(len(t.first)) {
			t.first = append(t.first, t.buf[len(t.buf):len(t.buf)+int(k)]...)
		}
		t.buf = t.buf[:len(t.buf)+n]
		total += n
		if n > 0 {
			if err := t.extract(ctx); err != nil {
				return total, err
			}
		}
		if errors.Is(err, io.EOF) || (n == 0 && err == nil) {
			break
		}
		if err != nil {
			return total, fmt.Errorf("read tailed file: %w", err)
		}
	}
	return total, t.flush(ctx)
}

// skipHole passes the zeros at at in f, where the tailer reads next: the
// hole a writer without O_APPEND leaves in front of its lines after a
// truncation (copytruncate; or while the agent was down), not lines. What
// was read before it is queued, an unterminated last line as it is (its
// end is in the copy, if any); the copy is read first if there is one
// (toCopy). A log has no NUL bytes; one that has them where the tailer
// reads next loses them and has its line cut there.
func (t *tailer) skipHole(ctx context.Context, at int64) error {
	if err := t.flush(ctx); err != nil {
		return err
	}
	if at > 0 && t.toCopy() {
		return nil
	}
	if t.cut < len(t.buf) {
		t.addLine(t.buf[t.cut:])
		t.cut = len(t.buf)
		if err := t.flush(ctx); err != nil {
			return err
		}
	}
	end, err := dataFrom(t.f, at)
	if err != nil {
		return err
	}
	if _, err := t.f.Seek(end, io.SeekStart); err != nil {
		return fmt.Errorf("seek tailed file: %w", err)
	}
	if at > 0 { // at 0, a file read from its start after its copy (toCopy)
		t.truncations.Add(1)
		t.log.Warn("tailed file truncated, and written again after a hole (a writer without O_APPEND); reading on after the hole", "offset", at, "hole_end", end)
	}
	// Its first bytes are zeros now, which tell nothing (see sameHead).
	t.off, t.first, t.buf, t.cut, t.split, t.splitAt = end, t.first[:0], t.buf[:0], 0, false, false
	t.save()
	return nil
}

// dataFrom returns the offset of the first byte of f at or after at that
// is not zero (f's size if none).
func dataFrom(f *os.File, at int64) (int64, error) {
	if off, ok := seekData(f, at); ok {
		at = off // the data may still start with zeros (a block's)
	}
	b := make([]byte, tailReadChunk)
	for {
		n, err := f.ReadAt(b, at)
		if i := slices.IndexFunc(b[:n], func(c byte) bool { return c != 0 }); i >= 0 {
			return at + int64(i), nil
		}
		at += int64(n)
		if errors.Is(err, io.EOF) {
			return at, nil
		}
		if err != nil {
			return 0, fmt.Errorf("read tailed file: %w", err)
		}
	}
}

// extract moves complete lines from buf into the batch, and splits off
// max_message_bytes pieces of a partial line that has grown past it.
func (t *tailer) extract(ctx context.Context) error {
	limit := int(t.a.cfg.MaxMessageBytes)
	for {
		rest := t.buf[t.cut:]
		i := bytes.IndexByte(rest, '\n')
		switch {
		case i >= 0:
			// CR LF ends a line too (Windows-style loggers): the CR is
			// not part of the message.
			t.addLine(bytes.TrimSuffix(rest[:i], []byte{'\r'}))
			t.cut += i + 1
		case len(rest) > limit && !(len(rest) == limit+1 && rest[limit] == '\r'):
			// A CR after a piece may be the start of its CR LF: it waits
			// for the byte after it, or it would be a piece of its own.
			t.addPiece(rest[:limit])
			t.cut += limit
		default:
			return nil
		}
		if t.bsize >= int(t.a.cfg.BatchBytes) || len(t.batch) >= t.a.cfg.BatchEntries {
			if err := t.flush(ctx); err != nil {
				return err
			}
		}
	}
}

// addLine adds a complete line, in pieces if it is too long.
func (t *tailer) addLine(line []byte) {
	limit := int(t.a.cfg.MaxMessageBytes)
	for len(line) > limit {
		t.addPiece(line[:limit])
		line = line[limit:]
	}
	t.add(line)
	t.blns++
	t.split = false
}

func (t *tailer) addPiece(p []byte) {
	if !t.split {
		t.split = true
		t.splits.Add(1)
		t.log.Warn("tailed line over max_message_bytes split into pieces", "category", t.category, "max_message_bytes", t.a.cfg.MaxMessageBytes)
	}
	t.add(p)
}

func (t *tailer) add(msg []byte) {
	e := diskqueue.Entry{Category: t.category, Message: msg, Time: t.a.clock.Now().UnixMilli()}
	t.batch = append(t.batch, e)
	t.bsize += diskqueue.RecordSize(&e)
}

// flush makes the batch durable in the queue (waiting while the queue or
// the disk is full, never dropping), then advances and saves the position.
func (t *tailer) flush(ctx context.Context) error {
	if len(t.batch) == 0 {
		return nil
	}
	bo := backoff.WithJitter(t.a.cfg.RetryMin.D(), t.a.cfg.RetryMax.D())
	for {
		_, err := t.a.q.Append(t.batch)
		if err == nil {
			break
		}
		if errors.Is(err, diskqueue.ErrClosed) {
			return fmt.Errorf("queue tailed lines: %w", err)
		}
		if !errors.Is(err, diskqueue.ErrFull) {
			t.a.rl.Warn("tail append "+t.path, "cannot queue tailed lines, retrying", "path", t.path, "err", err)
		}
		if !sleep(ctx, t.a.clock, bo.Next()) {
			return ctx.Err()
		}
		// The wait can be long (an upstream outage), and the log rotated
		// more than once meanwhile: hold each file rotated in, or one
		// renamed away again before its turn would never be read.
		if fi, err := os.Stat(t.path); err == nil && idOf(fi) != t.id {
			if err := t.hold(idOf(fi)); err != nil {
				t.a.rl.Warn("tail hold "+t.path, "cannot open a rotated-in file, retrying", "path", t.path, "err", err)
			}
		}
	}
	t.a.c.receivedTail.Add(int64(len(t.batch)))
	t.lines.Add(t.blns)
	t.off += int64(t.cut)
	t.splitAt = t.split
	n := copy(t.buf, t.buf[t.cut:])
	t.buf = t.buf[:n]
	clear(t.batch)
	t.batch, t.bsize, t.blns, t.cut = t.batch[:0], 0, 0, 0
	t.syncRead()
	t.save()
	return nil
}

// syncRead makes f durable up to what was read, before the position says
// it was. An app does not sync its log: after a machine crash the file
// would be shorter than the offset saved, and taken for truncated (read
// again from its start: every line queued twice), or written on from its
// new end past that offset before the agent restarts (the lines between
// skipped). A file that cannot be synced is warned about, and its
// position saved all the same.
func (t *tailer) syncRead() {
	var err error
	if t.a.fileHook != nil {
		err = t.a.fileHook(diskqueue.OpSync, t.f.Name())
	}
	if err == nil {
		err = durable.SyncData(t.f)
	}
	if err != nil {
		t.a.rl.Warn("tail sync "+t.path, "cannot sync a tailed file; after a machine crash the lines read from it since its last sync may be queued again or skipped",
			"path", t.path, "err", err)
	}
}

// save persists the position. A failure (a full disk) does not stop
// tailing: the save is retried at the next poll, and until it succeeds a
// restart would queue the lines since the last saved position again.
func (t *tailer) save() {
	p := position{Path: t.path, Dev: t.id.dev, Ino: t.id.ino, Dir: t.dir, Offset: t.off, Split: t.splitAt}
	if n := min(t.off, int64(len(t.first))); n > 0 {
		p.Head, p.HeadLen = hashOf(t.first[:n]), n
	}
	for i := range t.next {
		h := &t.next[i]
		hp := heldPosition{Dev: h.id.dev, Ino: h.id.ino, Dir: h.dir}
		b := h.head
		if len(b) < headBytes {
			b = headUpTo(h.f)
			if len(b) == headBytes {
				h.head = b // whole: read once, not at every save
			}
		}
		if len(b) > 0 {
			hp.Head, hp.HeadLen = hashOf(b), int64(len(b))
		}
		p.Held = append(p.Held, hp)
	}
	b, err := json.Marshal(p)
	if err == nil {
		err = diskqueue.WriteFileAtomicHook(t.posPath, b, t.a.fileHook)
	}
	t.dirty = err != nil
	if err != nil {
		t.a.rl.Warn("tail save "+t.path, "cannot save a tail position, retrying", "path", t.path, "err", err)
	}
}

// findByID opens the file beside the path whose identity is id, if any,
// or beside the file the path named through a symlink: in dir (saved with
// the position) or, saved without it, where the symlink leads now. It
// returns the directory it was found in when not the path's (as
// tailer.dir).
func (t *tailer) findByID(id fileID, dir string) (*os.File, fs.FileInfo, string) {
	if id == (fileID{}) {
		return nil, nil, ""
	}
	dirs := t.dirs(dir)
	// Found and then renamed again before it is opened (logrotate
	// shifting .1 to .2 as the agent starts): it is looked for again.
	for range 3 {
		moved := false
		for _, d := range dirs {
			f, fi, m := t.findOnce(d, id)
			if f != nil {
				if d == dirs[0] {
					d = ""
				}
				return f, fi, d
			}
			moved = moved || m
		}
		if !moved {
			break
		}
	}
	return nil, nil, ""
}

// dirs are the directories a file of the path is looked for in: the
// path's, then dir (as tailer.dir), then where a symlink at the path leads
// now.
func (t *tailer) dirs(dir string) []string {
	dirs := []string{filepath.Dir(t.path)}
	for _, d := range []string{dir, t.dirOf(fileID{})} {
		if d != "" && !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// findCopy opens the newest file in t.dirs(dir), other than the file of
// identity id, that starts with the headBytes whose hash is head and is
// at least size long: a copy of it (logrotate's copytruncate). It returns
// its directory as findByID does, and its first headBytes.
func (t *tailer) findCopy(id fileID, head uint64, size int64, dir string) (*os.File, fs.FileInfo, string, []byte) {
	var (
		best      *os.File
		bestFI    fs.FileInfo
		bestDir   string
		bestFirst []byte
	)
	dirs := t.dirs(dir)
	for _, d := range dirs {
		ents, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if !e.Type().IsRegular() {
				continue
			}
			fi, err := e.Info()
			if err != nil || idOf(fi) == id || fi.Size() < size || (bestFI != nil && !fi.ModTime().After(bestFI.ModTime())) {
				continue
			}
			f, err := os.Open(filepath.Join(d, e.Name()))
			if err != nil {
				continue
			}
			st, err := f.Stat()
			var b []byte
			if err == nil && idOf(st) != id && st.Size() >= size {
				b, err = headOf(f, headBytes)
			}
			if err != nil || b == nil || hashOf(b) != head {
				_ = f.Close() // opened for reading
				continue
			}
			if best != nil {
				_ = best.Close() // opened for reading
			}
			best, bestFI, bestFirst = f, st, b
			if bestDir = d; d == dirs[0] {
				bestDir = ""
			}
		}
	}
	return best, bestFI, bestDir, bestFirst
}

// findOnce is one look for findByID in dir: moved reports a file of
// identity id listed that was no longer there, or another file, once
// opened.
func (t *tailer) findOnce(dir string, id fileID) (f *os.File, fi fs.FileInfo, moved bool) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, false
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		fi, err := e.Info()
		if err != nil || idOf(fi) != id {
			continue
		}
		if t.opening != nil {
			t.opening(filepath.Join(dir, e.Name()))
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, nil, true
		}
		st, err := f.Stat()
		if err != nil || idOf(st) != id {
			_ = f.Close() // opened for reading
			return nil, nil, true
		}
		return f, st, false
	}
	return nil, nil, false
}

// dirOf is the directory of the file the path names through a symlink,
// when not the path's own and when that file has identity id (any, if
// id is zero): a file rotated while the agent is down is renamed there.
// The symlink may be changed at any time, hence the check of the file.
func (t *tailer) dirOf(id fileID) string {
	p, err := filepath.EvalSymlinks(t.path)
	if err != nil {
		return ""
	}
	if id != (fileID{}) {
		if fi, err := os.Stat(p); err != nil || idOf(fi) != id {
			return ""
		}
	}
	d := filepath.Dir(p)
	if pd, err := filepath.EvalSymlinks(filepath.Dir(t.path)); err == nil && pd == d {
		return "" // not through a symlink of its own (a parent may be one)
	}
	return d
}
