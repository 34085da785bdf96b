package retention

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/layout"
)

// Config configures retention.
type Config struct {
	// After is dfs_retention: how long a published segment is kept at
	// least. It must be positive: the wiring starts no retention when
	// dfs_retention is 0.
	After time.Duration
	// Interval is the time between passes.
	Interval time.Duration
	// Retry is the time between a standby's tries of the lease; 0 is
	// Interval, at most a minute (StandbyRetry), so that a standby takes
	// over within a minute of a leader's end however long the passes'
	// interval.
	Retry time.Duration
	// ID names this process in the lease; default host-pid.
	ID string
}

// LeaseName is the coord lease that makes one retention active at a time.
const LeaseName = "retention"

// IntervalFor is the pass interval for a dfs_retention: a tenth of it,
// between a second and an hour. A pass lists the names of every bucket's
// segments (describing only those it may delete and a few more), and a
// bucket holds about dfs_retention of them (a million names take ~2 s to
// list on a local disk: 100 ms segments kept 7 days are 6 M a bucket),
// so the passes are spaced in proportion to what they read; what is old
// enough waits at most a tenth of the retention longer to go.
func IntervalFor(after time.Duration) time.Duration {
	return min(max(after/10, time.Second), time.Hour)
}

// StandbyRetry bounds a standby's time between tries of the lease
// (Config.Retry 0).
const StandbyRetry = time.Minute

// retry is the time between a standby's tries of the lease.
func (c Config) retry() time.Duration {
	if c.Retry > 0 {
		return c.Retry
	}
	return min(c.Interval, StandbyRetry)
}

// Mark is how far a consumer is in a bucket: every segment named before
// Segment, and Segment itself if Inclusive, is consumed. The zero Mark
// has consumed nothing. None: the consumer has never read the bucket and
// holds nothing back in it.
type Mark struct {
	Segment   string
	Inclusive bool
	None      bool
}

// Past reports whether segment is consumed.
func (m Mark) Past(segment string) bool {
	return m.None || segment < m.Segment || m.Inclusive && segment == m.Segment
}

// Consumer is a reader of buckets whose progress holds segments back.
type Consumer struct {
	// Name names it in logs and metrics ("puma", "copier").
	Name string
	// Reads reports whether it reads bucket of category.
	Reads func(category string, bucket int) bool
	// Mark returns its progress in bucket of category.
	Mark func(ctx context.Context, category string, bucket int) (Mark, error)
}

// Deps are what retention needs from the wiring.
type Deps struct {
	component.Common
	FS        dfs.FS
	Coord     coord.Coord
	Consumers []Consumer
}

// Stats describes one pass.
type Stats struct {
	Buckets  int   // bucket directories listed
	Segments int   // published segments found
	Deleted  int   // segments deleted
	Bytes    int64 // their sizes
	Held     int   // segments older than After that a consumer holds back
	Errors   int   // failures (each leaves its bucket for the next pass)
}

// Retention deletes the segments every consumer is past.
type Retention struct {
	cfg  Config
	deps Deps
	log  *slog.Logger
	now  func() time.Time
	m    *metrics

	mu   sync.Mutex // serializes passes
	held coord.Lease
}

// New returns a retention; Run or Once deletes.
func New(cfg Config, deps Deps) (*Retention, error) {
	switch {
	case cfg.After <= 0:
		return nil, errors.New("retention needs a positive dfs_retention")
	case cfg.Interval <= 0:
		return nil, errors.New("retention needs a positive interval")
	case deps.FS == nil || deps.Coord == nil:
		return nil, errors.New("retention needs a dfs and a coordinator")
	}
	if cfg.ID == "" {
		cfg.ID = component.ID()
	}
	deps.Common = deps.Defaults()
	return &Retention{cfg: cfg, deps: deps, log: deps.Logger("retention"), now: deps.Now, m: newMetrics(deps.Metrics)}, nil
}

// Run deletes until ctx ends: it waits for the retention lease, then
// makes a pass every Interval while it holds it.
func (r *Retention) Run(ctx context.Context) error {
	names := make([]string, len(r.deps.Consumers))
	for i, c := range r.deps.Consumers {
		names[i] = c.Name
	}
	r.log.Info("retention running", "dfs", r.deps.FS.String(), "after", r.cfg.After, "consumers", names)
	defer r.log.Info("retention stopped")
	return coord.Campaign(ctx, r.deps.Coord, LeaseName, r.cfg.ID, r.cfg.retry(), r.log,
		func(error) { r.m.errors.WithLabelValues("lease").Inc() }, r.lead)
}

func (r *Retention) lead(ctx context.Context, lease coord.Lease) {
	r.mu.Lock()
	r.held = lease
	r.mu.Unlock()
	r.m.active.Set(1)
	defer func() {
		r.mu.Lock()
		r.held = nil
		r.mu.Unlock()
		r.m.active.Set(0)
	}()
	for {
		if _, err := r.pass(ctx, lease); err != nil && ctx.Err() == nil {
			r.log.Warn("retention pass incomplete; retrying next pass", "err", err)
		}
		t := time.NewTimer(r.cfg.Interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-lease.Lost():
			t.Stop()
			r.log.Warn("retention lease lost; standing by")
			return
		case <-t.C:
		}
	}
}

// Once makes one pass, holding the retention lease for it (the one Run
// holds, if Run is active here); it fails with an error wrapping
// coord.ErrHeld if another process holds it.
func (r *Retention) Once(ctx context.Context) (Stats, error) {
	r.mu.Lock()
	lease := r.held
	r.mu.Unlock()
	if lease == nil {
		l, err := r.deps.Coord.Acquire(ctx, LeaseName, r.cfg.ID)
		if err != nil {
			return Stats{}, fmt.Errorf("acquire retention lease: %w", err)
		}
		defer func() {
			if err := coord.Release(ctx, l); err != nil {
				r.log.Warn("cannot release retention lease", "err", err)
			}
		}()
		lease = l
	}
	return r.pass(ctx, lease)
}

// pass deletes, bucket by bucket, what every consumer is past.
func (r *Retention) pass(ctx context.Context, lease coord.Lease) (Stats, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-lease.Lost():
			cancel()
		case <-ctx.Done():
		}
	}()
	var st Stats
	var first error
	fail := func(op string, err error) {
		st.Errors++
		r.m.errors.WithLabelValues(op).Inc()
		if first == nil {
			first = err
		}
	}
	cats, unreadable, err := layout.Categories(r.deps.FS)
	if err != nil {
		fail("list", err)
		return st, err
	}
	for _, dir := range unreadable {
		r.log.Warn("category directory without a valid sidecar; keeping it", "dir", dir)
	}
	cutoff := r.now().Add(-r.cfg.After)
	g := gauges{segments: map[string]int{}, held: map[[2]string]int{}}
	defer g.set(r.m)
	for _, cat := range cats {
		buckets, err := layout.Buckets(r.deps.FS, cat.Dir)
		if err != nil {
			r.log.Warn("cannot list a category; keeping it this pass", "dir", cat.Dir, "err", err)
			fail("list", err)
			continue
		}
		label := layout.Label(cat.Name)
		g.segments[label] += 0
		for _, b := range buckets {
			if err := ctx.Err(); err != nil {
				return st, err
			}
			st.Buckets++
			if err := r.bucket(ctx, cat.Name, label, b, cutoff, lease, &st, &g); err != nil {
				if ctx.Err() != nil {
					return st, ctx.Err()
				}
				r.log.Warn("cannot apply retention to a bucket; keeping it this pass", "bucket", layout.BucketDir(cat.Name, b), "err", err)
				fail("bucket", err)
			}
		}
	}
	r.m.passes.Inc()
	if st.Deleted > 0 || st.Errors > 0 {
		r.log.Info("retention pass done", "deleted", st.Deleted, "bytes", st.Bytes, "segments", st.Segments, "held", st.Held, "errors", st.Errors)
	}
	if first != nil {
		return st, fmt.Errorf("retention pass: %d errors, the first: %w", st.Errors, first)
	}
	return st, nil
}

// bucket deletes the oldest segments of one bucket that every consumer
// is past and that are older than cutoff.
func (r *Retention) bucket(ctx context.Context, category, label string, b int, cutoff time.Time, lease coord.Lease, st *Stats, g *gauges) error {
	dir := layout.BucketDir(category, b)
	type reader struct {
		name string
		mark Mark
	}
	var readers []reader
	for _, c := range r.deps.Consumers {
		if !c.Reads(category, b) {
			continue
		}
		m, err := c.Mark(ctx, category, b)
		if err != nil {
			return fmt.Errorf("read the progress of %s: %w", c.Name, err)
		}
		readers = append(readers, reader{c.Name, m})
	}
	// Names first: a bucket keeps dfs_retention of segments (days), and
	// only those the pass may delete, and a few more, are described (a
	// local dfs describes a file with an lstat of its own).
	segs, fenced, err := layout.ListPublishedAndFenced(r.deps.FS, dir)
	if err != nil {
		return err
	}
	if err := r.deleteFenced(ctx, dir, label, fenced, cutoff, st); err != nil {
		return err
	}
	st.Segments += len(segs)
	g.segments[label] += len(segs)
	// describe describes segs[i]; gone: removed since the listing (or a
	// directory named like a segment), which the listing could have left
	// out as well.
	describe := func(i int) (fi fs.FileInfo, gone bool, err error) {
		fi, err = segs[i].Describe(r.deps.FS, dir)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, true, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("describe %s: %w", path.Join(dir, segs[i].Name), err)
		}
		return fi, fi.IsDir(), nil
	}
	past := func(name string) bool {
		for _, rd := range readers {
			if !rd.mark.Past(name) {
				return false
			}
		}
		return true
	}
	// The run to delete: the oldest segments, up to the first to keep. The
	// consumers' marks are asked before a segment is described.
	n := 0
	var run []fs.FileInfo
	var throughMs int64
	for ; n < len(segs) && past(segs[n].Name); n++ {
		fi, gone, err := describe(n)
		if err != nil {
			return err
		}
		if gone {
			continue
		}
		if !fi.ModTime().Before(cutoff) {
			break
		}
		run = append(run, fi)
		throughMs = max(throughMs, fi.ModTime().UnixMilli())
	}
	// What is old enough but held back, and by whom. In a bucket, publish
	// times rise with the names (one owner at a time publishes, in name
	// order, and the dfs stamps the times), and every consumer's mark is
	// past a prefix of the names: both are found by bisection, so a
	// consumer stuck for days of segments costs a few descriptions, not
	// one per segment held.
	rest := segs[n:]
	var describeErr error
	held := sort.Search(len(rest), func(i int) bool {
		fi, gone, err := describe(n + i)
		if err != nil && describeErr == nil {
			describeErr = err
		}
		return err == nil && !gone && !fi.ModTime().Before(cutoff)
	})
	if describeErr != nil {
		return describeErr
	}
	st.Held += held
	for _, rd := range readers {
		first := sort.Search(held, func(i int) bool { return !rd.mark.Past(rest[i].Name) })
		if first < held {
			g.held[[2]string{label, rd.name}] += held - first
		}
	}
	if len(run) == 0 {
		return nil
	}
	old, ok, err := layout.ReadRetentionMark(r.deps.FS, dir)
	if err != nil {
		// A damaged mark is rewritten: the segments up to the new one are
		// gone or going either way (a mark that cannot be read for another
		// reason fails the write below, and the bucket waits a pass).
		r.log.Warn("cannot read a bucket's retention mark; writing a new one", "bucket", dir, "err", err)
	}
	mark := layout.RetentionMark{Through: run[len(run)-1].Name(), ThroughMs: throughMs}
	if ok {
		mark.Through = max(mark.Through, old.Through)
		mark.ThroughMs = max(mark.ThroughMs, old.ThroughMs)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if !ok || mark != old {
		unique := strconv.FormatInt(lease.Epoch(), 16) + "-" + strconv.Itoa(b)
		if err := layout.WriteRetentionMark(r.deps.FS, dir, mark, unique); err != nil {
			return err
		}
	}
	for _, fi := range run {
		if err := ctx.Err(); err != nil {
			return err
		}
		name := path.Join(dir, fi.Name())
		if err := r.deps.FS.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("delete %s: %w", name, err)
		}
		st.Deleted++
		st.Bytes += fi.Size()
		r.m.deleted.WithLabelValues(label).Inc()
		r.m.bytes.WithLabelValues(label).Add(float64(fi.Size()))
		g.segments[label]--
	}
	return nil
}

// deleteFenced deletes the segments of the bucket directory dir that a
// newer writer's seal left out (fenced, from layout.ListPublishedAndFenced)
// and that are older than cutoff: no reader counts them, and their
// writer answered TRY_LATER for their entries, so the entries were sent
// again. Without this they would stay in the dfs for ever, since
// Published never lists them.
func (r *Retention) deleteFenced(ctx context.Context, dir, label string, fenced []layout.Entry, cutoff time.Time, st *Stats) error {
	for i := range fenced {
		if err := ctx.Err(); err != nil {
			return err
		}
		fi, err := fenced[i].Describe(r.deps.FS, dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue // its writer removed it
		}
		if err != nil {
			return fmt.Errorf("describe fenced %s: %w", path.Join(dir, fenced[i].Name), err)
		}
		if fi.IsDir() || !fi.ModTime().Before(cutoff) {
			continue
		}
		name := path.Join(dir, fi.Name())
		if err := r.deps.FS.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("delete fenced %s: %w", name, err)
		}
		r.log.Info("deleted a segment fenced off by a newer writer", "segment", name, "bytes", fi.Size())
		st.Deleted++
		st.Bytes += fi.Size()
		r.m.deleted.WithLabelValues(label).Inc()
		r.m.bytes.WithLabelValues(label).Add(float64(fi.Size()))
	}
	return nil
}

// gauges are the per-category gauges of a pass, set once it ends so that
// a scrape never sees a pass half done.
type gauges struct {
	segments map[string]int    // label → published segments
	held     map[[2]string]int // label, consumer → segments held back
}

func (g *gauges) set(m *metrics) {
	m.segments.Reset()
	m.heldBy.Reset()
	for label, n := range g.segments {
		m.segments.WithLabelValues(label).Set(float64(n))
	}
	for k, n := range g.held {
		m.heldBy.WithLabelValues(k[0], k[1]).Set(float64(n))
	}
}

type metrics struct {
	deleted  *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	errors   *prometheus.CounterVec
	segments *prometheus.GaugeVec
	heldBy   *prometheus.GaugeVec
	passes   prometheus.Counter
	active   prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		deleted:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_retention_segments_deleted_total", Help: "Segments deleted from the dfs by retention, by category."}, []string{"category"}),
		bytes:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_retention_bytes_deleted_total", Help: "Bytes of the segments deleted by retention, by category."}, []string{"category"}),
		errors:   prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_retention_errors_total", Help: "Failed retention operations, by operation (list, bucket, lease)."}, []string{"op"}),
		segments: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "freeway_dfs_segments", Help: "Published segments in the dfs, by category, as of the last retention pass."}, []string{"category"}),
		heldBy:   prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "freeway_retention_held_segments", Help: "Segments older than dfs_retention that a consumer (puma, copier) has not consumed yet, by category and consumer."}, []string{"category", "consumer"}),
		passes:   prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_retention_passes_total", Help: "Retention passes made."}),
		active:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "freeway_retention_active", Help: "1 while this process holds the retention lease, 0 while it stands by."}),
	}
	if reg != nil {
		reg.MustRegister(m.deleted, m.bytes, m.errors, m.segments, m.heldBy, m.passes, m.active)
	}
	return m
}
