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

	"github.com/freeway-dev/freeway/internal/dfs"
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

	// Skipped counts damaged segments whose rest was skipped (each logged
	// as an error): a corrupt block, a bad header, a torn tail.
	Skipped int
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
			if !damaged(err) {
				// Reading failed, which says nothing about the segment.
				r.closeFile()
				return r.pos, fmt.Errorf("read segment %s at %d: %w", path.Join(r.dir, r.pos.Segment), r.pos.Offset, err)
			}
			// A published segment never changes, so this is damage, not a
			// write in progress. Say so loudly and go on with the next one.
			r.Skipped++
			r.log.Error("damaged segment; skipping the rest of it", "segment", path.Join(r.dir, r.pos.Segment), "offset", r.pos.Offset, "err", err)
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
	if offset > 0 {
		if _, err := f.Seek(offset, io.SeekStart); err != nil {
			f.Close()
			return false, fmt.Errorf("seek segment %s to %d: %w", path.Join(r.dir, name), offset, err)
		}
	}
	sr, err := segment.NewReader(f, offset)
	if err != nil && !damaged(err) {
		f.Close()
		return false, fmt.Errorf("open segment %s: %w", path.Join(r.dir, name), err)
	}
	if err != nil {
		f.Close()
		r.Skipped++
		r.log.Error("damaged segment header; skipping the segment", "segment", path.Join(r.dir, name), "err", err)
		return false, nil
	}
	r.file, r.sr = f, sr
	return true, nil
}

// damaged reports whether a segment read error is the segment's content
// rather than the dfs failing to deliver it.
func damaged(err error) bool {
	return errors.Is(err, segment.ErrCorrupt) || errors.Is(err, segment.ErrTruncated)
}

func (r *Reader) closeFile() {
	if r.file != nil {
		r.file.Close()
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
		if _, _, ok := segment.ParseName(name); ok {
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
