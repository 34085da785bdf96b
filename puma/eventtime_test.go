package puma

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// regexOrders is the orders app reading text lines
// "<rfc3339 time> <region> <kind> <amount>".
func regexOrders(t testing.TB) *apps.App {
	return orders(t, func(s *apps.Spec) {
		s.Format = "regex"
		s.Pattern = `^(?P<ts>\S+) (?P<region>\S+) (?P<kind>\S+) (?P<amount>\S+)$`
		s.Time = &apps.TimeSpec{Field: "ts", Layout: "rfc3339"}
	})
}

func regexOrder(ms int64, region, kind string, amount int) []byte {
	return fmt.Appendf(nil, "%s %s %s %d", time.UnixMilli(ms).UTC().Format(time.RFC3339Nano), region, kind, amount)
}

// unixOrders is the orders app with its event time in Unix seconds.
func unixOrders(t testing.TB) *apps.App {
	return orders(t, func(s *apps.Spec) { s.Time.Layout = "unix" })
}

func unixOrder(ms int64, region, kind string, amount int) []byte {
	return order(ms/1000, region, kind, amount)
}

func jsonOrder(ms int64, region, kind string, amount int) []byte {
	return order(ms, region, kind, amount)
}

// year2100 is 2100-01-01T00:00:00Z in Unix ms.
const year2100 = int64(4_102_444_800_000)

// checkOneBadLine feeds an app good lines in three windows through real
// segments, with one bad line among them, and checks that every window is
// exact in memory, in the store, and after a restart from the store; and
// that lines after the bad one are still aggregated.
func checkOneBadLine(t *testing.T, app *apps.App, good func(ms int64, region, kind string, amount int) []byte, bad []byte) {
	t.Helper()
	e := newEnv(t, app)
	e.publish("orders", 0, agent("a1", 1,
		good(t0+1000, "eu", "book", 10),
		good(t0+2000, "eu", "book", 30),
		good(t0+3000, "us", "pen", 2),
		good(t0+61_000, "eu", "book", 5),
	))
	e.publish("orders", 0, stock(bad))
	pos := e.publish("orders", 0, agent("a1", 5,
		good(t0+62_000, "eu", "book", 7),
		good(t0+121_000, "us", "pen", 1),
	))
	want := []string{
		"+0..+60s {kind=book region=eu} {hi=30 lo=10 mean=20 n=2 total=40}",
		"+0..+60s {kind=pen region=us} {hi=2 lo=2 mean=2 n=1 total=2}",
		"+60..+120s {kind=book region=eu} {hi=7 lo=5 mean=6 n=2 total=12}",
		"+120..+180s {kind=pen region=us} {hi=1 lo=1 mean=1 n=1 total=1}",
	}
	p1 := e.node("n1")
	r1 := start(t, p1)
	waitCommitted(t, p1, pos) // retention runs in the checkpoint that commits pos
	equalRows(t, "memory", rows(t, p1, Query{}), want)
	rej, _ := p1.Rejections("orders")
	if rej.Dropped["future"] != 1 || len(rej.Samples) != 1 || rej.Samples[0].Reason != "future" || rej.Samples[0].Line != string(bad) ||
		!strings.Contains(rej.Samples[0].Error, "more than max_future 5m0s") {
		t.Fatalf("rejections: %+v", rej)
	}
	r1.stop(t)
	equalRows(t, "committed", rows(t, committed(e), Query{}), want)

	p2 := e.node("n2")
	start(t, p2)
	waitCommitted(t, p2, pos)
	equalRows(t, "memory after a restart", rows(t, p2, Query{}), want)
	// Lines after the restart are aggregated too.
	pos = e.publish("orders", 0, agent("a1", 7, good(t0+122_000, "us", "pen", 3)))
	waitCommitted(t, p2, pos)
	equalRows(t, "a line after the restart", rows(t, p2, Query{}), append(want[:3:3],
		"+120..+180s {kind=pen region=us} {hi=3 lo=1 mean=2 n=2 total=4}"))
}

// TestMillisecondsInUnixSecondsField: one line whose Unix-seconds field
// holds milliseconds (an event time 54,000 years ahead) must not move the
// watermark, expire the bucket's windows or make later lines late.
func TestMillisecondsInUnixSecondsField(t *testing.T) {
	checkOneBadLine(t, unixOrders(t), unixOrder, order(t0+1500, "eu", "book", 1000))
}

func TestYear2100JSON(t *testing.T) {
	checkOneBadLine(t, orders(t), jsonOrder, order(year2100, "eu", "book", 1000))
}

func TestYear2100Regex(t *testing.T) {
	checkOneBadLine(t, regexOrders(t), regexOrder, regexOrder(year2100, "eu", "book", 1000))
}

// TestArrivalIn2100: an app without a time field aggregates by arrival
// time; a block stamped as arriving in 2100 must not harm it.
func TestArrivalIn2100(t *testing.T) {
	app := orders(t, func(s *apps.Spec) { s.Time = nil })
	e := newEnv(t, app)
	block := func(arrivalMs int64, lines ...[]byte) *segment.Block {
		return &segment.Block{ArrivalMs: arrivalMs, Messages: lines}
	}
	e.publish("orders", 0, block(t0+1000, order(0, "eu", "book", 10), order(0, "eu", "book", 30)))
	e.publish("orders", 0, block(t0+61_000, order(0, "eu", "book", 5)))
	e.publish("orders", 0, block(year2100, order(0, "eu", "book", 1000), order(0, "us", "pen", 1000)))
	pos := e.publish("orders", 0, block(t0+62_000, order(0, "eu", "book", 7)))
	want := []string{
		"+0..+60s {kind=book region=eu} {hi=30 lo=10 mean=20 n=2 total=40}",
		"+60..+120s {kind=book region=eu} {hi=7 lo=5 mean=6 n=2 total=12}",
	}
	p1 := e.node("n1")
	r1 := start(t, p1)
	waitCommitted(t, p1, pos)
	equalRows(t, "memory", rows(t, p1, Query{}), want)
	if rej, _ := p1.Rejections("orders"); rej.Dropped["future"] != 2 {
		t.Fatalf("rejections: %+v", rej)
	}
	r1.stop(t)
	equalRows(t, "committed", rows(t, committed(e), Query{}), want)
	p2 := e.node("n2")
	start(t, p2)
	waitCommitted(t, p2, pos)
	equalRows(t, "memory after a restart", rows(t, p2, Query{}), want)
}

// TestEventTimesOutOfRange: NaN, infinite, zero, negative and overflowing
// event times are rejected as bad_time and move nothing; an arrival-time
// app rejects a block without an arrival time.
func TestEventTimesOutOfRange(t *testing.T) {
	app := unixOrders(t)
	arrivalApp := orders(t, func(s *apps.Spec) { s.Name = "by_arrival"; s.Time = nil })
	e := newEnv(t, app, arrivalApp)
	reg := prometheus.NewPedanticRegistry()
	bad := [][]byte{
		[]byte(`{"ts": "NaN", "region": "eu", "kind": "book", "amount": 1}`),
		[]byte(`{"ts": "+Inf", "region": "eu", "kind": "book", "amount": 1}`),
		[]byte(`{"ts": 0, "region": "eu", "kind": "book", "amount": 1}`),
		[]byte(`{"ts": -1700000000, "region": "eu", "kind": "book", "amount": 1}`),
		[]byte(`{"ts": 1e300, "region": "eu", "kind": "book", "amount": 1}`),
		[]byte(`{"ts": 9223372036854776, "region": "eu", "kind": "book", "amount": 1}`), // 2^63 ms
	}
	e.publish("orders", 0, stock(unixOrder(t0+1000, "eu", "book", 10)))
	e.publish("orders", 0, stock(bad...))
	e.publish("orders", 0, &segment.Block{ArrivalMs: 0, Messages: [][]byte{unixOrder(t0+2000, "eu", "book", 30)}})
	pos := e.publish("orders", 0, stock(unixOrder(t0+3000, "eu", "book", 5)))
	p := e.node("n1", func(c *Config, d *Deps) { d.Metrics = reg })
	start(t, p)
	waitCommitted(t, p, pos)
	// The block without an arrival time is read against Puma's clock: its
	// event-time line counts, the arrival-time app cannot place it.
	equalRows(t, "event time", rows(t, p, Query{}), []string{"+0..+60s {kind=book region=eu} {hi=30 lo=5 mean=15 n=3 total=45}"})
	got := gather(t, reg)
	for k, w := range map[string]float64{
		"freeway_puma_records_dropped_total{app=orders,reason=bad_time}":     float64(len(bad)),
		"freeway_puma_records_dropped_total{app=orders,reason=future}":       0,
		"freeway_puma_records_dropped_total{app=by_arrival,reason=bad_time}": 1,
		"freeway_puma_watermark_seconds{app=orders}":                         float64(t0+3000) / 1000,
	} {
		if got[k] != w {
			t.Errorf("%s = %v, want %v", k, got[k], w)
		}
	}
	rej, _ := p.Rejections("orders")
	var errs []string
	for _, s := range rej.Samples {
		if s.Reason != "bad_time" {
			t.Errorf("sample %+v", s)
		}
		errs = append(errs, s.Error)
	}
	// The last five, newest first.
	if len(errs) != SamplesPerReason || !strings.Contains(errs[0], "9223372036854776 does not fit in int64 ms") || !strings.Contains(errs[4], "+Inf") {
		t.Fatalf("samples:\n%s", strings.Join(errs, "\n"))
	}
}

// TestSamplesClipped: a shard keeps the last few rejected lines of each
// reason, clipped, with their error.
func TestSamplesClipped(t *testing.T) {
	e := newEnv(t, orders(t))
	p := e.node("n1")
	s := testShard(t, p, 0)
	adopt(p, s)
	long := []byte(`{"ts": "x` + strings.Repeat("y", 100_000) + `"}`)
	for i := range 8 {
		feed(s, int64(i+1), fmt.Appendf(nil, "garbage %d", i))
	}
	feed(s, 9, long, order(year2100, "eu", "book", 1), order(t0, "eu", "book", "n/a"))
	rej, ok := p.Rejections("orders")
	if !ok {
		t.Fatal("no app")
	}
	if _, ok := p.Rejections("nope"); ok {
		t.Fatal("an unknown app has rejections")
	}
	var got []string
	for _, sm := range rej.Samples {
		got = append(got, sm.Reason+": "+sm.Line)
		if sm.Error == "" || sm.Bucket != 0 || sm.At.IsZero() || len(sm.Line) > ratelog.MaxClip+32 || len(sm.Error) > ratelog.MaxClip+32 {
			t.Errorf("sample %+v", sm)
		}
	}
	equalRows(t, "samples", got, []string{
		"parse_error: garbage 7",
		"parse_error: garbage 6",
		"parse_error: garbage 5",
		"parse_error: garbage 4",
		"parse_error: garbage 3",
		"bad_time: " + ratelog.ClipBytes(long),
		"future: " + string(order(year2100, "eu", "book", 1)),
		"bad_value: " + string(order(t0, "eu", "book", "n/a")),
	})
	if rej.Dropped["parse_error"] != 8 || rej.Dropped["bad_time"] != 1 || rej.Dropped["future"] != 1 || rej.Dropped["bad_value"] != 4 || rej.Dropped["max_cells"] != 0 {
		t.Fatalf("dropped %v", rej.Dropped)
	}
}

// TestRejectionsLoggedRateLimited: bad lines are logged, a few a minute.
func TestRejectionsLoggedRateLimited(t *testing.T) {
	e := newEnv(t, orders(t))
	var logs testkit.LogBuffer
	p := e.node("n1", func(c *Config, d *Deps) { d.Log = slog.New(slog.NewTextHandler(&logs, nil)) })
	s := testShard(t, p, 0)
	for i := range 1000 {
		feed(s, int64(i+1), order(year2100, "eu", "book", i))
	}
	if n := strings.Count(logs.String(), "line not aggregated"); n < 1 || n > 10 {
		t.Fatalf("%d log lines for 1000 bad lines:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "reason=future") {
		t.Fatalf("logs:\n%s", logs.String())
	}
}

// TestFutureWatermarkRepairedOnRecovery: a watermark committed in the
// future by a version without max_future (every later line would be late)
// is reset when the shard recovers.
func TestFutureWatermarkRepairedOnRecovery(t *testing.T) {
	e := newEnv(t, orders(t))
	ctx := context.Background()
	s := testShard(t, e.node("n1"), 0)
	feed(s, 1, order(t0+1000, "eu", "book", 1), order(t0+61_000, "eu", "book", 2))
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	// The old code's commit: its watermark in 2100 (it would have expired
	// the windows too; keep them, to see what the reset goes back to).
	var st commitState
	row := commitRowOf(t, e.st, "orders", 0)
	if err := json.Unmarshal(row, &st); err != nil {
		t.Fatal(err)
	}
	st.Watermarks["orders"] = year2100
	val, _ := json.Marshal(st)
	if err := e.st.Put(ctx, "puma", []store.Cell{{Row: commitRow("orders", 0), Column: "commit", Timestamp: st.Epoch, Value: val}}); err != nil {
		t.Fatal(err)
	}
	s2 := testShard(t, e.node("n2"), 0)
	if wm := s2.tables[0].watermark; wm != t0+60_000 {
		t.Fatalf("watermark after recovery %+d, want the last window's start", wm-t0)
	}
	feed(s2, 2, order(t0+62_000, "eu", "book", 4))
	equalRows(t, "rows", memRows(t, s2, Query{}), []string{
		"+0..+60s {kind=book region=eu} {hi=1 lo=1 mean=1 n=1 total=1}",
		"+60..+120s {kind=book region=eu} {hi=4 lo=2 mean=3 n=2 total=6}",
	})
	// With no window left (what the old code's retention did), any line
	// is taken again.
	s2.tables[0].watermark = year2100
	if err := s2.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	s3 := testShard(t, e.node("n3"), 0)
	feed(s3, 3, order(t0+1000, "eu", "book", 8))
	equalRows(t, "rows", memRows(t, s3, Query{}), []string{"+0..+60s {kind=book region=eu} {hi=8 lo=8 mean=8 n=1 total=8}"})
}
