package puma

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/store"
)

// evictApps are the apps of the eviction tests, on one category: orders
// (one minute windows, a cell per region and kind) and kinds (minute and
// ten-minute windows, a cell per kind, a count_distinct of regions), both
// with a minute of allowed lateness and retention far beyond the test's
// time, so that only eviction can take windows out of memory.
func evictApps(t testing.TB, category string) []*apps.App {
	mod := func(s *apps.Spec) {
		s.Category = category
		s.AllowedLateness = config.Duration(time.Minute)
		s.Retention = config.Duration(30 * 24 * time.Hour)
	}
	return []*apps.App{
		orders(t, mod),
		orders(t, mod, func(s *apps.Spec) {
			s.Name = "kinds"
			s.GroupBy = []string{"kind"}
			s.Window = 0
			s.Windows = []config.Duration{config.Duration(time.Minute), config.Duration(10 * time.Minute)}
			s.Aggregates = []apps.AggregateSpec{{Name: "n", Fn: "count"}, {Name: "regions", Fn: "count_distinct", Field: "region"}}
		}),
	}
}

// evictFeed is the input of the eviction tests: windows minutes of keys
// distinct regions each (every region in every minute, kinds k0..k6),
// and the exact answers computed from it.
type evictFeed struct {
	windows, keys int
}

const evictKinds = 7

func (f evictFeed) amount(w, k int) int { return (w*f.keys+k)%97 + 1 }

func (f evictFeed) line(w, k int) []byte {
	return order(t0+int64(w)*60_000+int64(k%60)*1000, fmt.Sprint("r", k), fmt.Sprint("k", k%evictKinds), f.amount(w, k))
}

// feedWindow feeds minute w to s in blocks of 500 lines.
func (f evictFeed) feedWindow(s *shard, w int) {
	for k := 0; k < f.keys; k += 500 {
		var lines [][]byte
		for j := k; j < min(k+500, f.keys); j++ {
			lines = append(lines, f.line(w, j))
		}
		feed(s, int64(w*f.keys+k+1), lines...)
	}
}

func statRow(start, end int64, key map[string]string, n, total, lo, hi int) string {
	return formatRow(Row{WindowStartMs: start, WindowEndMs: end, Key: key, Values: map[string]any{
		"n": float64(n), "total": float64(total), "lo": float64(lo), "hi": float64(hi), "mean": float64(total) / float64(n),
	}})
}

// perWindow is the answer of orders by minute, all keys merged.
func (f evictFeed) perWindow() []string {
	var out []string
	for w := range f.windows {
		total, lo, hi := 0, math.MaxInt, 0
		for k := range f.keys {
			a := f.amount(w, k)
			total, lo, hi = total+a, min(lo, a), max(hi, a)
		}
		start := t0 + int64(w)*60_000
		out = append(out, statRow(start, start+60_000, map[string]string{}, f.keys, total, lo, hi))
	}
	return out
}

// window is the answer of orders for minute w, by region and kind.
func (f evictFeed) window(w int) []string {
	var out []string
	start := t0 + int64(w)*60_000
	for k := range f.keys {
		a := f.amount(w, k)
		out = append(out, statRow(start, start+60_000, map[string]string{"region": fmt.Sprint("r", k), "kind": fmt.Sprint("k", k%evictKinds)}, 1, a, a, a))
	}
	return sortedStrings(out)
}

// kinds is the answer of kinds over every window, by kind.
func (f evictFeed) kinds() []string {
	var out []string
	for kind := range evictKinds {
		n, regions := 0, 0
		for k := range f.keys {
			if k%evictKinds == kind {
				regions++
			}
		}
		n = regions * f.windows
		out = append(out, formatRow(Row{WindowStartMs: t0, WindowEndMs: t0 + int64(f.windows)*60_000, Key: map[string]string{"kind": fmt.Sprint("k", kind)},
			Values: map[string]any{"n": float64(n), "regions": float64(regions)}}))
	}
	return out
}

func sortedStrings(s []string) []string {
	out := append([]string(nil), s...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// checkAnswers asserts that src answers every window of f exactly.
func checkAnswers(t *testing.T, what string, src querier, f evictFeed) {
	t.Helper()
	from, to := t0, t0+int64(f.windows)*60_000
	equalRows(t, what+": orders by minute", rows(t, src, Query{App: "orders", GroupBy: []string{}, FromMs: from, ToMs: to}), f.perWindow())
	for _, w := range []int{0, f.windows / 2, f.windows - 1} {
		start := t0 + int64(w)*60_000
		equalRows(t, fmt.Sprintf("%s: orders minute %d by key", what, w),
			sortedStrings(rows(t, src, Query{App: "orders", FromMs: start, ToMs: start + 60_000})), f.window(w))
	}
	// The first rows with a limit, and roll-ups of the ten-minute span.
	equalRows(t, what+": orders, limit 3", rows(t, src, Query{App: "orders", GroupBy: []string{}, FromMs: from, ToMs: to, Limit: 3}), f.perWindow()[:3])
	equalRows(t, what+": kinds, all windows", rows(t, src, Query{App: "kinds", AllWindows: true, FromMs: from, ToMs: to}), f.kinds())
	// t0 is 14 minutes into a 20-minute window: the row that starts
	// first in the range is the one at t0+6m, whole (the ten-minute span
	// rolled up) up to the minutes fed.
	r0 := apps.WindowStart(from+20*60_000-1, 20*60_000)
	fed := min(int64(f.windows), (r0-t0)/60_000+20) - (r0-t0)/60_000
	equalRows(t, what+": kinds, by 20m", rows(t, src, Query{App: "kinds", GroupBy: []string{}, WindowMs: 20 * 60_000, FromMs: from, ToMs: from + 20*60_000}),
		[]string{formatRow(Row{WindowStartMs: r0, WindowEndMs: r0 + 20*60_000, Key: map[string]string{}, Values: map[string]any{"n": float64(fed * int64(f.keys)), "regions": float64(f.keys)}})})
}

// TestEvictClosedWindows: a node whose memory_limit holds a few minutes
// of keys is fed many more (every minute all its keys again, over many
// minutes): it refuses none, because closed and committed windows leave
// memory for the store; every window is answered exactly from memory and
// store together (nothing counted twice, nothing missing), from the
// committed state alone, and by a node that recovers the checkpoint (and
// loads only the windows not evicted). A line late for an evicted window
// is counted as late and changes nothing, also after a recovery whose
// commit row has a lower watermark than the evicted windows need. On the
// embedded store and on HBase.
func TestEvictClosedWindows(t *testing.T) {
	f := evictFeed{windows: 40, keys: 600}
	t.Run("bolt", func(t *testing.T) {
		e := newEnv(t)
		testEvict(t, e, e.st, "orders", f)
	})
	t.Run("hbase", func(t *testing.T) {
		st, category := hbaseCategory(t, "evict_")
		testEvict(t, newEnv(t), st, category, evictFeed{windows: 24, keys: 300})
	})
}

func testEvict(t *testing.T, e *env, st store.Store, category string, f evictFeed) {
	ctx := context.Background()
	e.apps = evictApps(t, category)
	// Room for about four minutes of orders' cells, as accounted.
	l, err := newLayout(e.apps[0])
	if err != nil {
		t.Fatal(err)
	}
	limit := config.ByteSize(int64(4*f.keys) * l.cellOverhead(apps.EncodeKey([]string{"r100", "k1"})))
	reg := prometheus.NewPedanticRegistry()
	p := e.node("n1", func(c *Config, d *Deps) { c.MemoryLimit, d.Store, d.Metrics = limit, st, reg })
	s := testShardOf(t, p, category, 0)
	adopt(p, s)
	maxCells := 0
	for w := range f.windows {
		f.feedWindow(s, w)
		if err := s.checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		maxCells = max(maxCells, s.tables[0].ncells)
	}
	for _, tb := range s.tables {
		if d := tb.drops; d != [nReasons]uint64{} {
			t.Fatalf("app %s dropped %v", tb.app.Name(), d)
		}
	}
	mem, _ := p.Memory("orders")
	if mem.EvictedWindows < uint64(f.windows/2) || mem.Cells > int64(6*f.keys) || maxCells > 6*f.keys {
		t.Fatalf("memory %+v, at most %d cells: windows were not evicted", mem, maxCells)
	}
	m := gather(t, reg)
	if m["freeway_puma_evicted_windows_total{app=orders}"] != float64(mem.EvictedWindows) || m["freeway_puma_bytes_per_cell{app=orders}"] != mem.BytesPerCell || mem.BytesPerCell < 50 {
		t.Fatalf("metrics %v, memory %+v", m, mem)
	}
	checkAnswers(t, "memory and store", p, f)
	// The partial state a serving fan-out asks for holds the evicted
	// windows too.
	q := Query{App: "orders", GroupBy: []string{}, FromMs: t0, ToMs: t0 + int64(f.windows)*60_000}
	part, err := p.Partial(ctx, q, []int{0})
	if err != nil || len(part.Missing) != 0 {
		t.Fatalf("partial: %v, missing %+v", err, part)
	}
	res, err := MergePartials(e.apps[0], q, []*Partial{part})
	if err != nil {
		t.Fatal(err)
	}
	equalRows(t, "partial", formatRows(res), f.perWindow())
	checkAnswers(t, "committed", NewCommitted(st, "puma", e.apps, func(string) int { return 1 }), f)

	// Late for an evicted window: counted as late, nothing changes.
	feed(s, int64(f.windows*f.keys+1), f.line(0, 0))
	if s.tables[0].drops[reasonLate] != 1 {
		t.Fatalf("drops %v", s.tables[0].drops)
	}
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}

	// A node recovering the checkpoint loads the windows after the
	// horizon only, and answers the same.
	p2 := e.node("n2", func(c *Config, d *Deps) { c.MemoryLimit, d.Store = limit, st })
	r := testShardOf(t, p2, category, 0)
	adopt(p2, r)
	if n := r.tables[0].ncells; n > 6*f.keys {
		t.Fatalf("recovery loaded %d cells of orders", n)
	}
	checkAnswers(t, "recovered", p2, f)

	// The hazard: a commit row whose watermark is below the evicted
	// windows (a watermark reset on recovery, an older row). Recovery
	// takes the lines before the horizon as late, so a line for an
	// evicted window is late, rather than opening the window afresh in
	// memory and overwriting its stored cell at the next checkpoint.
	if err := r.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	row := commitRow(category, 0)
	val, state, _, err := readCommit(ctx, st, "puma", category, 0)
	if err != nil {
		t.Fatal(err)
	}
	hz := state.Evicted["orders@"+s.tables[0].spans[0].fp]
	if hz < t0+int64(f.windows/2)*60_000 {
		t.Fatalf("commit row evicted %v", state.Evicted)
	}
	state.Watermarks["orders"] = t0
	low, _ := json.Marshal(state)
	if ok, err := st.CheckAndPut(ctx, "puma", row, "commit", val, []store.Cell{{Row: row, Column: "commit", Timestamp: state.Epoch, Value: low}}); err != nil || !ok {
		t.Fatalf("rewrite commit row: %v %v", ok, err)
	}
	p3 := e.node("n3", func(c *Config, d *Deps) { c.MemoryLimit, d.Store = limit, st })
	r3 := testShardOf(t, p3, category, 0)
	adopt(p3, r3)
	if lb := r3.tables[0].ev.lateBefore; lb < hz {
		t.Fatalf("recovered lines late before %d, below the evicted horizon %d", lb, hz)
	}
	feed(r3, int64(f.windows*f.keys+2), f.line(0, 0), f.line(1, 1))
	if r3.tables[0].drops[reasonLate] != 2 {
		t.Fatalf("drops %v", r3.tables[0].drops)
	}
	if err := r3.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	checkAnswers(t, "after a low watermark", p3, f)
	checkAnswers(t, "committed after a low watermark", NewCommitted(st, "puma", e.apps, func(string) int { return 1 }), f)
}

// TestEvictedRetention: the store rows of evicted windows are deleted
// once retention passes them, as those of windows in memory are.
func TestEvictedRetention(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.apps = evictApps(t, "orders")
	e.apps[0] = orders(t, func(s *apps.Spec) {
		s.AllowedLateness = config.Duration(time.Minute)
		s.Retention = config.Duration(10 * time.Minute)
	})
	f := evictFeed{windows: 30, keys: 200}
	p := e.node("n1", func(c *Config, d *Deps) { c.MaxCells = 5 * f.keys })
	s := testShardOf(t, p, "orders", 0)
	adopt(p, s)
	for w := range f.windows {
		f.feedWindow(s, w)
		if err := s.checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.checkpoint(ctx); err != nil { // runs the deletes of the last commit
		t.Fatal(err)
	}
	if s.tables[0].ev.windows == 0 || s.tables[0].drops[reasonMaxCells] != 0 {
		t.Fatalf("evicted %d windows, refused %d", s.tables[0].ev.windows, s.tables[0].drops[reasonMaxCells])
	}
	// Retention keeps the windows that end after the watermark minus 10
	// minutes: the last 11 (the watermark is 59s into the last one).
	prefix := appPrefix("orders", 0, e.apps[0], fingerprint(e.apps[0], 60_000))
	stored := map[int64]bool{}
	err := e.st.Scan(ctx, "puma", prefix, store.PrefixEnd(prefix), store.Latest, func(row string, _ []store.Cell) error {
		w, _ := parseWindowKey(row[len(prefix) : len(prefix)+16])
		stored[w] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	first := t0 + int64(f.windows-11)*60_000
	for w := range stored {
		if w < first {
			t.Fatalf("window %d min still stored; retention keeps from %d", (w-t0)/60_000, f.windows-11)
		}
	}
	if len(stored) != 11 {
		t.Fatalf("%d windows stored, want 11", len(stored))
	}
}

// TestEvictBoundsHeap: with eviction, a node fed thirty times as many
// cells as memory_limit holds (over 200 minutes) refuses none and its
// live heap grows by less than the limit plus the overhead
// TestMemoryLimitBoundsHeap states, and every minute is answered exactly.
func TestEvictBoundsHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("feeds 400k lines")
	}
	ctx := context.Background()
	const limit = 2 << 20
	const overhead = 16 << 20
	e := newEnv(t)
	e.apps = evictApps(t, "orders")[:1]
	f := evictFeed{windows: 200, keys: 2000}
	p := e.node("n1", func(c *Config, d *Deps) { c.MemoryLimit = limit })
	s := testShard(t, p, 0)
	adopt(p, s)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	peak := int64(0)
	for w := range f.windows {
		f.feedWindow(s, w)
		if err := s.checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
		if w%20 == 19 {
			runtime.GC()
			runtime.ReadMemStats(&ms)
			peak = max(peak, int64(ms.HeapAlloc)-int64(before))
		}
	}
	cells, bytes := p.Cells()
	t.Logf("%d cells, %d bytes accounted in memory; heap grew at most %d bytes; %d windows, %d cells evicted",
		cells, bytes, peak, s.tables[0].ev.windows, s.tables[0].ev.cells)
	if peak > limit+overhead {
		t.Fatalf("heap grew %s, more than the limit %s plus %s", config.ByteSize(peak), config.ByteSize(limit), config.ByteSize(overhead))
	}
	if d := s.tables[0].drops; d != [nReasons]uint64{} {
		t.Fatalf("dropped %v", d)
	}
	if s.tables[0].ev.cells+uint64(cells) != uint64(f.windows*f.keys) {
		t.Fatalf("%d evicted + %d in memory, want %d", s.tables[0].ev.cells, cells, f.windows*f.keys)
	}
	from, to := t0, t0+int64(f.windows)*60_000
	equalRows(t, "every minute", rows(t, p, Query{App: "orders", GroupBy: []string{}, FromMs: from, ToMs: to}), f.perWindow())
	start := t0 + 7*60_000
	equalRows(t, "minute 7 by key", sortedStrings(rows(t, p, Query{App: "orders", FromMs: start, ToMs: start + 60_000})), f.window(7))
	runtime.KeepAlive(s)
}

// TestLatenessRaisedKeepsRetention: an app whose allowed_lateness is
// raised between two runs, after windows were evicted, keeps its
// watermark: no line can fall in an evicted window all the same, and
// retention drops the windows it would have dropped, not those up to
// the difference later (the watermark pushed to the horizon plus the new
// lateness).
func TestLatenessRaisedKeepsRetention(t *testing.T) {
	ctx := context.Background()
	f := evictFeed{windows: 40, keys: 200}
	mod := func(s *apps.Spec) {
		s.AllowedLateness = config.Duration(time.Minute)
		s.Retention = config.Duration(time.Hour)
	}
	e := newEnv(t, orders(t, mod))
	l, err := newLayout(e.apps[0])
	if err != nil {
		t.Fatal(err)
	}
	limit := config.ByteSize(int64(4*f.keys) * l.cellOverhead(apps.EncodeKey([]string{"r100", "k1"})))
	s := testShard(t, e.node("n1", func(c *Config, d *Deps) { c.MemoryLimit = limit }), 0)
	for w := range f.windows {
		f.feedWindow(s, w)
		if err := s.checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if s.tables[0].spans[0].horizon <= noHorizon {
		t.Fatal("no window evicted")
	}
	wm := s.tables[0].watermark
	s.release()

	e.apps = []*apps.App{orders(t, mod, func(s *apps.Spec) { s.AllowedLateness = config.Duration(30 * time.Minute) })}
	p2 := e.node("n2", func(c *Config, d *Deps) { c.MemoryLimit = limit })
	s2 := testShard(t, p2, 0)
	if got := s2.tables[0].watermark; got != wm {
		t.Errorf("watermark %+ds after the restart, was %+ds", (got-t0)/1000, (wm-t0)/1000)
	}
	// A line of an evicted window is late all the same.
	f.feedWindow(s2, 0)
	if late := s2.tables[0].drops[reasonLate]; late != uint64(f.keys) {
		t.Errorf("%d lines of an evicted window late, want %d", late, f.keys)
	}
	if err := s2.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	adopt(p2, s2)
	q := Query{App: "orders", GroupBy: []string{}, FromMs: t0, ToMs: t0 + int64(f.windows)*60_000}
	equalRows(t, "every window within retention", rows(t, p2, q), f.perWindow())
}
