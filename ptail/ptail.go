// Package ptail reads a bucket's segment files in order, from a saved
// position, and follows the bucket as writers publish new segments: the
// reader under every Puma shard (and anything else that consumes buckets).
//
// Position: (segment name, offset of the next block). Segment names sort
// in write order (the writer's fencing epoch, then a sequence), so "the
// next segment" is the smallest published name above the current one. A
// published segment is complete and immutable, so reaching its end means
// moving on; ptail reads only published segments, which on HDFS are the
// only ones whose bytes are visible anyway.
//
// Fenced segments. ptail lists a bucket through layout.Published, as the
// copier and retention do, so all three count the same segments: a
// segment a writer published after a newer writer took its bucket (a
// writer stalled past its session, then woken up) is never listed, and
// the listing ends before segments whose fate a newer writer has not
// sealed yet (the reader waits a poll or two). Between listings a
// caught-up reader looks first for the name its writer publishes next,
// (epoch, seq+1) of its position (or seq+2, the name after one the
// writer dropped unused, once seq+2 is there and seq+1 still is not),
// and takes that segment only when the fence, read after it, has no
// intent above its epoch: the verdict layout.Published gives it then;
// anything else is left to a listing. The mechanism, fence intents and
// seals in the bucket's hidden .fence directory, is described in
// internal/layout/fence.go and calligraphus's package doc.
//
// Listing cost. A listing reads every name in the bucket, and a bucket
// keeps dfs_retention of segments: on a local disk with 100 ms segments,
// millions of names after days, and a listing of seconds. A reader goes
// on by name between listings, and lists a bucket at most once per
// layout.ListBudget times its last listing's duration (the listings that
// only refresh Lag are skipped until then; one it needs, to find a new
// writer's first segment or a gap in a writer's names, waits for then):
// at most a tenth of its time, however large the bucket grows.
//
// Opening ahead. While it reads a segment, a reader finds and opens the
// next one on a goroutine (the next pending one, or, when it is behind
// its writer, the writer's next name, held to the fence as above), so
// that the round trips of a segment's turn on HDFS (NameNode calls, a
// DataNode connection) overlap the reading of the one before. What was
// found is judged when the reader comes to it, as if found then. A
// caught-up reader opens nothing ahead.
//
// Vanished segments. Retention deletes only segments every consumer is
// past (a Puma shard's committed position, the copier's progress), so a
// reader never meets one that is gone. If it does (a segment deleted by
// hand, a shard whose commit row was lost after retention deleted the
// start of its bucket), the reader does not pass over it silently: Next
// returns a *VanishedError naming it, once, and reads on after it when
// called again, so that its user can record what it lost.
//
// Damage. A published segment never changes, so a block that fails its
// checks is damage, not a write in progress. The reader logs it (an error
// with the segment and offset), counts it (Metrics, and the Damaged
// fields) and goes on: in a v2 segment with the next block, so a damaged
// block costs that block only; in a v1 segment, or after a torn tail, with
// the next segment. An I/O error is not damage: Next returns it (a
// *ReadError naming the segment and offset) and resumes where it was, so
// that nothing is skipped; its user retries with a back-off and shows a
// run of failures (a checksum error the dfs reports, dfs.ErrChecksum,
// lasts until the dfs repairs the block), as Puma does.
//
// Nothing is kept across a crash but the position its user saved; ptail
// itself is stateless.
package ptail

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"path"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
)

// Position is where a reader resumes: the next block is at Offset in
// Segment. The zero Position is before the first segment. A negative
// Offset (After) is after the whole of Segment.
type Position struct {
	Segment string `json:"segment"`
	Offset  int64  `json:"offset"`
}

// After is the position after the whole of segment, whatever its size.
func After(segment string) Position { return Position{Segment: segment, Offset: -1} }

func (p Position) String() string {
	if p.Offset < 0 {
		return p.Segment + "@end"
	}
	return fmt.Sprintf("%s@%d", p.Segment, p.Offset)
}

// Before reports whether p is before q in the bucket: an earlier segment,
// or an earlier offset of the same one.
func (p Position) Before(q Position) bool {
	if p.Segment != q.Segment {
		return p.Segment < q.Segment
	}
	po, qo := p.Offset, q.Offset
	if po < 0 {
		po = 1<<63 - 1
	}
	if qo < 0 {
		qo = 1<<63 - 1
	}
	return po < qo
}

// VanishedError reports a published segment that was gone when the
// reader came to it (see the package comment). The reader is past it:
// calling Next again reads on with the segment after it.
type VanishedError struct {
	// Segment is the path of the segment (bucket directory and name).
	Segment string
	// ModTime is when the segment was published, as its listing said;
	// zero when the reader had not listed it (it resumed inside it).
	ModTime time.Time
}

func (e *VanishedError) Error() string {
	return fmt.Sprintf("segment %s vanished before it was read", e.Segment)
}

// Unwrap makes a VanishedError an fs.ErrNotExist.
func (e *VanishedError) Unwrap() error { return fs.ErrNotExist }

// ReadError is a failure of the dfs to list the bucket, or to open or
// read a published segment: not damage (the segment's content is not in
// question), so the reader stays where it was and Next retries from
// there.
type ReadError struct {
	// Op is "list", "open" or "read".
	Op string
	// Segment is the path of the segment (bucket directory and name);
	// listing: the bucket directory.
	Segment string
	// Offset is where the reader was in it: the next block.
	Offset int64
	Err    error
}

func (e *ReadError) Error() string {
	switch e.Op {
	case "read":
		return fmt.Sprintf("read segment %s at %d: %v", e.Segment, e.Offset, e.Err)
	case "open":
		return fmt.Sprintf("open segment %s: %v", e.Segment, e.Err)
	}
	prefix := "list bucket " + e.Segment + ": "
	if msg := e.Err.Error(); strings.HasPrefix(msg, prefix) {
		return msg // the listing's own error names the bucket already
	}
	return prefix + e.Err.Error()
}

func (e *ReadError) Unwrap() error { return e.Err }

// Reader follows one bucket directory. Not safe for concurrent use.
type Reader struct {
	fs   dfs.FS
	dir  string
	poll time.Duration
	log  *slog.Logger

	pos      Position
	finished bool // pos.Segment has been read to its end (or skipped)
	file     dfs.Reader
	sr       *segment.Reader
	pending  []fs.FileInfo // published segments after pos, in order, from the last listing
	listed   time.Time     // when pending was listed
	listTook time.Duration // how long that listing took (listGap)
	modTime  time.Time     // the current segment's, from its listing (zero if not listed)
	now      func() time.Time

	m *Metrics

	// woken receives when a writer of this process publishes in dir
	// (SetNotifier); nil: the reader only polls.
	woken       <-chan struct{}
	unsubscribe func()
	// noticed: a notice came (from woken) since the reader last looked
	// for segments, so a publish it has not seen may be in the bucket.
	noticed bool
	// polled: Next waited a whole poll since the last listing; waited:
	// Next waited at all since then (the reader had caught up).
	polled, waited bool
	// deferred: the reader needs a listing that listingAllowed put off;
	// Next waits no longer than until it is allowed.
	deferred bool
	// probedTop: the newest fence epoch whose owner's first segment made
	// a listing the budget had put off (newOwnerPublished).
	probedTop int64
	// ahead: the segment after the current one, being found and opened
	// on a goroutine (startAhead); nil if none.
	ahead *ahead

	// Skipped counts the damaged stretches skipped, each logged as an
	// error: a damaged block, a damaged segment header, a torn tail.
	Skipped int
	// DamagedBlocks counts the blocks lost to damage (at least: a damaged
	// header or the rest of a v1 segment may hide more than one).
	DamagedBlocks int
	// DamagedEntries counts the entries of damaged blocks whose header
	// survived to say how many.
	DamagedEntries int
}

// Metrics counts what a process's readers skip. Create one per process
// (NewMetrics) and give it to each reader (SetMetrics).
type Metrics struct {
	blocks  prometheus.Counter
	entries prometheus.Counter
}

// NewMetrics returns the readers' metrics, registered with reg (nil: not
// registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		blocks:  prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_ptail_damaged_blocks_total", Help: "Damaged segment blocks skipped by readers (at least; each logged as an error with its segment and offset)."}),
		entries: prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_ptail_damaged_entries_total", Help: "Entries lost in damaged blocks whose header said how many."}),
	}
	if reg != nil {
		reg.MustRegister(m.blocks, m.entries)
	}
	return m
}

// SetMetrics makes the reader count damage in m too; it returns r.
func (r *Reader) SetMetrics(m *Metrics) *Reader {
	r.m = m
	return r
}

// SetNotifier makes the reader, while it waits for a segment, also wake
// when n says one was published in its bucket; it still polls. It returns
// r. Close ends the subscription.
func (r *Reader) SetNotifier(n *Notifier) *Reader {
	if n == nil || r.unsubscribe != nil {
		return r
	}
	r.woken, r.unsubscribe = n.subscribe(r.dir)
	return r
}

// defaultPoll is the poll interval of a reader given none.
const defaultPoll = time.Second

// NewReader returns a reader of the bucket directory dir from pos, which
// polls for new segments every poll (a second if poll is not positive).
func NewReader(fsys dfs.FS, dir string, pos Position, poll time.Duration, log *slog.Logger) *Reader {
	if poll <= 0 {
		poll = defaultPoll
	}
	return &Reader{fs: fsys, dir: dir, pos: pos, poll: poll, log: log, finished: pos.Offset < 0, now: time.Now}
}

// Position is the position after the last block returned.
func (r *Reader) Position() Position { return r.pos }

// Next returns the next block and the position after it, waiting for a
// writer to publish one if needed, until ctx ends. The block is valid
// until the next call. An error other than ctx's (the dfs failing) leaves
// the reader where it was: calling Next again retries from there; a
// *VanishedError leaves it after the segment that is gone.
func (r *Reader) Next(ctx context.Context, b *segment.Block) (Position, error) {
	for {
		if err := ctx.Err(); err != nil {
			return r.pos, err
		}
		pos, ok, err := r.TryNext(b)
		if ok || err != nil {
			return pos, err
		}
		// A notice that came since the listing above is in woken already
		// (it holds one): the publish it tells of is not missed. A
		// listing put off (listingAllowed) is done once it is allowed,
		// not a poll later.
		wait := r.poll
		if r.deferred {
			wait = min(wait, r.listed.Add(r.listGap()).Sub(r.now()))
		}
		select {
		case <-ctx.Done():
			return r.pos, ctx.Err()
		case <-time.After(wait):
			r.polled = true
		case <-r.woken:
			r.noticed = true
		}
		r.waited = true
	}
}

// TryNext is Next without waiting: ok is false, with no error, when no
// block is published after the reader's position now.
func (r *Reader) TryNext(b *segment.Block) (Position, bool, error) {
	for {
		if r.sr == nil {
			ok, err := r.openNext()
			if err != nil || !ok {
				return r.pos, false, err
			}
		}
		err := r.sr.Next(b)
		if err == nil {
			r.pos.Offset = r.sr.Offset()
			return r.pos, true, nil
		}
		// The end is io.EOF itself: an error wrapping it is the dfs
		// failing to deliver the rest (segment.Reader.Next).
		if err != io.EOF { //nolint:errorlint // see above
			var de *segment.DamageError
			if !errors.As(err, &de) {
				// Reading failed, which says nothing about the segment.
				r.closeFile()
				return r.pos, false, &ReadError{Op: "read", Segment: path.Join(r.dir, r.pos.Segment), Offset: r.pos.Offset, Err: err}
			}
			r.damaged(de)
			if de.Resumed {
				// Resume after the damage, also after an I/O error.
				r.pos.Offset = r.sr.Offset()
				continue
			}
		}
		r.closeFile()
		r.finished = true
	}
}

// SegmentTime is when the segment of the reader's position was published,
// as the listing that found it said; zero if the reader did not list it
// (it was resumed inside it).
func (r *Reader) SegmentTime() time.Time { return r.modTime }

// openNext opens the segment at pos (if not yet finished) or the next
// published one. It reports false when there is nothing new.
func (r *Reader) openNext() (bool, error) {
	// Resume inside the current segment first.
	if r.pos.Segment != "" && !r.finished {
		ok, err := r.open(r.pos.Segment, r.pos.Offset)
		if ok || err != nil {
			return ok, err
		}
		r.finished = true
	}
	if err := r.look(); err != nil {
		return false, err
	}
	for len(r.pending) > 0 {
		fi := r.pending[0]
		r.pending = r.pending[1:]
		r.pos = Position{Segment: fi.Name()}
		r.modTime = fi.ModTime()
		r.finished = false
		ok, err := r.open(fi.Name(), 0)
		if ok || err != nil {
			return ok, err
		}
		r.finished = true
	}
	return false, nil
}

// open opens segment name at offset. It reports false (no error) for a
// segment whose file header is damaged beyond repair, and a
// *VanishedError for one that is gone; either way the reader is then
// after it.
func (r *Reader) open(name string, offset int64) (bool, error) {
	a := r.takeAhead(name)
	if a != nil && offset > 0 {
		a.close() // opened at the start
		a = nil
	}
	if a == nil {
		a = &ahead{}
		if a.file, a.err = r.fs.Open(path.Join(r.dir, name)); a.err == nil {
			a.sr, a.err = segment.NewReader(a.file, offset)
		}
	}
	f, sr, err := a.file, a.sr, a.err
	if f == nil && errors.Is(err, fs.ErrNotExist) {
		r.pos, r.finished = After(name), true
		return false, &VanishedError{Segment: path.Join(r.dir, name), ModTime: r.modTime}
	}
	if f == nil {
		return false, &ReadError{Op: "open", Segment: path.Join(r.dir, name), Offset: offset, Err: err}
	}
	if err != nil && !damaged(err) {
		_ = f.Close() // opened for reading
		return false, &ReadError{Op: "open", Segment: path.Join(r.dir, name), Offset: offset, Err: err}
	}
	if err != nil {
		_ = f.Close() // opened for reading
		r.damaged(&segment.DamageError{Offset: 0, Blocks: 1, Entries: -1, Err: err})
		return false, nil //nolint:nilerr // damage is counted, logged and passed over (see the package doc)
	}
	if sr.Repaired() && offset <= sr.HeaderSize() {
		r.log.Warn("damaged segment header repaired from its first block; nothing lost", "segment", path.Join(r.dir, name))
	}
	r.file, r.sr = f, sr
	r.startAhead()
	return true, nil
}

// damaged accounts for damage passed over in the current segment.
func (r *Reader) damaged(de *segment.DamageError) {
	r.Skipped++
	r.DamagedBlocks += de.Blocks
	entries := "unknown"
	if de.Entries >= 0 {
		r.DamagedEntries += de.Entries
		entries = fmt.Sprint(de.Entries)
	}
	if r.m != nil {
		r.m.blocks.Add(float64(de.Blocks))
		r.m.entries.Add(float64(max(de.Entries, 0)))
	}
	args := []any{"segment", path.Join(r.dir, r.pos.Segment), "offset", de.Offset, "blocks", de.Blocks, "entries", entries, "err", de.Err}
	if de.Resumed {
		r.log.Error("damaged block skipped; reading on after it", args...)
		return
	}
	r.log.Error("damaged segment; skipping the rest of it", args...)
}

// damaged reports whether a segment error is the segment's content rather
// than the dfs failing to deliver it.
func damaged(err error) bool {
	return errors.Is(err, segment.ErrCorrupt) || errors.Is(err, segment.ErrTruncated)
}

func (r *Reader) closeFile() {
	if r.file != nil {
		_ = r.file.Close() // opened for reading
	}
	r.file, r.sr = nil, nil
}

// look finds the published segments after pos, into pending. While
// segments are pending (a backlog), a listing at most once a poll, and
// at a notice, so that Lag counts what was published meanwhile. Once
// nothing is known to follow, first the name the writer of pos
// publishes next (nextSegment); a listing only when that is not there
// and the reader has no notifier, was notified, or waited a whole poll
// since it last listed (a writer in another process, a newer epoch),
// or when it is there but the reader has not caught up for a poll (it
// is working through a backlog by names, which Lag would not count).
// With a notifier, a publish after the last look is in its channel
// (woken): listing at the end of every segment, and at every poll while
// notices come, would find nothing the notices do not bring.
//
// Every listing but the first is also held to listingAllowed: the ones
// for Lag are skipped until then, and one the reader needs to go on is
// put off (deferred) and done as soon as it is allowed.
func (r *Reader) look() error {
	if r.listed.IsZero() {
		return r.list()
	}
	if len(r.pending) > 0 {
		if (r.noticed || r.now().Sub(r.listed) >= r.poll) && r.listingAllowed() {
			return r.list()
		}
		return nil
	}
	found, err := r.nextSegment(false)
	if err == nil && !found && (r.woken == nil || r.noticed || r.polled) {
		// Before a listing, the name after one the writer dropped (only
		// then: a caught-up reader misses seq+1 at the end of every
		// segment).
		found, err = r.nextSegment(true)
	}
	switch {
	case err != nil:
		return err
	case found && !r.waited && r.now().Sub(r.listed) >= r.poll && r.listingAllowed():
		return r.list()
	case found:
		r.noticed, r.deferred = false, false
		return nil
	case r.woken == nil || r.noticed || r.polled:
		if r.listingAllowed() {
			return r.list()
		}
		if handoff, err := r.newOwnerPublished(); err != nil || handoff {
			if err != nil {
				return err
			}
			return r.list()
		}
		r.deferred = true
	}
	return nil
}

// newOwnerPublished reports whether the bucket's newest owner, at an
// epoch above the reader's position's, has published its first segment
// (seq 1 of the fence's top epoch): after a handoff only a listing finds
// the new writer's segments and decides what counts, and that listing is
// not put off by the budget (ten listings' time is a minute at 6 M
// names: the bucket unread after every writer's restart). It only lets
// the listing happen sooner; the listing decides as always. Once per
// top epoch: a listing that leaves the reader where it was (the new
// owner's seal not yet written) does not make every later look list.
func (r *Reader) newOwnerPublished() (bool, error) {
	epoch, _, ok := layout.ParseSegmentName(r.pos.Segment)
	if !ok {
		return false, nil
	}
	top, err := layout.FenceTop(r.fs, r.dir)
	if err != nil {
		return false, &ReadError{Op: "list", Segment: r.dir, Offset: r.pos.Offset, Err: err}
	}
	if top <= epoch || top <= r.probedTop {
		return false, nil
	}
	if _, err := r.fs.Stat(path.Join(r.dir, layout.SegmentName(top, 1))); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, &ReadError{Op: "list", Segment: r.dir, Offset: r.pos.Offset, Err: err}
	}
	r.probedTop = top
	return true, nil
}

// listGap is the least time from the end of the last listing to the
// next (layout.ListBudget times its duration). The reader goes on by
// name (nextSegment) meanwhile; only Lag, a gap in a writer's names and
// the segments of a new writer that is not the fence's newest wait for
// the next listing (the newest's first segment makes one at once:
// newOwnerPublished).
func (r *Reader) listGap() time.Duration { return layout.ListBudget * r.listTook }

// listingAllowed reports whether the reader may list its bucket now.
func (r *Reader) listingAllowed() bool { return r.now().Sub(r.listed) >= r.listGap() }

// nextSegment looks for the segment the writer of the reader's position
// publishes next: (epoch, seq+1) of pos, the only name that can sort
// between pos and the writer's later segments, or, with dropped, after a
// look that did not find seq+1, (epoch, seq+2) when seq+1 never comes
// (the writer dropped it unused). It reports true, with the
// segment in pending, when that segment is published and counts: after
// the Stat, as layout.Published decides after its listing, the fence is
// read, and with no fence intent above the segment's epoch it counts
// (layout.Fence.Verdict). Anything else (not there yet, a newer epoch's
// intent whose seal decides it, a position that names no segment) is
// left to a listing, which decides it as it always has.
func (r *Reader) nextSegment(dropped bool) (bool, error) {
	epoch, seq, ok := layout.ParseSegmentName(r.pos.Segment)
	if !ok || seq == 1<<64-1 || dropped && seq == 1<<64-2 {
		return false, nil
	}
	next := path.Join(r.dir, layout.SegmentName(epoch, seq+1))
	var fi fs.FileInfo
	var err error
	if !dropped {
		if a := r.ahead; a != nil && a.byName && a.name == path.Base(next) {
			<-a.done
			if a.fi != nil {
				// Found, and counted, while the reader read pos; its
				// open is taken when the reader comes to it.
				r.pending = append(r.pending[:0], a.fi)
				return true, nil
			}
			r.dropAhead() // not there then: look again
		}
		fi, err = r.fs.Stat(next)
	} else {
		// A writer idle for a while drops the segment it created ahead,
		// unused, and its next one is seq+2. Once seq+2 is published,
		// seq+1 never will be (a writer publishes in name order), but it
		// may have been since the caller's look at it: a second look,
		// after seq+2 is seen, tells.
		var after fs.FileInfo
		if after, err = r.fs.Stat(path.Join(r.dir, layout.SegmentName(epoch, seq+2))); err == nil {
			if fi, err = r.fs.Stat(next); errors.Is(err, fs.ErrNotExist) {
				fi, err = after, nil
			}
		}
	}
	fi, err = counted(r.fs, r.dir, epoch, fi, err)
	if err != nil {
		return false, &ReadError{Op: "list", Segment: r.dir, Offset: r.pos.Offset, Err: err}
	}
	if fi == nil {
		return false, nil
	}
	r.pending = append(r.pending[:0], fi)
	return true, nil
}

// list reads the directory for published segments after pos. Segments
// still pending from the last listing stay pending even when this one
// lacks them: one deleted meanwhile is then reported as vanished when
// the reader comes to it, not passed over.
func (r *Reader) list() error {
	start := r.now()
	infos, err := layout.Published(r.fs, r.dir, r.pos.Segment)
	if err != nil {
		return &ReadError{Op: "list", Segment: r.dir, Offset: r.pos.Offset, Err: err}
	}
	if n := len(r.pending); n > 0 {
		last := r.pending[n-1].Name()
		i := sort.Search(len(infos), func(i int) bool { return infos[i].Name() > last })
		infos = append(slices.Clip(r.pending), infos[i:]...)
	}
	r.pending = infos
	r.listed = r.now()
	r.listTook = r.listed.Sub(start)
	r.noticed, r.polled, r.waited, r.deferred = false, false, false, false
	return nil
}

// List lists the bucket now, as the reader's first look does: the
// segments it finds after the position are read from then on, or
// reported vanished if they go. A segment deleted before the reader first
// lists is never seen, so nothing reports it; a user that reads from the
// start of a bucket and must know what retention deleted before it got
// there reads the retention mark after List (retention writes the mark
// before it deletes), as a Puma backfill does.
func (r *Reader) List() error { return r.list() }

// Lag counts the published segments after the current one, as of the
// last listing (at most a poll old while segments follow, or layout.ListBudget
// times that listing's duration if longer): how far behind the writers
// the reader is.
func (r *Reader) Lag() int { return len(r.pending) }

// Close releases the open segment (and the one opened ahead) and ends a
// subscription to a Notifier.
func (r *Reader) Close() error {
	r.closeFile()
	r.dropAhead()
	if r.unsubscribe != nil {
		r.unsubscribe()
		r.unsubscribe, r.woken = nil, nil
	}
	return nil
}
