package copier

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strconv"
	"sync"
	"time"

	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/ptail"
)

// bucketJob is one bucket's share of a pass.
type bucketJob struct {
	category string
	label    string // the category as a metric label
	bucket   int
	dir      string
	mark     mark
	segs     []fs.FileInfo // published segments after mark, in name order
	done     int           // how many of segs are done
	sweep    bool          // clear stale temporary files at the destination first
	findCopy bool          // merging: look for a segment copied and not recorded first (skipCopied)
}

// passState is what the workers of one pass share.
type passState struct {
	c      *Copier
	cancel context.CancelFunc
	owner  string
	report func(Progress) // nil: no progress display
	fresh  bool           // list every bucket (CopyOnce, Backfill)

	mu         sync.Mutex
	st         Stats
	firstErr   error
	lastLog    time.Time
	categories map[string]string // label → category, of every category listed
	progress   Progress
}

// Progress is how far a pass has come through the source segments it
// found to copy (or merge): what a progress display shows.
type Progress struct {
	Files, TotalFiles int   // segments done, and found
	Bytes, TotalBytes int64 // their sizes
	Start             time.Time
}

// pass makes one pass under lease, reporting progress to report (if not
// nil) as segments are done. A fresh pass lists every bucket; another
// one lists a bucket only as layout.ListBudget allows (listBucket).
func (c *Copier) pass(ctx context.Context, lease coord.Lease, report func(Progress), fresh bool) (Stats, error) {
	c.passMu.Lock()
	defer c.passMu.Unlock()
	start := c.now()

	ctx, cancel := context.WithCancel(ctx)
	// A copier that loses its lease stops copying at once: its copies in
	// flight are abandoned and nothing more is published or recorded.
	watchDone := make(chan struct{})
	defer func() { <-watchDone }()
	defer cancel()
	go func() {
		defer close(watchDone)
		select {
		case <-lease.Lost():
			cancel()
		case <-ctx.Done():
		}
	}()
	if isLost(lease) {
		return Stats{}, fmt.Errorf("copy pass: copier lease %s lost", lease.Name())
	}

	if c.marks == nil || c.marksEpoch != lease.Epoch() {
		marks, err := loadMarks(ctx, c.deps.Store, c.cfg.Table)
		if err != nil {
			c.m.errors.WithLabelValues("progress").Inc()
			return Stats{}, err
		}
		c.marks, c.marksEpoch = marks, lease.Epoch()
		// Another copier may have been active since this one last held the
		// lease: look at every destination bucket afresh.
		c.swept = map[string]bool{}
		c.copiesSeen = map[string]bool{}
		c.retained = map[string]bool{}
		c.listings = map[string]*listing{}
	}

	ps := &passState{c: c, cancel: cancel, owner: ownerTag(c.cfg.ID, lease.Epoch()), lastLog: start, report: report,
		categories: map[string]string{}, fresh: fresh}
	jobs, err := ps.discover(ctx)
	if err != nil {
		if ctx.Err() == nil {
			c.m.errors.WithLabelValues("list").Inc()
		}
		return ps.st, err
	}
	ps.progress.Start = start
	for _, j := range jobs {
		for _, fi := range j.segs {
			ps.progress.TotalFiles++
			ps.progress.TotalBytes += fi.Size()
		}
	}
	c.setLag(ps, jobs)
	if report != nil {
		report(ps.progress)
	}
	switch {
	case c.cfg.Merging():
		// The open periods' segments are seen at every pass: not news.
		c.log.Debug("copy pass started", "segments", ps.st.Seen, "buckets", ps.st.Buckets)
	case ps.st.Seen > 0:
		c.log.Info("copy pass started", "segments", ps.st.Seen, "buckets", ps.st.Buckets)
	}
	work := make(chan *bucketJob)
	var wg sync.WaitGroup
	for range min(c.cfg.Concurrency, len(jobs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte // only for workers that copy
			for j := range work {
				if buf == nil && len(j.segs) > 0 {
					buf = make([]byte, copyBufferSize)
				}
				if c.cfg.Merging() {
					ps.mergeBucket(ctx, j, buf)
				} else {
					ps.copyBucket(ctx, j, buf)
				}
			}
		}()
	}
	for _, j := range jobs {
		work <- j
	}
	close(work)
	wg.Wait()
	for _, j := range jobs {
		if l := c.listings[j.dir]; l != nil {
			l.after, l.rest = j.mark.last, j.segs[j.done:]
		}
	}

	c.setLag(ps, jobs)
	ps.mu.Lock()
	defer ps.mu.Unlock()
	st := ps.st
	for _, j := range jobs {
		st.Lag += len(j.segs) - j.done
	}
	st.Duration = c.now().Sub(start)
	c.m.passSecs.Set(st.Duration.Seconds())
	if ctx.Err() == nil {
		c.m.passes.Inc()
		c.m.passTime.Set(float64(c.now().UnixMilli()) / 1000)
	}
	if st.Copied+st.Merged+st.Skipped+st.Vanished > 0 || st.Errors > 0 {
		c.log.Info("copy pass done", "copied", st.Copied, "merged", st.Merged, "lines", st.Lines, "bytes", st.Bytes, "skipped", st.Skipped,
			"replaced", st.Replaced, "vanished", st.Vanished, "errors", st.Errors, "lag", st.Lag, "duration", st.Duration)
	}
	if errors.Is(ps.firstErr, errFenced) {
		c.marks = nil // read them again before the next pass writes any
		c.listings = nil
	}
	if ps.firstErr != nil {
		return st, fmt.Errorf("copy pass: %d errors, the first: %w", st.Errors, ps.firstErr)
	}
	if err := ctx.Err(); err != nil {
		return st, fmt.Errorf("copy pass interrupted: %w", err)
	}
	return st, nil
}

// discover lists the source's buckets and, in each, the published
// segments after its progress mark. A bucket or category that cannot be
// listed is a failure of the pass that leaves the others to copy.
func (ps *passState) discover(ctx context.Context) ([]*bucketJob, error) {
	c := ps.c
	var categories []layout.Category
	if len(c.cfg.Categories) == 0 {
		cats, unreadable, err := layout.Categories(c.deps.Source)
		if err != nil {
			return nil, err
		}
		for _, dir := range unreadable {
			// A long category's directory without a readable sidecar:
			// its name cannot be known, so it waits for the sidecar.
			c.m.errors.WithLabelValues("list").Inc()
			c.log.Error("category directory without a valid sidecar; skipping it this pass", "dir", dir)
			ps.fail(fmt.Errorf("list category %s in %s: %w", dir, c.deps.Source, layout.ErrSidecarMismatch))
		}
		categories = cats
	} else {
		for _, name := range c.cfg.Categories {
			categories = append(categories, layout.Category{Name: name, Dir: layout.CategoryDir(name)})
		}
	}
	listFailed := func(what string, err error) {
		c.m.errors.WithLabelValues("list").Inc()
		c.log.Error("cannot list the source; skipping it this pass", "dir", what, "err", err)
		ps.fail(fmt.Errorf("list %s in %s: %w", what, c.deps.Source, err))
	}
	var jobs []*bucketJob
	for _, cat := range categories {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		buckets, err := layout.Buckets(c.deps.Source, cat.Dir)
		if err != nil {
			listFailed(cat.Dir, err)
			continue
		}
		ps.categories[layout.Label(cat.Name)] = cat.Name
		for _, b := range buckets {
			dir := layout.BucketDir(cat.Name, b)
			j := &bucketJob{category: cat.Name, label: layout.Label(cat.Name), bucket: b, dir: dir, mark: c.marks[dir], sweep: !c.swept[dir], findCopy: !c.copiesSeen[dir]}
			c.checkRetained(j)
			segs, err := ps.listBucket(dir, j.mark.last)
			if err != nil {
				listFailed(dir, err)
				continue
			}
			ps.st.Buckets++
			j.segs = segs
			ps.st.Seen += len(j.segs)
			if len(j.segs) > 0 || j.sweep {
				jobs = append(jobs, j)
			}
		}
	}
	return jobs, nil
}

// listing is a bucket's last listing: when it was made, after which
// segment, how long it took, and what it found that is not done yet.
type listing struct {
	at    time.Time
	took  time.Duration
	after string
	rest  []fs.FileInfo
}

// listBucket returns the published segments of the bucket directory dir
// after after: a listing, or while layout.ListBudget forbids one (a
// bucket listed less than ListBudget times its last listing's duration
// ago; not in a fresh pass, nor when merging, whose passes see the open
// periods' segments again), what the last listing found and is not done
// yet. A pass every Interval listed every bucket, seconds each after
// days of 100 ms segments on a local disk; segments published since the
// last listing now wait for the next.
func (ps *passState) listBucket(dir, after string) ([]fs.FileInfo, error) {
	c := ps.c
	if l := c.listings[dir]; l != nil && !ps.fresh && !c.cfg.Merging() && l.after == after && c.now().Sub(l.at) < layout.ListBudget*l.took {
		return l.rest, nil
	}
	delete(c.listings, dir)
	start := c.now()
	segs, err := layout.Published(c.deps.Source, dir, after)
	if err != nil {
		return nil, err
	}
	end := c.now()
	c.listings[dir] = &listing{at: end, took: end.Sub(start), after: after, rest: segs}
	return segs, nil
}

// copyBucket copies j's segments in order, recording progress after each.
// The first failure stops the bucket: its mark stays before the failed
// segment, so the next pass starts there.
func (ps *passState) copyBucket(ctx context.Context, j *bucketJob, buf []byte) {
	c := ps.c
	if ctx.Err() != nil {
		return
	}
	ps.sweepOnce(j)
	if len(j.segs) > 0 && layout.NeedsSidecar(j.category) {
		// The destination lists the category by its sidecar too. Several
		// buckets of one category may write it at once: each under its
		// own temporary name, with the same contents.
		unique := strconv.FormatInt(c.marksEpoch, 16) + "-" + strconv.Itoa(j.bucket)
		if err := layout.WriteSidecar(c.deps.Dest, j.category, unique); err != nil {
			c.m.errors.WithLabelValues("copy").Inc()
			c.log.Error("cannot write the category sidecar at the destination; the bucket waits for the next pass", "bucket", j.dir, "err", err)
			ps.fail(err)
			return
		}
	}
	// Merging, before merge_period was removed, may have put the lines of
	// the first segments, or of the first blocks of one, in period files:
	// those are not copied again.
	var merged ptail.Position
	if j.mark.merge != nil && len(j.segs) > 0 {
		var err error
		if merged, err = c.mergedTo(ctx, j, buf); err != nil {
			if ctx.Err() != nil {
				return
			}
			c.m.errors.WithLabelValues("copy").Inc()
			c.log.Error("cannot tell where merging left the bucket; it waits for the next pass", "bucket", j.dir, "err", err)
			ps.fail(err)
			return
		}
	}
	for _, fi := range j.segs {
		if ctx.Err() != nil {
			return
		}
		name := path.Join(j.dir, fi.Name())
		out, n, err := inPeriods, int64(0), error(nil)
		if from := mergedPart(merged, fi.Name()); from >= 0 {
			out, n, err = c.copySegment(ctx, name, fi.Size(), from, buf)
		}
		if err != nil {
			if ctx.Err() != nil {
				return // lease lost or stopping: not a failure of the copy
			}
			op := "copy"
			if errors.Is(err, errMismatch) {
				op = "verify"
			}
			c.m.errors.WithLabelValues(op).Inc()
			c.log.Error("cannot copy segment; the bucket waits for the next pass", "segment", name, "err", err)
			ps.fail(err)
			return
		}
		next, err := advance(ctx, c.deps.Store, c.cfg.Table, j.dir, j.mark, fi.Name(), merged, ps.owner, c.now().UnixMilli())
		if err != nil {
			ps.progressFailed(ctx, j, next, err)
			return
		}
		j.mark = next
		ps.done(j, out, n, fi.Size())
	}
}

// sweepOnce clears the destination of the temporary files earlier epochs
// left for j's segments and period files (sweep), the first time under
// this grant: whether this copier copies or merges, for one configured
// the other way may have left them.
func (ps *passState) sweepOnce(j *bucketJob) {
	if !j.sweep {
		return
	}
	ps.c.sweep(j)
	ps.mu.Lock()
	ps.c.swept[j.dir] = true
	ps.mu.Unlock()
}

func (ps *passState) fail(err error) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.st.Errors++
	if ps.firstErr == nil {
		ps.firstErr = err
	}
}

// done accounts for one segment and logs progress now and then.
func (ps *passState) done(j *bucketJob, out outcome, n int64, size int64) {
	c := ps.c
	ps.mu.Lock()
	defer ps.mu.Unlock()
	c.marks[j.dir] = j.mark
	j.done++
	ps.segmentDone(j, size)
	switch out {
	case copied, replaced:
		ps.st.Copied++
		ps.st.Bytes += n
		c.m.copied.WithLabelValues(j.label).Inc()
		c.m.bytes.WithLabelValues(j.label).Add(float64(n))
		if out == replaced {
			ps.st.Replaced++
			c.m.replaced.WithLabelValues(j.label).Inc()
		}
	case skipped:
		ps.st.Skipped++
		c.m.skipped.WithLabelValues(j.label).Inc()
	case vanished:
		ps.st.Vanished++
		c.m.vanished.WithLabelValues(j.label).Inc()
	}
	ps.logProgress()
}

// segmentDone accounts for one source segment of j done (copied, merged,
// skipped or vanished); ps.mu is held.
func (ps *passState) segmentDone(j *bucketJob, size int64) {
	ps.c.m.lag.WithLabelValues(j.label).Dec()
	ps.progress.Files++
	ps.progress.Bytes += size
	if ps.report != nil {
		ps.report(ps.progress)
	}
}

// logProgress logs the pass's progress now and then; ps.mu is held.
func (ps *passState) logProgress() {
	c := ps.c
	if now := c.now(); now.Sub(ps.lastLog) >= c.cfg.ProgressInterval.D() {
		ps.lastLog = now
		c.log.Info("copy pass progress", "done", ps.progress.Files, "of", ps.progress.TotalFiles,
			"bytes", ps.progress.Bytes, "of_bytes", ps.progress.TotalBytes, "copied", ps.st.Copied, "merged", ps.st.Merged,
			"skipped", ps.st.Skipped, "vanished", ps.st.Vanished, "errors", ps.st.Errors)
	}
}
