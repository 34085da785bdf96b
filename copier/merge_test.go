package copier

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// t0 is the start of an hour; the merge tests' segments arrive around it.
var t0 = time.Date(2024, 5, 6, 7, 0, 0, 0, time.UTC)

// clock is a settable clock for copiers.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// mergeEnv is an env whose source is a local directory whose files'
// times a test sets (a segment's modification time is when it was
// published).
type mergeEnv struct {
	*env
	srcRoot string
	clock   *clock
	// comp is how the blocks of segment seq are stored (nil: as they
	// are); compressed counts the blocks stored compressed.
	comp       func(seq uint64) segment.Compression
	compressed int
}

func newMergeEnv(t *testing.T) *mergeEnv {
	t.Helper()
	root := filepath.Join(t.TempDir(), "src")
	src, err := localfs.New(root)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t)
	e.src = src
	return &mergeEnv{env: e, srcRoot: root, clock: &clock{t: t0}}
}

// merging configures a copier to merge hours, on the test's clock.
func (e *mergeEnv) merging(f func(*Config)) option {
	return func(c *Config, d *Deps) {
		c.MergePeriod = config.Duration(time.Hour)
		c.MergeDelay = config.Duration(time.Minute)
		d.Now = e.clock.Now
		if f != nil {
			f(c)
		}
	}
}

// blk is a block arriving at at with the given messages.
type blk struct {
	at   time.Time
	msgs []string
}

// publishAt publishes segment seq (epoch 1) of cat/bucket holding blocks,
// as published at when.
func (e *mergeEnv) publishAt(t *testing.T, cat string, bucket int, seq uint64, when time.Time, blocks ...blk) string {
	t.Helper()
	return e.publishEpoch(t, cat, bucket, 1, seq, when, blocks...)
}

func (e *mergeEnv) publishEpoch(t *testing.T, cat string, bucket int, epoch int64, seq uint64, when time.Time, blocks ...blk) string {
	t.Helper()
	enc := segment.NewEncoder()
	data := enc.AppendHeader(nil)
	comp := segment.Uncompressed
	if e.comp != nil {
		comp = e.comp(seq)
	}
	for _, b := range blocks {
		sb := &segment.Block{ArrivalMs: b.at.UnixMilli()}
		for _, m := range b.msgs {
			sb.Messages = append(sb.Messages, []byte(m))
		}
		start := len(data)
		data = segment.AppendUnstampedAs(data, sb, comp)
		if err := enc.Stamp(data[start:]); err != nil {
			t.Fatal(err)
		}
		if segment.Compression(data[start+segment.BlockHeaderSize]) != segment.Uncompressed {
			e.compressed++
		}
	}
	name := path.Join(layout.BucketDir(cat, bucket), layout.SegmentName(epoch, seq))
	if err := dfs.WriteFile(e.src, name, data); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(e.srcRoot, filepath.FromSlash(name)), when, when); err != nil {
		t.Fatal(err)
	}
	return name
}

// lines is n messages tagged tag.
func lines(tag string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s line %d", tag, i)
	}
	return out
}

// text is msgs as the merge writes them: one a line.
func text(msgs ...[]string) string {
	var b strings.Builder
	for _, ms := range msgs {
		for _, m := range ms {
			b.WriteString(m)
			if !strings.HasSuffix(m, "\n") {
				b.WriteString("\n")
			}
		}
	}
	return b.String()
}

func hourFile(cat string, bucket int, start time.Time) string {
	return layout.MergedFile(cat, bucket, start, time.Hour, "")
}

// readMergedText reads a merged file, gunzipping a .gz one.
func readMergedText(t *testing.T, fsys dfs.FS, name string) string {
	t.Helper()
	data := readFile(t, fsys, name)
	if strings.HasSuffix(name, ".gz") {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if data, err = io.ReadAll(zr); err != nil {
			t.Fatal(err)
		}
	}
	return string(data)
}

// mergePass makes one pass and fails the test on an error.
func mergePass(t *testing.T, n *node) Stats {
	t.Helper()
	st, err := n.CopyOnce(context.Background())
	if err != nil {
		t.Fatalf("CopyOnce: %v (stats %+v)", err, st)
	}
	return st
}

// TestMergedHourIsTheConcatenationOfItsSegments: an hour's file is its
// segments' lines, one a line, in bucket order; nothing of the next hour,
// which is written once it is closed in turn. Their blocks stored as
// they are, compressed (s2), or both in one bucket (a writer whose
// compression changed between segments: odd ones s2).
func TestMergedHourIsTheConcatenationOfItsSegments(t *testing.T) {
	for _, tc := range []struct {
		name string
		comp func(seq uint64) segment.Compression
	}{
		{"none", nil},
		{"s2", func(uint64) segment.Compression { return segment.S2 }},
		{"mixed", func(seq uint64) segment.Compression { return segment.Compression(seq % 2) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newMergeEnv(t)
			e.comp = tc.comp
			testMergedHour(t, e)
			if tc.comp != nil && e.compressed == 0 {
				t.Errorf("no block stored compressed")
			}
		})
	}
}

func testMergedHour(t *testing.T, e *mergeEnv) {
	// Tags long enough for blocks to compress.
	a1, a2, a3 := lines("a1 GET /api/v1/items", 3), lines("a2 GET /api/v1/items", 2), append(lines("a3 GET /api/v1/items", 2), "ends in a newline\n", "")
	b1, b2 := lines("b1 GET /api/v1/items", 4), lines("b2 GET /api/v1/items", 1)
	e.publishAt(t, "access", 0, 1, t0.Add(10*time.Minute), blk{t0.Add(10 * time.Minute), a1}, blk{t0.Add(11 * time.Minute), a2})
	e.publishAt(t, "access", 0, 2, t0.Add(59*time.Minute), blk{t0.Add(59 * time.Minute), a3})
	// The next hour starts in the middle of a segment.
	e.publishAt(t, "access", 0, 3, t0.Add(61*time.Minute), blk{t0.Add(59*time.Minute + 59*time.Second), b1[:0]}, blk{t0.Add(60 * time.Minute), b1})
	e.publishAt(t, "access", 0, 4, t0.Add(90*time.Minute), blk{t0.Add(90 * time.Minute), b2})
	// Another bucket, another category.
	c1 := lines("c1", 5)
	e.publishAt(t, "web/access", 3, 1, t0.Add(30*time.Minute), blk{t0.Add(30 * time.Minute), c1})

	n := e.copier(t, "a", e.merging(nil))
	// Within the hour and its delay, nothing is closed.
	e.clock.Set(t0.Add(60*time.Minute + 59*time.Second))
	if st := mergePass(t, n); st.Merged != 0 || len(files(t, e.dst, "")) != 0 {
		t.Fatalf("before the hour is closed: %+v, destination %q", st, files(t, e.dst, ""))
	}
	e.clock.Set(t0.Add(61 * time.Minute))
	st := mergePass(t, n)
	if st.Merged != 2 || st.Lines != int64(len(a1)+len(a2)+len(a3)+len(c1)) || st.Errors != 0 {
		t.Fatalf("first hour: %+v", st)
	}
	if got, want := readMergedText(t, e.dst, hourFile("access", 0, t0)), text(a1, a2, a3); got != want {
		t.Errorf("hour 07 of access/0:\n%q\nwant\n%q", got, want)
	}
	if got, want := readMergedText(t, e.dst, hourFile("web/access", 3, t0)), text(c1); got != want {
		t.Errorf("hour 07 of web/access/3: %q, want %q", got, want)
	}
	if f := files(t, e.dst, ""); len(f) != 2 {
		t.Errorf("destination holds %q, want the two files of hour 07", f)
	}
	// Progress: the first two segments are done, the third is not.
	if last, err := LastCopied(context.Background(), e.st, "copier", "access", 0); err != nil || last != layout.SegmentName(1, 2) {
		t.Errorf("last merged segment %q (%v), want %q", last, err, layout.SegmentName(1, 2))
	}
	lag := n.Lag()
	if len(lag) != 2 || lag[0].Category != "access" || lag[0].Segments != 2 || !lag[0].Oldest.Equal(t0.Add(61*time.Minute)) || lag[1].Segments != 0 {
		t.Errorf("lag %+v, want 2 segments of access, published from 08:01", lag)
	}

	e.clock.Set(t0.Add(2*time.Hour + time.Minute))
	if st := mergePass(t, n); st.Merged != 1 || st.Lines != int64(len(b1)+len(b2)) {
		t.Fatalf("second hour: %+v", st)
	}
	if got, want := readMergedText(t, e.dst, hourFile("access", 0, t0.Add(time.Hour))), text(b1, b2); got != want {
		t.Errorf("hour 08 of access/0: %q, want %q", got, want)
	}
	if st := mergePass(t, n); st.Merged+st.Skipped+st.Seen != 0 {
		t.Errorf("a pass with nothing new: %+v", st)
	}
	if got := n.metric(t, "freeway_copier_merged_files_total"); got != 3 {
		t.Errorf("merged files metric %v, want 3", got)
	}
	if got := n.metric(t, "freeway_copier_merge_lines_moved_total"); got != 0 {
		t.Errorf("%v lines moved, want none", got)
	}
	if hidden := slices.DeleteFunc(files(t, e.dst, ""), func(f string) bool { return !dfs.Hidden(f) }); len(hidden) != 0 {
		t.Errorf("temporary files left: %q", hidden)
	}
}

// TestMergeLateSegmentsGoToTheOpenPeriod: a segment published after its
// lines' period was closed (a writer's crashed segment, salvaged later)
// does not reopen it: its lines go to the period open when it was
// published, counted as late; periods never go back in bucket order.
func TestMergeLateSegmentsGoToTheOpenPeriod(t *testing.T) {
	e := newMergeEnv(t)
	n := e.copier(t, "a", e.merging(nil))
	early := lines("early", 2)
	e.publishAt(t, "access", 0, 1, t0.Add(30*time.Minute), blk{t0.Add(30 * time.Minute), early})
	e.clock.Set(t0.Add(3 * time.Hour))
	mergePass(t, n)

	// Salvaged at 09:30 (a new writer epoch), holding lines of 07:59.
	salvaged := lines("salvaged", 3)
	e.publishEpoch(t, "access", 0, 2, 1, t0.Add(150*time.Minute), blk{t0.Add(59 * time.Minute), salvaged})
	// And an agent's block that arrived at 08:10, behind a block of 09:40.
	after, behind := lines("after", 1), lines("behind", 1)
	e.publishEpoch(t, "access", 0, 2, 2, t0.Add(160*time.Minute), blk{t0.Add(160 * time.Minute), after}, blk{t0.Add(70 * time.Minute), behind})
	e.clock.Set(t0.Add(4 * time.Hour))
	st := mergePass(t, n)
	if st.Merged != 1 {
		t.Fatalf("%+v, want one file", st)
	}
	if got, want := readMergedText(t, e.dst, hourFile("access", 0, t0.Add(2*time.Hour))), text(salvaged, after, behind); got != want {
		t.Errorf("hour 09: %q, want %q", got, want)
	}
	if got := readMergedText(t, e.dst, hourFile("access", 0, t0)); got != text(early) {
		t.Errorf("hour 07 was changed: %q", got)
	}
	if _, err := e.dst.Stat(hourFile("access", 0, t0.Add(time.Hour))); err == nil {
		t.Error("hour 08 was written after it was closed")
	}
	if got := n.metric(t, "freeway_copier_merge_lines_moved_total"); got != 4 {
		t.Errorf("%v lines moved, want the 4 late ones", got)
	}
}

// TestMergeFutureArrivalDoesNotStallTheBucket: a block stamped ahead of
// the copier's clock (a writer's clock ahead) joins the period being
// written instead of holding the bucket until the clock gets there.
func TestMergeFutureArrivalDoesNotStallTheBucket(t *testing.T) {
	e := newMergeEnv(t)
	n := e.copier(t, "a", e.merging(nil))
	now, future := lines("now", 2), lines("future", 1)
	e.publishAt(t, "access", 0, 1, t0.Add(10*time.Minute), blk{t0.Add(10 * time.Minute), now}, blk{t0.Add(10 * time.Hour), future})
	e.clock.Set(t0.Add(2 * time.Hour))
	if st := mergePass(t, n); st.Merged != 1 || st.Lag != 0 {
		t.Fatalf("%+v", st)
	}
	if got, want := readMergedText(t, e.dst, hourFile("access", 0, t0)), text(now, future); got != want {
		t.Errorf("hour 07: %q, want %q", got, want)
	}
	if got := n.metric(t, "freeway_copier_merge_lines_moved_total"); got != 1 {
		t.Errorf("%v lines moved, want the future one", got)
	}
}

// TestMergeFutureSegmentTimeDoesNotStallTheBucket: a segment whose
// modification time is far ahead of the copier's clock (published while
// the dfs's clock was stepped ten hours ahead, then set back) does not
// take its lines to a period ten hours on, holding every later line of
// the bucket back until the clock gets there: its lines go by their
// arrival, as any (here ahead too: the period of the block before).
func TestMergeFutureSegmentTimeDoesNotStallTheBucket(t *testing.T) {
	e := newMergeEnv(t)
	n := e.copier(t, "a", e.merging(nil))
	before, stepped, after, next := lines("before", 2), lines("stepped", 1), lines("after", 2), lines("next", 1)
	e.publishAt(t, "access", 0, 1, t0.Add(10*time.Minute), blk{t0.Add(10 * time.Minute), before})
	e.publishAt(t, "access", 0, 2, t0.Add(10*time.Hour+20*time.Minute), blk{t0.Add(10*time.Hour + 20*time.Minute), stepped})
	e.publishAt(t, "access", 0, 3, t0.Add(30*time.Minute), blk{t0.Add(30 * time.Minute), after})
	e.publishAt(t, "access", 0, 4, t0.Add(70*time.Minute), blk{t0.Add(70 * time.Minute), next})
	e.clock.Set(t0.Add(150 * time.Minute))
	if st := mergePass(t, n); st.Merged != 2 || st.Lag != 0 {
		t.Fatalf("%+v, want hours 07 and 08 written, nothing left", st)
	}
	if got, want := readMergedText(t, e.dst, hourFile("access", 0, t0)), text(before, stepped, after); got != want {
		t.Errorf("hour 07: %q, want %q", got, want)
	}
	if got, want := readMergedText(t, e.dst, hourFile("access", 0, t0.Add(time.Hour))), text(next); got != want {
		t.Errorf("hour 08: %q, want %q", got, want)
	}
	if got := n.metric(t, "freeway_copier_merge_lines_moved_total"); got != 1 {
		t.Errorf("%v lines moved, want the one stamped ahead", got)
	}
}

func TestMergeGzipAndShortPeriods(t *testing.T) {
	e := newMergeEnv(t)
	var want []string
	for i := range 6 {
		m := lines(fmt.Sprintf("minute %d", i), 50)
		at := t0.Add(time.Duration(i)*5*time.Minute + 30*time.Second)
		e.publishAt(t, "access", 1, uint64(i), at, blk{at, m})
		want = append(want, text(m))
	}
	n := e.copier(t, "a", e.merging(func(c *Config) {
		c.MergePeriod = config.Duration(5 * time.Minute)
		c.MergeDelay = config.Duration(10 * time.Second)
		c.Compression = CompressionGzip
	}))
	e.clock.Set(t0.Add(time.Hour))
	if st := mergePass(t, n); st.Merged != 6 {
		t.Fatalf("%+v, want 6 files of 5 minutes", st)
	}
	for i := range 6 {
		name := layout.MergedFile("access", 1, t0.Add(time.Duration(i)*5*time.Minute), 5*time.Minute, ".gz")
		if !strings.Contains(name, fmt.Sprintf("/mm=%02d/", i*5)) {
			t.Fatalf("name %s", name)
		}
		if got := readMergedText(t, e.dst, name); got != want[i] {
			t.Errorf("%s: %q, want %q", name, got, want[i])
		}
	}
	// Files are compressed: 50 similar lines take far less room.
	fi, err := e.dst.Stat(layout.MergedFile("access", 1, t0, 5*time.Minute, ".gz"))
	if err != nil || fi.Size() >= int64(len(want[0]))/2 {
		t.Errorf("gzip file of %d bytes for %d bytes of lines (%v)", fi.Size(), len(want[0]), err)
	}
}

// faultFS fails the destination's k-th mutating call (Create, a Write,
// Close of a file, Rename, Remove), counting from 1; k = 0 never fails.
type faultFS struct {
	dfs.FS
	mu    sync.Mutex
	k, n  int
	fired bool
}

var errInjected = errors.New("injected fault")

func (f *faultFS) hit() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	if f.k > 0 && f.n == f.k {
		f.fired = true
		return fmt.Errorf("call %d: %w", f.n, errInjected)
	}
	return nil
}

func (f *faultFS) Create(name string) (dfs.File, error) {
	if err := f.hit(); err != nil {
		return nil, err
	}
	file, err := f.FS.Create(name)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: file, fs: f}, nil
}

func (f *faultFS) Rename(a, b string) error {
	if err := f.hit(); err != nil {
		return err
	}
	return f.FS.Rename(a, b)
}

func (f *faultFS) Remove(name string) error {
	if err := f.hit(); err != nil {
		return err
	}
	return f.FS.Remove(name)
}

func (f *faultFS) String() string { return f.FS.String() + "#faults" }

type faultFile struct {
	dfs.File
	fs *faultFS
}

func (f *faultFile) Write(p []byte) (int, error) {
	if err := f.fs.hit(); err != nil {
		// Half the bytes reach the file, as in a crash mid-write.
		n, _ := f.File.Write(p[:len(p)/2])
		return n, err
	}
	return f.File.Write(p)
}

func (f *faultFile) Close() error {
	if err := f.fs.hit(); err != nil {
		f.File.Close()
		return err
	}
	return f.File.Close()
}

// faultStore fails the k-th CheckAndPut (from 1; 0 never): before it is
// applied, or (after) once it is, as a crash just after the write would.
type faultStore struct {
	store.Store
	after bool
	// crash: every call after the fault fails too (the process died),
	// the copier's read of the row after a failed write included.
	crash bool
	mu    sync.Mutex
	k, n  int
	fired bool
}

func (s *faultStore) Get(ctx context.Context, table, row string, asOf int64) ([]store.Cell, error) {
	if s.dead() {
		return nil, fmt.Errorf("get after the crash: %w", errInjected)
	}
	return s.Store.Get(ctx, table, row, asOf)
}

func (s *faultStore) dead() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.crash && s.fired
}

func (s *faultStore) CheckAndPut(ctx context.Context, table, row, column string, expect []byte, cells []store.Cell) (bool, error) {
	if s.dead() {
		return false, fmt.Errorf("checkandput after the crash: %w", errInjected)
	}
	s.mu.Lock()
	s.n++
	fail := s.k > 0 && s.n == s.k
	s.fired = s.fired || fail
	s.mu.Unlock()
	if fail && !s.after {
		return false, fmt.Errorf("checkandput %d: %w", s.n, errInjected)
	}
	ok, err := s.Store.CheckAndPut(ctx, table, row, column, expect, cells)
	if fail && err == nil {
		return false, fmt.Errorf("checkandput %d (applied): %w", s.n, errInjected)
	}
	return ok, err
}

// TestMergeCrashAnywhereDeliversEveryLineOnce stops a merging copier at
// every point where a crash could stop it (each destination write,
// close, rename and remove, each progress write) and restarts a new one
// on the same store and destination: every line ends up in the
// destination exactly once, in bucket order, whatever point it died at.
func TestMergeCrashAnywhereDeliversEveryLineOnce(t *testing.T) {
	for _, compression := range []string{CompressionNone, CompressionGzip} {
		t.Run(compression, func(t *testing.T) {
			for k := 1; ; k++ {
				fsFired, stFired := crashAt(t, compression, k)
				if !fsFired && !stFired {
					if k < 8 {
						t.Fatalf("only %d fault points: the test does not reach the merge", k)
					}
					return
				}
			}
		})
	}
}

// crashAt runs the crash test with the k-th destination call and the
// k-th progress write failing (one run each); it reports whether they
// were reached.
func crashAt(t *testing.T, compression string, k int) (fsFired, stFired bool) {
	for _, where := range []string{"dfs", "store", "store-after"} {
		e := newMergeEnv(t)
		const hours = 2
		var want [hours][]string
		seq := uint64(0)
		for h := range hours {
			for s := range 3 {
				seq++
				at := t0.Add(time.Duration(h)*time.Hour + time.Duration(s*20+5)*time.Minute)
				m1, m2 := lines(fmt.Sprintf("h%d s%d x", h, s), 40), lines(fmt.Sprintf("h%d s%d y", h, s), 7)
				e.publishAt(t, "access", 0, seq, at, blk{at, m1}, blk{at.Add(time.Second), m2})
				want[h] = append(want[h], m1...)
				want[h] = append(want[h], m2...)
			}
		}
		e.clock.Set(t0.Add(5 * time.Hour))
		cfg := e.merging(func(c *Config) { c.Compression = compression })
		ext := map[string]string{CompressionNone: "", CompressionGzip: ".gz"}[compression]

		ffs := &faultFS{FS: e.dst}
		fst := &faultStore{Store: e.st, after: where == "store-after"}
		crashed := e.copier(t, "crashed", cfg, withDest(ffs), withStore(fst))
		// Counted from the pass, not from New's probe.
		ffs.n = 0
		if where == "dfs" {
			ffs.k = k
		} else {
			fst.k = k
		}
		_, _ = crashed.CopyOnce(context.Background()) // fails, or not if k is past the end
		crashed.session.Close()                       // the process is gone: its lease goes
		if where == "dfs" {
			fsFired = ffs.fired
		} else {
			stFired = stFired || fst.fired
		}

		// A new process on the same store and destination.
		n := e.copier(t, "restarted", cfg)
		st := mergePass(t, n)
		if st.Conflicts != 0 {
			t.Errorf("%s fault %d: %d conflicts after the restart", where, k, st.Conflicts)
		}
		for h := range hours {
			name := layout.MergedFile("access", 0, t0.Add(time.Duration(h)*time.Hour), time.Hour, ext)
			if got := readMergedText(t, e.dst, name); got != text(want[h]) {
				t.Errorf("%s fault %d: hour %d holds %d bytes, want %d: %q", where, k, h, len(got), len(text(want[h])), got)
			}
		}
		if got := files(t, e.dst, ""); len(got) != hours {
			t.Errorf("%s fault %d: destination holds %q, want the %d hour files only", where, k, got, hours)
		}
		if last, _ := LastCopied(context.Background(), e.st, "copier", "access", 0); last != layout.SegmentName(1, seq) {
			t.Errorf("%s fault %d: progress %q, want the last segment", where, k, last)
		}
	}
	return fsFired, stFired
}

// TestMergeStartsAfterCopiedSegments: a copier that copied segments and
// is then configured to merge merges what it had not copied.
func TestMergeStartsAfterCopiedSegments(t *testing.T) {
	e := newMergeEnv(t)
	old := lines("copied", 2)
	seg := e.publishAt(t, "access", 0, 1, t0.Add(time.Minute), blk{t0.Add(time.Minute), old})
	copyOnce(t, e.copier(t, "a"))
	newer := lines("merged", 2)
	e.publishAt(t, "access", 0, 2, t0.Add(2*time.Minute), blk{t0.Add(2 * time.Minute), newer})
	e.clock.Set(t0.Add(2 * time.Hour))
	n := e.copier(t, "b", e.merging(nil))
	if st := mergePass(t, n); st.Merged != 1 {
		t.Fatalf("%+v", st)
	}
	if got := readMergedText(t, e.dst, hourFile("access", 0, t0)); got != text(newer) {
		t.Errorf("merged %q, want only the segment not copied", got)
	}
	if !bytes.Equal(readFile(t, e.dst, seg), readFile(t, e.src, seg)) {
		t.Error("the copied segment changed")
	}
}

// TestMergeResumesAfterSegmentsCopiedMeanwhile: merging, then copying
// segments for a while (merge_period unset), then merging again: the
// merge goes on after the last segment copied, as doc.go says, not from
// where it stopped before: the segments copied are not merged too, and
// those retention deleted meanwhile (they were copied) are not missed.
func TestMergeResumesAfterSegmentsCopiedMeanwhile(t *testing.T) {
	e := newMergeEnv(t)
	first := lines("merged", 2)
	e.publishAt(t, "access", 0, 1, t0.Add(time.Minute), blk{t0.Add(time.Minute), first})
	e.clock.Set(t0.Add(2 * time.Hour))
	if st := mergePass(t, e.copier(t, "a", e.merging(nil))); st.Merged != 1 {
		t.Fatalf("first merge %+v", st)
	}

	at := t0.Add(2*time.Hour + time.Minute)
	copied := e.publishAt(t, "access", 0, 2, at, blk{at, lines("copied", 2)})
	e.publishAt(t, "access", 0, 3, at.Add(time.Minute), blk{at.Add(time.Minute), lines("copied too", 2)})
	if st := copyOnce(t, e.copier(t, "b")); st.Copied != 2 {
		t.Fatalf("copying %+v, want both new segments copied", st)
	}
	if err := e.src.Remove(copied); err != nil { // retention: it was copied
		t.Fatal(err)
	}

	at = t0.Add(3*time.Hour + time.Minute)
	again := lines("merged again", 2)
	e.publishAt(t, "access", 0, 4, at, blk{at, again})
	e.clock.Set(t0.Add(5 * time.Hour))
	n := e.copier(t, "c", e.merging(nil))
	st := mergePass(t, n)
	if st.Merged != 1 || st.Vanished != 0 {
		t.Errorf("merging again %+v, want only the segment not copied merged, nothing vanished", st)
	}
	if exists(e.dst, hourFile("access", 0, t0.Add(2*time.Hour))) {
		t.Errorf("the copied segments were merged as well")
	}
	if got := readMergedText(t, e.dst, hourFile("access", 0, t0.Add(3*time.Hour))); got != text(again) {
		t.Errorf("hour 10 holds %q, want %q", got, text(again))
	}
	if got := readMergedText(t, e.dst, hourFile("access", 0, t0)); got != text(first) {
		t.Errorf("hour 07 now holds %q", got)
	}
	if last, _ := LastCopied(context.Background(), e.st, "copier", "access", 0); last != layout.SegmentName(1, 4) {
		t.Errorf("progress %q, want the last segment", last)
	}
}

// TestMergeAfterCopyNotRecordedSkipsTheCopiedSegment: a copier copying
// segments published one and stopped before recording it (a crash, or
// its context ended after the rename: the progress write is refused),
// and is restarted merging: the segment copied is not merged too, which
// would put its lines at the destination twice; the merge goes on after
// it.
func TestMergeAfterCopyNotRecordedSkipsTheCopiedSegment(t *testing.T) {
	e := newMergeEnv(t)
	copied, merged := lines("copied", 2), lines("merged", 2)
	e.publishAt(t, "access", 0, 1, t0.Add(time.Minute), blk{t0.Add(time.Minute), copied})
	e.publishAt(t, "access", 0, 2, t0.Add(2*time.Minute), blk{t0.Add(2 * time.Minute), merged})
	fst := &faultStore{Store: e.st, k: 1}
	stopped := e.copier(t, "a", withStore(fst))
	if _, err := stopped.CopyOnce(context.Background()); err == nil || !fst.fired {
		t.Fatalf("CopyOnce: %v, want the first progress write failed", err)
	}
	segs := files(t, e.dst, layout.BucketDir("access", 0))
	if len(segs) != 1 {
		t.Fatalf("copied %q before the failure, want the first segment", segs)
	}

	e.clock.Set(t0.Add(2 * time.Hour))
	st := mergePass(t, e.copier(t, "b", e.merging(nil)))
	if got := readMergedText(t, e.dst, hourFile("access", 0, t0)); got != text(merged) {
		t.Errorf("merged %q, want only the segment not copied: %q", got, text(merged))
	}
	if st.Skipped != 1 {
		t.Errorf("%+v, want the copied segment counted skipped", st)
	}
	if last, _ := LastCopied(context.Background(), e.st, "copier", "access", 0); last != layout.SegmentName(1, 2) {
		t.Errorf("progress %q, want the last segment", last)
	}
}

// TestMergeWithLostProgressKeepsPublishedFiles: progress lost (a new
// store) after retention deleted merged segments: the files already
// published are kept, never rewritten with fewer lines.
func TestMergeWithLostProgressKeepsPublishedFiles(t *testing.T) {
	e := newMergeEnv(t)
	a, b := lines("a", 3), lines("b", 3)
	first := e.publishAt(t, "access", 0, 1, t0.Add(time.Minute), blk{t0.Add(time.Minute), a})
	e.publishAt(t, "access", 0, 2, t0.Add(2*time.Minute), blk{t0.Add(2 * time.Minute), b})
	e.clock.Set(t0.Add(2 * time.Hour))
	mergePass(t, e.copier(t, "a", e.merging(nil)))
	if err := e.src.Remove(first); err != nil {
		t.Fatal(err)
	}
	n := e.copier(t, "b", e.merging(nil), withStore(openStore(t, filepath.Join(t.TempDir(), "new.db"))))
	st := mergePass(t, n)
	if st.Conflicts != 1 || st.Merged != 0 {
		t.Fatalf("%+v, want the differing file kept as a conflict", st)
	}
	if got := readMergedText(t, e.dst, hourFile("access", 0, t0)); got != text(a, b) {
		t.Errorf("hour 07 now holds %q", got)
	}
	if !strings.Contains(n.logs.String(), "a different period file is already published") {
		t.Error("the conflict was not logged")
	}
	// With every segment still there, a re-run from scratch rewrites
	// nothing and finds every file the same.
	e2 := newMergeEnv(t)
	e2.publishAt(t, "access", 0, 1, t0.Add(time.Minute), blk{t0.Add(time.Minute), a})
	e2.clock.Set(t0.Add(2 * time.Hour))
	mergePass(t, e2.copier(t, "a", e2.merging(nil)))
	rec := dfstest.NewFaulty(e2.dst)
	st = mergePass(t, e2.copier(t, "b", e2.merging(nil), withDest(rec), withStore(openStore(t, filepath.Join(t.TempDir(), "new.db")))))
	if _, renames := writes(rec); st.Skipped != 1 || len(renames) != 0 {
		t.Errorf("re-run from scratch: %+v, renamed %q", st, renames)
	}
}

func TestMergeBackfillReportsProgress(t *testing.T) {
	e := newMergeEnv(t)
	var total int64
	for i := range 12 {
		at := t0.Add(time.Duration(i) * 15 * time.Minute)
		name := e.publishAt(t, "access", i%2, uint64(i), at, blk{at, lines("x", 10)})
		total += int64(len(readFile(t, e.src, name)))
	}
	e.clock.Set(t0.Add(3*time.Hour + 30*time.Minute)) // hours 07, 08 and 09 closed; 10 open
	n := e.copier(t, "a", e.merging(nil))
	var reports []Progress
	st, err := n.Backfill(context.Background(), func(p Progress) { reports = append(reports, p) })
	if err != nil {
		t.Fatal(err)
	}
	if st.Merged != 6 || st.Lag != 0 {
		t.Fatalf("%+v, want 3 hours of 2 buckets", st)
	}
	first, last := reports[0], reports[len(reports)-1]
	if first.Files != 0 || first.TotalFiles != 12 || first.TotalBytes != total {
		t.Errorf("first report %+v, want 12 files of %d bytes to do", first, total)
	}
	if last.Files != 12 || last.Bytes != total {
		t.Errorf("last report %+v, want all done", last)
	}
	for i := 1; i < len(reports); i++ {
		if reports[i].Files < reports[i-1].Files || reports[i].Bytes < reports[i-1].Bytes {
			t.Fatalf("progress went back: %+v then %+v", reports[i-1], reports[i])
		}
	}
}

func TestMergeConfigValidate(t *testing.T) {
	for _, c := range []struct {
		period      time.Duration
		compression string
		ok          bool
	}{
		{0, CompressionNone, true},
		{time.Minute, CompressionNone, true},
		{15 * time.Minute, CompressionGzip, true},
		{24 * time.Hour, CompressionNone, true},
		{7 * time.Minute, CompressionNone, false},
		{90 * time.Second, CompressionNone, false},
		{48 * time.Hour, CompressionNone, false},
		{time.Hour, "zstd", false},
	} {
		cfg := DefaultConfig()
		cfg.MergePeriod, cfg.Compression = config.Duration(c.period), c.compression
		if err := cfg.Validate(); (err == nil) != c.ok {
			t.Errorf("merge_period %v compression %q: %v, want ok=%v", c.period, c.compression, err, c.ok)
		}
	}
}

// TestMergeOpenPeriodIsNotReread: while a bucket's first line not merged
// is in a period still open, passes do not read it again.
func TestMergeOpenPeriodIsNotReread(t *testing.T) {
	e := newMergeEnv(t)
	e.publishAt(t, "access", 0, 1, t0.Add(10*time.Minute), blk{t0.Add(10 * time.Minute), lines("x", 3)})
	src := dfstest.NewFaulty(e.src)
	n := e.copier(t, "a", e.merging(nil), withSource(src))
	e.clock.Set(t0.Add(30 * time.Minute))
	for range 3 {
		if st := mergePass(t, n); st.Merged != 0 || st.Lag != 1 {
			t.Fatalf("%+v", st)
		}
	}
	total := 0
	for _, c := range src.Calls(dfstest.OpOpen) {
		if strings.HasSuffix(c.Name, layout.SegmentExt) {
			total++
		}
	}
	if total != 1 {
		t.Errorf("three passes opened segments %d times, want once", total)
	}
	e.clock.Set(t0.Add(2 * time.Hour))
	if st := mergePass(t, n); st.Merged != 1 {
		t.Fatalf("once closed: %+v", st)
	}
}

// TestBackfillInterruptedResumes: a backfill stopped in the middle (^C)
// leaves what it did recorded; the next one does the rest, and every line
// is in the destination once.
func TestBackfillInterruptedResumes(t *testing.T) {
	e := newMergeEnv(t)
	want := map[string]string{}
	for h := range 6 {
		for s := range 3 {
			at := t0.Add(time.Duration(h)*time.Hour + time.Duration(s)*time.Minute)
			m := lines(fmt.Sprintf("h%d s%d", h, s), 5)
			e.publishAt(t, "access", 0, uint64(h*3+s+1), at, blk{at, m})
			want[hourFile("access", 0, t0.Add(time.Duration(h)*time.Hour))] += text(m)
		}
	}
	e.clock.Set(t0.Add(7 * time.Hour))
	ctx, cancel := context.WithCancel(context.Background())
	n := e.copier(t, "a", e.merging(nil))
	st, err := n.Backfill(ctx, func(p Progress) {
		if p.Files >= 7 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) || st.Merged == 0 || st.Merged >= 6 {
		t.Fatalf("interrupted backfill: %+v %v, want a part done", st, err)
	}
	st, err = e.copier(t, "b", e.merging(nil)).Backfill(context.Background(), nil)
	if err != nil || st.Merged == 0 {
		t.Fatalf("resumed backfill: %+v %v", st, err)
	}
	got := files(t, e.dst, "")
	if len(got) != len(want) {
		t.Fatalf("destination holds %q", got)
	}
	for name, text := range want {
		if g := readMergedText(t, e.dst, name); g != text {
			t.Errorf("%s: %q, want %q", name, g, text)
		}
	}
}

// TestStatusReportsLagPerCategory: what /api/v1/status shows of a running
// copier: active, and per category the segments not yet merged (those of
// the open hour) and how long the oldest has waited; nothing once it
// stopped (a standby does not know the lag).
func TestStatusReportsLagPerCategory(t *testing.T) {
	e := newMergeEnv(t)
	e.publishAt(t, "access", 0, 1, t0.Add(10*time.Minute), blk{t0.Add(10 * time.Minute), lines("a", 3)})
	e.publishAt(t, "access", 1, 1, t0.Add(20*time.Minute), blk{t0.Add(20 * time.Minute), lines("b", 3)})
	e.publishAt(t, "web/access", 0, 1, t0.Add(5*time.Minute), blk{t0.Add(5 * time.Minute), lines("c", 3)})
	e.clock.Set(t0.Add(90 * time.Minute)) // hour 07 closed (90m > 61m): web/access's and access's segments merge
	e.publishAt(t, "access", 0, 2, t0.Add(70*time.Minute), blk{t0.Add(70 * time.Minute), lines("d", 3)})
	n := e.copier(t, "a", e.merging(nil))
	if st := n.Status(); st.Active || !st.Merging || len(st.Categories) != 0 {
		t.Fatalf("before Run: %+v", st)
	}
	stop := run(t, n)
	// A pass sets the lag when it has listed the buckets and again when
	// it is done: the first pass's first figures count what it merges.
	want := []CategoryStatus{
		{Category: "access", Segments: 1, LagSeconds: 20 * 60, Oldest: t0.Add(70 * time.Minute).Format(time.RFC3339)},
		{Category: "web/access"},
	}
	var st Status
	testkit.WaitFor(t, "the lag after a pass", func() bool {
		st = n.Status()
		if !st.Active || len(st.Categories) != 2 || st.Categories[0].Bytes <= 0 {
			return false
		}
		got := slices.Clone(st.Categories)
		got[0].Bytes = 0
		return slices.Equal(got, want)
	})
	stop()
	if st := n.Status(); st.Active || len(st.Categories) != 0 {
		t.Errorf("after Run: %+v", st)
	}
}

// staleLease is a grant its holder has not seen lost (yet): a pass under
// it runs on.
type staleLease struct{ epoch int64 }

func (l staleLease) Name() string                  { return "copier" }
func (l staleLease) Owner() string                 { return "stale" }
func (l staleLease) Epoch() int64                  { return l.epoch }
func (l staleLease) Lost() <-chan struct{}         { return nil }
func (l staleLease) Release(context.Context) error { return nil }

// hookedDest calls beforePublish before the first rename of a hidden
// file to a visible name (a period file published), and fails the first
// write of a file once writeFails is set, after announcing it on writing
// and waiting for release.
type hookedDest struct {
	dfs.FS
	beforePublish func()
	publishOnce   sync.Once
	writeFails    bool
	writing       chan struct{}
	release       chan struct{}
	writeOnce     sync.Once
}

func (d *hookedDest) Rename(a, b string) error {
	if d.beforePublish != nil && dfs.Hidden(a) && !dfs.Hidden(b) {
		d.publishOnce.Do(d.beforePublish)
	}
	return d.FS.Rename(a, b)
}

func (d *hookedDest) Create(name string) (dfs.File, error) {
	f, err := d.FS.Create(name)
	if err != nil || !d.writeFails {
		return f, err
	}
	return &hookedFile{File: f, d: d}, nil
}

type hookedFile struct {
	dfs.File
	d *hookedDest
}

func (f *hookedFile) Write(p []byte) (int, error) {
	failed := false
	f.d.writeOnce.Do(func() {
		close(f.d.writing)
		<-f.d.release
		failed = true
	})
	if failed {
		return 0, errors.New("stale copier cut off mid-write")
	}
	return f.File.Write(p)
}

// TestStaleCopierNeverPublishesAPartialPeriod: a copier that lost its
// lease without seeing it yet writes the period the new holder is about
// to publish (both merge the same bucket from the same progress), and is
// cut off mid-write: the published period file is still the new
// holder's, whole, not the stale copier's partial one.
func TestStaleCopierNeverPublishesAPartialPeriod(t *testing.T) {
	e := newMergeEnv(t)
	a1 := lines("a1", 50)
	e.publishAt(t, "access", 0, 1, t0.Add(10*time.Minute), blk{t0.Add(10 * time.Minute), a1})
	e.clock.Set(t0.Add(61 * time.Minute))

	staleDest := &hookedDest{FS: e.dst, writeFails: true, writing: make(chan struct{}), release: make(chan struct{})}
	stale := e.copier(t, "stale", e.merging(nil), withDest(staleDest))
	staleDone := make(chan error, 1)
	newDest := &hookedDest{FS: e.dst, beforePublish: func() {
		// The new holder has written, verified and recorded the period:
		// the stale copier writes it too, and is cut off mid-write.
		go func() {
			_, err := stale.pass(context.Background(), staleLease{epoch: 1}, nil, true)
			staleDone <- err
		}()
		<-staleDest.writing
	}}
	holder := e.copier(t, "new", e.merging(nil), withDest(newDest))
	if st, err := holder.pass(context.Background(), staleLease{epoch: 2}, nil, true); err != nil || st.Merged != 1 {
		t.Fatalf("new holder's pass: %+v %v, want the hour merged", st, err)
	}
	close(staleDest.release)
	if err := <-staleDone; err == nil {
		t.Error("the stale copier's cut-off write was not reported")
	}
	if got, want := readMergedText(t, e.dst, hourFile("access", 0, t0)), text(a1); got != want {
		t.Errorf("published hour holds %d bytes, want the whole hour's %d", len(got), len(want))
	}
	if last, err := LastCopied(context.Background(), e.st, "copier", "access", 0); err != nil || last != layout.SegmentName(1, 1) {
		t.Errorf("last merged %q (%v)", last, err)
	}
}
