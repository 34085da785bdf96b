package puma

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/agg"
	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/ptail"
)

// visits is an app of every variable-state aggregate, in one-minute and
// one-hour windows: JSON page views with a user, a path and a latency.
func visits(t testing.TB, mod ...func(*apps.Spec)) *apps.App {
	t.Helper()
	s := apps.Spec{
		Name: "visits", Category: "visits", Format: "json",
		Time:            &apps.TimeSpec{Field: "ts", Layout: "unix_ms"},
		Windows:         []config.Duration{config.Duration(time.Minute), config.Duration(time.Hour)},
		AllowedLateness: config.Duration(6 * time.Hour),
		Retention:       config.Duration(48 * time.Hour),
		GroupBy:         []string{"region", "page"},
		Aggregates: []apps.AggregateSpec{
			{Name: "n", Fn: "count"},
			{Name: "users", Fn: "count_distinct", Field: "user"},
			{Name: "top", Fn: "topk", Field: "path", K: 5},
			{Name: "ms", Fn: "percentile", Field: "ms", Quantiles: []float64{0.5, 0.9, 0.99}},
			{Name: "first_user", Fn: "first", Field: "user"},
			{Name: "last_ms", Fn: "last", Field: "ms"},
		},
	}
	for _, m := range mod {
		m(&s)
	}
	a, err := apps.Compile(s, "$.apps[0]")
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// visit is one event of the visits app.
type visit struct {
	ts           int64
	region, page string
	user, path   string
	ms           float64
	bucket       int
}

func (v visit) line() []byte {
	b, _ := json.Marshal(map[string]any{"ts": v.ts, "region": v.region, "page": v.page, "user": v.user, "path": v.path, "ms": v.ms})
	return b
}

// someVisits are n events over three hours from t0, each at its own
// millisecond (so that first and last have no ties), spread over buckets.
func someVisits(n, buckets int, seed uint64) []visit {
	r := rand.New(rand.NewPCG(seed, 11))
	z := rand.NewZipf(r, 1.2, 1, 400)
	regions, pages := []string{"eu", "us", "ap"}, []string{"home", "cart", "search", "help"}
	ts := make(map[int64]bool, n)
	out := make([]visit, 0, n)
	for len(out) < n {
		t := t0 + r.Int64N(3*3600_000)
		if ts[t] {
			continue
		}
		ts[t] = true
		out = append(out, visit{
			ts: t, region: regions[r.IntN(3)], page: pages[r.IntN(4)],
			user: fmt.Sprint("u", r.IntN(3000)), path: fmt.Sprint("/p/", z.Uint64()),
			ms: math.Round(math.Exp(r.NormFloat64()+4)*100) / 100, bucket: r.IntN(buckets),
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ts < out[j].ts })
	return out
}

// publishVisits writes the events of each bucket as blocks of 400 lines.
func publishVisits(e *env, vs []visit) (last map[int]ptail.Position) {
	last = map[int]ptail.Position{}
	byBucket := map[int][][]byte{}
	for _, v := range vs {
		byBucket[v.bucket] = append(byBucket[v.bucket], v.line())
	}
	for b, lines := range byBucket {
		var blocks []*segment.Block
		for i := 0; i < len(lines); i += 400 {
			blocks = append(blocks, stock(lines[i:min(i+400, len(lines))]...))
		}
		last[b] = e.publish("visits", b, blocks...)
	}
	return last
}

// exact is what a group of events should answer, computed from the
// events themselves.
type exact struct {
	start           int64
	n               int
	users           map[string]bool
	paths           map[string]uint64
	ms              []float64
	firstUser       string
	firstTs, lastTs int64
	lastMs          float64
	keys            string
}

// expected groups vs as a query with rows of rowMs (0: all windows)
// grouped by the keys named would.
func expected(vs []visit, rowMs, from, to int64, keys []string) map[string]*exact {
	out := map[string]*exact{}
	for _, v := range vs {
		start := int64(0)
		if rowMs > 0 {
			start = apps.WindowStart(v.ts, rowMs)
		}
		if (rowMs > 0 && (start < from || start >= to)) || (rowMs == 0 && (v.ts < from || v.ts >= to)) {
			continue
		}
		var kv []string
		for _, k := range keys {
			switch k {
			case "region":
				kv = append(kv, "region="+v.region)
			case "page":
				kv = append(kv, "page="+v.page)
			}
		}
		slices.Sort(kv)
		id := fmt.Sprint(start, "|", strings.Join(kv, " "))
		g := out[id]
		if g == nil {
			g = &exact{start: start, users: map[string]bool{}, paths: map[string]uint64{}, firstTs: math.MaxInt64, lastTs: math.MinInt64, keys: strings.Join(kv, " ")}
			out[id] = g
		}
		g.n++
		g.users[v.user] = true
		g.paths[v.path]++
		g.ms = append(g.ms, v.ms)
		if v.ts < g.firstTs {
			g.firstTs, g.firstUser = v.ts, v.user
		}
		if v.ts > g.lastTs {
			g.lastTs, g.lastMs = v.ts, v.ms
		}
	}
	return out
}

// checkVisits holds an answer to the exact groups: counts, first and last
// exactly; distinct users within 2.5% (exactly up to agg.ExactDistinct);
// the top paths within Space-Saving's guarantees; latency quantiles within
// 1% of an input value at their rank.
func checkVisits(t *testing.T, what string, res *Result, want map[string]*exact, rowMs int64) {
	t.Helper()
	if len(res.Rows) != len(want) {
		t.Fatalf("%s: %d rows, want %d", what, len(res.Rows), len(want))
	}
	for _, r := range res.Rows {
		var kv []string
		for k, v := range r.Key {
			kv = append(kv, k+"="+v)
		}
		slices.Sort(kv)
		start := int64(0)
		if rowMs > 0 {
			start = r.WindowStartMs
			if r.WindowEndMs != start+rowMs {
				t.Fatalf("%s: row %d..%d is not %d ms long", what, r.WindowStartMs, r.WindowEndMs, rowMs)
			}
		}
		id := fmt.Sprint(start, "|", strings.Join(kv, " "))
		g := want[id]
		if g == nil {
			t.Fatalf("%s: unexpected row %s", what, id)
		}
		row := fmt.Sprintf("%s row %s", what, id)
		if r.Values["n"] != float64(g.n) {
			t.Fatalf("%s: n = %v, want %d", row, r.Values["n"], g.n)
		}
		users, exactUsers := r.Values["users"].(float64), float64(len(g.users))
		if (len(g.users) <= agg.ExactDistinct && users != exactUsers) || math.Abs(users-exactUsers) > 0.025*exactUsers {
			t.Fatalf("%s: users = %v, exactly %v", row, users, exactUsers)
		}
		checkTopPaths(t, row, r.Values["top"].([]agg.TopItem), g.paths, 5)
		qs := r.Values["ms"].(agg.Quantiles)
		sorted := slices.Sorted(slices.Values(g.ms))
		for i, q := range []float64{0.5, 0.9, 0.99} {
			rank := q * float64(len(sorted)-1)
			lo, hi := sorted[int(math.Floor(rank))], sorted[int(math.Ceil(rank))]
			if qs[i].Q != q || (math.Abs(qs[i].Value-lo) > 0.01*lo+1e-9 && math.Abs(qs[i].Value-hi) > 0.01*hi+1e-9) {
				t.Fatalf("%s: ms %v = %v, exact %v..%v", row, q, qs[i].Value, lo, hi)
			}
		}
		if r.Values["first_user"] != g.firstUser || r.Values["last_ms"] != g.lastMs {
			t.Fatalf("%s: first_user %v last_ms %v, want %v %v", row, r.Values["first_user"], r.Values["last_ms"], g.firstUser, g.lastMs)
		}
	}
}

// checkTopPaths holds a topk answer to Space-Saving's guarantees.
func checkTopPaths(t *testing.T, what string, got []agg.TopItem, counts map[string]uint64, k int) {
	t.Helper()
	var total uint64
	for _, c := range counts {
		total += c
	}
	if len(got) != min(k, len(counts)) {
		t.Fatalf("%s: top %v, want %d values", what, got, min(k, len(counts)))
	}
	listed := map[string]bool{}
	for i, it := range got {
		c := counts[it.Value]
		if it.Count < c || it.Count-it.Error > c || it.Error > total/uint64(agg.Counters(k)) {
			t.Fatalf("%s: top %+v, true count %d of %d", what, it, c, total)
		}
		if i > 0 && got[i-1].Count < it.Count {
			t.Fatalf("%s: top out of order: %v", what, got)
		}
		listed[it.Value] = true
	}
	for v, c := range counts {
		if !listed[v] && c > got[len(got)-1].Count {
			t.Fatalf("%s: %s (count %d) left out of %v", what, v, c, got)
		}
	}
}

// sketchQueries are the queries TestSketches asks: rows of each window
// length, rolled up, merged over all windows and over keys.
func sketchQueries() []struct {
	name  string
	q     Query
	rowMs int64
	from  int64
	keys  []string
} {
	hour := int64(3600_000)
	// A range on hour boundaries, as window=all reads the hourly windows.
	from, to := apps.WindowStart(t0, hour), apps.WindowStart(t0, hour)+4*hour
	type c = struct {
		name  string
		q     Query
		rowMs int64
		from  int64
		keys  []string
	}
	return []c{
		{"1m rows", Query{}, 60_000, 0, []string{"region", "page"}},
		{"1h rows", Query{WindowMs: hour}, hour, 0, []string{"region", "page"}},
		{"2h rows rolled up from 1h", Query{WindowMs: 2 * hour}, 2 * hour, 0, []string{"region", "page"}},
		{"5m rows rolled up from 1m, by region", Query{WindowMs: 300_000, GroupBy: []string{"region"}}, 300_000, 0, []string{"region"}},
		{"all windows (hourly), all keys", Query{AllWindows: true, GroupBy: []string{}, FromMs: from, ToMs: to}, 0, from, nil},
		{"all windows (minutes), by page", Query{AllWindows: true, GroupBy: []string{"page"}, FromMs: t0 + 30*60_000, ToMs: t0 + 150*60_000}, 0, t0 + 30*60_000, []string{"page"}},
	}
}

// TestSketches: every variable-state aggregate through a node of two
// shards, against answers computed from the events: merged across
// windows (rolled up, window=all), keys (group_by subsets) and shards;
// from memory and from the store.
func TestSketches(t *testing.T) {
	e := newEnv(t, visits(t))
	e.buckets = 2
	vs := someVisits(12_000, 2, 1)
	last := publishVisits(e, vs)
	p := e.node("n1")
	start(t, p)
	testkit.Eventually(t, "commit", func() error {
		for _, s := range p.Statuses() {
			if s.Committed != last[s.Bucket].String() {
				return fmt.Errorf("shard %d committed %s", s.Bucket, s.Committed)
			}
		}
		return nil
	})
	for _, c := range sketchQueries() {
		q := c.q
		q.App = "visits"
		if q.FromMs == 0 {
			q.FromMs, q.ToMs = t0-24*3600_000, t0+24*3600_000
		}
		want := expected(vs, c.rowMs, q.FromMs, q.ToMs, c.keys)
		mem, err := p.Query(context.Background(), q)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		checkVisits(t, c.name, mem, want, c.rowMs)
		stored, err := committed(e).Query(context.Background(), q)
		if err != nil {
			t.Fatalf("%s from the store: %v", c.name, err)
		}
		equalRows(t, c.name+": store and memory", formatRows(stored), formatRows(mem))
	}
}

// TestSketchRecovery: a node that stops halfway and a second one that
// recovers its checkpoint and reads on answer exactly what one node that
// read everything answers, on the embedded store and on HBase.
func TestSketchRecovery(t *testing.T) {
	t.Run("bolt", func(t *testing.T) {
		e := newEnv(t)
		checkSketchRecovery(t, e, e.st, "visits")
	})
	t.Run("hbase", func(t *testing.T) {
		st, category := hbaseCategory(t, "sketch_")
		checkSketchRecovery(t, newEnv(t), st, category)
	})
}

func checkSketchRecovery(t *testing.T, e *env, st store.Store, category string) {
	app := visits(t, func(s *apps.Spec) { s.Category = category })
	e.apps = []*apps.App{app}
	vs := someVisits(6000, 1, 2)
	var lines [][]byte
	for _, v := range vs {
		lines = append(lines, v.line())
	}
	half := len(lines) / 2
	node := func(id string) *Puma { return e.node(id, func(c *Config, d *Deps) { d.Store = st }) }
	ctx := context.Background()

	// One shard reads the first half and checkpoints; a second recovers
	// it and reads the rest.
	s1 := testShardOf(t, node("n1"), category, 0)
	for i := 0; i < half; i += 500 {
		s1.apply(stock(lines[i:min(i+500, half)]...), ptail.Position{Offset: int64(i + 1)})
	}
	if err := s1.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	s2 := testShardOf(t, node("n2"), category, 0)
	if s2.committedPos != s1.committedPos || s2.tables[0].ncells != s1.tables[0].ncells || s2.tables[0].ncells == 0 {
		t.Fatalf("recovered %d cells at %s, committed %d at %s", s2.tables[0].ncells, s2.committedPos, s1.tables[0].ncells, s1.committedPos)
	}
	// The stored bytes of the cells are accounted on recovery as on the
	// checkpoint.
	if s2.tables[0].bytes != s1.tables[0].bytes {
		t.Fatalf("recovered %d bytes, checkpointed %d", s2.tables[0].bytes, s1.tables[0].bytes)
	}
	// A third, on a store of its own, reads everything at once.
	fresh := newEnv(t, app)
	s3 := testShardOf(t, fresh.node("n3"), category, 0)
	for i := half; i < len(lines); i += 500 {
		blk := stock(lines[i:min(i+500, len(lines))]...)
		s2.apply(blk, ptail.Position{Offset: int64(i + 1)})
	}
	for i := 0; i < len(lines); i += 500 {
		s3.apply(stock(lines[i:min(i+500, len(lines))]...), ptail.Position{Offset: int64(i + 1)})
	}
	for _, c := range sketchQueries() {
		q := c.q
		q.App = "visits"
		if q.FromMs == 0 {
			q.FromMs, q.ToMs = t0-24*3600_000, t0+24*3600_000
		}
		got, want := memRows(t, s2, q), memRows(t, s3, q)
		equalRows(t, c.name+": recovered and read on", got, want)
		res, err := (&Puma{apps: s2.p.apps, deps: s2.p.deps, shards: map[shardID]*shard{{s2.category, 0}: s2}}).Query(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		checkVisits(t, c.name+" (recovered)", res, expected(vs, c.rowMs, q.FromMs, q.ToMs, c.keys), c.rowMs)
	}
}

// TestWindowsSpans: a line goes to a window of each length; each length
// is checkpointed under its own rows and expires on its own; an app that
// adds a window keeps the state of the one it had.
func TestWindowsSpans(t *testing.T) {
	one := orders(t)
	two := orders(t, func(s *apps.Spec) {
		s.Window = 0
		s.Windows = []config.Duration{config.Duration(time.Hour), config.Duration(time.Minute)} // any order
		s.Retention = config.Duration(2 * time.Hour)
	})
	if two.WindowMs != 60_000 || !slices.Equal(two.WindowsMs, []int64{60_000, 3600_000}) {
		t.Fatalf("windows %v, shortest %d", two.WindowsMs, two.WindowMs)
	}
	if fingerprint(one, one.WindowMs) != fingerprint(two, two.WindowsMs[0]) || fingerprint(two, two.WindowsMs[0]) == fingerprint(two, two.WindowsMs[1]) {
		t.Fatal("fingerprints: a window keeps its rows when another is added, and each length has its own")
	}
	ctx := context.Background()
	e := newEnv(t, one)
	s := testShard(t, e.node("n1"), 0)
	feed(s, 1, order(t0+1000, "eu", "book", 1), order(t0+61_000, "eu", "book", 2))
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	// The same store, the app with an hourly window added.
	e.apps = []*apps.App{two}
	s2 := testShard(t, e.node("n2"), 0)
	// The hour is new to the shard: a backfill builds it from the dfs,
	// which holds nothing here (the lines are fed by hand), so it joins
	// at once, as a backfill with nothing to read does.
	if len(s2.backfills) != 1 || !s2.tables[0].spans[1].pending || s2.tables[0].spans[0].pending {
		t.Fatalf("backfills %d", len(s2.backfills))
	}
	s2.mu.Lock()
	s2.join(s2.backfills[0])
	s2.mu.Unlock()
	feed(s2, 2, order(t0+62_000, "eu", "book", 4))
	tb := s2.tables[0]
	if len(tb.spans) != 2 || len(tb.spans[0].windows) != 2 || len(tb.spans[1].windows) != 1 || tb.ncells != 3 {
		t.Fatalf("spans: %d, %d minute windows, %d hour windows, %d cells", len(tb.spans), len(tb.spans[0].windows), len(tb.spans[1].windows), tb.ncells)
	}
	equalRows(t, "minutes (kept)", memRows(t, s2, Query{}), []string{
		"+0..+60s {kind=book region=eu} {hi=1 lo=1 mean=1 n=1 total=1}",
		"+60..+120s {kind=book region=eu} {hi=4 lo=2 mean=3 n=2 total=6}",
	})
	hour := apps.WindowStart(t0, 3600_000)
	equalRows(t, "hour (from when it was added)", memRows(t, s2, Query{WindowMs: 3600_000}), []string{
		fmt.Sprintf("%+d..%+ds {kind=book region=eu} {hi=4 lo=4 mean=4 n=1 total=4}", (hour-t0)/1000, (hour+3600_000-t0)/1000),
	})
	if err := s2.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	// Retention (2h) drops the minutes that ended two hours back, while
	// the hour that holds them has not ended two hours back.
	feed(s2, 3, order(hour+3*3600_000-60_000+1000, "eu", "book", 8))
	if err := s2.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if len(tb.spans[0].windows) != 1 || len(tb.spans[1].windows) != 2 {
		t.Fatalf("after retention: %d minute windows, %d hour windows", len(tb.spans[0].windows), len(tb.spans[1].windows))
	}
	s3 := testShard(t, e.node("n3"), 0)
	equalRows(t, "recovered", memRows(t, s3, Query{WindowMs: 3600_000}), memRows(t, s2, Query{WindowMs: 3600_000}))
	equalRows(t, "recovered minutes", memRows(t, s3, Query{}), memRows(t, s2, Query{}))
}

// TestWindowQueries: which windows a query reads, and what it refuses.
func TestWindowQueries(t *testing.T) {
	app := orders(t, func(s *apps.Spec) {
		s.Window = 0
		s.Windows = []config.Duration{config.Duration(time.Minute), config.Duration(15 * time.Minute), config.Duration(time.Hour)}
	})
	h := apps.WindowStart(t0, 3600_000)
	for _, c := range []struct {
		q          Query
		span       int
		rowMs      int64
		from, to   int64
		bad        string
		name, note string
	}{
		{name: "default", q: Query{FromMs: h + 1, ToMs: h + 7}, span: 0, rowMs: 60_000, from: h + 1, to: h + 7},
		{name: "one of the windows", q: Query{WindowMs: 900_000, FromMs: h, ToMs: h + 1}, span: 1, rowMs: 900_000, from: h, to: h + 1},
		{name: "rolled up from the longest dividing", q: Query{WindowMs: 2 * 3600_000, FromMs: h + 1, ToMs: h + 3}, span: 2, rowMs: 7200_000,
			from: apps.WindowStart(h+7200_000, 7200_000), to: apps.WindowStart(h+7200_000+2, 7200_000)},
		{name: "30m from 15m", q: Query{WindowMs: 1800_000, FromMs: h, ToMs: h + 1800_000}, span: 1, rowMs: 1800_000, from: h, to: h + 1800_000},
		{name: "all, aligned on hours", q: Query{AllWindows: true, FromMs: h, ToMs: h + 3*3600_000}, span: 2, from: h, to: h + 3*3600_000},
		{name: "all, aligned on quarters", q: Query{AllWindows: true, FromMs: h + 900_000, ToMs: h + 3*3600_000}, span: 1, from: h + 900_000, to: h + 3*3600_000},
		{name: "all, unaligned", q: Query{AllWindows: true, FromMs: h + 1, ToMs: h + 3*3600_000}, span: 0, from: h + 1, to: h + 3*3600_000},
		{name: "not a multiple", q: Query{WindowMs: 7*60_000 + 1000, FromMs: h, ToMs: h + 1}, bad: "is not one of app orders's windows (1m, 15m, 1h) nor a multiple of one"},
		{name: "both", q: Query{WindowMs: 60_000, AllWindows: true, FromMs: h, ToMs: h + 1}, bad: "cannot be asked together"},
		{name: "negative", q: Query{WindowMs: -60_000, FromMs: h, ToMs: h + 1}, bad: "must be positive"},
	} {
		pl, err := newPlan(app, c.q)
		if c.bad != "" {
			var bq *BadQueryError
			if !errors.As(err, &bq) || !strings.Contains(err.Error(), c.bad) {
				t.Errorf("%s: %v, want a bad query: %s", c.name, err, c.bad)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if pl.span != c.span || pl.rowMs != c.rowMs || pl.from != c.from || pl.to != c.to {
			t.Errorf("%s: span %d rows %d range %+d..%+d, want span %d rows %d range %+d..%+d", c.name, pl.span, pl.rowMs, pl.from-h, pl.to-h, c.span, c.rowMs, c.from-h, c.to-h)
		}
	}
}

// TestRolledUpLimit: a limit over rolled-up rows answers the first rows
// of the whole answer, each whole.
func TestRolledUpLimit(t *testing.T) {
	e := newEnv(t, orders(t))
	s := testShard(t, e.node("n1"), 0)
	var lines [][]byte
	for i := range 40 {
		lines = append(lines, order(t0+int64(i)*45_000, fmt.Sprint("r", i%3), "k", i))
	}
	feed(s, 1, lines...)
	all := memRows(t, s, Query{WindowMs: 300_000})
	for limit := 1; limit < len(all); limit++ {
		got := memRows(t, s, Query{WindowMs: 300_000, Limit: limit})
		equalRows(t, fmt.Sprintf("limit %d", limit), got, all[:limit])
	}
}

// TestSketchCellEncoding: a cell of every kind of state reads back as it
// was; a damaged or misfit one is refused with a reason.
func TestSketchCellEncoding(t *testing.T) {
	l, err := newLayout(visits(t))
	if err != nil {
		t.Fatal(err)
	}
	c := l.newCell()
	for i, v := range someVisits(500, 1, 3) {
		ex := apps.InputsOf(v.ts, nil, []apps.Input{{Present: true}, str(v.user), str(v.path), num(v.ms), str(v.user), num(v.ms)})
		l.add(c, ex, v.ts, int64(i))
	}
	b := l.encodeCell(c)
	if b[0] != cellMixed || l.varBytes(b) != int64(len(b)-1-8) {
		t.Fatalf("format %d, %d bytes of states", b[0], l.varBytes(b))
	}
	back, err := l.decodeCell(b)
	if err != nil {
		t.Fatal(err)
	}
	if a, z := fmt.Sprint(l.results(back)), fmt.Sprint(l.results(c)); a != z {
		t.Fatalf("decoded %s, was %s", a, z)
	}
	for name, bad := range map[string][]byte{
		"cut":          b[:len(b)-3],
		"extended":     append(slices.Clone(b), 1),
		"fixed format": append([]byte{cellFixed}, b[1:]...),
		"empty":        nil,
	} {
		if _, err := l.decodeCell(bad); err == nil {
			t.Errorf("%s cell decoded", name)
		}
	}
}

// FuzzDecodeCell: any stored bytes decode into a cell of the visits app
// or an error, never a panic; a decoded cell encodes into bytes that
// decode to the same answers.
func FuzzDecodeCell(f *testing.F) {
	l, err := newLayout(visits(f))
	if err != nil {
		f.Fatal(err)
	}
	c := l.newCell()
	for i, v := range someVisits(50, 1, 4) {
		l.add(c, apps.InputsOf(v.ts, nil, []apps.Input{{Present: true}, str(v.user), str(v.path), num(v.ms), str(v.user), num(v.ms)}), v.ts, int64(i))
	}
	f.Add(l.encodeCell(c))
	f.Add(l.encodeCell(l.newCell()))
	f.Add([]byte{cellFixed, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := l.decodeCell(b)
		if err != nil {
			return
		}
		again, err := l.decodeCell(l.encodeCell(c))
		if err != nil {
			t.Fatalf("re-encoded cell: %v", err)
		}
		if a, z := fmt.Sprint(l.results(again)), fmt.Sprint(l.results(c)); a != z {
			t.Fatalf("re-encoded %s, decoded %s", a, z)
		}
	})
}
