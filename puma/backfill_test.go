package puma

import (
	"context"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/ptail"
)

// history is the input of the backfill tests: segment i holds minute i,
// bfLines lines of one agent in sequence; segment 3 is published twice
// (a retried batch), which both the live reading and a backfill count
// once.
const bfLines = 40

func bfBlock(i int) *segment.Block {
	var lines [][]byte
	for j := range bfLines {
		lines = append(lines, order(t0+int64(i)*60_000+int64(j)*1000, fmt.Sprint("r", j%5), fmt.Sprint("k", j%3), i*100+j))
	}
	return agent("a1/x", uint64(i*bfLines+1), lines...)
}

func publishHistory(e *env, from, to int) ptail.Position {
	var pos ptail.Position
	for i := from; i < to; i++ {
		pos = e.publish("orders", 0, bfBlock(i))
		if i == 3 {
			pos = e.publish("orders", 0, bfBlock(i))
		}
	}
	return pos
}

// kindsApp is an app added beside orders on its category.
func kindsApp(t testing.TB, category string) *apps.App {
	return orders(t, func(s *apps.Spec) {
		s.Name, s.Category, s.GroupBy = "kinds", category, []string{"kind"}
		s.Aggregates = []apps.AggregateSpec{{Name: "n", Fn: "count"}, {Name: "total", Fn: "sum", Field: "amount"}}
	})
}

// wantKinds is kinds' answer over minutes [0, n).
func wantKinds(n int) []string {
	var out []string
	for i := range n {
		for k := range 3 {
			cnt, total := 0, 0
			for j := range bfLines {
				if j%3 == k {
					cnt, total = cnt+1, total+i*100+j
				}
			}
			start := t0 + int64(i)*60_000
			out = append(out, formatRow(Row{WindowStartMs: start, WindowEndMs: start + 60_000, Key: map[string]string{"kind": fmt.Sprint("k", k)},
				Values: map[string]any{"n": float64(cnt), "total": float64(total)}}))
		}
	}
	return out
}

// wantOrders is orders' answer over minutes [0, n), all keys merged;
// extra adds values of other aggregates to every row.
func wantOrders(n int, extra map[string]any) []string {
	var out []string
	for i := range n {
		total := 0
		for j := range bfLines {
			total += i*100 + j
		}
		start := t0 + int64(i)*60_000
		vals := map[string]any{"n": float64(bfLines), "total": float64(total), "lo": float64(i * 100), "hi": float64(i*100 + bfLines - 1), "mean": float64(total) / bfLines}
		for k, v := range extra {
			vals[k] = v
		}
		out = append(out, formatRow(Row{WindowStartMs: start, WindowEndMs: start + 60_000, Key: map[string]string{}, Values: vals}))
	}
	return out
}

func waitLive(t *testing.T, p *Puma, app string) {
	t.Helper()
	testkit.Eventually(t, app+" live", func() error {
		// Ready first: AppState counts only the shards that have
		// recovered, so before them it says live with their backfills
		// not begun (read the other way round, a shard that recovered in
		// between passed for one whose backfill had joined).
		if !p.Ready() {
			return fmt.Errorf("node not ready")
		}
		if st, _ := p.AppState(app); st.State != "live" {
			return fmt.Errorf("%s is %+v", app, st)
		}
		return nil
	})
}

// TestBackfillAddedApp: an app added to a category that another app has
// consumed for a while is built from the segments in the dfs while the
// other keeps running live (and segments keep coming): once live, both
// answer every minute exactly, the retried batch counted once by each;
// the commit row lists the new app's span as built and no backfill.
func TestBackfillAddedApp(t *testing.T) {
	e := newEnv(t, orders(t))
	publishHistory(e, 0, 8)
	r1 := start(t, e.node("n1"))
	waitCommitted(t, r1.p, publishHistory(e, 8, 9))
	r1.stop(t)

	e.apps = []*apps.App{orders(t), kindsApp(t, "orders")}
	p2 := e.node("n2")
	r2 := start(t, p2)
	last := publishHistory(e, 9, 12)
	waitLive(t, p2, "kinds")
	waitCommitted(t, p2, last)
	equalRows(t, "kinds", rows(t, p2, Query{App: "kinds"}), wantKinds(12))
	equalRows(t, "orders", rows(t, p2, Query{App: "orders", GroupBy: []string{}}), wantOrders(12, nil))
	r2.stop(t)
	equalRows(t, "kinds, committed", rows(t, committed(e), Query{App: "kinds"}), wantKinds(12))
	_, st, _, err := readCommit(context.Background(), e.st, "puma", "orders", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Spans) != 2 || len(st.Backfill) != 0 {
		t.Fatalf("commit row spans %v, backfill %v", st.Spans, st.Backfill)
	}
}

// TestBackfillChangedApp: an app whose aggregates change (a distinct count
// added: its state has another shape) is built again from the dfs, and
// answers every minute exactly, the new aggregate included; the rows of
// its old shape are deleted.
func TestBackfillChangedApp(t *testing.T) {
	e := newEnv(t, orders(t))
	r1 := start(t, e.node("n1"))
	waitCommitted(t, r1.p, publishHistory(e, 0, 6))
	r1.stop(t)
	oldFp := fingerprint(e.apps[0], 60_000)

	e.apps = []*apps.App{orders(t, func(s *apps.Spec) {
		s.Aggregates = append(s.Aggregates, apps.AggregateSpec{Name: "kinds", Fn: "count_distinct", Field: "kind"})
	})}
	p2 := e.node("n2")
	r2 := start(t, p2)
	last := publishHistory(e, 6, 10)
	waitLive(t, p2, "orders")
	waitCommitted(t, p2, last)
	equalRows(t, "changed orders", rows(t, p2, Query{App: "orders", GroupBy: []string{}}), wantOrders(10, map[string]any{"kinds": float64(3)}))
	r2.stop(t)
	if n := countRows(t, e.st, "s/orders/0/orders@"+oldFp+"/"); n != 0 {
		t.Fatalf("%d rows of the old shape left", n)
	}
}

// TestBackfillRefilteredApp: an app whose where filter is changed
// between two runs keeps the shape of its state (the fingerprint), but
// its cells counted the lines of the old filter: it is built again from
// the dfs under the new one, so that every minute, before the change as
// after it, answers what the new filter lets through, not some minutes
// by one filter and the rest by the other.
func TestBackfillRefilteredApp(t *testing.T) {
	e := newEnv(t, orders(t))
	r1 := start(t, e.node("n1"))
	waitCommitted(t, r1.p, publishHistory(e, 0, 6))
	r1.stop(t)

	e.apps = []*apps.App{orders(t, func(s *apps.Spec) { s.Where = `kind == "k0"` })}
	p2 := e.node("n2")
	r2 := start(t, p2)
	last := publishHistory(e, 6, 10)
	waitLive(t, p2, "orders")
	waitCommitted(t, p2, last)
	var want []string
	for i := range 10 {
		n, total := 0, 0
		for j := 0; j < bfLines; j += 3 { // kind k0
			n, total = n+1, total+i*100+j
		}
		start := t0 + int64(i)*60_000
		want = append(want, formatRow(Row{WindowStartMs: start, WindowEndMs: start + 60_000, Key: map[string]string{},
			Values: map[string]any{"n": float64(n), "total": float64(total), "lo": float64(i * 100), "hi": float64(i*100 + bfLines - 1), "mean": float64(total) / float64(n)}}))
	}
	equalRows(t, "refiltered orders", rows(t, p2, Query{App: "orders", GroupBy: []string{}}), want)
	r2.stop(t)
}

// TestRefilteredAppRolledBack: a node that starts rebuilding an app whose
// where filter changed, and dies before its first checkpoint, leaves a
// commit row that no longer lists the app's windows as built: a node of
// the configuration before (the change rolled back) builds them again
// too, rather than taking the rows the first one deleted for the whole.
func TestRefilteredAppRolledBack(t *testing.T) {
	e := newEnv(t, orders(t))
	r1 := start(t, e.node("n1"))
	last := publishHistory(e, 0, 6)
	waitCommitted(t, r1.p, last)
	r1.stop(t)

	before := e.apps
	e.apps = []*apps.App{orders(t, func(s *apps.Spec) { s.Where = `kind == "k0"` })}
	testShard(t, e.node("n2"), 0).release() // dies before its first checkpoint

	e.apps = before
	p3 := e.node("n3")
	r3 := start(t, p3)
	waitLive(t, p3, "orders")
	waitCommitted(t, p3, last)
	equalRows(t, "orders rolled back", rows(t, p3, Query{App: "orders", GroupBy: []string{}}), wantOrders(6, nil))
	r3.stop(t)
}

func countRows(t *testing.T, st store.Store, prefix string) int {
	t.Helper()
	n := 0
	err := st.Scan(context.Background(), "puma", prefix, store.PrefixEnd(prefix), store.Latest, func(string, []store.Cell) error {
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestAppStateWhileRecovering: while a bucket of an app's category that
// is the node's is not running (before the node's first pass over its
// buckets has ended, taken and recovering, failed and waiting to be
// tried again), the app is "recovering", not "live": whether the shard
// has a backfill to run is known only once it has recovered (an operator
// waiting for "live" after adding an app and restarting would otherwise
// take the answers for complete before the backfill began). A bucket
// held by another node (or not tried here since it was handed over) is
// that node's to report. Once recovered, the shard's backfill shows.
func TestAppStateWhileRecovering(t *testing.T) {
	e := newEnv(t, orders(t))
	r1 := start(t, e.node("n1"))
	waitCommitted(t, r1.p, publishHistory(e, 0, 3))
	r1.stop(t)

	other := orders(t, func(s *apps.Spec) { s.Name, s.Category = "elsewhere", "other" })
	e.apps = []*apps.App{orders(t), kindsApp(t, "orders"), other}
	p2 := e.node("n2")
	want := func(what string, states map[string]string) {
		t.Helper()
		for app, w := range states {
			if st, _ := p2.AppState(app); st.State != w {
				t.Fatalf("%s: %s is %+v, want %s", what, app, st, w)
			}
		}
	}
	want("before the first pass", map[string]string{"kinds": "recovering", "orders": "recovering", "elsewhere": "recovering"})

	// The first pass: orders/0 taken here (not recovered yet), other/0
	// held by another node.
	co := e.hub.Session()
	t.Cleanup(func() { co.Close() })
	lease, err := co.Acquire(context.Background(), shardID{"orders", 0}.lease(), p2.cfg.ID)
	if err != nil {
		t.Fatal(err)
	}
	s, err := newShard(p2, "orders", 0, lease)
	if err != nil {
		t.Fatal(err)
	}
	p2.mu.Lock()
	p2.shards[shardID{"orders", 0}] = s
	p2.mu.Unlock()
	p2.record(shardID{"other", 0}, StateElsewhere, nil, false)
	p2.running.Store(true)
	want("orders/0 recovering", map[string]string{"kinds": "recovering", "orders": "recovering", "elsewhere": "live"})
	merged := MergeAppReports([][]AppReport{p2.AppReports(), {{App: "kinds", State: AppState{State: "live"}}}})
	if st := merged["kinds"].State.State; st != "recovering" {
		t.Fatalf("merged with a node where it is live: %q", st)
	}
	merged = MergeAppReports([][]AppReport{p2.AppReports(), {{App: "kinds", State: AppState{State: "backfilling", BackfillShards: 1}}}})
	if st := merged["kinds"].State; st.State != "backfilling" || st.BackfillShards != 1 {
		t.Fatalf("merged with a node where it backfills: %+v", st)
	}

	if err := s.recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	adopt(p2, s)
	if st, _ := p2.AppState("kinds"); st.State != "backfilling" || st.BackfillShards != 1 {
		t.Fatalf("kinds once recovered: %+v", st)
	}
	want("orders/0 recovered", map[string]string{"orders": "live"})
	s.release()

	p2.mu.Lock()
	delete(p2.shards, shardID{"orders", 0})
	p2.mu.Unlock()
	want("orders/0 handed over, not tried since", map[string]string{"orders": "live"})
	p2.record(shardID{"orders", 0}, StateFailed, errors.New("injected"), false)
	want("orders/0 failed", map[string]string{"kinds": "recovering", "orders": "recovering", "elsewhere": "live"})
}

// TestBackfillResumes: a node killed in the middle of a backfill (after a
// checkpoint, with more read since) leaves it to the next node, which
// resumes at the committed progress, neither redoing nor losing lines:
// the answers are exact.
func TestBackfillResumes(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, orders(t))
	r1 := start(t, e.node("n1"))
	last := publishHistory(e, 0, 12)
	waitCommitted(t, r1.p, last)
	r1.stop(t)

	e.apps = []*apps.App{orders(t), kindsApp(t, "orders")}
	p2 := e.node("n2")
	s := testShard(t, p2, 0)
	adopt(p2, s)
	if st, _ := p2.AppState("kinds"); st.State != "backfilling" || st.BackfillShards != 1 {
		t.Fatalf("kinds %+v", st)
	}
	if st, _ := p2.AppState("orders"); st.State != "live" {
		t.Fatalf("orders %+v", st)
	}
	bf := s.backfills[0]
	r := s.backfillReader(bf)
	if joined, err := s.backfillStep(bf, r, 5); joined || err != nil {
		t.Fatalf("step: %v %v", joined, err)
	}
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	committedAt := bf.pos
	if joined, err := s.backfillStep(bf, r, 3); joined || err != nil {
		t.Fatalf("step: %v %v", joined, err)
	}
	_ = r.Close()
	// Killed here: what it read after the checkpoint is not committed.

	p3 := e.node("n3")
	s3 := testShard(t, p3, 0)
	if len(s3.backfills) != 1 || s3.backfills[0].pos != committedAt {
		t.Fatalf("resumed at %+v, committed %s", s3.backfills, committedAt)
	}
	s3.release() // hand the shard to a running node
	r3 := start(t, p3)
	waitLive(t, p3, "kinds")
	waitCommitted(t, p3, last)
	equalRows(t, "kinds", rows(t, p3, Query{App: "kinds"}), wantKinds(12))
	equalRows(t, "orders", rows(t, p3, Query{App: "orders", GroupBy: []string{}}), wantOrders(12, nil))
	r3.stop(t)
}

// TestBackfillOneCellPerKey: a backfill finds the cells it made again
// (a window of many keys: its key index grows): each window has one cell
// per key, which is what the store keeps (one row per key), so that the
// answers from the store and from a recovery are those from memory.
func TestBackfillOneCellPerKey(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, orders(t))
	r1 := start(t, e.node("n1"))
	last := publishHistory(e, 0, 6)
	waitCommitted(t, r1.p, last)
	r1.stop(t)

	e.apps = []*apps.App{orders(t, func(s *apps.Spec) { s.Aggregates = s.Aggregates[:4] })}
	s := testShard(t, e.node("n2"), 0)
	bf := s.backfills[0]
	r := s.backfillReader(bf)
	t.Cleanup(func() { _ = r.Close() })
	if joined, err := s.backfillStep(bf, r, 0); !joined || err != nil {
		t.Fatalf("step: %v %v", joined, err)
	}
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	for w, wc := range s.tables[0].spans[0].windows {
		if n := wc.len(); n != 15 {
			t.Errorf("window %+ds: %d cells, want one for each of the 15 keys", (w-t0)/1000, n)
		}
	}
	want := memRows(t, s, Query{})
	equalRows(t, "committed", rows(t, committed(e), Query{}), want)
	equalRows(t, "recovered", memRows(t, testShard(t, e.node("n3"), 0), Query{}), want)
}

// TestBackfillAnswersSayIncomplete: while an app added to a category is
// built from the dfs, its answers (from memory and from the store) list
// the shard as incomplete rather than passing a part of its lines off as
// the whole; the other app's answers, live, are whole; once the backfill
// has joined and committed, so are the new app's.
func TestBackfillAnswersSayIncomplete(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, orders(t))
	r1 := start(t, e.node("n1"))
	last := publishHistory(e, 0, 12)
	waitCommitted(t, r1.p, last)
	r1.stop(t)

	e.apps = []*apps.App{orders(t), kindsApp(t, "orders")}
	p2 := e.node("n2")
	s := testShard(t, p2, 0)
	adopt(p2, s)
	bf := s.backfills[0]
	r := s.backfillReader(bf)
	t.Cleanup(func() { _ = r.Close() })
	if joined, err := s.backfillStep(bf, r, 5); joined || err != nil {
		t.Fatalf("step: %v %v", joined, err)
	}
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	c := committed(e)
	missing := func(src querier, app string) []MissingShard {
		t.Helper()
		res, err := src.Query(ctx, Query{App: app, FromMs: t0 - 3600_000, ToMs: t0 + 3600_000})
		if err != nil {
			t.Fatal(err)
		}
		return res.Missing
	}
	for _, src := range []struct {
		name string
		q    querier
	}{{"memory", p2}, {"store", c}} {
		if m := missing(src.q, "kinds"); len(m) != 1 || m[0].State != StateIncomplete || !strings.Contains(m[0].Error, "backfill") {
			t.Errorf("kinds from %s while backfilling: missing %+v, want the shard incomplete", src.name, m)
		}
		if m := missing(src.q, "orders"); len(m) != 0 {
			t.Errorf("orders from %s: missing %+v", src.name, m)
		}
	}

	if joined, err := s.backfillStep(bf, r, 0); !joined || err != nil {
		t.Fatalf("step: %v %v", joined, err)
	}
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	for _, src := range []struct {
		name string
		q    querier
	}{{"memory", p2}, {"store", c}} {
		if m := missing(src.q, "kinds"); len(m) != 0 {
			t.Errorf("kinds from %s once joined: missing %+v", src.name, m)
		}
	}
	equalRows(t, "kinds", rows(t, c, Query{App: "kinds"}), wantKinds(12))
}

// TestBackfillJoinDuringFailedCheckpoint: a backfill that joins while a
// checkpoint that took its cells is still writing them leaves its
// windows to the live table's eviction; should the node evict then (a
// line finds no room) and the write fail (the store refusing writes for
// a while), no window it built may be dropped from memory before a
// commit holds it: the answers once the store takes writes again are
// every window, exactly.
func TestBackfillJoinDuringFailedCheckpoint(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, orders(t))
	r1 := start(t, e.node("n1"))
	waitCommitted(t, r1.p, publishHistory(e, 0, 12))
	r1.stop(t)

	// A window length added: the 1m windows stay live, the 2m ones are
	// built.
	e.apps = []*apps.App{orders(t, func(s *apps.Spec) {
		s.Window, s.Windows = 0, []config.Duration{config.Duration(time.Minute), config.Duration(2 * time.Minute)}
	})}
	fs := &faultStore{Store: e.st}
	p2 := e.node("n2", func(c *Config, d *Deps) { d.Store = fs })
	s := testShard(t, p2, 0)
	adopt(p2, s)
	bf := s.backfills[0]
	r := s.backfillReader(bf)
	t.Cleanup(func() { _ = r.Close() })
	if joined, err := s.backfillStep(bf, r, 13); joined || err != nil { // every block, not yet joined
		t.Fatalf("step: %v %v", joined, err)
	}

	// A checkpoint takes the built cells; its writer stalls, then fails.
	fs.set(func(f *faultStore) { f.failPut = true })
	marked, resume := make(chan struct{}), make(chan struct{})
	p2.afterMark = func(string, int) {
		close(marked)
		<-resume
	}
	failed := make(chan error, 1)
	go func() { failed <- s.checkpoint(ctx) }()
	<-marked
	s.mu.Lock() // the cells are taken once the checkpoint lets go of the lock
	left := s.tables[0].spans[1].changed()
	s.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d cells of the 2m windows not taken", left)
	}
	p2.afterMark = nil

	// Meanwhile the backfill joins, and a line finds no room.
	if joined, err := s.backfillStep(bf, r, 0); !joined || err != nil {
		t.Fatalf("step: %v %v", joined, err)
	}
	s.mu.Lock()
	s.evictClosed()
	s.mu.Unlock()
	close(resume)
	if err := <-failed; !errors.Is(err, errInjected) {
		t.Fatalf("checkpoint: %v, want the injected failure", err)
	}

	fs.set(func(f *faultStore) { f.failPut = false })
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := 0; i < 12; i += 2 {
		total := 0
		for j := range bfLines {
			total += i*100 + j + (i+1)*100 + j
		}
		start := t0 + int64(i)*60_000
		want = append(want, formatRow(Row{WindowStartMs: start, WindowEndMs: start + 120_000, Key: map[string]string{},
			Values: map[string]any{"n": float64(2 * bfLines), "total": float64(total), "lo": float64(i * 100), "hi": float64((i+1)*100 + bfLines - 1), "mean": float64(total) / (2 * bfLines)}}))
	}
	q := Query{App: "orders", GroupBy: []string{}, WindowMs: 120_000}
	equalRows(t, "2m windows from memory", rows(t, p2, q), want)
	equalRows(t, "2m windows from the store", rows(t, committed(e), q), want)
}

// TestBackfillOfEveryAppResumes: a node killed in the middle of a
// backfill of its category's only app (changed: none of the shard's
// spans is built) leaves it to the next node, which resumes it rather
// than taking the few cells it built for the whole: the answers are
// exact.
func TestBackfillOfEveryAppResumes(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, orders(t))
	r1 := start(t, e.node("n1"))
	last := publishHistory(e, 0, 12)
	waitCommitted(t, r1.p, last)
	r1.stop(t)

	e.apps = []*apps.App{orders(t, func(s *apps.Spec) { s.Aggregates = s.Aggregates[:4] })}
	s := testShard(t, e.node("n2"), 0)
	bf := s.backfills[0]
	r := s.backfillReader(bf)
	if joined, err := s.backfillStep(bf, r, 5); joined || err != nil {
		t.Fatalf("step: %v %v", joined, err)
	}
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	_ = r.Close()
	// Killed here.

	p3 := e.node("n3")
	s3 := testShard(t, p3, 0)
	if len(s3.backfills) != 1 || s3.backfills[0].pos != bf.pos {
		t.Fatalf("resumed at %+v, committed %s", s3.backfills, bf.pos)
	}
	s3.release()
	r3 := start(t, p3)
	waitLive(t, p3, "orders")
	waitCommitted(t, p3, last)
	want := wantOrders(12, nil)
	for i := range want {
		want[i] = strings.Replace(want[i], " mean="+strings.Split(strings.Split(want[i], "mean=")[1], " ")[0], "", 1)
	}
	equalRows(t, "orders", rows(t, p3, Query{App: "orders", GroupBy: []string{}}), want)
	r3.stop(t)
}

// TestResumedBackfillKeepsEvictedClosed: a backfill that evicted the
// windows it had closed, resumed by a node on which the app's
// allowed_lateness was raised, takes a straggler line for an evicted
// window as late, as the live table does, rather than opening the window
// afresh in memory and overwriting its stored cells.
func TestResumedBackfillKeepsEvictedClosed(t *testing.T) {
	ctx := context.Background()
	f := evictFeed{windows: 20, keys: 300}
	e := newEnv(t, kindsApp(t, "orders"))
	var last ptail.Position
	for w := range f.windows {
		var lines [][]byte
		for k := range f.keys {
			lines = append(lines, f.line(w, k))
		}
		e.publish("orders", 0, stock(lines...))
	}
	last = e.publish("orders", 0, stock(order(t0, "r0", "k0", 1000))) // a straggler for minute 0
	r1 := start(t, e.node("n1"))
	waitCommitted(t, r1.p, last)
	r1.stop(t)

	byKey := func(lateness time.Duration) *apps.App {
		return orders(t, func(s *apps.Spec) {
			s.Name = "bykey"
			s.AllowedLateness = config.Duration(lateness)
			s.Retention = config.Duration(30 * 24 * time.Hour)
		})
	}
	l, err := newLayout(byKey(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	limit := config.ByteSize(int64(5*f.keys) * l.cellOverhead(apps.EncodeKey([]string{"r100", "k1"})))
	e.apps = []*apps.App{e.apps[0], byKey(time.Minute)}
	s := testShard(t, e.node("n2", func(c *Config, d *Deps) { c.MemoryLimit = limit }), 0)
	bf := s.backfills[0]
	r := s.backfillReader(bf)
	for range 15 {
		if joined, err := s.backfillStep(bf, r, 1); joined || err != nil {
			t.Fatalf("step: %v %v", joined, err)
		}
		if err := s.checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	_ = r.Close()
	if bf.t.spans[0].horizon <= noHorizon {
		t.Fatal("the backfill evicted nothing")
	}
	s.release() // killed

	e.apps = []*apps.App{e.apps[0], byKey(time.Hour)}
	p3 := e.node("n3", func(c *Config, d *Deps) { c.MemoryLimit = limit })
	s3 := testShard(t, p3, 0)
	adopt(p3, s3)
	bf3 := s3.backfills[0]
	r3 := s3.backfillReader(bf3)
	t.Cleanup(func() { _ = r3.Close() })
	if joined, err := s3.backfillStep(bf3, r3, 0); !joined || err != nil {
		t.Fatalf("step: %v %v", joined, err)
	}
	if late := bf3.t.drops[reasonLate]; late != 1 {
		t.Errorf("%d lines late, want the straggler", late)
	}
	if err := s3.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	equalRows(t, "every minute", rows(t, p3, Query{App: "bykey", GroupBy: []string{}, FromMs: t0, ToMs: t0 + int64(f.windows)*60_000}), f.perWindow())
}

// TestRemovedAppRows: an app no longer configured has its rows deleted
// from the store after the next checkpoint, and the commit row stops
// listing it; the other app is untouched. On the embedded store and on
// HBase.
func TestRemovedAppRows(t *testing.T) {
	t.Run("bolt", func(t *testing.T) {
		e := newEnv(t)
		testRemoved(t, e, e.st, "orders")
	})
	t.Run("hbase", func(t *testing.T) {
		st, category := hbaseCategory(t, "removed_")
		testRemoved(t, newEnv(t), st, category)
	})
}

func testRemoved(t *testing.T, e *env, st store.Store, category string) {
	ctx := context.Background()
	ordersApp := orders(t, func(s *apps.Spec) { s.Category = category })
	e.apps = []*apps.App{ordersApp, kindsApp(t, category)}
	p := e.node("n1", func(c *Config, d *Deps) { d.Store = st })
	s := testShardOf(t, p, category, 0)
	for i := range 4 {
		s.apply(bfBlock(i), ptail.Position{Segment: "x", Offset: int64(i + 1)})
	}
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	kindsRows := "s/" + category + "/0/kinds@"
	if n := countRows(t, st, kindsRows); n != 4*3 {
		t.Fatalf("%d rows of kinds", n)
	}

	e.apps = []*apps.App{ordersApp}
	p2 := e.node("n2", func(c *Config, d *Deps) { d.Store = st })
	s2 := testShardOf(t, p2, category, 0)
	if len(s2.removing) != 1 || !strings.HasPrefix(s2.removing[0], "kinds@") {
		t.Fatalf("removing %v", s2.removing)
	}
	if err := s2.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countRows(t, st, kindsRows); n != 0 {
		t.Fatalf("%d rows of the removed app left", n)
	}
	if err := s2.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	_, c, _, err := readCommit(ctx, st, "puma", category, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Removed) != 0 || slices.ContainsFunc(c.Spans, func(n string) bool { return strings.HasPrefix(n, "kinds@") }) {
		t.Fatalf("commit row spans %v, removed %v", c.Spans, c.Removed)
	}
	adopt(p2, s2)
	equalRows(t, "orders", rows(t, p2, Query{App: "orders", GroupBy: []string{}}), wantOrders(4, nil))
}

// TestBackfillEvicts: a backfill of an app with many keys per minute,
// on a node whose memory_limit holds a few minutes of them, evicts the
// windows it has closed and committed as it goes, refuses nothing, and
// the app answers every minute exactly once it has joined.
func TestBackfillEvicts(t *testing.T) {
	ctx := context.Background()
	f := evictFeed{windows: 30, keys: 300}
	e := newEnv(t, kindsApp(t, "orders"))
	var last ptail.Position
	for w := range f.windows {
		var lines [][]byte
		for k := range f.keys {
			lines = append(lines, f.line(w, k))
		}
		last = e.publish("orders", 0, stock(lines...))
	}
	r1 := start(t, e.node("n1"))
	waitCommitted(t, r1.p, last)
	r1.stop(t)

	byKey := orders(t, func(s *apps.Spec) {
		s.Name = "bykey"
		s.AllowedLateness = config.Duration(time.Minute)
		s.Retention = config.Duration(30 * 24 * time.Hour)
	})
	e.apps = []*apps.App{e.apps[0], byKey}
	// Room for 5 minutes of bykey's cells, as accounted.
	l, err := newLayout(byKey)
	if err != nil {
		t.Fatal(err)
	}
	limit := config.ByteSize(int64(5*f.keys) * l.cellOverhead(apps.EncodeKey([]string{"r100", "k1"})))
	p2 := e.node("n2", func(c *Config, d *Deps) { c.MemoryLimit = limit })
	s := testShard(t, p2, 0)
	adopt(p2, s)
	bf := s.backfills[0]
	r := s.backfillReader(bf)
	defer r.Close()
	most := 0
	for joined := false; !joined; {
		var err error
		if joined, err = s.backfillStep(bf, r, 1); err != nil {
			t.Fatal(err)
		}
		if err := s.checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		most = max(most, s.tables[1].ncells+bf.t.ncells)
	}
	if d := bf.t.drops; d != [nReasons]uint64{} {
		t.Fatalf("backfill dropped %v", d)
	}
	if mem, _ := p2.Memory("bykey"); mem.EvictedWindows < uint64(f.windows/2) || most > 6*f.keys {
		t.Fatalf("memory %+v, at most %d cells", mem, most)
	}
	if st, _ := p2.AppState("bykey"); st.State != "live" {
		t.Fatalf("bykey %+v", st)
	}
	from, to := t0, t0+int64(f.windows)*60_000
	equalRows(t, "every minute", rows(t, p2, Query{App: "bykey", GroupBy: []string{}, FromMs: from, ToMs: to}), f.perWindow())
	start := t0 + 3*60_000
	equalRows(t, "minute 3 by key", sortedStrings(rows(t, p2, Query{App: "bykey", FromMs: start, ToMs: start + 60_000})), f.window(3))
}

// TestBackfillAfterRetention: an app added after retention deleted the
// bucket's first segments is built from what is left (exactly), and its
// answers say that it lacks the lines of the deleted segments, from
// memory and from the store; the app that read them live is whole.
func TestBackfillAfterRetention(t *testing.T) {
	e := newEnv(t, orders(t))
	r1 := start(t, e.node("n1"))
	last := publishHistory(e, 0, 6)
	waitCommitted(t, r1.p, last)
	r1.stop(t)
	dir := names.BucketDir("orders", 0)
	deletedAt := time.UnixMilli(arrival + 10_000)
	if err := names.WriteRetentionMark(e.fs, dir, names.RetentionMark{Through: names.SegmentName(1, 2), ThroughMs: deletedAt.UnixMilli()}, "t"); err != nil {
		t.Fatal(err)
	}
	for seq := range uint64(2) {
		if err := e.fs.Remove(path.Join(dir, names.SegmentName(1, seq+1))); err != nil {
			t.Fatal(err)
		}
	}

	e.apps = []*apps.App{orders(t), kindsApp(t, "orders")}
	p2 := e.node("n2")
	r2 := start(t, p2)
	waitLive(t, p2, "kinds")
	waitCommitted(t, p2, last)
	check := func(what string, src querier) {
		t.Helper()
		res, err := src.Query(context.Background(), Query{App: "kinds", FromMs: t0, ToMs: t0 + 3600_000})
		if err != nil {
			t.Fatal(err)
		}
		equalRows(t, what+": kinds", formatRows(res), wantKinds(6)[2*3:])
		if len(res.Missing) != 1 || res.Missing[0].State != StateIncomplete || !strings.Contains(res.Missing[0].Error, names.SegmentName(1, 2)) {
			t.Fatalf("%s: kinds missing %+v", what, res.Missing)
		}
		res, err = src.Query(context.Background(), Query{App: "orders", GroupBy: []string{}, FromMs: t0, ToMs: t0 + 3600_000})
		if err != nil {
			t.Fatal(err)
		}
		equalRows(t, what+": orders", formatRows(res), wantOrders(6, nil))
		if len(res.Missing) != 0 {
			t.Fatalf("%s: orders missing %+v", what, res.Missing)
		}
	}
	check("memory", p2)
	r2.stop(t)
	check("store", committed(e))
}

// TestBackfillRetentionRace: retention decides from a commit row read
// before the shard's first checkpoint lists the new app's backfill (it
// sees the shard's position only), and deletes the bucket's first
// segments after the shard read the retention mark at recovery but before
// the backfill's reader listed the bucket. The backfill never sees them,
// so no vanished segment tells of them either: its answers must still
// say that the app lacks their lines, from the mark as it is once the
// reader has listed.
func TestBackfillRetentionRace(t *testing.T) {
	e := newEnv(t, orders(t))
	r1 := start(t, e.node("n1"))
	last := publishHistory(e, 0, 6)
	waitCommitted(t, r1.p, last)
	r1.stop(t)

	dir := names.BucketDir("orders", 0)
	deletedAt := time.UnixMilli(arrival + 10_000)
	var once sync.Once
	retention := func() {
		if err := names.WriteRetentionMark(e.fs, dir, names.RetentionMark{Through: names.SegmentName(1, 2), ThroughMs: deletedAt.UnixMilli()}, "t"); err != nil {
			t.Error(err)
		}
		for seq := range uint64(2) {
			if err := e.fs.Remove(path.Join(dir, names.SegmentName(1, seq+1))); err != nil {
				t.Error(err)
			}
		}
	}
	faulty := dfstest.NewFaulty(e.fs)
	faulty.SetHook(func(c dfstest.Call) error {
		// Recovery has read the mark (there is none); the first listing
		// of the bucket, by either reader, comes after retention's.
		if c.Op == dfstest.OpReadDir && c.Name == dir {
			once.Do(retention)
		}
		return nil
	})

	e.apps = []*apps.App{orders(t), kindsApp(t, "orders")}
	p2 := e.node("n2", func(_ *Config, d *Deps) { d.FS = faulty })
	r2 := start(t, p2)
	waitLive(t, p2, "kinds")
	waitCommitted(t, p2, last)
	check := func(what string, src querier) {
		t.Helper()
		res, err := src.Query(context.Background(), Query{App: "kinds", FromMs: t0, ToMs: t0 + 3600_000})
		if err != nil {
			t.Fatal(err)
		}
		equalRows(t, what+": kinds", formatRows(res), wantKinds(6)[2*3:])
		if len(res.Missing) != 1 || res.Missing[0].State != StateIncomplete || !strings.Contains(res.Missing[0].Error, names.SegmentName(1, 2)) {
			t.Fatalf("%s: kinds missing %+v, want it incomplete through %s", what, res.Missing, names.SegmentName(1, 2))
		}
	}
	check("memory", p2)
	r2.stop(t)
	check("store", committed(e))
}

// TestRewrittenWhereKeepsState: a where filter written otherwise but
// meaning the same (white space, quotes, = for ==, the case of keywords,
// parentheses around the whole) is not a change: the app's state is
// kept, not built again from the dfs (which reaches back only as far as
// dfs_retention). A filter that means something else still is.
func TestRewrittenWhereKeepsState(t *testing.T) {
	where := func(w string) *apps.App { return orders(t, func(s *apps.Spec) { s.Where = w }) }
	e := newEnv(t, where(`kind == "k0" and not amount`))
	r1 := start(t, e.node("n1"))
	waitCommitted(t, r1.p, publishHistory(e, 0, 6))
	r1.stop(t)

	for i, tc := range []struct {
		where   string
		rebuilt bool
	}{
		{"(  kind='k0'\n  AND NOT amount )", false},
		{`kind == "k0" and not amount`, false},
		{`kind == "k1" and not amount`, true},
	} {
		e.apps = []*apps.App{where(tc.where)}
		p := e.node(fmt.Sprint("n", i+2))
		s := testShard(t, p, 0)
		adopt(p, s)
		st, _ := p.AppState("orders")
		if got := st.State == "backfilling"; got != tc.rebuilt {
			t.Fatalf("where %q: state %+v, want rebuilt %v", tc.where, st, tc.rebuilt)
		}
		if err := s.checkpoint(context.Background()); err != nil {
			t.Fatal(err)
		}
		s.release()
	}
}

// TestReadsChangedLegacyRow: a commit row of the code before ReadsForm
// (Reads alone, the filter as written) is compared as written; one with
// neither takes the app as unchanged.
func TestReadsChangedLegacyRow(t *testing.T) {
	app := orders(t, func(s *apps.Spec) { s.Where = `kind == "k0"` })
	rewritten := orders(t, func(s *apps.Spec) { s.Where = `kind='k0'` })
	other := orders(t, func(s *apps.Spec) { s.Where = `kind == "k1"` })
	legacy := commitState{Reads: map[string]string{"orders": readsOf(app)}}
	if legacy.readsChanged(app) || !legacy.readsChanged(rewritten) || !legacy.readsChanged(other) {
		t.Fatal("a legacy row is not compared by the filter as written")
	}
	current := commitState{Reads: map[string]string{"orders": readsOf(app)}, ReadsForm: map[string]string{"orders": readsFormOf(app)}}
	if current.readsChanged(app) || current.readsChanged(rewritten) || !current.readsChanged(other) {
		t.Fatal("a row with ReadsForm is not compared by the filter as parsed")
	}
	if (commitState{}).readsChanged(other) {
		t.Fatal("a row without reads takes the app as changed")
	}
}
