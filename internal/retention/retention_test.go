package retention

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/ptail"
)

var t0 = time.Date(2024, 5, 6, 7, 0, 0, 0, time.UTC)

// env is a local dfs whose files' times a test sets, a clock, and the
// consumers' marks, which a test moves.
type env struct {
	fs    dfs.FS
	root  string
	hub   *inproc.Hub
	mu    sync.Mutex
	now   time.Time
	puma  map[string]Mark // bucket dir → committed position, exclusive
	copy  map[string]Mark // bucket dir → last copied, inclusive
	fails map[string]error
}

func newEnv(t *testing.T) *env {
	t.Helper()
	root := t.TempDir()
	fsys, err := localfs.New(root)
	if err != nil {
		t.Fatal(err)
	}
	return &env{fs: fsys, root: root, hub: inproc.NewHub(), now: t0, puma: map[string]Mark{}, copy: map[string]Mark{}, fails: map[string]error{}}
}

func (e *env) clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

func (e *env) advance(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = e.now.Add(d)
}

func (e *env) setPuma(cat string, b int, seg string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.puma[layout.BucketDir(cat, b)] = Mark{Segment: seg}
}

func (e *env) setCopier(cat string, b int, seg string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.copy[layout.BucketDir(cat, b)] = Mark{Segment: seg, Inclusive: true}
}

// consumers: Puma reads "access" buckets 0-1, the copier every category
// but "scratch".
func (e *env) consumers() []Consumer {
	mark := func(m map[string]Mark, name string) func(context.Context, string, int) (Mark, error) {
		return func(_ context.Context, cat string, b int) (Mark, error) {
			e.mu.Lock()
			defer e.mu.Unlock()
			if err := e.fails[name+"/"+layout.BucketDir(cat, b)]; err != nil {
				return Mark{}, err
			}
			return m[layout.BucketDir(cat, b)], nil
		}
	}
	return []Consumer{
		{Name: "puma", Reads: func(cat string, b int) bool { return cat == "access" && b < 2 }, Mark: mark(e.puma, "puma")},
		{Name: "copier", Reads: func(cat string, b int) bool { return cat != "scratch" }, Mark: mark(e.copy, "copier")},
	}
}

type node struct {
	*Retention
	reg *prometheus.Registry
}

func (e *env) retention(t *testing.T, after time.Duration) *node {
	t.Helper()
	return e.retentionWith(t, Config{After: after, Interval: 10 * time.Millisecond, ID: t.Name()}, t.Output())
}

// retentionWith is a retention of cfg, logging to log.
func (e *env) retentionWith(t *testing.T, cfg Config, log io.Writer) *node {
	t.Helper()
	reg := prometheus.NewRegistry()
	s := e.hub.Session()
	t.Cleanup(func() { s.Close() })
	r, err := New(cfg, Deps{
		Common:    component.Common{Log: slog.New(slog.NewTextHandler(log, nil)), Metrics: reg, Now: e.clock},
		FS:        e.fs,
		Coord:     s,
		Consumers: e.consumers(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return &node{r, reg}
}

// publish publishes segment seq of cat/b, published at when, of a block
// holding msg.
func (e *env) publish(t *testing.T, cat string, b int, seq uint64, when time.Time, msg string) string {
	t.Helper()
	enc := segment.NewEncoder()
	data := enc.AppendBlock(enc.AppendHeader(nil), &segment.Block{ArrivalMs: when.UnixMilli(), Messages: [][]byte{[]byte(msg)}})
	name := layout.SegmentName(1, seq)
	p := path.Join(layout.BucketDir(cat, b), name)
	if err := dfs.WriteFile(e.fs, p, data); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(e.root, filepath.FromSlash(p)), when, when); err != nil {
		t.Fatal(err)
	}
	return name
}

// left lists the published segments of cat/b.
func (e *env) left(t *testing.T, cat string, b int) []string {
	t.Helper()
	infos, err := layout.Published(e.fs, layout.BucketDir(cat, b), "")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, fi := range infos {
		out = append(out, fi.Name())
	}
	return out
}

func once(t *testing.T, r *node) Stats {
	t.Helper()
	st, err := r.Once(context.Background())
	if err != nil {
		t.Fatalf("Once: %v (%+v)", err, st)
	}
	return st
}

// TestDeletesWhatEveryConsumerIsPast: a segment goes once Puma has
// committed past it, the copier has copied it and it is old enough; the
// bucket keeps a contiguous run, and its mark says what went.
func TestDeletesWhatEveryConsumerIsPast(t *testing.T) {
	e := newEnv(t)
	var segs []string
	for i := range 6 {
		segs = append(segs, e.publish(t, "access", 0, uint64(i+1), t0.Add(time.Duration(i)*time.Minute), "x"))
	}
	e.now = t0.Add(time.Hour)
	r := e.retention(t, 30*time.Minute)
	if st := once(t, r); st.Deleted != 0 || st.Held != 6 {
		t.Fatalf("with no progress: %+v, want all 6 held", st)
	}
	if got := testutil.ToFloat64(r.m.heldBy.WithLabelValues("access", "puma")); got != 6 {
		t.Errorf("held by puma: %v", got)
	}
	e.setPuma("access", 0, segs[3]) // committed inside segs[3]: it stays
	e.setCopier("access", 0, segs[1])
	if st := once(t, r); st.Deleted != 2 || st.Held != 4 {
		t.Fatalf("%+v, want the two copied deleted", st)
	}
	if got := e.left(t, "access", 0); !slices.Equal(got, segs[2:]) {
		t.Errorf("left %q", got)
	}
	e.setCopier("access", 0, segs[5])
	once(t, r)
	if got := e.left(t, "access", 0); !slices.Equal(got, segs[3:]) {
		t.Errorf("left %q, want from the committed segment on", got)
	}
	m, ok, err := layout.ReadRetentionMark(e.fs, layout.BucketDir("access", 0))
	if err != nil || !ok || m.Through != segs[2] || m.ThroughMs != t0.Add(2*time.Minute).UnixMilli() {
		t.Errorf("mark %+v %v %v, want through %s", m, ok, err, segs[2])
	}
	// Old enough only: Puma and the copier past everything, but the last
	// three are younger than 30 minutes at 07:33.
	e.setPuma("access", 0, layout.SegmentName(9, 0))
	e.now = t0.Add(33 * time.Minute)
	once(t, r)
	if got := e.left(t, "access", 0); !slices.Equal(got, segs[3:]) {
		t.Errorf("left %q at 07:33, want the young ones", got)
	}
	e.now = t0.Add(time.Hour)
	once(t, r)
	if got := e.left(t, "access", 0); got != nil {
		t.Errorf("left %q once all are past and old", got)
	}
	if got := testutil.ToFloat64(r.m.deleted.WithLabelValues("access")); got != 6 {
		t.Errorf("deleted metric %v", got)
	}
}

// TestConsumersPerCategory: a category no consumer reads is kept by age
// alone; a bucket Puma does not read (beyond its bucket count) waits for
// the copier only.
func TestConsumersPerCategory(t *testing.T) {
	e := newEnv(t)
	scratch := e.publish(t, "scratch", 0, 1, t0, "x")
	e.publish(t, "access", 5, 1, t0, "x")
	e.publish(t, "access", 1, 1, t0, "x")
	e.now = t0.Add(2 * time.Hour)
	r := e.retention(t, time.Hour)
	once(t, r)
	if e.left(t, "scratch", 0) != nil {
		t.Errorf("scratch (no consumer) kept %s", scratch)
	}
	if len(e.left(t, "access", 5)) != 1 || len(e.left(t, "access", 1)) != 1 {
		t.Fatal("access deleted before the copier copied it")
	}
	e.setCopier("access", 5, layout.SegmentName(1, 1))
	e.setCopier("access", 1, layout.SegmentName(1, 1))
	once(t, r)
	if e.left(t, "access", 5) != nil {
		t.Error("access/5, which Puma does not read, was kept once copied")
	}
	if len(e.left(t, "access", 1)) != 1 {
		t.Error("access/1 was deleted before Puma committed past it")
	}
}

// TestConsumerErrorKeepsTheBucket: a bucket whose consumer progress
// cannot be read is kept; the others are not held up.
func TestConsumerErrorKeepsTheBucket(t *testing.T) {
	e := newEnv(t)
	for _, b := range []int{0, 1} {
		e.publish(t, "access", b, 1, t0, "x")
		e.setPuma("access", b, layout.SegmentName(2, 0))
		e.setCopier("access", b, layout.SegmentName(2, 0))
	}
	e.fails["puma/access/0"] = errors.New("store down")
	e.now = t0.Add(2 * time.Hour)
	r := e.retention(t, time.Hour)
	st, err := r.Once(context.Background())
	if err == nil || st.Errors != 1 || st.Deleted != 1 {
		t.Fatalf("%+v %v, want one bucket failed and the other done", st, err)
	}
	if len(e.left(t, "access", 0)) != 1 || e.left(t, "access", 1) != nil {
		t.Error("wrong bucket kept")
	}
}

// failingRemove fails removes of names for which fail says so.
type failingRemove struct {
	dfs.FS
	fail func(name string) bool
}

func (f *failingRemove) Remove(name string) error {
	if f.fail(name) {
		return errors.New("injected remove failure")
	}
	return f.FS.Remove(name)
}

// TestInterruptedDeletionIsFinished: retention stopped after writing the
// mark and deleting part of the run finishes it at the next pass; the
// mark never moves back.
func TestInterruptedDeletionIsFinished(t *testing.T) {
	e := newEnv(t)
	var segs []string
	for i := range 4 {
		segs = append(segs, e.publish(t, "access", 0, uint64(i+1), t0, "x"))
	}
	e.setPuma("access", 0, layout.SegmentName(9, 0))
	e.setCopier("access", 0, segs[3])
	e.now = t0.Add(2 * time.Hour)
	orig := e.fs
	e.fs = &failingRemove{FS: orig, fail: func(name string) bool { return path.Base(name) == segs[2] }}
	r := e.retention(t, time.Hour)
	if _, err := r.Once(context.Background()); err == nil {
		t.Fatal("a failed delete was not reported")
	}
	e.fs = orig
	if got := e.left(t, "access", 0); !slices.Equal(got, segs[2:]) {
		t.Fatalf("after the failure: %q", got)
	}
	if m, _, _ := layout.ReadRetentionMark(orig, layout.BucketDir("access", 0)); m.Through != segs[3] {
		t.Errorf("mark through %s, want the whole run (%s) marked before deleting", m.Through, segs[3])
	}
	// A consumer that went back (a store restored) does not move the
	// mark back, and nothing it needs is deleted anymore.
	e.setCopier("access", 0, segs[1])
	once(t, e.retention(t, time.Hour))
	if m, _, _ := layout.ReadRetentionMark(orig, layout.BucketDir("access", 0)); m.Through != segs[3] {
		t.Errorf("mark moved back to %s", m.Through)
	}
	e.setCopier("access", 0, segs[3])
	once(t, e.retention(t, time.Hour))
	if got := e.left(t, "access", 0); got != nil {
		t.Errorf("left %q", got)
	}
}

// TestSteadyLoadKeepsTheFileCountFlat: writers publish a segment a
// second into each of two buckets, consumers keep up a few segments
// behind: over a simulated hour the dfs holds at most dfs_retention's
// worth of segments (plus a pass's), where without retention it would
// hold them all, and the count stays flat.
func TestSteadyLoadKeepsTheFileCountFlat(t *testing.T) {
	e := newEnv(t)
	const (
		buckets = 2
		after   = 2 * time.Minute
		step    = 10 * time.Second // between passes
		steps   = 60
	)
	r := e.retention(t, after)
	seq := uint64(0)
	var published int
	var counts []int
	for range steps {
		// Ten seconds of load: a segment a second per bucket.
		for s := range int(step / time.Second) {
			seq++
			when := e.clock().Add(time.Duration(s) * time.Second)
			for b := range buckets {
				e.publish(t, "access", b, seq, when, "x")
			}
			published += buckets
		}
		e.advance(step)
		// Consumers are 5 segments behind the writers.
		behind := layout.SegmentName(1, seq-5)
		for b := range buckets {
			e.setPuma("access", b, behind)
			e.setCopier("access", b, behind)
		}
		st := once(t, r)
		counts = append(counts, st.Segments-st.Deleted)
	}
	// What dfs_retention keeps, and one pass's worth.
	bound := buckets * int((after+step)/time.Second)
	late := counts[steps/2:]
	if slices.Max(late) > bound || slices.Min(late) < bound-buckets*int(step/time.Second) {
		t.Fatalf("under steady load the dfs held %v segments, want between %d and %d from the middle on (published %d)",
			late, bound-buckets*int(step/time.Second), bound, published)
	}
	if got := testutil.ToFloat64(r.m.segments.WithLabelValues("access")); int(got) != counts[steps-1] {
		t.Errorf("freeway_dfs_segments %v, want %d", got, counts[steps-1])
	}
	t.Logf("published %d segments; the dfs held %v", published, counts)
}

// TestReadersNeverMeetADeletedSegment: a reader that commits its position
// as it goes, with retention running flat out behind it, never finds a
// segment gone, and a reader resumed from the committed position reads
// on from there.
func TestReadersNeverMeetADeletedSegment(t *testing.T) {
	e := newEnv(t)
	const n = 300
	for i := range n {
		e.publish(t, "access", 0, uint64(i+1), t0, fmt.Sprint(i))
	}
	e.setCopier("access", 0, layout.SegmentName(9, 0))
	e.now = t0.Add(time.Hour)
	r := e.retention(t, time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()

	rd := ptail.NewReader(e.fs, layout.BucketDir("access", 0), ptail.Position{}, time.Millisecond, slog.New(slog.DiscardHandler))
	var b segment.Block
	for i := range n {
		pos, err := rd.Next(ctx, &b)
		if err != nil {
			t.Fatalf("block %d: %v", i, err)
		}
		if got := string(b.Messages[0]); got != fmt.Sprint(i) {
			t.Fatalf("block %d holds %q", i, got)
		}
		if i%7 == 0 {
			e.setPuma("access", 0, pos.Segment) // a commit
			// A shard recovering from that commit finds its segment.
			again := ptail.NewReader(e.fs, layout.BucketDir("access", 0), pos, time.Millisecond, slog.New(slog.DiscardHandler))
			if _, ok, err := again.TryNext(&b); err != nil || (!ok && i < n-1) {
				t.Fatalf("resumed at %v: %v %v", pos, ok, err)
			}
			again.Close()
		}
	}
	rd.Close()
	deleted := func() bool { return len(e.left(t, "access", 0)) == 1 }
	for deadline := time.Now().Add(20 * time.Second); !deleted(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("retention did not catch up: %d segments left", len(e.left(t, "access", 0)))
		}
		e.setPuma("access", 0, layout.SegmentName(1, n))
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestOneRetentionHoldsTheLease(t *testing.T) {
	e := newEnv(t)
	a, b := e.retention(t, time.Hour), e.retention(t, time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	for deadline := time.Now().Add(20 * time.Second); testutil.ToFloat64(a.m.active) != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a never became active")
		}
	}
	if _, err := b.Once(context.Background()); !errors.Is(err, coord.ErrHeld) {
		t.Errorf("b's pass while a is active: %v, want ErrHeld", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	once(t, b)
}

func TestMarkPast(t *testing.T) {
	s1, s2 := layout.SegmentName(1, 1), layout.SegmentName(1, 2)
	for _, c := range []struct {
		m    Mark
		seg  string
		want bool
	}{
		{Mark{}, s1, false},
		{Mark{Segment: s2}, s1, true},
		{Mark{Segment: s2}, s2, false},
		{Mark{Segment: s2, Inclusive: true}, s2, true},
		{Mark{Segment: s1, Inclusive: true}, s2, false},
	} {
		if got := c.m.Past(c.seg); got != c.want {
			t.Errorf("%+v past %s: %v", c.m, c.seg, got)
		}
	}
	if IntervalFor(7*24*time.Hour) != time.Hour || IntervalFor(time.Second) != time.Second || IntervalFor(2*time.Minute) != 12*time.Second || IntervalFor(5*time.Hour) != 30*time.Minute {
		t.Error("IntervalFor")
	}
}

// TestStandbyTakesOverBeforeTheNextPass: passes an hour apart (the
// interval of a long dfs_retention) do not keep a standby waiting an hour
// for the lease: it tries every Retry (by default at most a minute), and
// makes its pass as soon as the leader is gone.
func TestStandbyTakesOverBeforeTheNextPass(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want time.Duration
	}{
		{Config{Interval: time.Hour}, StandbyRetry},
		{Config{Interval: 10 * time.Millisecond}, 10 * time.Millisecond},
		{Config{Interval: time.Hour, Retry: 5 * time.Millisecond}, 5 * time.Millisecond},
	} {
		if got := c.cfg.retry(); got != c.want {
			t.Errorf("retry of %+v: %v, want %v", c.cfg, got, c.want)
		}
	}
	e := newEnv(t)
	cfg := Config{After: time.Hour, Interval: time.Hour, Retry: 10 * time.Millisecond}
	cfg.ID = "a"
	a := e.retentionWith(t, cfg, t.Output())
	cfg.ID = "b"
	var blog testkit.LogBuffer
	b := e.retentionWith(t, cfg, &blog)
	actx, stopA := context.WithCancel(context.Background())
	doneA := make(chan error, 1)
	go func() { doneA <- a.Run(actx) }()
	waitActive := func(n *node, name string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); testutil.ToFloat64(n.m.active) != 1; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s never became active", name)
			}
		}
	}
	waitActive(a, "a")
	bctx, stopB := context.WithCancel(context.Background())
	doneB := make(chan error, 1)
	go func() { doneB <- b.Run(bctx) }()
	defer func() {
		stopB()
		if err := <-doneB; err != nil {
			t.Error(err)
		}
	}()
	// b stands by; a stops (its next pass was an hour away) and gives
	// the lease up: b takes it at its next try.
	testkit.WaitFor(t, "b stands by", func() bool { return len(blog.Lines("standing by")) > 0 })
	stopA()
	if err := <-doneA; err != nil {
		t.Fatal(err)
	}
	waitActive(b, "b (its tries of the lease an hour apart, as its passes?)")
}

// TestDeletesFencedSegmentsOnceOld: a segment a newer writer's seal left
// out (published by a stale writer after the takeover) is never listed
// for readers, so no consumer's progress ever passes it; retention
// deletes it once it is older than the retention, even while the counted
// segments around it are still held.
func TestDeletesFencedSegmentsOnceOld(t *testing.T) {
	e := newEnv(t)
	dir := layout.BucketDir("access", 0)
	counted := e.publish(t, "access", 0, 1, t0, "counted")
	if err := layout.WriteIntent(e.fs, dir, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := layout.WriteSeal(e.fs, dir, 2, "test"); err != nil {
		t.Fatal(err)
	}
	fenced := e.publish(t, "access", 0, 2, t0.Add(time.Minute), "fenced")
	young := e.publish(t, "access", 0, 3, t0.Add(50*time.Minute), "fenced too, young")
	if got := e.left(t, "access", 0); !slices.Equal(got, []string{counted}) {
		t.Fatalf("readers list %q, want only %s", got, counted)
	}
	e.now = t0.Add(time.Hour)
	r := e.retention(t, 30*time.Minute)
	st := once(t, r)
	if st.Deleted != 1 || st.Held != 1 {
		t.Errorf("%+v, want the old fenced segment deleted and the counted one held", st)
	}
	for name, want := range map[string]bool{counted: true, fenced: false, young: true} {
		_, err := e.fs.Stat(path.Join(dir, name))
		if got := err == nil; got != want {
			t.Errorf("%s there: %v, want %v (%v)", name, got, want, err)
		}
	}
	e.now = t0.Add(2 * time.Hour)
	once(t, r)
	if _, err := e.fs.Stat(path.Join(dir, young)); err == nil {
		t.Errorf("%s left once old", young)
	}
	if got := e.left(t, "access", 0); !slices.Equal(got, []string{counted}) {
		t.Errorf("readers list %q after, want %s still held", got, counted)
	}
}

// statCounter is a local dfs that counts the files it describes.
type statCounter struct {
	*localfs.FS
	stats atomic.Int64
}

func (s *statCounter) Stat(name string) (fs.FileInfo, error) {
	s.stats.Add(1)
	return s.FS.Stat(name)
}

// TestPassDescribesOnlyWhatItMayDelete: on a local dfs, which lists names
// for less than it describes files, a pass over a bucket of many segments
// describes those it deletes and a few more (bisection for what is held),
// not every segment the bucket keeps, and still finds exactly what to
// delete and what is held.
func TestPassDescribesOnlyWhatItMayDelete(t *testing.T) {
	e := newEnv(t)
	inner, ok := e.fs.(*localfs.FS)
	if !ok {
		t.Fatalf("env dfs is %T", e.fs)
	}
	counter := &statCounter{FS: inner}
	e.fs = counter
	const (
		segments = 1000
		oldOnes  = 600 // published more than an hour ago
		copied   = 10  // the copier is past these; Puma is past all
	)
	var names []string
	for i := range segments {
		when := t0.Add(time.Duration(i) * time.Second)
		if i >= oldOnes {
			when = when.Add(2 * time.Hour)
		}
		names = append(names, e.publish(t, "access", 0, uint64(i+1), when, "x"))
	}
	e.now = t0.Add(2 * time.Hour)
	e.setPuma("access", 0, layout.SegmentName(9, 0))
	e.setCopier("access", 0, names[copied-1])
	r := e.retention(t, time.Hour)
	counter.stats.Store(0)
	st := once(t, r)
	if st.Deleted != copied || st.Held != oldOnes-copied || st.Segments != segments {
		t.Fatalf("%+v, want %d deleted, %d held of %d", st, copied, oldOnes-copied, segments)
	}
	if got := testutil.ToFloat64(r.m.heldBy.WithLabelValues("access", "copier")); got != oldOnes-copied {
		t.Errorf("held by the copier: %v, want %d", got, oldOnes-copied)
	}
	if got := testutil.ToFloat64(r.m.heldBy.WithLabelValues("access", "puma")); got != 0 {
		t.Errorf("held by puma: %v, want 0", got)
	}
	// The ten deleted, the one that ends the run, ~log2(990) probes; the
	// fence and mark files are a handful more.
	if n := counter.stats.Load(); n > copied+1+12+8 {
		t.Errorf("the pass described %d files for a bucket of %d segments, %d of them deleted", n, segments, copied)
	}
	if got := e.left(t, "access", 0); !slices.Equal(got, names[copied:]) {
		t.Errorf("left %d segments from %q, want from %q", len(got), got[0], names[copied])
	}
	// The copier catches up: the old ones go, the young ones stay.
	e.setCopier("access", 0, names[segments-1])
	counter.stats.Store(0)
	if st := once(t, r); st.Deleted != oldOnes-copied || st.Held != 0 {
		t.Fatalf("%+v, want the other %d old ones deleted", st, oldOnes-copied)
	}
	if n := counter.stats.Load(); n > oldOnes-copied+1+8 {
		t.Errorf("the pass described %d files to delete %d", n, oldOnes-copied)
	}
	if got := e.left(t, "access", 0); !slices.Equal(got, names[oldOnes:]) {
		t.Errorf("left %d segments, want the %d young ones", len(got), segments-oldOnes)
	}
}

// staleLease is a grant its holder has not seen lost (yet): a pass under
// it runs to its end.
type staleLease struct{ epoch int64 }

func (l staleLease) Name() string                  { return LeaseName }
func (l staleLease) Owner() string                 { return "stale" }
func (l staleLease) Epoch() int64                  { return l.epoch }
func (l staleLease) Lost() <-chan struct{}         { return nil }
func (l staleLease) Release(context.Context) error { return nil }

// pausedMarkWrite is a dfs whose first write of a retention mark waits,
// once it has started, until resume is closed.
type pausedMarkWrite struct {
	dfs.FS
	once    sync.Once
	started chan struct{}
	resume  chan struct{}
}

func (p *pausedMarkWrite) Create(name string) (dfs.File, error) {
	if strings.HasPrefix(path.Base(name), layout.RetentionMarkName+".") {
		p.once.Do(func() {
			close(p.started)
			<-p.resume
		})
	}
	return p.FS.Create(name)
}

// TestStalePassNeverMovesTheMarkBack: a pass that lost the lease without
// seeing it yet (a pause) writes its mark after the new holder's pass
// deleted further and wrote a later mark: the mark stays at the later
// one, so readers still know those segments are gone.
func TestStalePassNeverMovesTheMarkBack(t *testing.T) {
	e := newEnv(t)
	var segs []string
	for i := range 4 {
		segs = append(segs, e.publish(t, "access", 0, uint64(i+1), t0, "x"))
	}
	e.setPuma("access", 0, layout.SegmentName(9, 0))
	e.setCopier("access", 0, segs[1])
	e.now = t0.Add(2 * time.Hour)
	orig := e.fs
	paused := &pausedMarkWrite{FS: orig, started: make(chan struct{}), resume: make(chan struct{})}
	e.fs = paused
	stale := e.retention(t, time.Hour)
	e.fs = orig
	done := make(chan error, 1)
	go func() {
		_, err := stale.pass(context.Background(), staleLease{epoch: 1})
		done <- err
	}()
	<-paused.started // the stale pass marks segs[0:2] and is paused

	e.setCopier("access", 0, segs[3])
	if _, err := e.retention(t, time.Hour).pass(context.Background(), staleLease{epoch: 2}); err != nil {
		t.Fatal(err)
	}
	dir := layout.BucketDir("access", 0)
	if m, _, err := layout.ReadRetentionMark(orig, dir); err != nil || m.Through != segs[3] {
		t.Fatalf("new holder's mark %+v %v, want through %s", m, err, segs[3])
	}
	close(paused.resume)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := e.left(t, "access", 0); got != nil {
		t.Errorf("left %q", got)
	}
	if m, _, err := layout.ReadRetentionMark(orig, dir); err != nil || m.Through != segs[3] {
		t.Errorf("mark %+v %v after the stale pass, want still through %s (deleted by the new holder)", m, err, segs[3])
	}
}
