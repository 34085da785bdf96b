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
// Damage. A published segment never changes, so a block that fails its
// checks is damage, not a write in progress. The reader logs it (an error
// with the segment and offset), counts it (Metrics, and the Damaged
// fields) and goes on: in a v2 segment with the next block, so a damaged
// block costs that block only; in a v1 segment, or after a torn tail, with
// the next segment. An I/O error is not damage: Next returns it and
// resumes where it was.
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
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
)

// Position is where a reader resumes: the next block is at Offset in
// Segment. The zero Position is before the first segment.
type Position struct {
	Segment string `json:"segment"`
	Offset  int64  `json:"offset"`
}

func (p Position) String() string { return fmt.Sprintf("%s@%d", p.Segment, p.Offset) }

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
	pending  []string  // published segments after pos, in order, from the last listing
	listed   time.Time // when pending was listed

	m *Metrics

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

// defaultPoll is the poll interval of a reader given none.
const defaultPoll = time.Second

// NewReader returns a reader of the bucket directory dir from pos, which
// polls for new segments every poll (a second if poll is not positive).
func NewReader(fsys dfs.FS, dir string, pos Position, poll time.Duration, log *slog.Logger) *Reader {
	if poll <= 0 {
		poll = defaultPoll
	}
	return &Reader{fs: fsys, dir: dir, pos: pos, poll: poll, log: log}
}

// Position is the position after the last block returned.
func (r *Reader) Position() Position { return r.pos }

// Next returns the next block and the position after it, waiting for a
// writer to publish one if needed, until ctx ends. The block is valid
// until the next call. An error other than ctx's (the dfs failing) leaves
// the reader where it was: calling Next again retries from there.
func (r *Reader) Next(ctx context.Context, b *segment.Block) (Position, error) {
	for {
		if r.sr == nil {
			ok, err := r.openNext()
			if err != nil {
				return r.pos, err
			}
			if !ok {
				select {
				case <-ctx.Done():
					return r.pos, ctx.Err()
				case <-time.After(r.poll):
				}
				continue
			}
		}
		err := r.sr.Next(b)
		if err == nil {
			r.pos.Offset = r.sr.Offset()
			return r.pos, nil
		}
		if !errors.Is(err, io.EOF) {
			var de *segment.DamageError
			if !errors.As(err, &de) {
				// Reading failed, which says nothing about the segment.
				r.closeFile()
				return r.pos, fmt.Errorf("read segment %s at %d: %w", path.Join(r.dir, r.pos.Segment), r.pos.Offset, err)
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
		if ctx.Err() != nil {
			return r.pos, ctx.Err()
		}
	}
}

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
	// List again when nothing is known to follow, and while working
	// through a backlog at most once a poll, so that Lag counts what was
	// published meanwhile.
	if len(r.pending) == 0 || time.Since(r.listed) >= r.poll {
		if err := r.list(); err != nil {
			return false, err
		}
	}
	for len(r.pending) > 0 {
		name := r.pending[0]
		r.pending = r.pending[1:]
		r.pos = Position{Segment: name}
		r.finished = false
		ok, err := r.open(name, 0)
		if ok || err != nil {
			return ok, err
		}
		r.finished = true
	}
	return false, nil
}

// open opens segment name at offset; false (no error) if it is gone.
func (r *Reader) open(name string, offset int64) (bool, error) {
	f, err := r.fs.Open(path.Join(r.dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		r.log.Warn("segment vanished before it was read (retention?)", "segment", path.Join(r.dir, name))
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("open segment %s: %w", path.Join(r.dir, name), err)
	}
	sr, err := segment.NewReader(f, offset)
	if err != nil && !damaged(err) {
		_ = f.Close() // opened for reading
		return false, fmt.Errorf("open segment %s: %w", path.Join(r.dir, name), err)
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

// list reads the directory for published segments after pos.
func (r *Reader) list() error {
	infos, err := r.fs.ReadDir(r.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // no writer has created the bucket yet
	}
	if err != nil {
		return fmt.Errorf("list bucket %s: %w", r.dir, err)
	}
	r.pending = r.pending[:0]
	r.listed = time.Now()
	for _, fi := range infos {
		name := fi.Name()
		if fi.IsDir() || dfs.Hidden(name) || name <= r.pos.Segment {
			continue
		}
		if _, _, ok := layout.ParseSegmentName(name); ok {
			r.pending = append(r.pending, name)
		}
	}
	return nil
}

// Lag counts the published segments after the current one, as of the
// last listing (at most a poll old while segments follow): how far behind
// the writers the reader is.
func (r *Reader) Lag() int { return len(r.pending) }

// Close releases the open segment.
func (r *Reader) Close() error {
	r.closeFile()
	return nil
}
