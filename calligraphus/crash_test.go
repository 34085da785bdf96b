package calligraphus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"math/rand/v2"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/testkit"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// crashPoint is the state of the dfs before one of the writer's changes
// to it, with how many of the agent's batches had been answered OK.
type crashPoint struct {
	n    int
	call dfstest.Call
	snap *dfstest.Snapshot
	ok   []bool // the batches answered OK so far
	sent []int  // how many times each batch was sent so far
}

// errorLog keeps the records of level Error a writer logs.
type errorLog struct {
	mu   sync.Mutex
	recs []string
}

func (l *errorLog) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelError }
func (l *errorLog) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	l.mu.Lock()
	l.recs = append(l.recs, b.String())
	l.mu.Unlock()
	return nil
}
func (l *errorLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *errorLog) WithGroup(string) slog.Handler      { return l }

// crashCategories: a long one among them, whose directory has a
// sidecar naming it.
// crashAgents send the batches, each its own in order, all at once.
const crashAgents = 3

var crashCategories = []string{"c0", "c1", "c2" + strings.Repeat("-long", 60)}

// crashBatches are the agents' batches (batch k is agent k%crashAgents'):
// each of entries to one, two or
// three of the categories (so one call writes several buckets), big
// enough that the buckets' segments roll every few batches.
func crashBatches(n int) []*scribethrift.Batch {
	inc := "inc1"
	seqs := map[string]int64{}
	out := make([]*scribethrift.Batch, n)
	for k := range n {
		agent := fmt.Sprintf("agent%d", k%crashAgents)
		seq := max(1, seqs[agent])
		b := &scribethrift.Batch{AgentID: agent, Incarnation: &inc, FirstSeq: seq}
		for j := range 1 + k%3 {
			msg := fmt.Sprintf("b%03d.e%d.s%d-%s", k, j, seq, strings.Repeat("x", 100+37*(k%5)))
			b.Messages = append(b.Messages, &scribethrift.LogEntry{Category: crashCategories[(k+j)%len(crashCategories)], Message: []byte(msg)})
			seq++
		}
		seqs[agent] = seq
		out[k] = b
	}
	return out
}

func crashConfig() Config {
	cfg := testConfig()
	cfg.SegmentMaxBytes = 1024
	cfg.Linger = 0
	// A forward to a writer that stalled (crashPair) waits this long.
	cfg.ForwardTimeout = config.Duration(100 * time.Millisecond)
	return cfg
}

// startCrashWriter starts a writer over fsys with a coordinator of its
// own (the crashed writer's session is gone with it), logging to log.
func startCrashWriter(t *testing.T, fsys dfs.FS, log slog.Handler, skew *atomic.Int64, timed bool) (*Calligraphus, func()) {
	t.Helper()
	return startCrashWriterAs(t, "w1", fsys, inproc.NewHub().Session(), NewRouter(1, nil), log, skew, timed)
}

// startCrashWriterAs starts the writer id over fsys with the
// coordinator co, its own: closed when the writer stops.
func startCrashWriterAs(t *testing.T, id string, fsys dfs.FS, co coord.Coord, router *Router, log slog.Handler, skew *atomic.Int64, timed bool) (*Calligraphus, func()) {
	t.Helper()
	cfg := crashConfig()
	cfg.ID = id
	if timed {
		cfg.SegmentMaxAge = config.Duration(10 * time.Millisecond)
		cfg.IdleClose = config.Duration(10 * time.Millisecond)
	}
	c, err := New(cfg, Deps{FS: fsys, Coord: co, Router: router,
		Common: component.Common{Log: slog.New(log), Metrics: prometheus.NewRegistry(), Version: "test"}})
	if err != nil {
		t.Fatal(err)
	}
	c.now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	for {
		c.mu.Lock()
		running := c.ctx != nil
		c.mu.Unlock()
		if running {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run: %v", err)
		default:
		}
		time.Sleep(time.Millisecond)
	}
	var once sync.Once
	return c, func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
			co.Close()
		})
	}
}

// crashWorkload is an agent's batches, and a probe: one entry to every
// bucket, sent last to every writer after a crash so that it takes each
// bucket (and salvages what is left there). Batch len(batches) is the
// probe.
type crashWorkload struct {
	batches []*scribethrift.Batch
	probe   *scribethrift.Batch
	// timed: segments are published by age, bucket writers end when
	// idle, and the agents pause now and then for both to happen.
	timed bool
	// salvaged: the agents wait, before they send, until the writer has
	// salvaged every unpublished segment by itself (a local disk).
	salvaged bool
}

func (wl *crashWorkload) batch(i int) *scribethrift.Batch {
	if i == len(wl.batches) {
		return wl.probe
	}
	return wl.batches[i]
}

// crashSender is the agents' side of a run: which batches were
// answered OK, and how many times each batch was sent.
type crashSender struct {
	ok    []atomic.Bool
	sent  []atomic.Int64
	retry bool // a batch answered TRY_LATER is sent again
}

// newCrashSender returns a sender that goes on from a crash point p (nil:
// from the start).
func newCrashSender(wl *crashWorkload, p *crashPoint, retry bool) *crashSender {
	s := &crashSender{ok: make([]atomic.Bool, len(wl.batches)+1), sent: make([]atomic.Int64, len(wl.batches)+1), retry: retry}
	if p != nil {
		for i := range s.sent {
			s.sent[i].Store(int64(p.sent[i]))
			s.ok[i].Store(p.ok[i])
		}
	}
	return s
}

func (s *crashSender) oks() []bool {
	out := make([]bool, len(s.ok))
	for i := range s.ok {
		out[i] = s.ok[i].Load()
	}
	return out
}

func (s *crashSender) sends() []int {
	out := make([]int, len(s.sent))
	for i := range s.sent {
		out[i] = int(s.sent[i].Load())
	}
	return out
}

// runCrashWriter starts a writer over fsys, sends the batches of send,
// each agent's in order and the agents at once (each batch until it is
// answered OK, if the sender retries: the writer's clock is moved on
// past its pause after a failure meanwhile), and stops it.
func runCrashWriter(t *testing.T, fsys dfs.FS, log slog.Handler, wl *crashWorkload, send []int, s *crashSender) error {
	var skew atomic.Int64
	c, stop := startCrashWriter(t, fsys, log, &skew, wl.timed)
	defer stop()
	if wl.salvaged && fsys.SyncDurable() {
		testkit.WaitFor(t, "the unpublished segments salvaged", func() bool {
			for _, cat := range crashCategories {
				names, err := dfs.ReadDirNames(fsys, layout.BucketDir(cat, 0))
				if err != nil && !errors.Is(err, fs.ErrNotExist) {
					t.Fatal(err)
				}
				for _, name := range names {
					if _, ok := layout.ParseTempSegment(name); ok {
						return false
					}
				}
			}
			return true
		})
	}
	lanes := map[string][]int{}
	for _, i := range send {
		a := wl.batch(i).AgentID
		lanes[a] = append(lanes[a], i)
	}
	errs := make(chan error, len(lanes))
	for _, lane := range lanes {
		go func() {
			for _, i := range lane {
				for try := 0; ; try++ {
					s.sent[i].Add(1)
					rc, err := c.LogBatch(context.Background(), wl.batch(i))
					if err == nil && rc == scribethrift.ResultCode_OK {
						break
					}
					if !s.retry || try == 20 {
						errs <- fmt.Errorf("batch %d: %v %v", i, rc, err)
						return
					}
					skew.Add(int64(2 * time.Second))
				}
				s.ok[i].Store(true)
				if wl.timed && i%2 == 0 {
					time.Sleep(15 * time.Millisecond)
				}
			}
			errs <- nil
		}()
	}
	var first error
	for range lanes {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// recordCrashes runs a writer over fsys as runCrashWriter does and
// returns the crash points: the state before each of its changes to the
// file system for which keep (nil: every one) says so, and at the end.
func recordCrashes(t *testing.T, fsys *dfstest.CrashFS, wl *crashWorkload, send []int, s *crashSender, keep func(n int, c dfstest.Call) bool) []crashPoint {
	t.Helper()
	return recordCrashesLog(t, fsys, wl, send, s, keep, slog.DiscardHandler)
}

// recordCrashesLog is recordCrashes with the writer logging to log.
func recordCrashesLog(t *testing.T, fsys *dfstest.CrashFS, wl *crashWorkload, send []int, s *crashSender, keep func(n int, c dfstest.Call) bool, log slog.Handler) []crashPoint {
	t.Helper()
	var points []crashPoint
	fsys.SetHook(func(n int, c dfstest.Call, snap *dfstest.Snapshot) {
		if keep == nil || keep(n, c) {
			points = append(points, crashPoint{n: n, call: c, snap: snap, ok: s.oks(), sent: s.sends()})
		}
	})
	err := runCrashWriter(t, fsys, log, wl, send, s)
	fsys.SetHook(nil)
	if err != nil {
		t.Fatal(err)
	}
	return append(points, crashPoint{n: fsys.Ops(), call: dfstest.Call{Op: "end"}, snap: fsys.Snapshot(), ok: s.oks(), sent: s.sends()})
}

// tornModel names the images where a power loss tore the unsynced
// writes: the salvage may find damage there, and say so.
const tornModel = "powered off, the unsynced writes torn"

// crashState is one image of a crash at a crash point.
type crashState struct {
	p     crashPoint
	model string
	img   dfstest.Image
}

// crashStates returns the images of the crash points, each distinct one
// once (by its files and the batches sent and answered): killed, powered
// off, powered off with a prefix of the unsynced writes, and torn.
func crashStates(points []crashPoint, rng *rand.Rand, seen map[uint64]bool) []crashState {
	var out []crashState
	for _, p := range points {
		for _, m := range []crashState{
			{p, "killed", p.snap.Killed()},
			{p, "powered off", p.snap.PowerLoss(nil)},
			{p, "powered off, a prefix of the unsynced writes kept", p.snap.PowerLoss(rng)},
			{p, tornModel, p.snap.Torn(rng)},
		} {
			if !distinct(m, seen) {
				continue
			}
			out = append(out, m)
		}
	}
	return out
}

// distinct reports whether s is the first of its kind in seen (by its
// files and the batches sent and answered), and records it.
func distinct(s crashState, seen map[uint64]bool) bool {
	h := fnv.New64a()
	_, _ = fmt.Fprint(h, s.p.ok, s.p.sent) // a hash's writes never fail
	for _, name := range slices.Sorted(maps.Keys(s.img.Files)) {
		_, _ = fmt.Fprintf(h, "%s %d ", name, len(s.img.Files[name]))
		_, _ = h.Write(s.img.Files[name])
	}
	if seen[h.Sum64()] {
		return false
	}
	seen[h.Sum64()] = true
	return true
}

func (s crashState) String() string {
	var ok []int
	for i, o := range s.p.ok {
		if o {
			ok = append(ok, i)
		}
	}
	return fmt.Sprintf("crash before operation %d (%s %s %s), %s, batches %v answered OK", s.p.n, s.p.call.Op, s.p.call.Name, s.p.call.To, s.model, ok)
}

// unpublished reports whether img holds a temporary segment with more
// than its header: a salvage's work.
func unpublished(img dfstest.Image) bool {
	for name, b := range img.Files {
		if _, ok := layout.ParseTempSegment(path.Base(name)); ok && len(b) > len(segment.Magic) {
			return true
		}
	}
	return false
}

// TestCrashAtEveryFileOperation runs a writer over a file system that
// takes, before each of the writer's changes to it, what a crash then
// would leave: the process killed (everything written), the machine
// powered off (only what was synced, under the names the last directory
// syncs left), and powered off with a prefix of what was written since
// the last sync. Over each, a new writer takes the buckets (salvaging
// the crashed one's segments) and the agent sends again every batch not
// answered OK. Then the published segments, as readers see them, must
// hold every entry at least once and at most as many times as it was
// sent (a batch's bytes may have been durable before the crash it was
// not answered for: Puma drops the repeat by sequence number), so a
// batch answered OK before the crash exactly once, and nothing else; no
// temporary file may be left over; and the new writer logs no error,
// for nothing was lost.
//
// The new writer's salvage is crashed in turn: for a sample of the
// states with a segment to salvage, a writer over it is crashed before
// each of its changes, and a third writer recovers.
func TestCrashAtEveryFileOperation(t *testing.T) {
	// Every distinct state of the first crash, and of 3 salvages crashed
	// every other one; by age, every other state of the first crash and
	// every third of 2 salvages, for time (-race).
	t.Run("rolled by size", func(t *testing.T) { testCrashAtEveryFileOperation(t, newCrashWorkload(), 1, 3, 2) })
	t.Run("published by age, idle writers ending", func(t *testing.T) {
		wl := newCrashWorkload()
		wl.timed = true
		testCrashAtEveryFileOperation(t, wl, 2, 2, 3)
	})
}

// testCrashAtEveryFileOperation checks every stride-th distinct state of
// a crash, and every nestedStride-th of the salvages of nested of those
// states with a segment to salvage, crashed.
func testCrashAtEveryFileOperation(t *testing.T, wl *crashWorkload, stride, nested, nestedStride int) {
	n := len(wl.batches)
	points := recordCrashes(t, dfstest.NewCrashFS(), wl, wl.all(), newCrashSender(wl, nil, false), nil)

	rng := rand.New(rand.NewPCG(3, 9))
	seen := map[uint64]bool{}
	ck := crashChecks{stride: stride}
	var salvages []crashState
	for _, s := range crashStates(points, rng, seen) {
		ck.check(t, s, "", false, wl, wl.all(), false)
		if unpublished(s.img) {
			salvages = append(salvages, s)
		}
	}
	// The salvage crashed: a sample of the states, spread evenly.
	checked := ck.checked
	ck.stride = nestedStride
	for k, s1 := range salvages {
		if k%max(1, len(salvages)/nested) != 0 {
			continue
		}
		send := afterCrash(wl.all(), s1.p.ok, n)
		fsys := dfstest.NewCrashFSFrom(s1.img)
		for _, s := range crashStates(recordCrashes(t, fsys, wl, send, newCrashSender(wl, &s1.p, false), nil), rng, seen) {
			ck.check(t, s, s1.String()+"; then its salvage's ", s1.model == tornModel, wl, send, false)
		}
	}
	nestedChecked := ck.checked - checked
	ck.report(t)
	if len(salvages) == 0 || nestedChecked == 0 {
		t.Error("no crash left a segment to salvage: nothing is tested")
	}
	t.Logf("%d batches, %d crash points, %d distinct states checked (%d with a segment to salvage, %d of a crashed salvage)", n, len(points), ck.checked, len(salvages), nestedChecked)
}

// TestFaultThenCrashAtEveryFileOperation fails each of the writer's
// changes to the file system in turn (an I/O error; then again with the
// change made all the same; and each write made in part, as one that
// fills the disk), the agents sending each batch again until
// it is answered OK, and crashes the writer in the few changes that
// follow the failure (the failed segment cut back and given up, the
// bucket taken again and the segment salvaged; every third distinct
// state, for time), checking each crash as TestCrashAtEveryFileOperation
// does; and, with no crash, that the failed bucket's share of a refused
// batch is read once.
func TestFaultThenCrashAtEveryFileOperation(t *testing.T) {
	wl := newCrashWorkload()
	total := dfstest.NewCrashFS()
	var writes []int // the writes among the changes
	recordCrashes(t, total, wl, wl.all(), newCrashSender(wl, nil, false), func(n int, c dfstest.Call) bool {
		if c.Op == dfstest.OpWrite {
			writes = append(writes, n)
		}
		return false
	})
	const window = 4 // the crash points after the failure
	rng := rand.New(rand.NewPCG(5, 1))
	seen := map[uint64]bool{}
	ck := crashChecks{stride: 3} // of the crashes after a failure, for time (-race)
	all := make([]int, total.Ops())
	for i := range all {
		all[i] = i
	}
	for _, failed := range []string{"failed", "failed after it took effect", "written in part, then failed"} {
		faults := all
		if failed == "written in part, then failed" {
			faults = writes
		}
		for _, from := range faults {
			injected := fmt.Errorf("injected: %w", syscall.EIO)
			switch failed {
			case "failed after it took effect":
				// Done, and reported failed: an fsync's I/O error after
				// the bytes were written, an answer lost on the way.
				injected = fmt.Errorf("%w: %w", injected, dfstest.ErrApplied)
			case "written in part, then failed":
				// A write that fills the disk: the first half written.
				injected = fmt.Errorf("%w: %w", dfstest.ErrShort, syscall.ENOSPC)
			}
			// The call failed: the one numbered from, or for a write in
			// part the first write from there (the writers' order of
			// changes varies from run to run).
			fsys := dfstest.NewCrashFS()
			fault, call := -1, dfstest.Call{}
			fsys.SetFault(func(n int, c dfstest.Call) error {
				hit := n == from
				if failed == "written in part, then failed" {
					hit = n >= from && c.Op == dfstest.OpWrite
				}
				if fault < 0 && hit {
					fault, call = n, c
					return injected
				}
				return nil
			})
			elog := &errorLog{}
			points := recordCrashesLog(t, fsys, wl, wl.all(), newCrashSender(wl, nil, true), func(n int, c dfstest.Call) bool {
				return fault >= 0 && n > fault && n <= fault+window
			}, elog)
			what := fmt.Sprintf("operation %d (%s %s) %s", fault, call.Op, call.Name, failed)
			// The failure is logged, as it is; but no byte was damaged,
			// and no entry lost.
			for _, r := range elog.recs {
				if strings.Contains(r, "damaged") || strings.Contains(r, "lost") {
					ck.failed++
					t.Errorf("%s: error logged: %s", what, r)
				}
			}
			for _, s := range crashStates(points, rng, seen) {
				ck.check(t, s, what+"; ", false, wl, wl.all(), true)
			}
			// Without a crash, the failed bucket's share of a refused
			// batch is cut from its segment (dfs.Truncater) before the
			// retry writes it again: read once. (Another bucket's share
			// of the batch, written, is written again by the retry.)
			end := points[len(points)-1]
			once := strings.Split(call.Name, "/")[0]
			err := checkWriterCrashOnce(t, end.snap.Killed(), end.snap.Killed(), wl, afterCrash(wl.all(), end.ok, len(wl.batches)), &end, true, true, once)
			if err != nil {
				ck.failed++
				if ck.failed <= 10 {
					t.Errorf("%s, no crash: %v", what, err)
				}
			}
		}
	}
	ck.report(t)
	t.Logf("%d operations failed in turn, before and after they took effect, %d writes made in part, %d distinct states checked", total.Ops(), len(writes), ck.checked)
}

// TestCrashAtEveryFileOperationHDFSLike is TestCrashAtEveryFileOperation
// on a dfs where only a close makes bytes durable (HDFS): a batch is
// answered once its segment is published; the segments are closed while
// the next is written into, and the next created ahead. A crash (of the
// process: the file system lives on) leaves the files it closed whole,
// of the others a prefix; a new writer removes the unpublished ones.
func TestCrashAtEveryFileOperationHDFSLike(t *testing.T) {
	wl := newCrashWorkload()
	points := recordCrashes(t, dfstest.NewCrashFS().LikeHDFS(), wl, wl.all(), newCrashSender(wl, nil, false), nil)
	rng := rand.New(rand.NewPCG(8, 2))
	var ck crashChecks
	seen := map[uint64]bool{}
	for _, p := range points {
		for _, s := range []crashState{{p, "killed", p.snap.Killed()}, {p, "killed, a prefix of the unclosed files kept", p.snap.KilledHDFS(rng)}} {
			if !distinct(s, seen) {
				continue
			}
			ck.checked++
			err := checkWriterCrashOn(t, s.p.snap.Killed(), dfstest.NewCrashFSFrom(s.img).LikeHDFS(), wl, afterCrash(wl.all(), s.p.ok, len(wl.batches)), &s.p, false, true, "")
			if err != nil {
				ck.failed++
				if ck.failed <= 10 {
					t.Errorf("%s: %v", s, err)
				}
			}
		}
	}
	ck.report(t)
	t.Logf("%d batches, %d crash points, %d distinct states checked", len(wl.batches), len(points), ck.checked)
}

func newCrashWorkload() *crashWorkload {
	wl := &crashWorkload{batches: crashBatches(18), probe: &scribethrift.Batch{AgentID: "probe", FirstSeq: 1}}
	for _, cat := range crashCategories {
		wl.probe.Messages = append(wl.probe.Messages, &scribethrift.LogEntry{Category: cat, Message: []byte("probe-" + cat)})
	}
	return wl
}

// all is every batch but the probe, in order.
func (wl *crashWorkload) all() []int {
	out := make([]int, len(wl.batches))
	for i := range out {
		out[i] = i
	}
	return out
}

// afterCrash is what the agent sends after a crash: the batches of send
// not answered OK, then the probe, if not among them.
func afterCrash(send []int, ok []bool, probe int) []int {
	var out []int
	for _, i := range send {
		if !ok[i] {
			out = append(out, i)
		}
	}
	if !slices.Contains(out, probe) {
		out = append(out, probe)
	}
	return out
}

// crashChecks counts the crash states checked and failed.
// Every stride-th state given to check is checked (0: every one).
type crashChecks struct{ stride, given, checked, failed int }

// check recovers the crash state s of a run that sent send, and checks
// it (checkWriterCrash), reporting the first few failures.
// torn says that s descends from a torn image (a crashed salvage of
// one): its damaged blocks are logged as errors, as s's own would be.
func (ck *crashChecks) check(t *testing.T, s crashState, before string, torn bool, wl *crashWorkload, send []int, retry bool) {
	t.Helper()
	ck.given++
	if ck.stride > 1 && ck.given%ck.stride != 0 {
		return
	}
	ck.checked++
	err := checkWriterCrash(t, s.p.snap.Killed(), s.img, wl, afterCrash(send, s.p.ok, len(wl.batches)), &s.p, retry, !torn && s.model != tornModel)
	if err != nil {
		ck.failed++
		if ck.failed <= 10 {
			t.Errorf("%s%s: %v", before, s, err)
		}
	}
}

func (ck *crashChecks) report(t *testing.T) {
	t.Helper()
	if ck.failed > 0 {
		t.Errorf("%d of %d crash states failed", ck.failed, ck.checked)
	}
}

// checkWriterCrash starts a writer over img, what a crash of a file
// system in the state live left, sends the batches of send
// (prior: the crash point, with the batches sent and answered before it), and checks
// what readers see: every entry of the workload at least once and at
// most as many times as its batch was sent in all, nothing else, every
// segment readers could read before the crash unchanged, and no segment
// new to them before one they could have passed,
// no temporary file left over, and, if strict, no error logged.
func checkWriterCrash(t *testing.T, live, img dfstest.Image, wl *crashWorkload, send []int, prior *crashPoint, retry, strict bool) error {
	return checkWriterCrashOnce(t, live, img, wl, send, prior, retry, strict, "")
}

// checkWriterCrashOnce is checkWriterCrash where every entry of the
// category once is read at most once, however many times it was sent.
func checkWriterCrashOnce(t *testing.T, live, img dfstest.Image, wl *crashWorkload, send []int, prior *crashPoint, retry, strict bool, once string) error {
	return checkWriterCrashOn(t, live, dfstest.NewCrashFSFrom(img), wl, send, prior, retry, strict, once)
}

// checkWriterCrashOn is checkWriterCrashOnce over fsys, holding the
// image.
func checkWriterCrashOn(t *testing.T, live dfstest.Image, fsys dfs.FS, wl *crashWorkload, send []int, prior *crashPoint, retry, strict bool, once string) error {
	seen, err := readable(live)
	if err != nil {
		return err
	}
	elog := &errorLog{}
	sender := newCrashSender(wl, prior, retry)
	plain := *wl // the recovery without pauses: the crashed runs had them
	plain.timed = false
	plain.salvaged = true
	if err := runCrashWriter(t, fsys, elog, &plain, send, sender); err != nil {
		return err
	}
	var logged []string
	if strict {
		logged = elog.problems()
	}
	return checkReaders(fsys, seen, wl, sender.sends(), once, logged)
}

// readable is what readers could read in img: the published segments'
// bytes by path.
func readable(img dfstest.Image) (map[string][]byte, error) {
	seen := map[string][]byte{}
	fsys := dfstest.NewCrashFSFrom(img)
	for _, cat := range crashCategories {
		dir := layout.BucketDir(cat, 0)
		infos, err := layout.Published(fsys, dir, "")
		if err != nil {
			return nil, err
		}
		for _, fi := range infos {
			if seen[path.Join(dir, fi.Name())], err = dfs.ReadFile(fsys, path.Join(dir, fi.Name())); err != nil {
				return nil, err
			}
		}
	}
	return seen, nil
}

// problems are the records logged, as problems of a check.
func (l *errorLog) problems() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.recs {
		out = append(out, "error logged: "+r)
	}
	return out
}

// checkReaders checks what readers see in fsys once things have
// settled: every entry of the workload at least once and at most as
// many times as its batch was sent (sends; once, if not "", the category
// whose entries are read at most once), nothing else, every segment
// readers could read before the crash (seen) unchanged, and no segment
// new to them before one they could have passed, and no temporary file
// left over. It reports those problems, then the records logged.
func checkReaders(fsys dfs.FS, seen map[string][]byte, wl *crashWorkload, sends []int, once string, logged []string) error {
	type key struct {
		agent string
		seq   uint64
	}
	type want struct {
		msg      string
		min, max int
	}
	wants := map[key]want{}
	for i := range sends {
		b := wl.batch(i)
		agent := b.AgentID
		if b.Incarnation != nil {
			agent += "/" + *b.Incarnation
		}
		for j, e := range b.Messages {
			w := want{e.Category + ":" + string(e.Message), min(1, sends[i]), sends[i]}
			if e.Category == once {
				w.max = 1
			}
			wants[key{agent, uint64(b.FirstSeq) + uint64(j)}] = w
		}
	}
	got := map[key]int{}
	var problems []string
	for _, cat := range crashCategories {
		dir := layout.BucketDir(cat, 0)
		names, err := dfs.ReadDirNames(fsys, layout.CategoryDir(cat))
		if err != nil {
			return err
		}
		for _, name := range names {
			if dfs.Hidden(name) && name != layout.SidecarName {
				problems = append(problems, fmt.Sprintf("%s/%s left over", layout.CategoryDir(cat), name))
			}
		}
		if names, err = dfs.ReadDirNames(fsys, layout.FenceDir(dir)); err != nil {
			return err
		}
		for _, name := range names {
			if dfs.Hidden(name) {
				problems = append(problems, fmt.Sprintf("%s/%s left over", layout.FenceDir(dir), name))
			}
		}
		if names, err = dfs.ReadDirNames(fsys, dir); err != nil {
			return err
		}
		for _, name := range names {
			if dfs.Hidden(name) && name != layout.FenceDirName {
				problems = append(problems, fmt.Sprintf("%s/%s left over", dir, name))
			}
		}
		infos, err := layout.Published(fsys, dir, "")
		if err != nil {
			return err
		}
		// A reader never looks back: a segment it could have read
		// before the crash is there after it, the same, and one it could
		// not have read sorts after every one it could.
		var last string
		now := map[string]bool{}
		for _, fi := range infos {
			now[fi.Name()] = true
		}
		for name := range seen {
			if path.Dir(name) == dir {
				last = max(last, path.Base(name))
				if !now[path.Base(name)] {
					problems = append(problems, fmt.Sprintf("%s, published before the crash, gone after it", name))
				}
			}
		}
		for _, fi := range infos {
			data, err := dfs.ReadFile(fsys, path.Join(dir, fi.Name()))
			if err != nil {
				return err
			}
			if b, ok := seen[path.Join(dir, fi.Name())]; ok && !bytes.Equal(b, data) {
				problems = append(problems, fmt.Sprintf("%s/%s, published before the crash, changed by it", dir, fi.Name()))
			} else if !ok && fi.Name() < last {
				problems = append(problems, fmt.Sprintf("%s/%s published after the crash, before %s that readers may have passed", dir, fi.Name(), last))
			}
			r, err := segment.NewReader(bytes.NewReader(data), 0)
			if err != nil {
				return fmt.Errorf("segment %s/%s: %w", dir, fi.Name(), err)
			}
			var b segment.Block
			for {
				err := r.Next(&b)
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					return fmt.Errorf("segment %s/%s: %w", dir, fi.Name(), err)
				}
				for i, m := range b.Messages {
					id := key{b.Agent, b.Seqs[i]}
					if w, ok := wants[id]; !ok || w.msg != cat+":"+string(m) {
						problems = append(problems, fmt.Sprintf("%s/%s: entry %v %.20q never sent", dir, fi.Name(), id, m))
						continue
					}
					got[id]++
				}
			}
		}
	}
	for _, id := range slices.SortedFunc(maps.Keys(wants), func(a, b key) int {
		return strings.Compare(fmt.Sprint(a), fmt.Sprint(b))
	}) {
		if w, n := wants[id], got[id]; n < w.min || n > w.max {
			problems = append(problems, fmt.Sprintf("entry %v (%.12s) read %d times, want %d to %d", id, w.msg, n, w.min, w.max))
		}
	}
	problems = append(problems, logged...)
	if len(problems) > 0 {
		if len(problems) > 6 {
			problems = append(problems[:6], fmt.Sprintf("and %d more", len(problems)-6))
		}
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// TestCrashSalvagedWithoutNextEntry: a writer that starts over a crashed
// one's buckets takes those holding an unpublished segment, and so
// publishes the acknowledged entries in it, without waiting for the next
// entry for the bucket, which may never come.
func TestCrashSalvagedWithoutNextEntry(t *testing.T) {
	wl := newCrashWorkload()
	points := recordCrashes(t, dfstest.NewCrashFS(), wl, wl.all(), newCrashSender(wl, nil, false), nil)
	// The last crash point with a segment holding acknowledged entries
	// in every bucket: the process killed before it published them.
	var s crashState
	for _, p := range points {
		if img := p.snap.Killed(); unpublished(img) {
			s = crashState{p, "killed", img}
		}
	}
	if s.img.Files == nil {
		t.Fatal("no crash left a segment to salvage")
	}
	fsys := dfstest.NewCrashFSFrom(s.img)
	var skew atomic.Int64
	_, stop := startCrashWriter(t, fsys, slog.DiscardHandler, &skew, false)
	defer stop()
	testkit.WaitFor(t, "the unpublished segments salvaged", func() bool {
		for _, cat := range crashCategories {
			names, err := dfs.ReadDirNames(fsys, layout.BucketDir(cat, 0))
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range names {
				if _, ok := layout.ParseTempSegment(name); ok {
					return false
				}
			}
		}
		return true
	})
	stop()
	// Read as checkWriterCrash does, the probe and what was not answered
	// sent to a next writer; every batch answered OK before the crash was
	// published by this one.
	published := map[string]bool{}
	for _, cat := range crashCategories {
		for _, m := range readerView(t, fsys, layout.BucketDir(cat, 0)) {
			published[m] = true
		}
	}
	for i, ok := range s.p.ok {
		if !ok || i == len(wl.batches) {
			continue
		}
		for _, e := range wl.batches[i].Messages {
			if !published[string(e.Message)] {
				t.Errorf("batch %d answered OK before the crash: %.12s not published", i, e.Message)
			}
		}
	}
}
