package ptail

import (
	"errors"
	"io/fs"
	"path"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
)

// ahead is the segment after the current one, found and opened on a
// goroutine of its own while the reader reads the current one.
//
// On HDFS a segment's turn costs round trips the reader would otherwise
// wait for one after the other: the Stat of its name and the fence's
// listing (nextSegment), the open (the NameNode's file info) and the
// first read (the block locations, a DataNode connection, its first
// packet). A reader behind its writers (Puma catching up on another
// writer's buckets) spent about half its time in them. Only the waiting
// moves: what the goroutine finds is taken as the reader would have found
// it (a published segment never changes, and a fence verdict, once read
// after the segment was seen, stays true), and everything it found is
// judged on the reader's goroutine as before: a segment gone is a
// *VanishedError, a failure a *ReadError, a damaged header damage.
type ahead struct {
	name string // the segment's name in the reader's directory
	// byName: the goroutine first looked for name as nextSegment does
	// (the reader had no pending segment); fi is nil when it was not
	// there yet, or did not count then: the reader looks again.
	byName bool
	done   chan struct{} // closed once the fields below are set

	fi   fs.FileInfo
	file dfs.Reader      // nil unless the open succeeded
	sr   *segment.Reader // nil unless the segment's header was read
	err  error           // the look's, the open's or the header's
}

// startAhead finds and opens, on a goroutine, the segment the reader
// goes to after the current one: the next pending one, or, when none is
// pending and the current one was published at least a poll ago (the
// reader is behind: its writer has likely published the next), the name
// its writer publishes next. A caught-up reader looks for nothing ahead:
// the next name would not be there yet, and the look would be a NameNode
// call for nothing at every segment.
func (r *Reader) startAhead() {
	if r.ahead != nil {
		return
	}
	a := &ahead{done: make(chan struct{})}
	if len(r.pending) > 0 {
		a.name = r.pending[0].Name()
	} else {
		epoch, seq, ok := layout.ParseSegmentName(r.pos.Segment)
		if !ok || seq == 1<<64-1 || r.modTime.IsZero() || r.now().Sub(r.modTime) < r.poll {
			return
		}
		a.name, a.byName = layout.SegmentName(epoch, seq+1), true
	}
	r.ahead = a
	fsys, dir := r.fs, r.dir
	go func() {
		defer close(a.done)
		if a.byName {
			epoch, _, _ := layout.ParseSegmentName(a.name)
			fi, err := fsys.Stat(path.Join(dir, a.name))
			if a.fi, a.err = counted(fsys, dir, epoch, fi, err); a.fi == nil {
				return
			}
		}
		a.file, a.err = fsys.Open(path.Join(dir, a.name))
		if a.err != nil {
			return
		}
		a.sr, a.err = segment.NewReader(a.file, 0)
	}()
}

// takeAhead returns what the goroutine found for segment name, once it
// is done, and forgets it; nil if it was for another segment (kept when
// that one comes later, dropped when it is passed).
func (r *Reader) takeAhead(name string) *ahead {
	a := r.ahead
	if a == nil || a.name > name {
		return nil
	}
	r.ahead = nil
	<-a.done
	if a.name < name {
		a.close()
		return nil
	}
	return a
}

// dropAhead forgets the segment found ahead, closing it.
func (r *Reader) dropAhead() {
	if a := r.ahead; a != nil {
		r.ahead = nil
		<-a.done
		a.close()
	}
}

func (a *ahead) close() {
	if a.file != nil {
		_ = a.file.Close() // opened for reading
	}
	a.file, a.sr = nil, nil
}

// counted takes the Stat of a segment of epoch (fi, err) as a listing
// would: a segment there (not a directory: Published passes those over)
// counts when the fence, read after the Stat, has no intent above its
// epoch (layout.Fence.Verdict). It returns fi when it counts, nil when
// it is not there or does not count (yet: a listing decides it). It
// touches nothing of a reader's, so that startAhead's goroutine can call
// it.
func counted(fsys dfs.FS, dir string, epoch int64, fi fs.FileInfo, err error) (fs.FileInfo, error) {
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if fi.IsDir() {
		return nil, nil
	}
	top, err := layout.FenceTop(fsys, dir)
	if err != nil {
		return nil, err
	}
	if top > epoch {
		return nil, nil
	}
	return fi, nil
}
