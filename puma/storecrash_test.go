package puma

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/storetest"
	"github.com/freeway-dev/freeway/ptail"
)

// The store-side crash tests: a shard runs through several checkpoints of
// the same input while its store calls fail, one at a time, in each way a
// store call can (storetest.Fault: a crash before the call, a clean
// failure, a failure after the call was applied, a multi-row call applied
// to some rows, a call applied after its caller gave up); then new owners
// recover on what the store holds, replay the input from the position
// they recovered, and must hold exactly what the input makes: every line
// counted once (the agents' re-sent ones skipped), no line lost. Each
// test runs three cases (eachCrashCase): windows resident in memory,
// windows evicted to the store, and a span built by a backfill. The
// store is storetest.Mem, which keeps as few versions as the contract
// allows and hides a put at a deleted timestamp, as HBase does.

// crashBlocks is the bucket's input: lines over 45 minutes of event
// time (so that retention, crashRetention, drops the first windows), from
// a stock client, from an agent in order and re-sending a batch, and
// from agents whose batches come out of order (so that their keys keep a
// seen-window), one of which is seen only at the start (so that its key
// is forgotten and its window row deleted: crashHorizon). Each block has
// a line in a window of the block before, and shares windows of ten
// minutes with it, so that checkpoints write cells again that earlier
// ones wrote. The blocks arrive a minute apart.
func crashBlocks() []*segment.Block {
	out := []*segment.Block{
		agent("a3/r1", 3, order(t0+500, "eu", "book", 50)),
		agent("a3/r1", 1, order(t0+600, "eu", "book", 51), order(t0+700, "us", "pen", 52)),
	}
	var seqA1, seqA2 uint64 = 1, 1
	var lastA1 *segment.Block
	for i := range 12 {
		ts := t0 + int64(i)*4*60_000
		lines := [][]byte{
			order(ts+1000, "eu", "book", i%5+1),
			order(ts+2000, "us", "pen", 10+i%3),
			order(ts+65_000, "eu", "book", 7),
			order(ts-175_000, "eu", "book", 20+i%4), // the window of the line above in the block before
		}
		switch i % 4 {
		case 0:
			out = append(out, stock(lines...))
		case 1:
			lastA1 = agent("a1/r1", seqA1, lines...)
			seqA1 += uint64(len(lines))
			out = append(out, lastA1)
		case 2:
			out = append(out, agent("a2/r1", seqA2+1, lines[1:]...), agent("a2/r1", seqA2, lines[0]))
			seqA2 += uint64(len(lines))
		case 3:
			resent := *lastA1
			out = append(out, &resent, stock(lines...))
		}
	}
	for i, b := range out {
		b.ArrivalMs = arrival + int64(i)*60_000
	}
	return out
}

// crashRetention is the retention of the crash tests' app.
const crashRetention = 20 * time.Minute

// crashHorizon is the dedup horizon of the crash tests' nodes: agent keys
// not seen for it are forgotten, a3's among them, not a1's nor a2's.
const crashHorizon = 10 * time.Minute

// crashEvery is how many blocks a shard applies between checkpoints.
const crashEvery = 3

// crashApp is the orders app in windows of one and ten minutes (or
// windows, if given), with a variable state besides the fixed slots.
func crashApp(t testing.TB, windows ...time.Duration) *apps.App {
	if windows == nil {
		windows = []time.Duration{time.Minute, 10 * time.Minute}
	}
	return orders(t, func(s *apps.Spec) {
		s.Retention = config.Duration(crashRetention)
		s.Window = 0
		s.Windows = nil
		for _, d := range windows {
			s.Windows = append(s.Windows, config.Duration(d))
		}
		s.Aggregates = append(s.Aggregates, apps.AggregateSpec{Name: "amounts", Fn: "count_distinct", Field: "amount"})
	})
}

// crashWant is what the input makes, by window length, as rows formats
// them: each line counted once (an agent's by its sequence number).
// Kept are the rows of the windows retention keeps; expired those of the
// windows it dropped, which no answer from the store shows (their rows
// are deleted after the commit that drops them, and a crash or a failed
// delete leaves them to a later checkpoint: TestExpiredWindowsNeverShow),
// nor one from memory once a checkpoint dropped them.
type crashWant struct {
	kept    map[int64][]string
	expired map[int64]map[string]bool
	horizon int64 // the input's watermark - retention
}

func crashTotals(t testing.TB, app *apps.App, blocks []*segment.Block) crashWant {
	type cellKey struct {
		w            int64
		region, kind string
	}
	type agg struct {
		n, total, lo, hi float64
		amounts          map[float64]bool
	}
	lengths := []int64{60_000, 600_000}
	cells := map[int64]map[cellKey]*agg{}
	seen := map[string]bool{}
	watermark := int64(0)
	for _, b := range blocks {
		for j, line := range b.Messages {
			if b.Agent != "" {
				k := fmt.Sprint(b.Agent, "#", b.Seqs[j])
				if seen[k] {
					continue
				}
				seen[k] = true
			}
			var l struct {
				TS           int64
				Region, Kind string
				Amount       float64
			}
			if err := json.Unmarshal(line, &l); err != nil {
				t.Fatal(err)
			}
			watermark = max(watermark, l.TS)
			for _, ms := range lengths {
				if cells[ms] == nil {
					cells[ms] = map[cellKey]*agg{}
				}
				k := cellKey{l.TS - l.TS%ms, l.Region, l.Kind}
				a := cells[ms][k]
				if a == nil {
					a = &agg{lo: l.Amount, hi: l.Amount, amounts: map[float64]bool{}}
					cells[ms][k] = a
				}
				a.n++
				a.total += l.Amount
				a.lo, a.hi = min(a.lo, l.Amount), max(a.hi, l.Amount)
				a.amounts[l.Amount] = true
			}
		}
	}
	want := crashWant{kept: map[int64][]string{}, expired: map[int64]map[string]bool{}, horizon: watermark - app.RetentionMs}
	for _, ms := range lengths {
		want.expired[ms] = map[string]bool{}
		for k, a := range cells[ms] {
			row := formatRow(Row{
				WindowStartMs: k.w, WindowEndMs: k.w + ms,
				Key:    map[string]string{"region": k.region, "kind": k.kind},
				Values: map[string]any{"n": a.n, "total": a.total, "lo": a.lo, "hi": a.hi, "mean": a.total / a.n, "amounts": float64(len(a.amounts))},
			})
			if k.w+ms <= watermark-app.RetentionMs {
				want.expired[ms][row] = true
			} else {
				want.kept[ms] = append(want.kept[ms], row)
			}
		}
		slices.Sort(want.kept[ms])
	}
	if len(want.expired[60_000]) == 0 {
		t.Fatal("retention drops no window: the input tests none of its deletes")
	}
	return want
}

// crashCase is what every run of a crash test starts from: the input,
// what it makes, and the nodes' configuration.
type crashCase struct {
	e      *env
	blocks []*segment.Block
	want   crashWant
	// maxCells, if set, is the nodes' puma.max_cells: low enough that
	// checkpoints evict closed windows (answered from the store), not so
	// low that a line is refused.
	maxCells int
	// backfill, if set, is how many blocks a node with the app in windows
	// of one and five minutes has committed before each run: the runs'
	// nodes build the ten-minute windows from the dfs (a backfill) while
	// the one-minute windows run live, and delete the five-minute ones.
	backfill int
	pos      []ptail.Position // after each block, published in the dfs
	calls    []storetest.Call // of a run without faults
	start    *storetest.Mem   // what a run starts from (backfill)
}

// eachCrashCase runs fn with the shard's windows resident, evicted, and
// a span of them being built by a backfill.
func eachCrashCase(t *testing.T, fn func(t *testing.T, c *crashCase)) {
	for _, tc := range []struct {
		name               string
		maxCells, backfill int
	}{{"resident", 0, 0}, {"evicting", 24, 0}, {"backfilling", 0, 9}} {
		t.Run(tc.name, func(t *testing.T) {
			app := crashApp(t)
			blocks := crashBlocks()
			c := &crashCase{e: newEnv(t, app), blocks: blocks, want: crashTotals(t, app, blocks), maxCells: tc.maxCells, backfill: tc.backfill}
			c.pos = publishEach(t, c.e, blocks)
			if c.backfill > 0 {
				w := &crashWorld{crashCase: c, t: t, mem: storetest.NewMem(), apps: []*apps.App{crashApp(t, time.Minute, 5*time.Minute)}}
				if err := w.feed(w.recovered(w.mem), c.backfill); err != nil {
					t.Fatal(err)
				}
				c.start = w.mem
			}
			c.calls = c.callsWithoutFaults(t)
			fn(t, c)
		})
	}
}

// callsWithoutFaults runs the input through one owner without faults,
// checks it, and returns the owner's store calls.
func (c *crashCase) callsWithoutFaults(t *testing.T) []storetest.Call {
	w := c.world(t)
	f := storetest.NewFaulty(w.mem)
	s := w.recovered(f)
	if building := len(s.backfills) > 0; building != (c.backfill > 0) {
		t.Fatalf("backfilling %v after %d blocks committed without it", building, c.backfill)
	}
	if err := w.feed(s, len(c.blocks)); err != nil {
		t.Fatal(err)
	}
	calls := f.Calls() // not those of the answers to check
	w.check("without faults", s)
	evicted := uint64(0)
	for _, tb := range s.tables {
		evicted += tb.ev.windows
	}
	if (evicted > 0) != (c.maxCells > 0) {
		t.Fatalf("%d windows evicted with max_cells %d", evicted, c.maxCells)
	}
	return calls
}

// publishEach publishes blocks in one segment of bucket orders/0 and
// returns the position after each: one segment rather than one a block,
// which a backfill's reader would open each with its buffers.
func publishEach(t *testing.T, e *env, blocks []*segment.Block) []ptail.Position {
	dir := filepath.Join(e.root, filepath.FromSlash(names.BucketDir("orders", 0)))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	name := names.SegmentName(1, 1)
	b := []byte(segment.Magic)
	var pos []ptail.Position
	for _, blk := range blocks {
		b = segment.AppendBlock(b, blk)
		pos = append(pos, ptail.Position{Segment: name, Offset: int64(len(b))})
	}
	if err := os.WriteFile(filepath.Join(dir, "_"+name), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "_"+name), filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
	return pos
}

// world starts a run (for a backfill, from the commit of the blocks
// before it by a node without the windows it builds).
func (c *crashCase) world(t *testing.T) *crashWorld {
	w := &crashWorld{crashCase: c, t: t, mem: storetest.NewMem()}
	if c.start != nil {
		w.mem = c.start.Clone()
		w.owners = 1 // owner1 committed the start
	}
	return w
}

// crashWorld is one run of the input: a store of its own, shared by the
// owners a run starts.
type crashWorld struct {
	*crashCase
	t      *testing.T
	mem    *storetest.Mem
	owners int
	apps   []*apps.App // of the next owners (nil: the case's)
}

// firstOwner recovers an owner over f and feeds it blocks: it ends by a
// crash, or fenced by a commit of its own that failed and landed later
// (it stops, and the next owner recovers from that commit), or exact,
// which its answers show.
func (w *crashWorld) firstOwner(what string, f *storetest.Faulty, blocks int) {
	w.t.Helper()
	s := w.recovered(f)
	if s == nil {
		return
	}
	if err := w.feed(s, blocks); err == nil && !f.Crashed() {
		f.SetFault(nil) // the answers checked read the store through it
		w.check(what+": the first owner", s)
	} else if !ended(err) && !f.Crashed() {
		w.t.Fatalf("%s: the first owner: %v", what, err)
	}
}

// owner makes a new owner of the shard over st (its own node and
// coordinator: an owner that crashed is gone with its session, and one
// that did not still believes it holds the lease) and recovers it.
func (w *crashWorld) owner(st store.Store) (*shard, error) {
	w.owners++
	p := w.e.node(fmt.Sprintf("owner%d", w.owners), func(c *Config, d *Deps) {
		c.DedupHorizon = config.Duration(crashHorizon)
		if w.maxCells > 0 {
			c.MaxCells = w.maxCells
		}
		if w.apps != nil {
			d.Apps = w.apps
		}
		d.Store = st
	})
	co := inproc.NewHub().Session()
	w.t.Cleanup(func() { co.Close() })
	lease, err := co.Acquire(context.Background(), names.ShardLease("orders", 0), p.cfg.ID)
	if err != nil {
		w.t.Fatal(err)
	}
	s, err := newShard(p, "orders", 0, lease)
	if err != nil {
		w.t.Fatal(err)
	}
	return s, s.recover(context.Background())
}

// recovered is owner, again as a process would try it again, until a
// recovery succeeds; nil if st crashed (or fenced the owner) first.
func (w *crashWorld) recovered(st store.Store) *shard {
	for range 5 {
		s, err := w.owner(st)
		if err == nil {
			return s
		}
		if ended(err) {
			return nil
		}
	}
	w.t.Fatal("recovery failed five times in a row")
	return nil
}

// ended reports whether err ends an owner: its store crashed, or another
// owner took the shard.
func ended(err error) bool {
	return errors.Is(err, storetest.ErrCrashed) || errors.Is(err, errFenced)
}

// feed applies the blocks after the shard's position up to block until
// (exclusive), checkpointing every crashEvery blocks, as Run does: a
// checkpoint that fails is tried again at the next, and at the end until
// one succeeds. Its backfills read two blocks for each the shard reads,
// and the rest at the end. It returns the error that ended the owner, if
// one did.
func (w *crashWorld) feed(s *shard, until int) error {
	ctx := context.Background()
	readers := map[*backfill]*ptail.Reader{}
	defer func() {
		for _, r := range readers {
			_ = r.Close() // a reader holds nothing to flush
		}
	}()
	backfill := func(limit int) {
		for _, bf := range slices.Clone(s.backfills) {
			if readers[bf] == nil {
				readers[bf] = s.backfillReader(bf)
			}
			if _, err := s.backfillStep(bf, readers[bf], limit); err != nil {
				w.t.Fatal(err)
			}
		}
	}
	from := 0
	if s.pos != (ptail.Position{}) {
		from = slices.Index(w.pos, s.pos) + 1
		if from == 0 {
			w.t.Fatalf("recovered at %v, after no block", s.pos)
		}
	}
	for i := from; i < until; i++ {
		s.apply(w.blocks[i], w.pos[i])
		backfill(2)
		if (i+1)%crashEvery == 0 {
			if err := s.checkpoint(ctx); ended(err) {
				return err
			}
		}
	}
	for len(s.backfills) > 0 {
		backfill(0)
	}
	var err error
	for range 5 {
		if err = s.checkpoint(ctx); err == nil || ended(err) {
			return err
		}
	}
	w.t.Fatalf("the final checkpoint failed five times in a row: %v", err)
	return nil
}

// check fails the test unless the shard's memory and the committed
// state hold what the input makes, and none of the windows retention
// dropped.
func (w *crashWorld) check(what string, s *shard) {
	w.t.Helper()
	// A line the shard did not aggregate (max_cells above all) is the
	// case's doing, not the store's: say so rather than show totals off.
	for _, t := range s.tables {
		for r, n := range t.drops {
			if n > 0 {
				w.t.Fatalf("%s: %d lines dropped as %s: the case's configuration does not fit its input", what, n, reasonNames[r])
			}
		}
	}
	for ms, want := range w.want.kept {
		q := Query{App: "orders", WindowMs: ms}
		in := fmt.Sprintf("%s: %%s, windows of %v", what, time.Duration(ms)*time.Millisecond)
		w.compare(fmt.Sprintf(in, "memory"), memRows(w.t, s, q), want)
		got := rows(w.t, NewCommitted(w.mem, "puma", w.e.apps, func(string) int { return 1 }), q)
		w.compare(fmt.Sprintf(in, "committed"), got, want)
		// Over the windows retention dropped alone: no row.
		q.FromMs, q.ToMs = t0-24*3600_000, apps.WindowStart(w.want.horizon, ms)
		w.compare(fmt.Sprintf(in, "memory, expired windows"), memRows(w.t, s, q), nil)
		got = rows(w.t, NewCommitted(w.mem, "puma", w.e.apps, func(string) int { return 1 }), q)
		w.compare(fmt.Sprintf(in, "committed, expired windows"), got, nil)
	}
}

// compare fails the test unless got is want, in any order.
func (w *crashWorld) compare(what string, got, want []string) {
	w.t.Helper()
	compareRows(w.t, what, got, want, false, nil)
}

// compareRows fails the test unless got is want, in any order, with rows
// of expired only if they may be left (left): a node that read its input
// again after a takeover shows the windows retention drops until its
// next checkpoint drops them from its memory.
func compareRows(t testing.TB, what string, got, want []string, left bool, expired map[string]bool) {
	t.Helper()
	slices.Sort(got)
	if left {
		got = slices.DeleteFunc(got, func(r string) bool { return expired[r] })
	}
	equalRows(t, what, got, want)
}

// finish has a new owner recover over f (a Faulty store of its own),
// replay the rest of the input and check the totals; should f crash,
// another owner does it over the store itself. Then another owner
// recovers, and must find what was committed. afterFirst, if not nil,
// is called when the owner over f has ended.
func (w *crashWorld) finish(what string, f *storetest.Faulty, afterFirst func()) {
	w.t.Helper()
	s := w.recovered(f)
	if s != nil {
		if err := w.feed(s, len(w.blocks)); err != nil || f.Crashed() {
			s = nil // a crash in a checkpoint's deletes ends it too, silently
		}
	}
	f.SetFault(nil) // the answers checked read the store through it
	if afterFirst != nil {
		afterFirst()
	}
	if s == nil {
		what += ", the next owner ended"
		if s = w.recovered(w.mem); s == nil {
			w.t.Fatalf("%s: cannot recover", what)
		}
		if err := w.feed(s, len(w.blocks)); err != nil {
			w.t.Fatalf("%s: the last owner: %v", what, err)
		}
	}
	w.check(what+", replayed by a new owner", s)
	// Another owner recovers what was committed; what a crash or a
	// failed delete left is deleted by its next checkpoint.
	again := w.recovered(w.mem)
	if err := again.checkpoint(context.Background()); err != nil {
		w.t.Fatalf("%s: %v", what, err)
	}
	w.check(what+", recovered again and checkpointed", again)
	// Nothing above what is committed: the versions of attempts that
	// never committed were purged, or are below it at aborted epochs.
	err := w.mem.Scan(context.Background(), "puma", "", "", store.Latest, func(row string, cells []store.Cell) error {
		for _, c := range cells {
			if c.Timestamp > again.committed.Epoch {
				return fmt.Errorf("row %q column %s has a version at %d, above the committed epoch %d", row, c.Column, c.Timestamp, again.committed.Epoch)
			}
		}
		return nil
	})
	if err != nil {
		w.t.Fatalf("%s: %v", what, err)
	}
}

// faultsOf are the faults a call can have.
func faultsOf(c storetest.Call) []storetest.Fault {
	if !c.Changes() {
		return []storetest.Fault{storetest.Crash, storetest.Fail}
	}
	out := []storetest.Fault{storetest.Crash, storetest.Fail, storetest.FailApplied, storetest.FailLate}
	if c.Op != storetest.OpCheckAndPut && c.Rows != 1 {
		out = append(out, storetest.FailPartly)
	}
	return out
}

// TestStoreFaultAtEveryCall: the first owner's store call n fails in
// each way it can; the owner goes on as Run would (a crash ends it); a
// call that fails late lands a little later, or after the owner crashed,
// or while the next owner recovers. Whatever happened, the owner that
// did not crash holds exactly what the input makes, and a new owner,
// replaying from the position it recovered, does too.
func TestStoreFaultAtEveryCall(t *testing.T) {
	eachCrashCase(t, func(t *testing.T, cc *crashCase) {
		runs := 0
		for n, c := range cc.calls {
			if testing.Short() && n%3 != 0 {
				continue // -short: every third call
			}
			for _, fault := range faultsOf(c) {
				// When a late call lands, the owner going on meanwhile: a
				// few calls later, or after the owner ended (0). Or the
				// owner crashes at once (the gateway applying the request
				// of a process that died), and it lands after that, or at
				// a call of the next owner (-1-m: its call m): before its
				// claim (1), before its purge (3), after it (4), in its
				// first checkpoint (8).
				type landing struct {
					at    int
					crash bool
				}
				lands := []landing{{}}
				if fault == storetest.FailLate {
					lands = []landing{{n + 1, false}, {n + 3, false}, {0, false}}
					for _, at := range []int{0, -2, -4, -5, -9} {
						lands = append(lands, landing{at, true})
					}
				}
				for _, land := range lands {
					runs++
					what := fmt.Sprintf("call %d (%s %q) %v", n, c.Op, c.Row, fault)
					if fault == storetest.FailLate {
						what += fmt.Sprintf(", landing at %d", land.at)
						if land.crash {
							what += ", the owner crashing at once"
						}
					}
					at := land.at
					w := cc.world(t)
					f := storetest.NewFaulty(w.mem)
					f.SetFault(func(i int, _ storetest.Call) storetest.Fault {
						if i == at {
							f.Land()
						}
						switch {
						case i == n:
							return fault
						case i == n+1 && land.crash:
							return storetest.Crash
						}
						return storetest.Pass
					})
					w.firstOwner(what, f, len(cc.blocks))
					next := storetest.NewFaulty(w.mem)
					next.SetFault(func(i int, _ storetest.Call) storetest.Fault {
						if -1-i == at {
							f.Land()
						}
						return storetest.Pass
					})
					if at == 0 {
						f.Land()
					}
					w.finish(what, next, nil)
				}
			}
		}
		t.Logf("%d calls, %d runs", len(cc.calls), runs)
	})
}

// crashedAt is a run whose first owner crashed before its store call n.
func (c *crashCase) crashedAt(t *testing.T, n int) *crashWorld {
	w := c.world(t)
	f := storetest.NewFaulty(w.mem)
	f.SetFault(func(i int, _ storetest.Call) storetest.Fault {
		if i == n {
			return storetest.Crash
		}
		return storetest.Pass
	})
	if s := w.recovered(f); s != nil {
		if err := w.feed(s, len(c.blocks)); !f.Crashed() {
			t.Fatalf("the first owner did not crash before its call %d: %v", n, err)
		}
	}
	return w
}

// TestStoreFaultInRecovery: the first owner crashes before one of its
// store calls that change the store (a crash before a read leaves what
// one before the next change does); the next owner's store call m, in
// its recovery or its first checkpoint, then fails in each way it can (a
// second crash among them), and the owner goes on as Run would: a
// recovery that fails is tried again by a new shard, a crashed owner is
// followed by another. Every owner that ends the input holds exactly
// what the input makes.
func TestStoreFaultInRecovery(t *testing.T) {
	eachCrashCase(t, func(t *testing.T, cc *crashCase) {
		runs := 0
		for n, c := range cc.calls {
			if !c.Changes() {
				continue
			}
			// Every crash point with the windows resident; every other
			// with eviction or a backfill (the same points, with rows of
			// their own); every fourth in -short.
			if testing.Short() && n%4 != 0 || (cc.maxCells > 0 || cc.backfill > 0) && n%2 != 0 {
				continue
			}
			// What the crash left, which every run below starts from, and
			// the next owner's calls, up to the end of its first
			// checkpoint (about: the calls of its recovery and a few).
			crashed := cc.crashedAt(t, n)
			left := crashed.mem.Clone()
			count := storetest.NewFaulty(crashed.mem)
			if crashed.recovered(count) == nil {
				t.Fatalf("crash before call %d: the next owner cannot recover", n)
			}
			next := count.Calls()
			for m := range len(next) + 6 {
				// The calls of its first checkpoint (after those of its
				// recovery) crash; the other faults of a checkpoint's
				// calls are TestStoreFaultAtEveryCall's.
				faults := []storetest.Fault{storetest.Crash}
				if m < len(next) {
					faults = faultsOf(next[m])
				}
				for _, fault := range faults {
					runs++
					what := fmt.Sprintf("crash before call %d (%s %q), then the next owner's call %d %v", n, c.Op, c.Row, m, fault)
					w := cc.world(t)
					w.mem, w.owners = left.Clone(), crashed.owners
					f := storetest.NewFaulty(w.mem)
					f.SetFault(func(i int, _ storetest.Call) storetest.Fault {
						if i == m+2 {
							f.Land()
						}
						if i == m {
							return fault
						}
						return storetest.Pass
					})
					w.finish(what, f, func() { f.Land() })
				}
			}
		}
		t.Logf("%d runs", runs)
	})
}

// TestStoreStaleOwnerAtEveryCall: before each of the first owner's store
// calls, a new owner (the old one stalled, its lease lost, but it does
// not know) claims the shard, replays a few blocks past what it
// recovered and commits; then the old owner goes on from where it
// stalled, its call made and every one after it, until it finds itself
// fenced. Its puts to cell rows land after the new owner's claim and
// purge, which nothing at the store refuses. Another owner then
// recovers, replays, and must hold exactly what the input makes; so must
// the new owner's commit, whatever the old one wrote after it.
func TestStoreStaleOwnerAtEveryCall(t *testing.T) {
	eachCrashCase(t, func(t *testing.T, cc *crashCase) {
		for n, c := range cc.calls {
			// The new owner replays one block (fewer than the old one's
			// attempt may hold: cells of that attempt it does not write
			// again), or more than a checkpoint's.
			for _, replay := range []int{1, crashEvery + 1} {
				what := fmt.Sprintf("a new owner, replaying %d blocks, before the old one's call %d (%s %q)", replay, n, c.Op, c.Row)
				w := cc.world(t)
				f := storetest.NewFaulty(w.mem)
				f.SetFault(func(i int, _ storetest.Call) storetest.Fault {
					if i == n {
						newer := w.recovered(w.mem)
						if err := w.feed(newer, min(slices.Index(cc.pos, newer.pos)+1+replay, len(cc.blocks))); err != nil {
							t.Fatalf("%s: the new owner: %v", what, err)
						}
					}
					return storetest.Pass
				})
				if s := w.recovered(f); s != nil {
					if err := w.feed(s, len(cc.blocks)); err != nil && !errors.Is(err, errFenced) {
						t.Fatalf("%s: the old owner: %v", what, err)
					}
				}
				w.finish(what, storetest.NewFaulty(w.mem), nil)
			}
		}
	})
}

// TestStoreCrashLoop: owner after owner takes the shard over and crashes
// in its first checkpoint, its cells written and its commit not, as a
// node crashing in a loop on the same input would. The store keeps only
// a few versions of a cell: were the versions of each such attempt left
// behind, they would push the committed version out, and the committed
// state would lose the cells. The owner that ends the loop holds exactly
// what the input makes.
func TestStoreCrashLoop(t *testing.T) {
	eachCrashCase(t, func(t *testing.T, cc *crashCase) {
		w := cc.world(t)
		if err := w.feed(w.recovered(w.mem), len(cc.blocks)/2); err != nil {
			t.Fatal(err)
		}
		for loop := range 2 * store.MinVersions {
			f := storetest.NewFaulty(w.mem)
			checks := 0
			f.SetFault(func(_ int, c storetest.Call) storetest.Fault {
				if c.Op == storetest.OpCheckAndPut {
					// The claim, the attempt marker, then the commit.
					if checks++; checks == 3 {
						return storetest.Crash
					}
				}
				return storetest.Pass
			})
			if s := w.recovered(f); s != nil {
				_ = w.feed(s, len(cc.blocks))
			}
			if !f.Crashed() {
				t.Fatalf("owner %d of the loop did not crash", loop)
			}
		}
		w.finish("after a crash loop", storetest.NewFaulty(w.mem), nil)
	})
}

// TestStoreTwoFaultsAtCommitRow: a CheckAndPut of the commit row (a
// claim, an attempt marker, a commit, a fence) fails, cleanly or after
// it was applied or late, and one of the next two calls fails too (the
// read of the commit row that settles a failed commit, the fence of the
// next attempt), cleanly, after it was applied, or by a crash. Not with
// eviction: two checkpoints failing in a row there would hold more cells
// than its max_cells lets in, refusing lines.
func TestStoreTwoFaultsAtCommitRow(t *testing.T) {
	eachCrashCase(t, func(t *testing.T, cc *crashCase) {
		if cc.maxCells > 0 {
			t.Skip("two failed checkpoints in a row exceed the case's max_cells")
		}
		runs := 0
		for n, c := range cc.calls {
			if c.Op != storetest.OpCheckAndPut || testing.Short() && n%3 != 0 {
				continue
			}
			for _, first := range []storetest.Fault{storetest.Fail, storetest.FailApplied, storetest.FailLate} {
				for _, second := range []storetest.Fault{storetest.Fail, storetest.FailApplied, storetest.Crash} {
					for _, gap := range []int{1, 2} {
						runs++
						what := fmt.Sprintf("call %d (%s) %v, then call %d %v", n, c.Op, first, n+gap, second)
						w := cc.world(t)
						f := storetest.NewFaulty(w.mem)
						f.SetFault(func(i int, _ storetest.Call) storetest.Fault {
							switch i {
							case n:
								return first
							case n + gap:
								return second
							}
							return storetest.Pass
						})
						w.firstOwner(what, f, len(cc.blocks))
						f.Land()
						w.finish(what, storetest.NewFaulty(w.mem), nil)
					}
				}
			}
		}
		t.Logf("%d runs", runs)
	})
}

// TestExpiredWindowsNeverShow: the deletes of the rows of windows
// retention dropped fail after the commit that dropped them, cleanly
// (every one, all along) or by a crash (after the last commit, at its
// first delete): the rows are
// left in the store, and no answer shows those windows, neither the
// owner's (its memory, the evicted windows read from the store) nor the
// committed state's nor that of a new owner before its first
// checkpoint, which deletes them.
func TestExpiredWindowsNeverShow(t *testing.T) {
	eachCrashCase(t, func(t *testing.T, cc *crashCase) {
		// The first delete of expired windows' rows after the last commit.
		crashAt := -1
		for n, c := range cc.calls {
			switch {
			case c.Op == storetest.OpCheckAndPut:
				crashAt = -1
			case crashAt < 0 && cc.deletesExpired(c):
				crashAt = n
			}
		}
		if crashAt < 0 {
			t.Fatal("the last checkpoint deletes no expired window: the input tests none")
		}
		for _, fault := range []storetest.Fault{storetest.Fail, storetest.Crash} {
			what := fmt.Sprintf("deletes of expired windows' rows %v", fault)
			var w *crashWorld
			if fault == storetest.Crash {
				w = cc.crashedAt(t, crashAt)
			} else {
				w = cc.world(t)
				f := storetest.NewFaulty(w.mem)
				f.SetFault(func(_ int, c storetest.Call) storetest.Fault {
					if cc.deletesExpired(c) {
						return storetest.Fail
					}
					return storetest.Pass
				})
				s := w.recovered(f)
				if err := w.feed(s, len(cc.blocks)); err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				f.SetFault(nil) // the answers checked read the store through it
				w.check(what+": the owner", s)
			}
			if !w.expiredLeft() {
				t.Fatalf("%s: no row of an expired window is left in the store", what)
			}
			s := w.recovered(w.mem)
			if s.pos != cc.pos[len(cc.pos)-1] {
				t.Fatalf("%s: the new owner recovered at %v, not after the last block", what, s.pos)
			}
			w.check(what+": a new owner", s)
			if err := s.checkpoint(context.Background()); err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if w.expiredLeft() {
				t.Fatalf("%s: the new owner's checkpoint left rows of expired windows in the store", what)
			}
			w.check(what+": a new owner, checkpointed", s)
		}
	})
}

// spanPrefixes are the row prefixes of the case's spans (the app's
// windows of one and ten minutes), by window length.
func (c *crashCase) spanPrefixes() map[int64]string {
	app := c.e.apps[0]
	out := map[int64]string{}
	for _, ms := range []int64{60_000, 600_000} {
		out[ms] = appPrefix("orders", 0, app, fingerprint(app, ms))
	}
	return out
}

// deletesExpired reports whether call deletes rows of windows retention
// dropped: a window's rows, or a span's first windows (not a whole span,
// as a backfill clears it).
func (c *crashCase) deletesExpired(call storetest.Call) bool {
	if call.Op != storetest.OpDeleteUpTo {
		return false
	}
	for _, p := range c.spanPrefixes() {
		if strings.HasPrefix(call.Row, p) && (call.Row != p || call.Stop != store.PrefixEnd(p)) {
			return true
		}
	}
	return false
}

// expiredLeft reports whether the store holds a row of a window that
// retention dropped under the committed watermark.
func (w *crashWorld) expiredLeft() bool {
	ctx := context.Background()
	_, st, _, err := readCommit(ctx, w.mem, "puma", "orders", 0)
	if err != nil {
		w.t.Fatal(err)
	}
	horizon := st.Watermarks["orders"] - w.e.apps[0].RetentionMs
	left := false
	for ms, p := range w.spanPrefixes() {
		err := w.mem.Scan(ctx, "puma", p, store.PrefixEnd(p), store.Latest, func(row string, _ []store.Cell) error {
			wk, _, _ := strings.Cut(strings.TrimPrefix(row, p), "/")
			if win, ok := parseWindowKey(wk); ok && win+ms <= horizon {
				left = true
			}
			return nil
		})
		if err != nil {
			w.t.Fatal(err)
		}
	}
	return left
}
