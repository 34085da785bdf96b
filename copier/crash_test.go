package copier

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/boltstore"
	"github.com/freeway-dev/freeway/ptail"
)

// The crash tests run a copier through passes over a source that writers
// keep adding segments to, with the destination on a dfstest.CrashFS and
// the progress in a bbolt store, and take, before each of its changes to
// either, what a crash then leaves: the destination killed, powered off,
// powered off with part of the unsynced writes, torn (or, like HDFS,
// killed with a prefix of the files not closed), and the store as it is
// (a store write is durable when it returns). On each, the destination
// may show no partial or wrong file and the progress may point at nothing
// the destination does not hold; then a new copier takes over and must
// bring every line of the source to the destination once, leave no
// temporary file, and log no error.

// crashBucket is a bucket of the crash workload.
type crashBucket struct {
	cat    string
	bucket int
}

func (b crashBucket) dir() string { return layout.BucketDir(b.cat, b.bucket) }

// crashBuckets: a category of two buckets, and one too long to be its
// own directory name (a sidecar names it).
var crashBuckets = []crashBucket{{"c0", 0}, {"c0", 1}, {"c1" + strings.Repeat("-long", 60), 0}}

// crashSeg is a segment of the workload, as its writer published it.
type crashSeg struct {
	b      crashBucket
	name   string // its path
	at     time.Time
	data   []byte
	blocks []crashBlock
}

// crashBlock is a block of a segment: where it starts, and its lines.
type crashBlock struct {
	off   int64
	lines []string
}

// crashWork is what the crashed copier does: before pass k, segments
// published up to clocks[k] are added to the source; pass k runs at
// clocks[k]. The last pass closes every period.
type crashWork struct {
	segs     []crashSeg // in publish order
	clocks   []time.Time
	merge    bool
	compress string        // when merging
	period   time.Duration // when merging: merge_period
}

// crashHours is how many hours of segments the workload publishes.
const crashHours = 2

// newCrashWork publishes, in every bucket, a segment every 30 minutes of
// the test's clock from t0+10m, crashHours hours of them, each of two
// blocks arriving just before; passes run a quarter past each hour, so
// that each closes the hour before when merging, with a segment of the
// next one there.
func newCrashWork(merge bool, compress string) *crashWork {
	w := &crashWork{merge: merge, compress: compress, period: time.Hour}
	for k := range crashHours {
		w.clocks = append(w.clocks, t0.Add(time.Duration(k+1)*time.Hour+15*time.Minute))
	}
	w.clocks = append(w.clocks, t0.Add((crashHours+2)*time.Hour))
	for i := range 2 * crashHours {
		at := t0.Add(10*time.Minute + time.Duration(i)*30*time.Minute)
		for _, b := range crashBuckets {
			w.segs = append(w.segs, crashSegment(b, i, at))
		}
	}
	return w
}

// crashSegment is the i-th segment of bucket b, published at at.
func crashSegment(b crashBucket, i int, at time.Time) crashSeg {
	s := crashSeg{b: b, name: path.Join(b.dir(), layout.SegmentName(3, uint64(i))), at: at}
	enc := segment.NewEncoder()
	s.data = enc.AppendHeader(nil)
	for k := range 2 {
		sb := &segment.Block{Agent: "agent", ArrivalMs: at.Add(time.Duration(k-2) * time.Second).UnixMilli()}
		blk := crashBlock{off: int64(len(s.data))}
		for m := range 3 {
			line := fmt.Sprintf("%s/%d seg %d block %d line %d", b.cat[:2], b.bucket, i, k, m)
			sb.Messages = append(sb.Messages, []byte(line))
			sb.Seqs = append(sb.Seqs, uint64(100*i+10*k+m+1))
			blk.lines = append(blk.lines, line)
		}
		start := len(s.data)
		s.data = segment.AppendUnstampedAs(s.data, sb, segment.Uncompressed)
		if err := enc.Stamp(s.data[start:]); err != nil {
			panic(err)
		}
		s.blocks = append(s.blocks, blk)
	}
	return s
}

// end is the clock of the last pass, and of the copier restarted.
func (w *crashWork) end() time.Time { return w.clocks[len(w.clocks)-1] }

// bucketSegs are the segments of b, in name order.
func (w *crashWork) bucketSegs(b crashBucket) []crashSeg {
	var out []crashSeg
	for _, s := range w.segs {
		if s.b == b {
			out = append(out, s)
		}
	}
	return out
}

// text is the bucket's lines before pos, as merged files hold them.
func (w *crashWork) text(b crashBucket, pos ptail.Position) string {
	var sb strings.Builder
	for _, s := range w.bucketSegs(b) {
		for _, blk := range s.blocks {
			if !(ptail.Position{Segment: path.Base(s.name), Offset: blk.off}).Before(pos) {
				continue
			}
			for _, l := range blk.lines {
				sb.WriteString(l + "\n")
			}
		}
	}
	return sb.String()
}

// config configures a copier for the workload, on clock.
func (w *crashWork) config(clock *clock) option {
	return func(c *Config, d *Deps) {
		c.Concurrency = 1 // one order of operations, the same in every run
		d.Now = clock.Now
		if w.merge {
			c.MergePeriod = config.Duration(w.period)
			c.MergeDelay = config.Duration(time.Minute)
			c.Compression = w.compress
		}
	}
}

// timedFS is a CrashFS whose files' modification times are as the test
// sets them: the source's segments' are when the test published them, on
// its clock, as the writers' dfs gives them; a restarted copier's
// destination's files are as old as the time since the crash.
type timedFS struct {
	*dfstest.CrashFS
	name string
	mu   sync.Mutex
	at   map[string]time.Time
}

func newTimedFS(fsys *dfstest.CrashFS, name string) *timedFS {
	return &timedFS{CrashFS: fsys, name: name, at: map[string]time.Time{}}
}

// crashDowntime is how long after a crash a copier is restarted: long
// enough that it removes a probe the crash left (probeMaxAge).
const crashDowntime = probeMaxAge + time.Minute

// restartedDest is the destination img left, as a copier restarted
// crashDowntime later finds it.
func restartedDest(img dfstest.Image, hdfs bool) *timedFS {
	fsys := dfstest.NewCrashFSFrom(img)
	if hdfs {
		fsys.LikeHDFS()
	}
	d := newTimedFS(fsys, "mem://destination")
	for name := range img.Files {
		d.at[name] = time.Now().Add(-crashDowntime)
	}
	return d
}

type timedInfo struct {
	fs.FileInfo
	mod time.Time
}

func (i timedInfo) ModTime() time.Time { return i.mod }

func (s *timedFS) timed(name string, fi fs.FileInfo) fs.FileInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	if at, ok := s.at[name]; ok {
		return timedInfo{fi, at}
	}
	return fi
}

func (s *timedFS) Stat(name string) (fs.FileInfo, error) {
	fi, err := s.CrashFS.Stat(name)
	if err != nil {
		return nil, err
	}
	return s.timed(name, fi), nil
}

func (s *timedFS) ReadDir(name string) ([]fs.FileInfo, error) {
	infos, err := s.CrashFS.ReadDir(name)
	for i, fi := range infos {
		infos[i] = s.timed(path.Join(name, fi.Name()), fi)
	}
	return infos, err
}

func (s *timedFS) String() string { return s.name }

// publish adds the workload's segments published up to until.
func (s *timedFS) publish(t *testing.T, w *crashWork, until time.Time) {
	t.Helper()
	for _, seg := range w.segs {
		if _, err := s.CrashFS.Stat(seg.name); err == nil || seg.at.After(until) {
			continue
		}
		// The writers write a long category's sidecar first.
		if err := layout.WriteSidecar(s.CrashFS, seg.b.cat, "writer"); err != nil {
			t.Fatal(err)
		}
		if err := dfs.WriteFile(s.CrashFS, seg.name, seg.data); err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		s.at[seg.name] = seg.at
		s.mu.Unlock()
	}
}

// hookedStore calls before ahead of each progress write (CheckAndPut, the
// copier's only kind), with the number of writes before it and the cells
// to write: an error it returns fails the write, which then changes
// nothing, unless it wraps dfstest.ErrApplied (made, and its answer
// lost). beforeGet, likewise, ahead of each read of one row (Get: the
// copier's look at a progress row after a write failed).
type hookedStore struct {
	store.Store
	mu        sync.Mutex
	n         int
	before    func(n int, row string, cells []store.Cell) error
	beforeGet func(row string) error
}

func (s *hookedStore) CheckAndPut(ctx context.Context, table, row, column string, expected []byte, cells []store.Cell) (bool, error) {
	s.mu.Lock()
	n := s.n
	s.n++
	before := s.before
	s.mu.Unlock()
	var err error
	if before != nil {
		err = before(n, row, cells)
	}
	if err != nil && !errors.Is(err, dfstest.ErrApplied) {
		return false, err
	}
	ok, perr := s.Store.CheckAndPut(ctx, table, row, column, expected, cells)
	if perr != nil {
		return false, perr
	}
	if err != nil {
		return false, err
	}
	return ok, nil
}

func (s *hookedStore) Get(ctx context.Context, table, row string, asOf int64) ([]store.Cell, error) {
	if s.beforeGet != nil {
		if err := s.beforeGet(row); err != nil {
			return nil, err
		}
	}
	return s.Store.Get(ctx, table, row, asOf)
}

// progressTable is the table of the crash tests' copiers (the default).
const progressTable = "copier"

// dumpStore returns the progress rows of st.
func dumpStore(st store.Store) ([]store.Cell, error) {
	var cells []store.Cell
	err := st.Scan(context.Background(), progressTable, "", "", store.Latest, func(_ string, cs []store.Cell) error {
		cells = append(cells, cs...)
		return nil
	})
	return cells, err
}

// crashRun is a copier of the workload over a source, a destination and
// a store, holding the lease.
type crashRun struct {
	*node
	lease coord.Lease
	clock *clock
	w     *crashWork
	src   *timedFS
}

// startCrashRun starts a copier and takes the lease (each run's epoch is
// above the runs' before it, as the coordinator's are).
func startCrashRun(t *testing.T, w *crashWork, src *timedFS, dst dfs.FS, st store.Store, clock *clock) *crashRun {
	t.Helper()
	e := &env{src: src, dst: dst, st: st, hub: inproc.NewHub()}
	n := e.copier(t, "crash", w.config(clock))
	lease, err := n.session.Acquire(context.Background(), progressTable, "crash")
	if err != nil {
		t.Fatal(err)
	}
	return &crashRun{node: n, lease: lease, clock: clock, w: w, src: src}
}

// pass makes a pass as Run does, at the clock's time.
func (r *crashRun) pass(at time.Time) (Stats, error) {
	r.clock.Set(at)
	return r.Copier.pass(context.Background(), r.lease, nil, false)
}

// stop ends the run's process: its lease goes.
func (r *crashRun) stop() { r.session.Close() }

// work makes the workload's passes, publishing before each.
func (r *crashRun) work(t *testing.T, failOK bool) {
	t.Helper()
	for _, at := range r.w.clocks {
		r.src.publish(t, r.w, at)
		if st, err := r.pass(at); err != nil && !failOK {
			t.Fatalf("pass at %s: %v (%+v)", at.Sub(t0), err, st)
		}
	}
}

// finish makes passes at the end of the workload until one has nothing
// left to do, and fails if none does in a few.
func (r *crashRun) finish() error {
	var err error
	for range 4 {
		var st Stats
		st, err = r.pass(r.w.end())
		if err == nil && st.Lag == 0 && st.Copied+st.Merged+st.Replaced == 0 {
			return nil
		}
	}
	return fmt.Errorf("still not done after 4 passes: %v", err)
}

// copierCrashPoint is the state of the destination and of the store
// before one of the copier's changes to either.
type copierCrashPoint struct {
	n     int
	what  string
	snap  *dfstest.Snapshot
	cells []store.Cell
}

// recordCopierCrashes runs the workload over a new destination (like
// HDFS if hdfs) and returns the crash points: before each change to the
// destination (from New's probe on) and each progress write, and at the
// end. It returns the source, full, and the destination as the run left
// it.
func recordCopierCrashes(t *testing.T, w *crashWork, hdfs bool) ([]copierCrashPoint, *timedFS, dfstest.Image) {
	t.Helper()
	src := newTimedFS(dfstest.NewCrashFS(), "mem://source")
	dst := dfstest.NewCrashFS()
	if hdfs {
		dst.LikeHDFS()
	}
	points, img := recordRun(t, w, src, dst, dst, nil, func(r *crashRun) { r.work(t, false) })
	return points, src, img
}

// recordRecovery returns the crash points of a copier that recovers the
// crash state s, as recordCopierCrashes does, and the destination it
// leaves.
func recordRecovery(t *testing.T, w *crashWork, src *timedFS, s copierCrashState, hdfs bool) ([]copierCrashPoint, dfstest.Image) {
	t.Helper()
	dst := restartedDest(s.img, hdfs)
	return recordRun(t, w, src, dst.CrashFS, dst, s.p.cells, func(r *crashRun) {
		if err := r.finish(); err != nil {
			t.Fatalf("recovering %s: %v", s, err)
		}
	})
}

// recordRun starts a copier over src, dst (as the copier sees crash) and
// a store holding cells, at the workload's first clock, runs it, and
// returns the crash points of the run and the destination it leaves.
func recordRun(t *testing.T, w *crashWork, src *timedFS, crash *dfstest.CrashFS, dst dfs.FS, cells []store.Cell, run func(*crashRun)) ([]copierCrashPoint, dfstest.Image) {
	t.Helper()
	bolt := openCrashStore(t, filepath.Join(t.TempDir(), "store.db"), cells)
	defer bolt.Close()
	var points []copierCrashPoint
	ops := 0
	record := func(what string, snap *dfstest.Snapshot) {
		cells, err := dumpStore(bolt)
		if err != nil {
			t.Error(err)
		}
		points = append(points, copierCrashPoint{n: ops, what: what, snap: snap, cells: cells})
		ops++
	}
	crash.SetHook(func(_ int, c dfstest.Call, s *dfstest.Snapshot) {
		record(strings.TrimSpace(fmt.Sprintf("%s %s %s", c.Op, c.Name, c.To)), s)
	})
	st := &hookedStore{Store: bolt, before: func(_ int, row string, _ []store.Cell) error {
		record("progress write "+row, crash.Snapshot())
		return nil
	}}
	r := startCrashRun(t, w, src, dst, st, &clock{t: w.clocks[0]})
	run(r)
	r.stop()
	crash.SetHook(nil)
	record("end", crash.Snapshot())
	return points, crash.Snapshot().Killed()
}

// openCrashStore opens a bbolt store at file holding cells.
func openCrashStore(t *testing.T, file string, cells []store.Cell) *boltstore.Store {
	t.Helper()
	st, err := boltstore.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	if len(cells) > 0 {
		if err := st.Put(context.Background(), progressTable, cells); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

// copierCrashState is one image of a crash point.
type copierCrashState struct {
	p     copierCrashPoint
	model string
	img   dfstest.Image
}

func (s copierCrashState) String() string {
	return fmt.Sprintf("crash before operation %d (%s), %s", s.p.n, s.p.what, s.model)
}

// copierCrashStates are the distinct images of the points (by the
// destination's files and the store's cells): killed, powered off,
// powered off with a prefix of the unsynced writes, torn; like HDFS,
// killed and killed with a prefix of the files not closed.
func copierCrashStates(points []copierCrashPoint, hdfs bool, rng *rand.Rand) []copierCrashState {
	seen := map[uint64]bool{}
	var out []copierCrashState
	for _, p := range points {
		states := []copierCrashState{
			{p, "killed", p.snap.Killed()},
			{p, "powered off", p.snap.PowerLoss(nil)},
			{p, "powered off, a prefix of the unsynced writes kept", p.snap.PowerLoss(rng)},
			{p, "powered off, the unsynced writes torn", p.snap.Torn(rng)},
		}
		if hdfs {
			states = []copierCrashState{
				{p, "killed", p.snap.Killed()},
				{p, "killed, a prefix of the files not closed kept", p.snap.KilledHDFS(rng)},
			}
		}
		for _, s := range states {
			h := fnv.New64a()
			for _, name := range slices.Sorted(maps.Keys(s.img.Files)) {
				_, _ = fmt.Fprintf(h, "%s %d ", name, len(s.img.Files[name])) // a hash's writes never fail
				_, _ = h.Write(s.img.Files[name])
			}
			for _, c := range s.p.cells {
				_, _ = fmt.Fprintf(h, "%s %s %q ", c.Row, c.Column, c.Value)
			}
			if !seen[h.Sum64()] {
				seen[h.Sum64()] = true
				out = append(out, s)
			}
		}
	}
	return out
}

// crashWant is what the destination holds once the workload is copied:
// the source's segments, or the merged files of a run without crash.
type crashWant struct {
	w     *crashWork
	files map[string][]byte // published name → contents
	// then, if not nil, is the workload as the restarted copier is
	// configured (merge_period set or removed across the restart): what
	// it leaves is checked by its lines.
	then *crashWork
	// mixed: the crash states hold the work of both configurations; the
	// progress is not checked against them.
	mixed bool
}

// restarted is the workload as the restarted copier is configured.
func (cw *crashWant) restarted() *crashWork {
	if cw.then != nil {
		return cw.then
	}
	return cw.w
}

// newCrashWant is what the destination must hold: every segment of the
// source; when merging, the files of clean (a run without crash), which
// are first checked to hold each bucket's lines once, in order.
func newCrashWant(t *testing.T, w *crashWork, clean dfstest.Image) *crashWant {
	t.Helper()
	want := &crashWant{w: w, files: map[string][]byte{}}
	if !w.merge {
		for _, s := range w.segs {
			want.files[s.name] = s.data
		}
		return want
	}
	for name, data := range clean.Files {
		if !dfs.Hidden(name) {
			want.files[name] = data
		}
	}
	for _, b := range crashBuckets {
		got, err := want.mergedText(b, want.files)
		if err != nil {
			t.Fatal(err)
		}
		if all := w.text(b, ptail.After("~")); got != all {
			t.Fatalf("a run without crash merged %s into %q, want %q", b.dir(), got, all)
		}
	}
	if len(want.files) != crashHours*len(crashBuckets) {
		t.Fatalf("a run without crash merged %d files, want %d hours of %d buckets", len(want.files), crashHours, len(crashBuckets))
	}
	return want
}

// mergedText is the lines of b's merged files among files, in period order.
func (cw *crashWant) mergedText(b crashBucket, files map[string][]byte) (string, error) {
	part := path.Base(layout.MergedFile(b.cat, b.bucket, t0, time.Hour, ""))
	var sb strings.Builder
	for _, name := range slices.Sorted(maps.Keys(files)) {
		if !strings.HasPrefix(name, layout.CategoryDir(b.cat)+"/") || strings.TrimSuffix(path.Base(name), ".gz") != part {
			continue
		}
		data := files[name]
		if strings.HasSuffix(name, ".gz") {
			zr, err := gzip.NewReader(bytes.NewReader(data))
			if err != nil {
				return "", fmt.Errorf("%s: %w", name, err)
			}
			if data, err = io.ReadAll(zr); err != nil {
				return "", fmt.Errorf("%s: %w", name, err)
			}
		}
		sb.Write(data)
	}
	return sb.String(), nil
}

// checkImage checks what a crash left, before anything recovers it: every
// published file is whole and right (a reader may read it at once), and
// each bucket's progress points at nothing the destination does not hold.
func (cw *crashWant) checkImage(img dfstest.Image, cells []store.Cell) []string {
	var problems []string
	for name, data := range img.Files {
		if dfs.Hidden(name) {
			if path.Base(name) == layout.SidecarName && !isSidecarOf(name, data) {
				problems = append(problems, fmt.Sprintf("sidecar %s holds %.20q", name, data))
			}
			continue
		}
		if want, ok := cw.files[name]; !ok {
			problems = append(problems, fmt.Sprintf("%s published, and never is without a crash", name))
		} else if !bytes.Equal(data, want) {
			problems = append(problems, fmt.Sprintf("%s published with %d bytes, not its %d", name, len(data), len(want)))
		}
	}
	if cw.mixed {
		slices.Sort(problems)
		return problems
	}
	rows := map[string][]store.Cell{}
	for _, c := range cells {
		rows[c.Row] = append(rows[c.Row], c)
	}
	for _, b := range crashBuckets {
		m, ok := markFromCells(rows[b.dir()])
		if !ok {
			continue
		}
		if !cw.w.merge {
			for _, s := range cw.w.bucketSegs(b) {
				if path.Base(s.name) <= m.last && !bytes.Equal(img.Files[s.name], s.data) {
					problems = append(problems, fmt.Sprintf("progress of %s at %s, and %s is not at the destination", b.dir(), m.last, s.name))
				}
			}
			continue
		}
		got, err := cw.mergedText(b, img.Files)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		if all := cw.w.text(b, ptail.After("~")); !strings.HasPrefix(all, got) {
			problems = append(problems, fmt.Sprintf("%s merged into %q, not the start of its lines", b.dir(), got))
		}
		if m.merge == nil {
			problems = append(problems, fmt.Sprintf("progress of %s without merge position", b.dir()))
			continue
		}
		if done := cw.w.text(b, m.merge.Pos); len(got) < len(done) {
			problems = append(problems, fmt.Sprintf("merge progress of %s at %s, and only %d of its %d bytes of lines are published", b.dir(), m.merge.Pos, len(got), len(done)))
		}
		if done := cw.w.text(b, ptail.After(m.last)); len(got) < len(done) {
			problems = append(problems, fmt.Sprintf("progress of %s at %s, and only %d of its %d bytes of lines are published", b.dir(), m.last, len(got), len(done)))
		}
	}
	slices.Sort(problems)
	return problems
}

// isSidecarOf reports whether data, at name, names the category of name.
func isSidecarOf(name string, data []byte) bool {
	for _, b := range crashBuckets {
		if layout.SidecarPath(b.cat) == name {
			return string(data) == b.cat
		}
	}
	return false
}

// checkDone checks a destination a copier has finished: what it must
// hold and nothing else (no temporary file), and every bucket's progress
// at its last segment. After a switch (then), each bucket's lines, in
// its merged files and its segments there, must be its lines once.
func (cw *crashWant) checkDone(t *testing.T, dst dfs.FS, st store.Store) []string {
	t.Helper()
	var problems []string
	got := map[string][]byte{}
	for _, name := range files(t, dst, "") {
		if dfs.Hidden(name) && path.Base(name) != layout.SidecarName {
			problems = append(problems, name+" left over")
			continue
		}
		got[name] = readFile(t, dst, name)
	}
	if cw.then != nil {
		problems = append(problems, cw.checkLines(got)...)
	} else {
		cells, err := dumpStore(st)
		if err != nil {
			t.Fatal(err)
		}
		problems = append(problems, cw.checkImage(dfstest.Image{Files: got}, cells)...)
		for name := range cw.files {
			if _, ok := got[name]; !ok {
				problems = append(problems, name+" not at the destination")
			}
		}
	}
	for _, b := range crashBuckets {
		segs := cw.w.bucketSegs(b)
		last, err := LastCopied(context.Background(), st, progressTable, b.cat, b.bucket)
		if err != nil {
			t.Fatal(err)
		}
		if want := path.Base(segs[len(segs)-1].name); last != want {
			problems = append(problems, fmt.Sprintf("progress of %s at %q, want %q", b.dir(), last, want))
		}
	}
	return problems
}

// checkLines checks that the lines of each bucket's merged files among
// files, in period order, and of its segments, in name order, the first
// copier's first, are the bucket's lines, each once.
func (cw *crashWant) checkLines(files map[string][]byte) []string {
	var problems []string
	for _, b := range crashBuckets {
		merged, err := cw.mergedText(b, files)
		if err != nil {
			problems = append(problems, err.Error())
			continue
		}
		var copied strings.Builder
		for _, name := range slices.Sorted(maps.Keys(files)) {
			if path.Dir(name) != b.dir() {
				continue
			}
			r, err := segment.NewReader(bytes.NewReader(files[name]), 0)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", name, err))
				continue
			}
			var blk segment.Block
			for {
				if err := r.Next(&blk); errors.Is(err, io.EOF) {
					break
				} else if err != nil {
					problems = append(problems, fmt.Sprintf("%s: %v", name, err))
					break
				}
				for _, m := range blk.Messages {
					copied.WriteString(string(m) + "\n")
				}
			}
		}
		// The lines of the first copier, then the restarted one's.
		got := copied.String() + merged
		if cw.w.merge {
			got = merged + copied.String()
		}
		if want := cw.w.text(b, ptail.After("~")); got != want {
			problems = append(problems, fmt.Sprintf("%s: merged %q, copied %q, want its lines once", b.dir(), merged, copied.String()))
		}
	}
	return problems
}

// recoverCrash checks the crash state s, then starts a copier over it
// that finishes the workload, and checks what it leaves: see checkDone;
// and it logs no error.
func (cw *crashWant) recoverCrash(t *testing.T, s copierCrashState, src *timedFS, hdfs bool, dir string) []string {
	t.Helper()
	problems := cw.checkImage(s.img, s.p.cells)
	dst := restartedDest(s.img, hdfs)
	st := openCrashStore(t, filepath.Join(dir, "store.db"), s.p.cells)
	defer os.Remove(filepath.Join(dir, "store.db"))
	defer st.Close()
	r := startCrashRun(t, cw.restarted(), src, dst, st, &clock{t: cw.w.end()})
	defer r.stop()
	if err := r.finish(); err != nil {
		problems = append(problems, fmt.Sprintf("restarted copier: %v", err))
	}
	problems = append(problems, cw.checkDone(t, dst, st)...)
	for _, l := range r.logs.Lines("level=ERROR") {
		problems = append(problems, "error logged: "+l)
	}
	return problems
}

// crashModes are the ways the crash tests run the copier: copying
// segments and merging them (plain and gzip), to a local disk and to
// HDFS; and restarted otherwise configured.
var crashModes = []struct {
	name     string
	merge    bool
	compress string
	hdfs     bool
	then     *crashWork // if not nil, the restarted copier's configuration
}{
	{"copying", false, "", false, nil},
	{"copying to HDFS", false, "", true, nil},
	{"merging", true, CompressionNone, false, nil},
	{"merging gzip", true, CompressionGzip, false, nil},
	{"merging gzip to HDFS", true, CompressionGzip, true, nil},
	{"copying, then merging", false, "", false, newCrashWork(true, CompressionNone)},
	{"merging gzip, then copying", true, CompressionGzip, false, newCrashWork(false, "")},
	{"merging, then merging gzip by the half hour", true, CompressionNone, false, halfHourly(newCrashWork(true, CompressionGzip))},
}

// halfHourly is w merging by the half hour.
func halfHourly(w *crashWork) *crashWork {
	w.period = 30 * time.Minute
	return w
}

// TestCopierCrashAtEveryOperation crashes the copier before each of its
// changes to the destination (New's probe included) and each progress
// write, in turn, under every kind of crash the destination can have;
// checks what the crash left (no partial or wrong file published, no
// progress past what the destination holds), and that a copier started
// over it finishes the workload: every source segment (merged: every
// line) at the destination exactly once, as it is in the source, no
// temporary file left, progress at the end of every bucket, and no error
// logged.
func TestCopierCrashAtEveryOperation(t *testing.T) {
	for _, mode := range crashModes {
		t.Run(mode.name, func(t *testing.T) {
			w := newCrashWork(mode.merge, mode.compress)
			points, src, clean := recordCopierCrashes(t, w, mode.hdfs)
			cw := newCrashWant(t, w, clean)
			cw.then = mode.then
			dir := t.TempDir()
			states := copierCrashStates(points, mode.hdfs, rand.New(rand.NewPCG(7, 11)))
			failed := 0
			for _, s := range states {
				if problems := cw.recoverCrash(t, s, src, mode.hdfs, dir); len(problems) > 0 {
					failed++
					if failed <= 10 {
						t.Errorf("%s: %s", s, strings.Join(problems, "; "))
					}
				}
			}
			// The recovery crashed in turn, from a sample of the states
			// that leave it temporary files to remove.
			var leftovers []copierCrashState
			for _, s := range states {
				if hasTemp(s.img) {
					leftovers = append(leftovers, s)
				}
			}
			nested := 0
			for k, s1 := range leftovers {
				if k%max(1, len(leftovers)/crashNested) != 0 {
					continue
				}
				points, end := recordRecovery(t, cw.restarted(), src, s1, mode.hdfs)
				cw2 := cw
				if cw.then != nil {
					// What the recovery publishes, after what the crashed
					// copier did the other way.
					cw2 = &crashWant{w: cw.w, files: map[string][]byte{}, then: cw.then, mixed: true}
					for name, data := range end.Files {
						if !dfs.Hidden(name) {
							cw2.files[name] = data
						}
					}
				}
				for _, s := range copierCrashStates(points, mode.hdfs, rand.New(rand.NewPCG(uint64(k), 5))) {
					nested++
					if problems := cw2.recoverCrash(t, s, src, mode.hdfs, dir); len(problems) > 0 {
						failed++
						if failed <= 10 {
							t.Errorf("%s; then its recovery's %s: %s", s1, s, strings.Join(problems, "; "))
						}
					}
				}
			}
			if failed > 0 {
				t.Errorf("%d of %d crash states failed", failed, len(states)+nested)
			}
			if nested == 0 {
				t.Error("no crash left a temporary file: the recovery is not crashed")
			}
			t.Logf("%d segments, %d crash points, %d distinct states checked, %d of a recovery crashed", len(w.segs), len(points), len(states), nested)
		})
	}
}

// crashNested is how many crash states have their recovery crashed.
const crashNested = 4

// hasTemp reports whether img holds a hidden file other than a sidecar.
func hasTemp(img dfstest.Image) bool {
	for name := range img.Files {
		if dfs.Hidden(name) && path.Base(name) != layout.SidecarName {
			return true
		}
	}
	return false
}

// TestCopierFaultAtEveryOperation fails each of the copier's changes to
// the destination and each progress write in turn, once (an I/O error;
// then again with the change made all the same: an fsync's error after
// the write, an answer lost; and a progress write made whose answer and
// the copier's look at the row after it are both lost), the copier going
// on in the same process through the workload and a few passes more:
// then the destination holds what it must and nothing else, the progress
// is at the end of every bucket, every error logged is the failure's, and
// the copier never takes its own progress write for another copier's
// (which would have it stand by, its lease taken for lost).
func TestCopierFaultAtEveryOperation(t *testing.T) {
	for _, mode := range crashModes {
		if mode.hdfs || mode.then != nil {
			continue // a failure is the same there; the copier does not restart
		}
		t.Run(mode.name, func(t *testing.T) {
			w := newCrashWork(mode.merge, mode.compress)
			// A run without failure, for the operations to fail.
			_, _, clean := recordCopierCrashes(t, w, false)
			cw := newCrashWant(t, w, clean)
			first, dstOps, writes := faultRun(t, w, nil, nil, nil)
			runs, failed := 0, 0
			check := func(what string, problems []string) {
				runs++
				if len(problems) > 0 {
					failed++
					if failed <= 10 {
						t.Errorf("%s: %s", what, strings.Join(problems, "; "))
					}
				}
			}
			for _, applied := range []bool{false, true} {
				inject := func(what string) error {
					err := fmt.Errorf("injected at %s: %w", what, syscall.EIO)
					if applied {
						err = fmt.Errorf("%w: %w", err, dfstest.ErrApplied)
					}
					return err
				}
				for k := first; k < dstOps; k++ {
					var what string
					problems := cw.faultCheck(t, w, func(n int, c dfstest.Call) error {
						if n != k {
							return nil
						}
						what = fmt.Sprintf("operation %d (%s %s %s) failed (applied: %v)", n, c.Op, c.Name, c.To, applied)
						return inject(what)
					}, nil)
					check(what, problems)
				}
				for k := range writes {
					what := fmt.Sprintf("progress write %d failed (applied: %v)", k, applied)
					check(what, cw.faultCheck(t, w, nil, &hookedStore{before: func(n int, row string, _ []store.Cell) error {
						if n != k {
							return nil
						}
						return inject(what + " of " + row)
					}}))
				}
			}
			for k := range writes {
				what := fmt.Sprintf("progress write %d made, its answer and the look at the row after it lost", k)
				var failRead atomic.Bool
				hooks := &hookedStore{}
				hooks.before = func(n int, row string, _ []store.Cell) error {
					if n != k {
						return nil
					}
					failRead.Store(true)
					return fmt.Errorf("injected at %s of %s: %w: %w", what, row, syscall.EIO, dfstest.ErrApplied)
				}
				hooks.beforeGet = func(row string) error {
					if !failRead.CompareAndSwap(true, false) {
						return nil
					}
					return fmt.Errorf("injected at the read of %s after %s: %w", row, what, syscall.EIO)
				}
				check(what, cw.faultCheck(t, w, nil, hooks))
			}
			if failed > 0 {
				t.Errorf("%d of %d failures failed", failed, runs)
			}
			t.Logf("%d operations and %d progress writes failed in turn, before and after they took effect", dstOps-first, writes)
		})
	}
}

// faultRun runs the workload and a few passes more (finish) with the
// faults given on a new destination and on a new store through hooks
// (nil: none), and returns the number of the destination's first change
// after New, and how many changes and progress writes there were in all.
// What it left, with what finish returned, goes to check (nil: finish
// must succeed).
func faultRun(t *testing.T, w *crashWork, dstFault func(int, dfstest.Call) error, hooks *hookedStore,
	check func(r *crashRun, dst dfs.FS, st store.Store, finished error)) (first, dstOps, writes int) {
	t.Helper()
	dst := dfstest.NewCrashFS()
	bolt := openCrashStore(t, filepath.Join(t.TempDir(), "store.db"), nil)
	defer bolt.Close()
	st := hooks
	if st == nil {
		st = &hookedStore{}
	}
	st.Store = bolt
	dst.SetFault(dstFault)
	r := startCrashRun(t, w, newTimedFS(dfstest.NewCrashFS(), "mem://source"), dst, st, &clock{t: w.clocks[0]})
	defer r.stop()
	first = dst.Ops()
	r.work(t, true)
	finished := r.finish()
	if check != nil {
		check(r, dst, bolt, finished) // the check reads the store as it is, without the faults
	} else if finished != nil {
		t.Fatal(finished)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return first, dst.Ops(), st.n
}

// faultCheck runs the workload with the faults given and returns the
// problems with what it leaves: see checkDone; an error logged that is
// not the failure's; and a pass stopped for another copier's progress
// write, when there is no other copier.
func (cw *crashWant) faultCheck(t *testing.T, w *crashWork, dstFault func(int, dfstest.Call) error, hooks *hookedStore) []string {
	t.Helper()
	var problems []string
	faultRun(t, w, dstFault, hooks, func(r *crashRun, dst dfs.FS, st store.Store, finished error) {
		if finished != nil {
			problems = append(problems, finished.Error())
		}
		problems = append(problems, cw.checkDone(t, dst, st)...)
		for _, l := range r.logs.Lines("level=ERROR") {
			if !strings.Contains(l, "injected") {
				problems = append(problems, "error logged: "+l)
			}
		}
		for _, l := range r.logs.Lines("another copier") {
			problems = append(problems, "took its own write for another copier's: "+l)
		}
	})
	return problems
}

// TestNewerHoldersEqualProgressFencesTheStaleCopier: a copier lost its
// lease without seeing it yet, and the new holder (the same copier id,
// restarted, under the next epoch) records a bucket's progress exactly
// where the stale copier was about to: the same segment done. The stale
// copier's write is refused, and the row then holds what it wrote but
// the owner: it must not take it for its own write made with the answer
// lost, but stop its pass, never writing over the new holder's progress.
func TestNewerHoldersEqualProgressFencesTheStaleCopier(t *testing.T) {
	w := newCrashWork(false, "")
	src := newTimedFS(dfstest.NewCrashFS(), "mem://source")
	bolt := openCrashStore(t, filepath.Join(t.TempDir(), "store.db"), nil)
	defer bolt.Close()
	st := &hookedStore{Store: bolt}
	r := startCrashRun(t, w, src, dfstest.NewCrashFS(), st, &clock{t: w.clocks[0]})
	defer r.stop()
	newer := ownerTag("crash", r.lease.Epoch()+1)
	var row string
	st.before = func(n int, at string, cells []store.Cell) error {
		if n != 0 {
			return nil
		}
		row = at
		var theirs []store.Cell
		for _, c := range cells {
			if c.Column == colOwner {
				c.Value = []byte(newer)
			}
			theirs = append(theirs, c)
		}
		return bolt.Put(context.Background(), progressTable, theirs)
	}
	src.publish(t, w, w.clocks[0])
	if _, err := r.pass(w.clocks[0]); !errors.Is(err, errFenced) {
		t.Errorf("stale copier's pass: %v, want it fenced", err)
	}
	cells, err := bolt.Get(context.Background(), progressTable, row, store.Latest)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cells {
		if c.Column == colOwner && string(c.Value) != newer {
			t.Errorf("progress of %s written by %s over the new holder %s's", row, c.Value, newer)
		}
	}
}
