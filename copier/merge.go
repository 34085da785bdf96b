package copier

import (
	"bufio"
	"compress/flate"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"path"
	"strconv"
	"time"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/ptail"
)

// mergeState is a bucket's merge progress (column "merge" of its progress
// row). Every line before Pos is in a published period file, of a period
// starting before OpenMs; the lines from Pos on go to OpenMs's period or
// later ones. Pending, when set, is a period file decided and verified but
// perhaps not published yet: it is published (rewritten from its range if
// need be) before anything else of the bucket is merged.
type mergeState struct {
	Pos     ptail.Position `json:"pos"`
	OpenMs  int64          `json:"open_ms"`
	Pending *mergedFile    `json:"pending,omitempty"`
}

// head is the period of a bucket's first block not merged, as last read:
// valid while the bucket's progress is the same.
type head struct {
	pos      ptail.Position
	openMs   int64
	periodMs int64
}

// mergedFile is one period's file: the lines of the blocks in [From, To)
// of the bucket, in bucket order.
type mergedFile struct {
	PeriodMs int64          `json:"period_ms"` // start of the period, Unix ms
	From     ptail.Position `json:"from"`
	To       ptail.Position `json:"to"`
	Lines    int64          `json:"lines"`
	Bytes    int64          `json:"bytes"` // of the lines, uncompressed
	CRC      uint32         `json:"crc"`   // CRC-32C of the lines, uncompressed
	// Last is the last segment read to its end once the file is done
	// (with every segment before it): the progress row's "last" after it.
	Last string `json:"last"`
	// Late and Future count the lines placed in a later period than their
	// arrival (see doc.go), for the metrics once the file is published.
	Late   int64 `json:"late,omitempty"`
	Future int64 `json:"future,omitempty"`
}

// state is the bucket's merge progress: stored, or where segment copying
// (or nothing) left it.
func (j *bucketJob) state() mergeState {
	if j.mark.last == "" {
		if j.mark.merge != nil {
			return *j.mark.merge
		}
		return mergeState{}
	}
	// Segments up to last were copied as segments before merging was
	// configured: the merge starts after them.
	after := ptail.After(j.mark.last)
	m := j.mark.merge
	if m == nil {
		return mergeState{Pos: after}
	}
	if m.Pos.Before(after) {
		// The merge never leaves "last" past its position: segments were
		// copied as segments since it stopped (merge_period unset for a
		// while), retention may have deleted them. It goes on after them,
		// in a period no earlier than its own; a period file it had
		// decided is dropped, its lines were copied in their segments.
		return mergeState{Pos: after, OpenMs: m.OpenMs}
	}
	return *m
}

// mergedTo is where merging left the bucket, for copying segments to go
// on from once merge_period is removed: the position of its first line
// not in a published period file, when that is after "last" (inside a
// segment whose first blocks are in a period file, or past the range of
// a period file the merge decided and published but did not record as
// done); the zero Position otherwise. See mergedPart.
func (c *Copier) mergedTo(ctx context.Context, j *bucketJob, buf []byte) (ptail.Position, error) {
	m := j.mark.merge
	if m == nil {
		return ptail.Position{}, nil
	}
	pos := m.Pos
	if f := m.Pending; f != nil {
		published, err := c.pendingPublished(ctx, j, f, buf)
		if err != nil {
			return ptail.Position{}, err
		}
		if published {
			pos = f.To
		}
	}
	if !ptail.After(j.mark.last).Before(pos) {
		// Segments were copied since the merge stopped: it is behind.
		return ptail.Position{}, nil
	}
	return pos, nil
}

// pendingPublished reports whether the period file f, which a merge
// decided and may have published before it stopped, is at the
// destination with its lines. Its name depends on the merge_period and
// compression of then, which the configuration may no longer tell: each name
// it can have is looked at, and only a file holding exactly f's lines
// (their size and CRC-32C) counts. The temporary files earlier epochs
// left of it are removed first: a merging copier that lost its lease
// without seeing it yet cannot publish it once this has looked.
func (c *Copier) pendingPublished(ctx context.Context, j *bucketJob, f *mergedFile, buf []byte) (bool, error) {
	start := time.UnixMilli(f.PeriodMs)
	for _, period := range []time.Duration{time.Hour, time.Minute} { // the hh= and the mm= layouts
		for _, ext := range []string{"", ".gz"} {
			name := layout.MergedFile(j.category, j.bucket, start, period, ext)
			c.removeOlderTempsOf(name)
			switch _, err := c.deps.Dest.Stat(name); {
			case errors.Is(err, fs.ErrNotExist):
				continue
			case err != nil:
				return false, fmt.Errorf("stat %s in %s: %w", name, c.deps.Dest, err)
			}
			_, n, sum, err := c.readMerged(ctx, name, ext == ".gz", buf)
			var ce corruptError
			switch {
			case errors.As(err, &ce):
				continue
			case err != nil:
				return false, err
			case n == f.Bytes && sum == f.CRC:
				return true, nil
			}
		}
	}
	return false, nil
}

// mergedPart is what of segment seg merging left to copy, given where it
// stopped (mergedTo): -1 if nothing, its lines are all in period files;
// 0 if all of it; else the offset of its first block not merged.
func mergedPart(merged ptail.Position, seg string) int64 {
	switch {
	case seg < merged.Segment:
		return -1
	case seg == merged.Segment:
		return merged.Offset // -1 (After) when merged to its end
	}
	return 0
}

// periodOf is the start (ms) of the period holding ms.
func (c *Copier) periodOf(ms int64) int64 {
	p := c.cfg.MergePeriod.D().Milliseconds()
	q := ms / p
	if ms%p < 0 {
		q--
	}
	return q * p
}

// mergeBucket writes j's closed periods, oldest first, recording progress
// after each; the first failure stops the bucket until the next pass.
func (ps *passState) mergeBucket(ctx context.Context, j *bucketJob, buf []byte) {
	c := ps.c
	if ctx.Err() != nil {
		return
	}
	ps.sweepOnce(j)
	if len(j.segs) == 0 {
		return
	}
	if layout.NeedsSidecar(j.category) {
		unique := strconv.FormatInt(c.marksEpoch, 16) + "-" + strconv.Itoa(j.bucket)
		if err := layout.WriteSidecar(c.deps.Dest, j.category, unique); err != nil {
			c.m.errors.WithLabelValues("copy").Inc()
			c.log.Error("cannot write the category sidecar at the destination; the bucket waits for the next pass", "bucket", j.dir, "err", err)
			ps.fail(err)
			return
		}
	}
	for ctx.Err() == nil {
		st := j.state()
		var f *mergedFile
		fresh := st.Pending == nil
		if fresh && j.findCopy {
			switch done, ok := ps.skipCopied(ctx, j, st, buf); {
			case !ok:
				return
			case done:
				continue
			}
			j.findCopy = false
			ps.mu.Lock()
			c.copiesSeen[j.dir] = true
			ps.mu.Unlock()
		}
		if fresh {
			var err error
			if f, err = ps.closePeriod(ctx, j, st, buf); err != nil || f == nil {
				ps.mergeFailed(ctx, j, err)
				return
			}
			st.Pending = f
			// Decided: from here on this file is written from its range,
			// whatever a restart finds.
			next, err := saveMerge(ctx, c.deps.Store, c.cfg.Table, j.dir, j.mark, st, j.mark.last, ps.owner, c.now().UnixMilli())
			if err != nil {
				// Undecided, or decided perhaps (its answer lost), then
				// written again from its range: the file is of no use.
				// Fenced, this copier must not leave it, which the new
				// holder, past this period perhaps, might never look for.
				c.removeTemp(c.tempName(c.mergedName(j, f.PeriodMs)))
				ps.progressFailed(ctx, j, next, err)
				return
			}
			ps.setMark(j, next)
		}
		out, err := ps.publishPeriod(ctx, j, st.Pending, fresh, buf)
		if err != nil {
			ps.mergeFailed(ctx, j, err)
			return
		}
		f = st.Pending
		done := mergeState{Pos: f.To, OpenMs: f.PeriodMs + c.cfg.MergePeriod.D().Milliseconds()}
		prevLast := j.mark.last
		next, err := saveMerge(ctx, c.deps.Store, c.cfg.Table, j.dir, j.mark, done, f.Last, ps.owner, c.now().UnixMilli())
		if err != nil {
			ps.progressFailed(ctx, j, next, err)
			return
		}
		ps.setMark(j, next)
		ps.merged(j, f, out, prevLast)
	}
}

// skipCopied records as done the segment the merge of j would go on with
// (at st.Pos), if it is at the destination already, as the source's:
// whole, or its part from st.Pos (a segment cut short after a merge,
// openPart). Copying segments (merge_period unset before this run)
// published it, and stopped before recording it: a crash, a stop whose
// context refused the progress write. Merged, its lines would be at the
// destination twice. It reports whether it recorded one; ok is false
// after a failure, reported, which stops the bucket. Only an earlier
// copier can have left such a segment: the merge looks once per bucket
// and grant (copiesSeen), one Stat at the destination when there is
// nothing to skip.
func (ps *passState) skipCopied(ctx context.Context, j *bucketJob, st mergeState, buf []byte) (done, ok bool) {
	c := ps.c
	var seg fs.FileInfo
	from := int64(0)
	for _, fi := range j.segs {
		if fi.Name() == st.Pos.Segment && st.Pos.Offset >= 0 {
			seg, from = fi, st.Pos.Offset
			break
		}
		if fi.Name() > st.Pos.Segment {
			seg = fi
			break
		}
	}
	if seg == nil {
		return false, true
	}
	name := path.Join(j.dir, seg.Name())
	dst, err := c.deps.Dest.Stat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return false, true
	}
	if err != nil {
		ps.mergeFailed(ctx, j, fmt.Errorf("stat %s in %s: %w", name, c.deps.Dest, err))
		return false, false
	}
	same, err := c.sameAsSource(ctx, name, seg.Size(), from, dst, buf)
	if errors.Is(err, fs.ErrNotExist) {
		return false, true // gone from the source: the merge counts it vanished
	}
	if err != nil {
		ps.mergeFailed(ctx, j, err)
		return false, false
	}
	if !same {
		return false, true
	}
	next, err := advance(ctx, c.deps.Store, c.cfg.Table, j.dir, j.mark, seg.Name(), ptail.Position{}, ps.owner, c.now().UnixMilli())
	if err != nil {
		ps.progressFailed(ctx, j, next, err)
		return false, false
	}
	c.log.Info("segment copied to the destination before merge_period was set; merging goes on after it", "segment", name)
	j.mark = next
	ps.done(j, skipped, 0, seg.Size())
	return true, true
}

func (ps *passState) mergeFailed(ctx context.Context, j *bucketJob, err error) {
	if err == nil || ctx.Err() != nil {
		return
	}
	op := "copy"
	if errors.Is(err, errMismatch) {
		op = "verify"
	}
	ps.c.m.errors.WithLabelValues(op).Inc()
	ps.c.log.Error("cannot merge bucket; it waits for the next pass", "bucket", j.dir, "err", err)
	ps.fail(err)
}

// progressFailed reports a failed progress write of j, which stops the
// bucket; stored is the bucket's progress as saveMerge says it is now.
func (ps *passState) progressFailed(ctx context.Context, j *bucketJob, stored mark, err error) {
	c := ps.c
	switch {
	case errors.Is(err, errFenced):
		// Someone else is copying: stop the whole pass.
		c.log.Warn("progress row written by another copier; stopping the pass", "bucket", j.dir)
		ps.fail(err)
		ps.cancel()
	case errors.Is(err, errAnswerLost):
		// The row is ahead of this copier's mark, with its own work: the
		// bucket goes on from there next pass.
		ps.setMark(j, stored)
		c.log.Warn("progress write refused for an earlier one the store made without saying so; the bucket goes on from it next pass", "bucket", j.dir)
		ps.fail(err)
	case ctx.Err() != nil:
	default:
		c.m.errors.WithLabelValues("progress").Inc()
		c.log.Error("cannot record progress", "bucket", j.dir, "err", err)
		ps.fail(err)
	}
}

// closePeriod decides the bucket's next period file, if one is closed,
// and writes it under its temporary name at the destination (verified);
// nil when no period is closed yet.
//
// The period of each block is the latest of: the period of its arrival,
// the period of the block before it (periods never go back in bucket
// order, so a period is one stretch of the bucket), and the period that
// was open when its segment was published (its modification time less
// MergeDelay, so that a segment published late, a salvaged one say, does
// not reopen a period that was closed). A block whose arrival is ahead of
// this copier's clock (a writer's clock ahead) takes the period of the
// block before it rather than pushing the bucket into the future, and a
// segment time more than MergeDelay ahead of it is passed over. The
// first block's period is closed once this copier's clock is MergeDelay
// past its end; the file is that block and every following one of the
// same period, up to the first of a later period or the end of what is
// published.
func (ps *passState) closePeriod(ctx context.Context, j *bucketJob, st mergeState, buf []byte) (*mergedFile, error) {
	c := ps.c
	now := c.now()
	nowMs := now.UnixMilli()
	periodMs := c.cfg.MergePeriod.D().Milliseconds()
	delayMs := c.cfg.MergeDelay.D().Milliseconds()
	if v, ok := c.heads.Load(j.dir); ok {
		if h := v.(head); h.pos == st.Pos && h.openMs == st.OpenMs && h.periodMs+periodMs+delayMs > nowMs {
			return nil, nil
		}
	}
	r := c.newReader(j.dir, st.Pos)
	defer r.Close() //nolint:errcheck // a reader holds nothing to flush
	src := &blockSource{ps: ps, j: j, r: r}
	var b segment.Block
	ok, err := src.next(ctx, &b)
	if err != nil || !ok {
		return nil, err
	}
	running := st.OpenMs
	periodOfBlock := func(b *segment.Block) (p int64, late, future bool) {
		p = running
		if b.ArrivalMs > nowMs {
			future = c.periodOf(b.ArrivalMs) > running
		} else {
			p = max(p, c.periodOf(b.ArrivalMs))
		}
		// A segment time more than MergeDelay ahead of this clock is
		// no publish time (the dfs's clock was ahead, a step since set
		// it back): it would hold the bucket in a period that far on
		// until this clock got there. Its blocks go by their arrival.
		if t := src.segmentTime(); !t.IsZero() && t.UnixMilli() <= nowMs+delayMs {
			p = max(p, c.periodOf(t.UnixMilli()-delayMs))
		}
		if !future && p > c.periodOf(b.ArrivalMs) {
			late = true
		}
		return p, late, future
	}
	P, late, future := periodOfBlock(&b)
	if P+periodMs+delayMs > nowMs {
		// The head of the bucket is in a period still open. Unless it
		// came from the future, its period stays what it is until the
		// head moves: passes until then need not read it.
		if !future {
			ps.c.heads.Store(j.dir, head{st.Pos, st.OpenMs, P})
		}
		return nil, nil
	}
	running = P
	f := &mergedFile{PeriodMs: P, From: st.Pos, Last: j.mark.last}
	w, err := c.createPeriod(j, P)
	if err != nil {
		return nil, err
	}
	defer w.abandon()
	seg := r.Position().Segment
	for {
		n := w.writeBlock(&b)
		if late {
			f.Late += n
		}
		if future {
			f.Future += n
		}
		f.To = r.Position()
		ok, err := src.next(ctx, &b)
		if err != nil {
			return nil, err
		}
		if !ok {
			// Read to the end of what is published: so is its segment.
			f.To = ptail.After(f.To.Segment)
			f.Last = max(f.Last, f.To.Segment)
			break
		}
		if s := r.Position().Segment; s != seg {
			// The segments before were read to their end.
			if f.To.Segment != s {
				f.To = ptail.After(f.To.Segment)
			}
			f.Last = max(f.Last, lastBefore(src.passed, s))
			seg = s
		}
		var p int64
		if p, late, future = periodOfBlock(&b); p > P {
			break
		}
	}
	f.Lines, f.Bytes, f.CRC = w.lines, w.raw, w.crc.Sum32()
	if err := w.finish(ctx, c, buf); err != nil {
		return nil, err
	}
	return f, nil
}

// lastBefore is the greatest segment in passed (the segments the reader
// entered, in order) that sorts before s.
func lastBefore(passed []string, s string) string {
	last := ""
	for _, p := range passed {
		if p < s {
			last = max(last, p)
		}
	}
	return last
}

// publishPeriod brings f to its final name. fresh: f was just written to
// its temporary name by closePeriod. Otherwise it was decided by an
// earlier run, which may have published it, or only part of the way: an
// existing file equal to f is kept; else f is written again from its
// range of the bucket.
func (ps *passState) publishPeriod(ctx context.Context, j *bucketJob, f *mergedFile, fresh bool, buf []byte) (outcome, error) {
	c := ps.c
	final := c.mergedName(j, f.PeriodMs)
	tmp := c.tempName(final)
	if !fresh {
		// Published perhaps under another merge_period or compression,
		// whose name for it was another: not to be written again.
		published, err := c.pendingPublished(ctx, j, f, buf)
		if err != nil {
			return 0, err
		}
		if published {
			return skipped, nil
		}
	}
	out := copied
	fi, err := c.deps.Dest.Stat(final)
	switch {
	case err == nil:
		same, err := c.sameMerged(ctx, final, fi, f, buf)
		if err != nil {
			return 0, err
		}
		if fresh {
			c.removeTemp(tmp)
		}
		if same {
			return skipped, nil
		}
		if fresh {
			// Not decided by this copier's progress (lost, say, with a
			// damaged store): the file there may hold lines whose
			// segments are gone. A published period is never rewritten
			// on a guess.
			c.m.conflicts.WithLabelValues(j.label).Inc()
			c.log.Error("a different period file is already published; keeping it and moving on (progress lost?)", "file", final,
				"lines", f.Lines, "bytes", f.Bytes)
			return conflict, nil
		}
		c.log.Warn("published period file differs from its recorded range; writing it again", "file", final)
		if err := ps.rewrite(ctx, j, f, buf); err != nil {
			return 0, err
		}
		out = replaced
	case !errors.Is(err, fs.ErrNotExist):
		return 0, fmt.Errorf("stat %s in %s: %w", final, c.deps.Dest, err)
	case !fresh:
		if err := ps.rewrite(ctx, j, f, buf); err != nil {
			return 0, err
		}
	}
	// Publish only while still the active copier.
	if err := ctx.Err(); err != nil {
		c.removeTemp(tmp)
		return 0, err
	}
	if err := c.deps.Dest.Rename(tmp, final); err != nil {
		c.removeTemp(tmp)
		return 0, fmt.Errorf("publish %s in %s: %w", final, c.deps.Dest, err)
	}
	return out, nil
}

// rewrite writes f again to its temporary name from its range of the
// bucket. The segments are the same (retention keeps them, as they are
// after the bucket's "last"), so are the lines; if they are not (a
// segment removed by hand), what is there is written, and said.
func (ps *passState) rewrite(ctx context.Context, j *bucketJob, f *mergedFile, buf []byte) error {
	c := ps.c
	r := c.newReader(j.dir, f.From)
	defer r.Close() //nolint:errcheck // a reader holds nothing to flush
	src := &blockSource{ps: ps, j: j, r: r}
	w, err := c.createPeriod(j, f.PeriodMs)
	if err != nil {
		return err
	}
	defer w.abandon()
	var b segment.Block
	for {
		ok, err := src.next(ctx, &b)
		if err != nil {
			return err
		}
		if !ok || f.To.Before(r.Position()) {
			break
		}
		w.writeBlock(&b)
	}
	if w.raw != f.Bytes || w.crc.Sum32() != f.CRC || w.lines != f.Lines {
		c.m.errors.WithLabelValues("verify").Inc()
		c.log.Error("the bucket's lines of a recorded period are not what they were; writing what is there", "file", c.mergedName(j, f.PeriodMs),
			"lines", w.lines, "recorded_lines", f.Lines, "bytes", w.raw, "recorded_bytes", f.Bytes)
		f.Lines, f.Bytes, f.CRC = w.lines, w.raw, w.crc.Sum32()
	}
	return w.finish(ctx, c, buf)
}

// sameMerged reports whether the published file final (described by fi)
// holds f's lines.
func (c *Copier) sameMerged(ctx context.Context, final string, fi fs.FileInfo, f *mergedFile, buf []byte) (bool, error) {
	if c.cfg.Compression == CompressionNone && fi.Size() != f.Bytes {
		return false, nil
	}
	if c.cfg.Verify != VerifyChecksum && c.cfg.Compression == CompressionNone {
		return true, nil
	}
	_, n, sum, err := c.readMerged(ctx, final, c.cfg.Compression == CompressionGzip, buf)
	if err != nil {
		var ce corruptError
		if errors.As(err, &ce) {
			return false, nil
		}
		return false, err
	}
	return n == f.Bytes && sum == f.CRC, nil
}

// corruptError is a merged file that does not decompress.
type corruptError struct{ error }

// readMerged reads the merged file name back: its CRC-32C as stored, and
// the size and CRC-32C of its lines (decompressed, gz: it is gzipped).
func (c *Copier) readMerged(ctx context.Context, name string, gz bool, buf []byte) (fileSum uint32, n int64, sum uint32, err error) {
	r, err := c.deps.Dest.Open(name)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("open %s in %s: %w", name, c.deps.Dest, err)
	}
	defer r.Close() //nolint:errcheck // opened for reading
	fh := crc32.New(castagnoli)
	in := io.Reader(io.TeeReader(ctxReader{ctx, r}, fh))
	if gz {
		zr, err := gzip.NewReader(bufio.NewReader(in))
		if err != nil {
			if ctx.Err() != nil {
				return 0, 0, 0, ctx.Err()
			}
			err = fmt.Errorf("read %s in %s: %w", name, c.deps.Dest, err)
			if corrupt(err) || errors.Is(err, io.EOF) {
				err = corruptError{err}
			}
			return 0, 0, 0, err
		}
		defer zr.Close() //nolint:errcheck // a reader: what it read is checked by the sums
		in = zr
	}
	h := crc32.New(castagnoli)
	n, err = io.CopyBuffer(h, in, buf)
	if err != nil {
		if ctx.Err() != nil {
			return 0, 0, 0, ctx.Err()
		}
		err = fmt.Errorf("read %s in %s: %w", name, c.deps.Dest, err)
		if corrupt(err) {
			err = corruptError{err}
		}
		return 0, 0, 0, err
	}
	// Drain what gzip did not need, so that the file's CRC covers it all.
	if _, err := io.CopyBuffer(io.Discard, io.TeeReader(ctxReader{ctx, r}, fh), buf); err != nil {
		return 0, 0, 0, fmt.Errorf("read %s in %s: %w", name, c.deps.Dest, err)
	}
	return fh.Sum32(), n, h.Sum32(), nil
}

// corrupt reports whether a read error is a compressed stream's damage.
func corrupt(err error) bool {
	var fe flate.CorruptInputError
	return errors.As(err, &fe) || errors.Is(err, gzip.ErrChecksum) || errors.Is(err, gzip.ErrHeader) || errors.Is(err, io.ErrUnexpectedEOF)
}

// mergedName is the destination file of the period starting at periodMs.
func (c *Copier) mergedName(j *bucketJob, periodMs int64) string {
	ext := ""
	if c.cfg.Compression == CompressionGzip {
		ext = ".gz"
	}
	return layout.MergedFile(j.category, j.bucket, time.UnixMilli(periodMs), c.cfg.MergePeriod.D(), ext)
}

func (c *Copier) newReader(dir string, pos ptail.Position) *ptail.Reader {
	// TryNext never waits; the poll only paces re-listing a backlog.
	return ptail.NewReader(c.deps.Source, dir, pos, c.cfg.Interval.D(), c.log).SetMetrics(c.tail)
}

// blockSource reads a bucket's blocks for a merge: vanished segments are
// counted and passed over, and it keeps the publish time of the segment
// being read.
type blockSource struct {
	ps     *passState
	j      *bucketJob
	r      *ptail.Reader
	passed []string // segments entered, in order
	seg    string
	mtime  time.Time
}

func (s *blockSource) next(ctx context.Context, b *segment.Block) (bool, error) {
	for {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		_, ok, err := s.r.TryNext(b)
		var ve *ptail.VanishedError
		if errors.As(err, &ve) {
			s.ps.vanished(s.j, ve.Segment)
			continue
		}
		if err != nil || !ok {
			return false, err
		}
		if seg := s.r.Position().Segment; seg != s.seg {
			s.seg, s.mtime = seg, s.r.SegmentTime()
			s.passed = append(s.passed, seg)
			if s.mtime.IsZero() {
				// Resumed inside it: ask.
				if fi, err := s.ps.c.deps.Source.Stat(path.Join(s.j.dir, seg)); err == nil {
					s.mtime = fi.ModTime()
				}
			}
		}
		return true, nil
	}
}

func (s *blockSource) segmentTime() time.Time { return s.mtime }

// periodWriter writes one period file under its temporary name.
type periodWriter struct {
	fsys   dfs.FS
	tmp    string
	f      dfs.File
	out    *countingWriter // what goes into the file
	zw     *gzip.Writer
	bw     *bufio.Writer
	crc    hash.Hash32 // of the lines
	raw    int64
	lines  int64
	err    error
	closed bool
	log    *slog.Logger
}

type countingWriter struct {
	w   io.Writer
	n   int64
	crc hash.Hash32
}

func (w *countingWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	w.n += int64(n)
	w.crc.Write(p[:n])
	return n, err
}

// createPeriod opens the temporary file of j's period starting at
// periodMs, replacing those interrupted runs left.
func (c *Copier) createPeriod(j *bucketJob, periodMs int64) (*periodWriter, error) {
	final := c.mergedName(j, periodMs)
	tmp := c.tempName(final)
	c.removeOlderTempsOf(final)
	f, err := c.deps.Dest.Create(tmp)
	if errors.Is(err, fs.ErrExist) {
		if err := c.deps.Dest.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove stale %s in %s: %w", tmp, c.deps.Dest, err)
		}
		c.m.tempsGone.Inc()
		c.log.Info("removed a temporary file left by an interrupted merge", "file", tmp)
		f, err = c.deps.Dest.Create(tmp)
	}
	if err != nil {
		return nil, fmt.Errorf("create %s in %s: %w", tmp, c.deps.Dest, err)
	}
	w := &periodWriter{fsys: c.deps.Dest, tmp: tmp, f: f, crc: crc32.New(castagnoli), log: c.log}
	w.out = &countingWriter{w: f, crc: crc32.New(castagnoli)}
	var to io.Writer = w.out
	if c.cfg.Compression == CompressionGzip {
		w.zw = gzip.NewWriter(w.out)
		to = w.zw
	}
	w.bw = bufio.NewWriterSize(to, 256<<10)
	return w, nil
}

var newline = []byte{'\n'}

// writeBlock appends a block's messages, one a line, and returns how
// many: a message is followed by a newline unless it ends with one.
func (w *periodWriter) writeBlock(b *segment.Block) int64 {
	for _, m := range b.Messages {
		w.write(m)
		if len(m) == 0 || m[len(m)-1] != '\n' {
			w.write(newline)
		}
	}
	w.lines += int64(len(b.Messages))
	return int64(len(b.Messages))
}

func (w *periodWriter) write(p []byte) {
	if w.err != nil {
		return
	}
	if _, err := w.bw.Write(p); err != nil {
		w.err = fmt.Errorf("write %s: %w", w.tmp, err)
		return
	}
	w.crc.Write(p)
	w.raw += int64(len(p))
}

// finish closes the file and verifies it: it holds what was written, and
// (VerifyChecksum) reads back with the same checksums, its lines
// decompressed included.
func (w *periodWriter) finish(ctx context.Context, c *Copier, buf []byte) error {
	if w.err == nil {
		if err := w.bw.Flush(); err != nil {
			w.err = fmt.Errorf("write %s: %w", w.tmp, err)
		}
	}
	if w.err == nil && w.zw != nil {
		if err := w.zw.Close(); err != nil {
			w.err = fmt.Errorf("write %s: %w", w.tmp, err)
		}
	}
	w.closed = true
	if err := w.f.Close(); err != nil && w.err == nil {
		w.err = fmt.Errorf("close %s in %s: %w", w.tmp, w.fsys, err)
	}
	if w.err != nil {
		c.removeTemp(w.tmp)
		return w.err
	}
	err := w.verify(ctx, c, buf)
	if err != nil {
		c.removeTemp(w.tmp)
	}
	return err
}

func (w *periodWriter) verify(ctx context.Context, c *Copier, buf []byte) error {
	fi, err := w.fsys.Stat(w.tmp)
	if err != nil {
		return fmt.Errorf("stat %s: %w", w.tmp, err)
	}
	if fi.Size() != w.out.n {
		return fmt.Errorf("%w: %s holds %d bytes, %d were written", errMismatch, w.tmp, fi.Size(), w.out.n)
	}
	if c.cfg.Verify != VerifyChecksum {
		return nil
	}
	fileSum, n, sum, err := c.readMerged(ctx, w.tmp, w.zw != nil, buf)
	if err != nil {
		var ce corruptError
		if errors.As(err, &ce) {
			return fmt.Errorf("%w: %w", errMismatch, err)
		}
		return err
	}
	switch {
	case fileSum != w.out.crc.Sum32():
		return fmt.Errorf("%w: %s reads back with CRC-32C %08x, %08x was written", errMismatch, w.tmp, fileSum, w.out.crc.Sum32())
	case n != w.raw || sum != w.crc.Sum32():
		return fmt.Errorf("%w: %s holds %d bytes of lines (CRC-32C %08x), %d were read (%08x)", errMismatch, w.tmp, n, sum, w.raw, w.crc.Sum32())
	}
	return nil
}

// abandon removes the temporary file unless finish closed it.
func (w *periodWriter) abandon() {
	if w.closed {
		return
	}
	w.closed = true
	_ = w.f.Close() // abandoned: the file is removed next
	if err := w.fsys.Remove(w.tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		w.log.Warn("cannot remove temporary file; the next merge of its period will", "file", w.tmp, "err", err)
	}
}

// setMark records j's progress as now stored.
func (ps *passState) setMark(j *bucketJob, m mark) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	j.mark = m
	ps.c.marks[j.dir] = m
}

// merged accounts for a period file done and for the segments it
// finished (those after prevLast up to f.Last).
func (ps *passState) merged(j *bucketJob, f *mergedFile, out outcome, prevLast string) {
	c := ps.c
	ps.mu.Lock()
	defer ps.mu.Unlock()
	switch out {
	case copied, replaced:
		ps.st.Merged++
		c.m.merged.WithLabelValues(j.label).Inc()
		c.m.mergedLines.WithLabelValues(j.label).Add(float64(f.Lines))
		c.m.bytes.WithLabelValues(j.label).Add(float64(f.Bytes))
		ps.st.Bytes += f.Bytes
		ps.st.Lines += f.Lines
		if out == replaced {
			ps.st.Replaced++
			c.m.replaced.WithLabelValues(j.label).Inc()
		}
	case skipped:
		ps.st.Skipped++
		c.m.skipped.WithLabelValues(j.label).Inc()
	case conflict:
		ps.st.Conflicts++
	}
	if out != conflict && out != skipped {
		c.m.moved.WithLabelValues(j.label, "late").Add(float64(f.Late))
		c.m.moved.WithLabelValues(j.label, "future").Add(float64(f.Future))
	}
	for _, fi := range j.segs {
		if n := fi.Name(); n > prevLast && n <= f.Last {
			j.done++
			ps.segmentDone(j, fi.Size())
		}
	}
	ps.logProgress()
}

// vanished accounts for a segment gone from the source before the merge
// read it.
func (ps *passState) vanished(j *bucketJob, seg string) {
	c := ps.c
	c.log.Warn("segment removed from the source before it was merged", "segment", seg)
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.st.Vanished++
	c.m.vanished.WithLabelValues(j.label).Inc()
}
