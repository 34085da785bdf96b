package puma

import (
	"context"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/agg"
	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/demo"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/ptail"
)

// The access-log tests run on real data: the 10,000 Apache access-log
// lines of /work/shared/data/apache_logs/access.log (17-20 May 2015),
// which internal/demo embeds byte for byte.

// accessPattern is the app's regex; accessRE is the test's own, written
// apart, for the independent computation.
const accessPattern = `^(?P<ip>\S+) \S+ \S+ \[(?P<ts>[^\]]+)\] "\S+ (?P<path>\S+)[^"]*" (?P<status>\d{3}) (?P<bytes>\d+|-)`

var accessRE = regexp.MustCompile(`^([0-9a-fA-F.:]+) - \S+ \[([^\]]+)\] "[A-Z]+ ([^ "]+)[^"]*" ([0-9]{3}) ([0-9]+|-)`)

func accessApp(t testing.TB) *apps.App {
	t.Helper()
	a, err := apps.Compile(apps.Spec{
		Name: "access", Category: "access", Format: "regex", Pattern: accessPattern,
		Time:            &apps.TimeSpec{Field: "ts", Layout: demo.TimeLayout},
		Windows:         []config.Duration{config.Duration(time.Hour), config.Duration(24 * time.Hour)},
		AllowedLateness: config.Duration(7 * 24 * time.Hour),
		Retention:       config.Duration(30 * 24 * time.Hour),
		GroupBy:         []string{"status"},
		Aggregates: []apps.AggregateSpec{
			{Name: "hits", Fn: "count"},
			{Name: "bytes", Fn: "sum", Field: "bytes"},
			{Name: "ips", Fn: "count_distinct", Field: "ip"},
			{Name: "paths", Fn: "topk", Field: "path", K: 10},
			{Name: "size", Fn: "percentile", Field: "bytes", Quantiles: []float64{0.5, 0.9, 0.99}},
			{Name: "first_ip", Fn: "first", Field: "ip"},
			{Name: "last_path", Fn: "last", Field: "path"},
		},
	}, "$.apps[0]")
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// hit is one parsed access-log line, with the shard it is sent to.
type hit struct {
	ts               int64
	ip, path, status string
	bytes            float64
	hasBytes         bool
	bucket           int
	rawLine          []byte
}

func accessHits(t *testing.T, buckets int) []hit {
	t.Helper()
	lines, err := demo.Lines()
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 10_000 {
		t.Fatalf("%d access-log lines, want 10000", len(lines))
	}
	var out []hit
	for i, l := range lines {
		m := accessRE.FindSubmatch(l)
		if m == nil {
			t.Fatalf("line %d does not parse: %s", i+1, l)
		}
		ts, err := time.Parse("02/Jan/2006:15:04:05 -0700", string(m[2]))
		if err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		h := hit{ts: ts.UnixMilli(), ip: string(m[1]), path: string(m[3]), status: string(m[4]), bucket: i % buckets, rawLine: l}
		if n, err := strconv.ParseFloat(string(m[5]), 64); err == nil {
			h.bytes, h.hasBytes = n, true
		}
		out = append(out, h)
	}
	return out
}

// accessExact is a row's exact answer, computed from the lines.
type accessExact struct {
	hits  int
	bytes float64
	ips   map[string]bool
	paths map[string]uint64
	sizes []float64
	// first and last: the extreme event time and, of the lines at it, the
	// candidates Puma picks from (see internal/agg: in a cell the first or
	// last to arrive; between cells of one arrival time the smaller or
	// larger value).
	firstTs, lastTs         int64
	firstCells, lastCells   map[string]string // cell → its candidate
	cellFirstTs, cellLastTs map[string]int64
	firstValue, lastValue   string
	rowStart, rowEnd        int64
}

// accessExpected groups hits as a query with rows of rowMs (0: one row
// over all windows) by status (byStatus) or not would.
func accessExpected(hs []hit, rowMs int64, byStatus bool) map[string]*accessExact {
	out := map[string]*accessExact{}
	for _, h := range hs {
		var start int64
		if rowMs > 0 {
			start = apps.WindowStart(h.ts, rowMs)
		}
		key := ""
		if byStatus {
			key = h.status
		}
		id := fmt.Sprint(start, "|", key)
		g := out[id]
		if g == nil {
			g = &accessExact{ips: map[string]bool{}, paths: map[string]uint64{}, firstTs: math.MaxInt64, lastTs: math.MinInt64,
				cellFirstTs: map[string]int64{}, cellLastTs: map[string]int64{}, firstCells: map[string]string{}, lastCells: map[string]string{},
				rowStart: start}
			if rowMs > 0 {
				g.rowEnd = start + rowMs
			}
			out[id] = g
		}
		g.hits++
		g.ips[h.ip] = true
		g.paths[agg.TopValue(h.path)]++
		if h.hasBytes {
			g.bytes += h.bytes
			g.sizes = append(g.sizes, h.bytes)
		}
		// A cell is a (shard, status) pair here: the extreme event time of
		// a row lies in one window of any length.
		cell := fmt.Sprint(h.bucket, "/", h.status)
		if ft, ok := g.cellFirstTs[cell]; !ok || h.ts < ft {
			g.cellFirstTs[cell], g.firstCells[cell] = h.ts, agg.EdgeValue(h.ip)
		}
		if lt, ok := g.cellLastTs[cell]; !ok || h.ts >= lt {
			g.cellLastTs[cell], g.lastCells[cell] = h.ts, agg.EdgeValue(h.path)
		}
		g.firstTs, g.lastTs = min(g.firstTs, h.ts), max(g.lastTs, h.ts)
	}
	for _, g := range out {
		g.firstValue, g.lastValue = "", ""
		for cell, ts := range g.cellFirstTs {
			if v := g.firstCells[cell]; ts == g.firstTs && (g.firstValue == "" || v < g.firstValue) {
				g.firstValue = v
			}
		}
		for cell, ts := range g.cellLastTs {
			if v := g.lastCells[cell]; ts == g.lastTs && v > g.lastValue {
				g.lastValue = v
			}
		}
	}
	return out
}

// accessErrors are the largest errors a check saw, for the log.
type accessErrors struct {
	distinct, quantile float64
	topErr             uint64
}

// checkAccess holds an answer to the exact rows: hits, bytes, first and
// last exactly; distinct IPs exactly up to agg.ExactDistinct, else within
// 2.5% (three standard errors of a precision-14 HyperLogLog); the top
// paths to Space-Saving's guarantees; byte quantiles within 1% of an
// input value at their rank.
func checkAccess(t *testing.T, what string, res *Result, want map[string]*accessExact, rowMs int64, errs *accessErrors) {
	t.Helper()
	if len(res.Rows) != len(want) {
		t.Fatalf("%s: %d rows, want %d", what, len(res.Rows), len(want))
	}
	for _, r := range res.Rows {
		start := int64(0)
		if rowMs > 0 {
			start = r.WindowStartMs
		}
		id := fmt.Sprint(start, "|", r.Key["status"])
		g := want[id]
		if g == nil {
			t.Fatalf("%s: unexpected row %s", what, id)
		}
		row := what + " row " + id
		if rowMs > 0 && (r.WindowStartMs != g.rowStart || r.WindowEndMs != g.rowEnd) {
			t.Fatalf("%s: window %d..%d, want %d..%d", row, r.WindowStartMs, r.WindowEndMs, g.rowStart, g.rowEnd)
		}
		if r.Values["hits"] != float64(g.hits) {
			t.Fatalf("%s: hits %v, want %d", row, r.Values["hits"], g.hits)
		}
		if b, _ := r.Values["bytes"].(float64); b != g.bytes {
			t.Fatalf("%s: bytes %v, want %v", row, r.Values["bytes"], g.bytes)
		}
		ips, exactIPs := r.Values["ips"].(float64), float64(len(g.ips))
		if len(g.ips) <= agg.ExactDistinct && ips != exactIPs {
			t.Fatalf("%s: ips %v, exactly %v (exact while at most %d)", row, ips, exactIPs, agg.ExactDistinct)
		}
		rel := math.Abs(ips-exactIPs) / exactIPs
		if rel > 0.025 {
			t.Fatalf("%s: ips %v, exactly %v: error %.2f%% over 2.5%%", row, ips, exactIPs, 100*rel)
		}
		errs.distinct = max(errs.distinct, rel)
		top := r.Values["paths"].([]agg.TopItem)
		checkTopPaths(t, row+" paths", top, g.paths, 10)
		for _, it := range top {
			errs.topErr = max(errs.topErr, it.Count-g.paths[it.Value])
		}
		sorted := slices.Sorted(slices.Values(g.sizes))
		if len(sorted) == 0 {
			if r.Values["size"] != nil {
				t.Fatalf("%s: size %v of no numbers", row, r.Values["size"])
			}
		} else {
			qs := r.Values["size"].(agg.Quantiles)
			for i, q := range []float64{0.5, 0.9, 0.99} {
				rank := q * float64(len(sorted)-1)
				lo, hi := sorted[int(math.Floor(rank))], sorted[int(math.Ceil(rank))]
				e := min(relErr(qs[i].Value, lo), relErr(qs[i].Value, hi))
				if qs[i].Q != q || e > 0.01 {
					t.Fatalf("%s: size %v = %v, exact %v..%v", row, q, qs[i].Value, lo, hi)
				}
				errs.quantile = max(errs.quantile, e)
			}
		}
		if r.Values["first_ip"] != g.firstValue || r.Values["last_path"] != g.lastValue {
			t.Fatalf("%s: first_ip %v last_path %v, want %v %v", row, r.Values["first_ip"], r.Values["last_path"], g.firstValue, g.lastValue)
		}
	}
}

func relErr(got, exact float64) float64 {
	if exact == 0 {
		return math.Abs(got)
	}
	return math.Abs(got-exact) / math.Abs(exact)
}

// TestAccessLog: the real access log through two shards of a node (ptail,
// the regex app, hourly and daily windows), queried by status and over
// every status, per hour, per day, rolled up and over every window, from
// memory and from the store, against answers the test computes from the
// lines; then a node that recovers the checkpoint answers exactly as the
// first did.
func TestAccessLog(t *testing.T) {
	app := accessApp(t)
	e := newEnv(t, app)
	e.buckets = 2
	hs := accessHits(t, e.buckets)
	last := map[int]ptail.Position{}
	for b := range e.buckets {
		var blocks []*segment.Block
		var lines [][]byte
		for _, h := range hs {
			if h.bucket == b {
				lines = append(lines, h.rawLine)
			}
		}
		for i := 0; i < len(lines); i += 500 {
			blocks = append(blocks, stock(lines[i:min(i+500, len(lines))]...))
		}
		last[b] = e.publish("access", b, blocks...)
	}
	p := e.node("n1")
	r := start(t, p)
	waitShards(t, p, last)

	day, hour := int64(24*3600_000), int64(3600_000)
	from := apps.WindowStart(slices.MinFunc(hs, func(a, b hit) int { return int(a.ts - b.ts) }).ts, day)
	to := apps.WindowStart(slices.MaxFunc(hs, func(a, b hit) int { return int(a.ts - b.ts) }).ts, day) + day
	cases := []struct {
		name     string
		q        Query
		rowMs    int64
		byStatus bool
	}{
		{"hourly by status", Query{WindowMs: hour}, hour, true},
		{"daily by status", Query{WindowMs: day}, day, true},
		{"6h rolled up from hours, by status", Query{WindowMs: 6 * hour}, 6 * hour, true},
		{"all windows by status", Query{AllWindows: true}, 0, true},
		{"all windows, every status", Query{AllWindows: true, GroupBy: []string{}}, 0, false},
		{"daily, every status", Query{WindowMs: day, GroupBy: []string{}}, day, false},
	}
	var errs accessErrors
	before := map[string][]string{}
	for _, c := range cases {
		q := c.q
		q.App, q.FromMs, q.ToMs = "access", from, to
		res, err := p.Query(context.Background(), q)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		checkAccess(t, c.name, res, accessExpected(hs, c.rowMs, c.byStatus), c.rowMs, &errs)
		stored, err := committed(e).Query(context.Background(), q)
		if err != nil {
			t.Fatalf("%s from the store: %v", c.name, err)
		}
		equalRows(t, c.name+": store and memory", formatRows(stored), formatRows(res))
		before[c.name] = formatRows(res)
	}
	t.Logf("largest errors against exact answers: distinct IPs %.3f%%, byte quantiles %.3f%%, top-path count overestimate %d",
		100*errs.distinct, 100*errs.quantile, errs.topErr)

	// Restart: a second node recovers the checkpoints and answers what the
	// first did, to the byte.
	r.stop(t)
	p2 := e.node("n2")
	start(t, p2)
	waitShards(t, p2, last)
	for _, c := range cases {
		q := c.q
		q.App, q.FromMs, q.ToMs = "access", from, to
		res, err := p2.Query(context.Background(), q)
		if err != nil {
			t.Fatalf("%s after the restart: %v", c.name, err)
		}
		equalRows(t, c.name+": after the restart", formatRows(res), before[c.name])
	}
}

// waitShards waits until every shard of p has committed its last
// position and holds the recovered or read cells.
func waitShards(t *testing.T, p *Puma, last map[int]ptail.Position) {
	t.Helper()
	testkit.Eventually(t, "commit", func() error {
		st := p.Statuses()
		if len(st) != len(last) {
			return fmt.Errorf("%d shards", len(st))
		}
		for _, s := range st {
			if s.Committed != last[s.Bucket].String() {
				return fmt.Errorf("shard %d committed %s", s.Bucket, s.Committed)
			}
		}
		return nil
	})
	testkit.Eventually(t, "ready", func() error {
		if !p.Ready() {
			return fmt.Errorf("not ready")
		}
		return nil
	})
}
