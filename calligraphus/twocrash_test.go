package calligraphus

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/testkit"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// errKilled fails every change a killed writer tries (crashProc).
var errKilled = errors.New("the process was killed")

// fate is what befalls the victim of a pair of writers (crashPair)
// before one of its changes to the dfs.
type fate int

const (
	// killed: that change and every later one fail, and its coordinator
	// session ends, as a killed process's does.
	killed fate = iota
	// stalled: it waits there (SIGSTOP, a long pause) while its session
	// expires without its hearing of it, and the other writer takes its
	// buckets; then it goes on, believing it still holds them, before it
	// hears of the expiry and joins the group again.
	stalled
)

func (f fate) String() string {
	if f == stalled {
		return "stalled"
	}
	return "killed"
}

// crashProc is one of two writers sharing a dfs (dfstest.CrashFS.As)
// and a coordinator (a session each).
type crashProc struct {
	id   string
	c    *Calligraphus
	co   coord.Coord
	stop func()
	elog errorLog // the errors it logged while alive

	ops  atomic.Int64      // its changes to the dfs so far
	gone atomic.Bool       // killed or stalled: the agents send to the other
	dead atomic.Bool       // killed
	snap *dfstest.Snapshot // the dfs as its fate found it; nil if it was spared
}

// aliveLog is the log of a crashProc: a dead process logs nothing.
type aliveLog struct {
	p    *crashProc
	text slog.Handler // everything, for a failure's report
}

func (l aliveLog) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelInfo }

func (l aliveLog) Handle(ctx context.Context, r slog.Record) error {
	if l.p.dead.Load() {
		return nil
	}
	_ = l.text.Handle(ctx, r) // into memory
	if r.Level < slog.LevelError {
		return nil
	}
	return l.p.elog.Handle(ctx, r)
}

func (l aliveLog) WithAttrs(as []slog.Attr) slog.Handler {
	return aliveLog{l.p, l.text.WithAttrs(as)}
}
func (l aliveLog) WithGroup(string) slog.Handler { return l }

// crashPairIDs returns two writer IDs each preferred, when both are
// live, for the bucket of at least one of crashCategories: so each
// holds a bucket, and each forwards to the other.
func crashPairIDs(t *testing.T) [2]string {
	t.Helper()
	for i := 1; i < 100; i++ {
		ids := [2]string{fmt.Sprintf("w%d", i), fmt.Sprintf("w%d", i+1)}
		v := newView([]coord.Member{{ID: ids[0]}, {ID: ids[1]}}, ids[0], true)
		first := 0
		for _, cat := range crashCategories {
			if v.preferred(cat, 0, 1) == ids[0] {
				first++
			}
		}
		if first > 0 && first < len(crashCategories) {
			return ids
		}
	}
	t.Fatal("no pair of writer IDs shares the buckets")
	return [2]string{}
}

// pairRun is one run of crashPair: the victim, spared if its fate found
// it never (it made fewer changes), and the writers' logs.
type pairRun struct {
	victim *crashProc
	logs   *testkit.LogBuffer
}

// pairCase is what befalls the writers of a run of crashPair.
type pairCase struct {
	victim int  // 0 or 1
	fate   fate // what befalls it
	at     int  // before its at-th change to the dfs
	// join: the second writer joins the group only once the first has
	// taken half the batches, and the categories are routed (an app
	// consumes them): the first hands it the buckets it is preferred
	// for, publishing and releasing them, and the second takes them
	// without waiting for entries. The victim's changes are counted
	// from the join on: the hand-off and what follows.
	join bool
}

// crashPair runs the workload wl through two writers sharing a dfs,
// the victim (0 or 1) meeting fate f before its at-th change to the dfs:
// agent0 sends to the first writer, agent1 to the second, agent2 to each
// in turn, and each batch is sent again until it is answered OK, to the
// other writer once its own is gone (an answer from a writer dead since
// is no answer; one from a writer that stalled is, once it wakes). With
// join, every batch of the first half goes to the first writer.
//
// Killed, the victim is then stopped (it may be killed only as it
// publishes at stop), and the survivor salvages what it left. Stalled,
// it stays stalled until the survivor has salvaged what it left, then
// goes on, deaf to its loss (the calls that waited for it answered),
// until it has dealt with what it had taken, then hears of it, and both
// stop. Then it checks what readers see (checkReaders) and what both
// logged.
func crashPair(t *testing.T, ids [2]string, wl *crashWorkload, pc pairCase) (pairRun, error) {
	t.Helper()
	victim, f, at := pc.victim, pc.fate, pc.at
	router := NewRouter(1, nil)
	if pc.join {
		routes := map[string]Route{}
		for _, cat := range crashCategories {
			routes[cat] = Route{Buckets: 1}
		}
		router = NewRouter(1, routes)
	}
	// The victim's changes counted: all, or from the join on.
	var counting atomic.Bool
	counting.Store(!pc.join)
	shared := dfstest.NewCrashFS()
	hub := inproc.NewHub()
	observer := hub.Session()
	defer observer.Close()
	run := pairRun{logs: &testkit.LogBuffer{}}
	var procs [2]*crashProc
	var coords [2]*inproc.Session
	for i, id := range ids {
		procs[i] = &crashProc{id: id}
		coords[i] = hub.Session()
		procs[i].co = coords[i]
	}
	v, survivor := procs[victim], procs[1-victim]
	run.victim = v
	fsys := [2]dfs.FS{shared.As(ids[0]), shared.As(ids[1])}

	stalledAt, wake := make(chan struct{}), make(chan struct{})
	var deaf *deafCoord
	switch f {
	case killed:
		shared.SetHook(func(_ int, c dfstest.Call, s *dfstest.Snapshot) {
			if c.Proc == v.id && counting.Load() && !v.dead.Load() && int(v.ops.Add(1))-1 == at {
				v.snap = s
				v.gone.Store(true)
				v.dead.Store(true)
				coords[victim].Close() // its leases and membership end with it
			}
		})
		shared.SetFault(func(_ int, c dfstest.Call) error {
			if c.Proc == v.id && v.dead.Load() {
				return errKilled
			}
			return nil
		})
	case stalled:
		// It stalls on its own goroutine, outside the dfs's lock: the
		// other writer goes on meanwhile.
		// Its every call waits from then on, on any goroutine, as a
		// stopped process's does, until it wakes.
		var stalling atomic.Bool
		faulty := dfstest.NewFaulty(fsys[victim])
		faulty.SetHook(func(c dfstest.Call) error {
			if stalling.Load() {
				<-wake
				return nil
			}
			switch c.Op {
			case dfstest.OpOpen, dfstest.OpStat, dfstest.OpReadDir, dfstest.OpRead:
				return nil
			}
			if !counting.Load() {
				return nil
			}
			if int(v.ops.Add(1))-1 == at {
				v.snap = shared.Snapshot()
				stalling.Store(true)
				deaf.stall()
				v.gone.Store(true)
				close(stalledAt)
				<-wake
			}
			return nil
		})
		fsys[victim] = faulty
		deaf = newDeafCoord(coords[victim])
		v.co = deaf
	}
	var skew atomic.Int64
	start := func(i int) {
		p := procs[i]
		log := aliveLog{p, slog.NewTextHandler(run.logs, nil).WithAttrs([]slog.Attr{slog.String("writer", p.id)})}
		p.c, p.stop = startCrashWriterAs(t, p.id, fsys[i], p.co, router, log, &skew, wl.timed)
	}
	var wakeOnce sync.Once
	wakeUp := func() { wakeOnce.Do(func() { close(wake) }) }
	woken := func() bool {
		select {
		case <-wake:
			return true
		default:
			return false
		}
	}
	defer func() { // before the writers stop, should the test end early
		wakeUp()
		if deaf != nil {
			deaf.resume()
			deaf.tell()
		}
		for _, p := range procs {
			if p.stop != nil {
				p.stop()
			}
		}
	}()
	both := func() {
		testkit.WaitFor(t, "both writers to see each other", func() bool {
			for _, p := range procs {
				if v := p.c.currentView(); !v.self || len(v.ids) != 2 {
					return false
				}
			}
			return true
		})
	}
	start(0)
	// joined is closed once both writers are in the group; firstHalf
	// counts down the agents still sending the first half.
	joined := make(chan struct{})
	half := len(wl.batches) / 2
	var firstHalf sync.WaitGroup
	if pc.join {
		firstHalf.Add(crashAgents)
	} else {
		start(1)
		both()
		close(joined)
	}

	s := newCrashSender(wl, nil, true)
	lanes := map[string][]int{}
	for _, i := range wl.all() {
		a := wl.batch(i).AgentID
		lanes[a] = append(lanes[a], i)
	}
	errs := make(chan error, len(lanes))
	for agent, lane := range lanes {
		go func() {
			inFirstHalf := pc.join
			defer func() {
				if inFirstHalf {
					firstHalf.Done()
				}
			}()
			for _, i := range lane {
				if inFirstHalf && i >= half {
					inFirstHalf = false
					firstHalf.Done()
					<-joined
				}
				to := procs[0]
				if !inFirstHalf && (agent == "agent1" || agent == "agent2" && i%2 == 1) {
					to = procs[1]
				}
				for try := 0; ; try++ {
					if to.gone.Load() {
						to = survivor
					}
					s.sent[i].Add(1)
					rc, err := to.c.LogBatch(context.Background(), wl.batch(i))
					if err == nil && rc == scribethrift.ResultCode_OK && !to.dead.Load() {
						break
					}
					if try == 20 {
						errs <- fmt.Errorf("batch %d: %v %v", i, rc, err)
						return
					}
					skew.Add(int64(2 * time.Second))
					// As an agent backs off: the survivor forwards to the
					// victim until it sees it gone from the group; a
					// stalled victim that woke holds what it takes again
					// outside the group until it hears of its loss and
					// joins again, and the survivor sees it.
					if v.gone.Load() {
						back := false
						if woken() {
							<-deaf.told
							back = true
						}
						if err := survivorSees(survivor, v.id, back); err != nil {
							errs <- err
							return
						}
					}
				}
				s.ok[i].Store(true)
			}
			errs <- nil
		}()
	}
	if pc.join {
		firstHalf.Wait()
		start(1)
		both()
		counting.Store(true)
		close(joined)
	}
	lanesDone := make(chan error, 1)
	go func() {
		var first error
		for range lanes {
			if err := <-errs; err != nil && first == nil {
				first = err
			}
		}
		lanesDone <- first
	}()
	what := fmt.Sprintf("%s, %s before its change %d, to be salvaged by %s", v.id, f, at, survivor.id)
	// wakeStalled lets the stalled victim go on once the survivor has
	// salvaged what it left: deaf to its loss, it deals with what it
	// had taken (the calls that waited for it answered); then it hears
	// of it, and joins the group again.
	wakeStalled := func() {
		if woken() {
			return
		}
		if v.gone.Load() {
			testkit.Eventually(t, what, func() error { return salvagedBy(t, shared, observer, survivor.id) })
		}
		wakeUp()
		deaf.resume()
		testkit.WaitFor(t, "the stalled writer to deal with what it had taken", func() bool {
			for _, b := range v.c.Status().Buckets {
				if b.PendingBytes > 0 {
					return false
				}
			}
			return true
		})
		deaf.tell()
	}
	var first error
	select {
	case <-stalledAt:
		// The calls in flight to the stalled writer wait for it (an
		// agent's timeout may be longer than a coordinator session),
		// the others go to the survivor.
		wakeStalled()
		first = <-lanesDone
	case first = <-lanesDone:
	}
	if first != nil {
		return run, first
	}
	switch f {
	case killed:
		v.stop() // it publishes what it holds, and may be killed doing so
		if v.dead.Load() {
			// What the dead writer left unpublished, the survivor
			// salvages, whether or not an entry for the bucket comes.
			testkit.Eventually(t, what, func() error { return salvagedBy(t, shared, observer, survivor.id) })
		}
	case stalled:
		wakeStalled()
		v.stop()
	}
	survivor.stop()
	seen := map[string][]byte{}
	if v.snap != nil {
		var err error
		if seen, err = readable(v.snap.Killed()); err != nil {
			return run, err
		}
	}
	logged := append(v.elog.problems(), survivor.elog.problems()...)
	return run, checkReaders(shared, seen, wl, s.sends(), "", logged)
}

// survivorSees waits until the writer p sees the writer id in the group
// (or, if not in, gone from it).
func survivorSees(p *crashProc, id string, in bool) error {
	for deadline := time.Now().Add(testkit.Deadline); slices.Contains(p.c.currentView().ids, id) != in; {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not see %s in the group as %v", p.id, id, in)
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// salvagedBy returns nil if no bucket holds an unpublished segment but
// those of the writer id, holding it, at the newest epoch there; else
// what is left.
func salvagedBy(t *testing.T, fsys dfs.FS, co coord.Coord, id string) error {
	t.Helper()
	for _, cat := range crashCategories {
		dir := layout.BucketDir(cat, 0)
		names, err := dfs.ReadDirNames(fsys, dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue // not written yet
		}
		if err != nil {
			t.Fatal(err)
		}
		top, err := layout.FenceTop(fsys, dir)
		if err != nil {
			t.Fatal(err)
		}
		holder, _, err := co.Holder(context.Background(), layout.WriterLease(cat, 0))
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range names {
			seg, ok := layout.ParseTempSegment(name)
			if !ok {
				continue
			}
			if e, _, _ := layout.ParseSegmentName(seg); holder != id || e != top {
				return fmt.Errorf("%s/%s left, the bucket held by %q at epoch %d", dir, name, holder, top)
			}
		}
	}
	return nil
}

// testCrashPair meets each writer of a pair in turn with fate f before
// each of its changes to the dfs (crashPair), and reports the failures.
// handedOff is what a writer logs as it hands a bucket off.
const handedOff = "bucket handed off to the writer preferred for it"

func testCrashPair(t *testing.T, f fate, join bool) {
	ids := crashPairIDs(t)
	wl := newCrashWorkload()
	for victim := range 2 {
		t.Run(fmt.Sprintf("%s %s", ids[victim], f), func(t *testing.T) {
			failed, checked := 0, 0
			for at := 0; ; at++ {
				run, err := crashPair(t, ids, wl, pairCase{victim: victim, fate: f, at: at, join: join})
				if run.victim.snap == nil && err == nil {
					// It made fewer changes than at: the run went as
					// planned, the hand-off with it.
					if join && !strings.Contains(run.logs.String(), handedOff) {
						t.Errorf("no bucket was handed off: nothing of it is tested")
					}
					break
				}
				checked++
				if err == nil {
					continue
				}
				failed++
				what := "spared"
				if run.victim.snap != nil {
					what = fmt.Sprintf("%s before its change %d", f, at)
				}
				t.Errorf("%s %s: %v", ids[victim], what, strings.ReplaceAll(err.Error(), "; ", "\n\t"))
				if failed == 1 {
					t.Logf("the writers' logs:\n%s", run.logs)
				}
				if failed == 5 {
					t.FailNow()
				}
			}
			t.Logf("%d changes checked", checked)
		})
	}
}

// TestCrashOfOneOfTwoWriters kills one of two writers sharing a dfs
// before each of its changes to it, while the other lives on: the
// survivor takes the dead writer's buckets (the agents' retries, sent
// to it, and the dead writer's departure from the group bring it about)
// and salvages what it left. Every batch answered OK is read exactly
// once, the others at most once per send, nothing else; what readers
// could read at the kill stays as it was; nothing is left over once the
// survivor has salvaged; and neither logs an error (the dead one while
// it lived). Each writer is killed in turn.
func TestCrashOfOneOfTwoWriters(t *testing.T) { testCrashPair(t, killed, false) }

// TestStallOfOneOfTwoWriters stalls one of two writers sharing a dfs
// before each of its changes to it, past its coordinator session: the
// other takes its buckets and salvages what it left, then the stalled
// one goes on (the change it stalled before first), still believing it
// holds its buckets, until it hears of the loss. Fencing at the storage
// must keep it from publishing anything readers count over the new
// owner's, or answering OK for what readers do not count: the checks of
// TestCrashOfOneOfTwoWriters hold.
func TestStallOfOneOfTwoWriters(t *testing.T) { testCrashPair(t, stalled, false) }

// TestCrashDuringHandOff: a second writer joins while the first holds
// every bucket of categories an app consumes; the first hands it the
// buckets it is preferred for (publishes, releases) while agents send to
// both, forwarding entries for buckets in transit, and the second takes
// them without waiting for entries. Each writer is killed, and stalled,
// before each of its changes from the join on; the checks of
// TestCrashOfOneOfTwoWriters hold.
func TestCrashDuringHandOff(t *testing.T) {
	t.Run("killed", func(t *testing.T) { testCrashPair(t, killed, true) })
	t.Run("stalled", func(t *testing.T) { testCrashPair(t, stalled, true) })
}
