package puma

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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
// counted once (the agents' re-sent ones skipped), no line lost.

// crashBlocks is the bucket's input, block i at crashPos(i): lines over
// two and a half hours of event time (so that retention drops the first
// windows), from a stock client, from an agent in order and re-sending a
// batch, and from agents whose batches come out of order (so that their
// keys keep a seen-window), one of which is seen only at the start (so
// that its key is forgotten and its window row deleted: crashHorizon).
// The blocks arrive a minute apart.
func crashBlocks() []*segment.Block {
	out := []*segment.Block{
		agent("a3/r1", 3, order(t0+500, "eu", "book", 50)),
		agent("a3/r1", 1, order(t0+600, "eu", "book", 51), order(t0+700, "us", "pen", 52)),
	}
	var seqA1, seqA2 uint64 = 1, 1
	var lastA1 *segment.Block
	for i := range 12 {
		ts := t0 + int64(i)*13*60_000
		lines := [][]byte{
			order(ts+1000, "eu", "book", i%5+1),
			order(ts+2000, "us", "pen", 10+i%3),
			order(ts+65_000, "eu", "book", 7),
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

// crashHorizon is the dedup horizon of the crash tests' nodes: agent keys
// not seen for it are forgotten, a3's among them, not a1's nor a2's.
const crashHorizon = 10 * time.Minute

func crashPos(i int) ptail.Position {
	return ptail.Position{Segment: names.SegmentName(1, 1), Offset: int64(i + 1)}
}

// crashEvery is how many blocks a shard applies between checkpoints.
const crashEvery = 3

// crashApp is the orders app in windows of one and ten minutes, with a
// variable state besides the fixed slots.
func crashApp(t testing.TB) *apps.App {
	return orders(t, func(s *apps.Spec) {
		s.Window = 0
		s.Windows = []config.Duration{config.Duration(time.Minute), config.Duration(10 * time.Minute)}
		s.Aggregates = append(s.Aggregates, apps.AggregateSpec{Name: "amounts", Fn: "count_distinct", Field: "amount"})
	})
}

// crashWant is what the input makes, by window length, as rows formats
// them: each line counted once (an agent's by its sequence number).
// Kept are the rows of the windows retention keeps; expired those of the
// windows it dropped, which a committed state may still hold for a while
// (their rows are deleted after the commit that drops them, and a crash
// or a failed delete leaves them to a later checkpoint), but never with
// other values.
type crashWant struct {
	kept    map[int64][]string
	expired map[int64]map[string]bool
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
	want := crashWant{kept: map[int64][]string{}, expired: map[int64]map[string]bool{}}
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

// crashWorld is one run of the input: a store of its own, shared by the
// owners a run starts.
type crashWorld struct {
	t      *testing.T
	e      *env
	mem    *storetest.Mem
	blocks []*segment.Block
	want   crashWant
	owners int
}

// owner makes a new owner of the shard over st (its own node and
// coordinator: an owner that crashed is gone with its session, and one
// that did not still believes it holds the lease) and recovers it.
func (w *crashWorld) owner(st store.Store) (*shard, error) {
	w.owners++
	p := w.e.node(fmt.Sprintf("owner%d", w.owners), func(c *Config, d *Deps) {
		c.DedupHorizon = config.Duration(crashHorizon)
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
// one succeeds. It returns the error that ended the owner, if one did.
func (w *crashWorld) feed(s *shard, until int) error {
	ctx := context.Background()
	for i := int(s.pos.Offset); i < until; i++ {
		s.apply(w.blocks[i], crashPos(i))
		if (i+1)%crashEvery == 0 {
			if err := s.checkpoint(ctx); ended(err) {
				return err
			}
		}
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
// state hold what the input makes; windows retention dropped may be
// left in them (leftMemory, leftStore), with their values: in a
// committed state until the deletes after a commit are done (a crash or
// a failed delete leaves them to a later checkpoint), in the memory of a
// shard that loaded them until its next checkpoint.
func (w *crashWorld) check(what string, s *shard, leftMemory, leftStore bool) {
	w.t.Helper()
	for ms, want := range w.want.kept {
		q := Query{App: "orders", WindowMs: ms}
		in := fmt.Sprintf("%s: %%s, windows of %v", what, time.Duration(ms)*time.Millisecond)
		w.compare(fmt.Sprintf(in, "memory"), memRows(w.t, s, q), want, leftMemory, w.want.expired[ms])
		got := rows(w.t, NewCommitted(w.mem, "puma", w.e.apps, func(string) int { return 1 }), q)
		w.compare(fmt.Sprintf(in, "committed"), got, want, leftStore, w.want.expired[ms])
	}
}

// compare fails the test unless got is want, with rows of expired only
// if they may be left.
func (w *crashWorld) compare(what string, got, want []string, left bool, expired map[string]bool) {
	w.t.Helper()
	slices.Sort(got)
	if left {
		got = slices.DeleteFunc(got, func(r string) bool { return expired[r] })
	}
	equalRows(w.t, what, got, want)
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
	if afterFirst != nil {
		afterFirst()
	}
	if s == nil {
		what += ", the next owner crashed"
		if s = w.recovered(w.mem); s == nil {
			w.t.Fatalf("%s: cannot recover", what)
		}
		if err := w.feed(s, len(w.blocks)); err != nil {
			w.t.Fatalf("%s: the last owner: %v", what, err)
		}
	}
	w.check(what+", replayed by a new owner", s, false, true)
	// Another owner recovers what was committed; what a crash or a
	// failed delete left is deleted by its next checkpoint.
	again := w.recovered(w.mem)
	if err := again.checkpoint(context.Background()); err != nil {
		w.t.Fatalf("%s: %v", what, err)
	}
	w.check(what+", recovered again and checkpointed", again, false, false)
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

// crashCalls runs the input through one owner without faults, checks
// it, and returns the owner's store calls.
func crashCalls(t *testing.T, e *env, blocks []*segment.Block, want crashWant) []storetest.Call {
	w := &crashWorld{t: t, e: e, mem: storetest.NewMem(), blocks: blocks, want: want}
	f := storetest.NewFaulty(w.mem)
	s := w.recovered(f)
	if err := w.feed(s, len(blocks)); err != nil {
		t.Fatal(err)
	}
	w.check("without faults", s, false, false)
	return f.Calls()
}

// TestStoreFaultAtEveryCall: the first owner's store call n fails in
// each way it can; the owner goes on as Run would (a crash ends it); a
// call that fails late lands a little later, or after the owner crashed,
// or while the next owner recovers. Whatever happened, the owner that
// did not crash holds exactly what the input makes, and a new owner,
// replaying from the position it recovered, does too.
func TestStoreFaultAtEveryCall(t *testing.T) {
	app := crashApp(t)
	e := newEnv(t, app)
	blocks := crashBlocks()
	want := crashTotals(t, app, blocks)
	calls := crashCalls(t, e, blocks, want)
	runs := 0
	for n, c := range calls {
		for _, fault := range faultsOf(c) {
			// When a late call lands: a few calls later, or at a call of the
			// next owner (-1-m: its call m), or after the first owner ended.
			lands := []int{0}
			if fault == storetest.FailLate {
				lands = []int{n + 1, n + 3, 0, -1, -2, -3, -4, -5, -6, -7, -8}
			}
			for _, at := range lands {
				runs++
				what := fmt.Sprintf("call %d (%s %q) %v", n, c.Op, c.Row, fault)
				if fault == storetest.FailLate {
					what += fmt.Sprintf(", landing at %d", at)
				}
				w := &crashWorld{t: t, e: e, mem: storetest.NewMem(), blocks: blocks, want: want}
				f := storetest.NewFaulty(w.mem)
				f.SetFault(func(i int, _ storetest.Call) storetest.Fault {
					if i == at {
						f.Land()
					}
					if i == n {
						return fault
					}
					return storetest.Pass
				})
				if s := w.recovered(f); s != nil {
					// Ended by a crash, or fenced by a commit of its own
					// that failed and landed later (then it stops and the
					// next owner recovers from that commit), or exact.
					if err := w.feed(s, len(blocks)); err == nil && !f.Crashed() {
						w.check(what+": the first owner", s, false, true)
					} else if !ended(err) && !f.Crashed() {
						t.Fatalf("%s: the first owner: %v", what, err)
					}
				}
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
	t.Logf("%d calls, %d runs", len(calls), runs)
}

// crashedAt is a world whose first owner crashed before its store call n.
func crashedAt(t *testing.T, e *env, blocks []*segment.Block, want crashWant, n int) *crashWorld {
	w := &crashWorld{t: t, e: e, mem: storetest.NewMem(), blocks: blocks, want: want}
	f := storetest.NewFaulty(w.mem)
	f.SetFault(func(i int, _ storetest.Call) storetest.Fault {
		if i == n {
			return storetest.Crash
		}
		return storetest.Pass
	})
	if s := w.recovered(f); s != nil {
		if err := w.feed(s, len(blocks)); !f.Crashed() {
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
	app := crashApp(t)
	e := newEnv(t, app)
	blocks := crashBlocks()
	want := crashTotals(t, app, blocks)
	calls := crashCalls(t, e, blocks, want)
	runs := 0
	for n, c := range calls {
		if !c.Changes() {
			continue
		}
		if testing.Short() && n%4 != 0 {
			continue // -short: a crash before every fourth call
		}
		// The next owner's calls, up to the end of its first checkpoint
		// (about: the calls of its recovery and a few).
		w := crashedAt(t, e, blocks, want, n)
		count := storetest.NewFaulty(w.mem)
		if w.recovered(count) == nil {
			t.Fatalf("crash before call %d: the next owner cannot recover", n)
		}
		next := count.Calls()
		for m := range len(next) + 6 {
			var faults []storetest.Fault
			if m < len(next) {
				faults = faultsOf(next[m])
			} else {
				faults = faultsOf(storetest.Call{Op: storetest.OpPut}) // every fault: a later call of whatever kind
			}
			for _, fault := range faults {
				runs++
				what := fmt.Sprintf("crash before call %d (%s %q), then the next owner's call %d %v", n, c.Op, c.Row, m, fault)
				w := crashedAt(t, e, blocks, want, n)
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
	app := crashApp(t)
	e := newEnv(t, app)
	blocks := crashBlocks()
	want := crashTotals(t, app, blocks)
	calls := crashCalls(t, e, blocks, want)
	for n, c := range calls {
		// The new owner replays one block (fewer than the old one's
		// attempt may hold: cells of that attempt it does not write
		// again), or more than a checkpoint's.
		for _, replay := range []int{1, crashEvery + 1} {
			what := fmt.Sprintf("a new owner, replaying %d blocks, before the old one's call %d (%s %q)", replay, n, c.Op, c.Row)
			w := &crashWorld{t: t, e: e, mem: storetest.NewMem(), blocks: blocks, want: want}
			f := storetest.NewFaulty(w.mem)
			f.SetFault(func(i int, _ storetest.Call) storetest.Fault {
				if i == n {
					newer := w.recovered(w.mem)
					if err := w.feed(newer, min(int(newer.pos.Offset)+replay, len(blocks))); err != nil {
						t.Fatalf("%s: the new owner: %v", what, err)
					}
				}
				return storetest.Pass
			})
			if s := w.recovered(f); s != nil {
				if err := w.feed(s, len(blocks)); err != nil && !errors.Is(err, errFenced) {
					t.Fatalf("%s: the old owner: %v", what, err)
				}
			}
			w.finish(what, storetest.NewFaulty(w.mem), nil)
		}
	}
}
