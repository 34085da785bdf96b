package puma

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/testkit"
)

// TestQueryWhere: where keeps the cells whose key has one of the values
// listed for each key named, on keys grouped by or not, before the
// projection; answered alike from memory and from the store.
func TestQueryWhere(t *testing.T) {
	e, p := queryFixture(t)
	c := NewCommitted(e.st, "puma", e.apps, func(string) int { return e.buckets })
	cases := []struct {
		name string
		q    Query
		want []string
	}{
		{"one key, one value", Query{Where: map[string][]string{"region": {"us"}}}, []string{
			"+0..+60s {kind=book region=us} {hi=20 lo=20 mean=20 n=1 total=20}",
			"+120..+180s {kind=pen region=us} {hi=3 lo=3 mean=3 n=1 total=3}",
		}},
		{"values of one key are alternatives", Query{Where: map[string][]string{"kind": {"pen", "hat"}}}, []string{
			"+0..+60s {kind=pen region=eu} {hi=1 lo=1 mean=1 n=1 total=1}",
			"+120..+180s {kind=pen region=us} {hi=3 lo=3 mean=3 n=1 total=3}",
		}},
		{"keys all hold", Query{Where: map[string][]string{"kind": {"book"}, "region": {"eu"}}}, []string{
			"+0..+60s {kind=book region=eu} {hi=10 lo=2 mean=6 n=2 total=12}",
			"+60..+120s {kind=book region=eu} {hi=4 lo=4 mean=4 n=1 total=4}",
		}},
		{"on a key not grouped by, before merging", Query{GroupBy: []string{"kind"}, AllWindows: true, Where: map[string][]string{"region": {"eu"}}}, []string{
			"+0..+120s {kind=book} {hi=10 lo=2 mean=5.333333333333333 n=3 total=16}",
			"+0..+60s {kind=pen} {hi=1 lo=1 mean=1 n=1 total=1}",
		}},
		{"no match", Query{Where: map[string][]string{"region": {"mars"}}}, nil},
		{"with a limit", Query{Where: map[string][]string{"kind": {"book"}}, Limit: 2}, []string{
			"+0..+60s {kind=book region=eu} {hi=10 lo=2 mean=6 n=2 total=12}",
			"+0..+60s {kind=book region=us} {hi=20 lo=20 mean=20 n=1 total=20}",
		}},
	}
	testkit.Eventually(t, "committed what was read", func() error {
		for _, s := range p.Statuses()[:2] {
			if s.Committed != s.Position {
				return errorf("%+v", s)
			}
		}
		return nil
	})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			equalRows(t, "memory", rows(t, p, tc.q), tc.want)
			equalRows(t, "store", rows(t, c, tc.q), tc.want)
		})
	}
}

// TestQueryOrderBy: order_by orders rows by an aggregate (descending or
// ascending, rows without a value last, ties in answer order), and with a
// limit keeps the top N.
func TestQueryOrderBy(t *testing.T) {
	e := newEnv(t, orders(t))
	e.buckets = 2
	p0 := e.publish("orders", 0, stock(
		order(t0+1000, "eu", "book", 10),
		order(t0+2000, "us", "pen", nil), // no amount: no total, no mean
		order(t0+3000, "ap", "book", 5),
		order(t0+61_000, "eu", "pen", 7),
	))
	p1 := e.publish("orders", 1, stock(
		order(t0+4000, "us", "book", 30),
		order(t0+5000, "ap", "pen", 5),
	))
	p := e.node("n1")
	start(t, p)
	waitRead(t, p, 0, p0)
	waitRead(t, p, 1, p1)
	cases := []struct {
		name string
		q    Query
		want []string
	}{
		{"top regions by total", Query{GroupBy: []string{"region"}, AllWindows: true, OrderBy: "total", Desc: true}, []string{
			"+0..+60s {region=us} {hi=30 lo=30 mean=30 n=2 total=30}",
			"+0..+120s {region=eu} {hi=10 lo=7 mean=8.5 n=2 total=17}",
			"+0..+60s {region=ap} {hi=5 lo=5 mean=5 n=2 total=10}",
		}},
		{"top 2", Query{GroupBy: []string{"region"}, AllWindows: true, OrderBy: "total", Desc: true, Limit: 2}, []string{
			"+0..+60s {region=us} {hi=30 lo=30 mean=30 n=2 total=30}",
			"+0..+120s {region=eu} {hi=10 lo=7 mean=8.5 n=2 total=17}",
		}},
		{"ascending, ties in key order", Query{GroupBy: []string{"region"}, AllWindows: true, OrderBy: "n"}, []string{
			"+0..+60s {region=ap} {hi=5 lo=5 mean=5 n=2 total=10}",
			"+0..+120s {region=eu} {hi=10 lo=7 mean=8.5 n=2 total=17}",
			"+0..+60s {region=us} {hi=30 lo=30 mean=30 n=2 total=30}",
		}},
		{"rows without a value last, either way", Query{Where: map[string][]string{"kind": {"pen"}}, OrderBy: "mean", Desc: true}, []string{
			"+60..+120s {kind=pen region=eu} {hi=7 lo=7 mean=7 n=1 total=7}",
			"+0..+60s {kind=pen region=ap} {hi=5 lo=5 mean=5 n=1 total=5}",
			"+0..+60s {kind=pen region=us} {hi=null lo=null mean=null n=1 total=0}",
		}},
		{"ascending, without a value last", Query{Where: map[string][]string{"kind": {"pen"}}, OrderBy: "mean", Limit: 2}, []string{
			"+0..+60s {kind=pen region=ap} {hi=5 lo=5 mean=5 n=1 total=5}",
			"+60..+120s {kind=pen region=eu} {hi=7 lo=7 mean=7 n=1 total=7}",
		}},
		{"per window rows: the largest cells", Query{OrderBy: "hi", Desc: true, Limit: 3}, []string{
			"+0..+60s {kind=book region=us} {hi=30 lo=30 mean=30 n=1 total=30}",
			"+0..+60s {kind=book region=eu} {hi=10 lo=10 mean=10 n=1 total=10}",
			"+60..+120s {kind=pen region=eu} {hi=7 lo=7 mean=7 n=1 total=7}",
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			equalRows(t, tc.name, rows(t, p, tc.q), tc.want)
		})
	}
	q := Query{App: "orders", FromMs: t0, ToMs: t0 + 3600_000, GroupBy: []string{"region"}, AllWindows: true, OrderBy: "total", Desc: true, Limit: 2}
	if res, err := p.Query(context.Background(), q); err != nil || !res.Truncated {
		t.Fatalf("top 2 of 3: %v %+v", err, res)
	}
	q.Limit = 3
	if res, err := p.Query(context.Background(), q); err != nil || res.Truncated {
		t.Fatalf("top 3 of 3: %v %+v", err, res)
	}
}

// TestQueryAsOf: an answer says the time of its data and the app's
// watermark: from memory, the node's clock and the highest event time
// read; from the store, the oldest commit of the shards that answered and
// the highest committed watermark.
func TestQueryAsOf(t *testing.T) {
	e := newEnv(t, orders(t))
	e.buckets = 2
	clock := time.UnixMilli(arrival + 5000)
	pos0 := e.publish("orders", 0, stock(order(t0+1000, "eu", "book", 10), order(t0+61_500, "eu", "book", 1)))
	pos1 := e.publish("orders", 1, stock(order(t0+4000, "us", "book", 30)))
	p := e.node("n1", func(c *Config, d *Deps) { d.Now = func() time.Time { return clock } })
	c := NewCommitted(e.st, "puma", e.apps, func(string) int { return e.buckets })

	// Nothing read, nothing committed: no time, no watermark.
	for _, src := range []querier{p, c} {
		res, err := src.Query(context.Background(), Query{App: "orders", FromMs: t0, ToMs: t0 + 1})
		if err != nil || res.AsOf != (AsOf{}) {
			t.Fatalf("%T before: %v %+v", src, err, res)
		}
	}
	start(t, p)
	waitRead(t, p, 0, pos0)
	waitRead(t, p, 1, pos1)
	res, err := p.Query(context.Background(), Query{App: "orders", FromMs: t0, ToMs: t0 + 1})
	if want := (AsOf{TimeMs: clock.UnixMilli(), WatermarkMs: t0 + 61_500}); err != nil || res.AsOf != want {
		t.Fatalf("memory: %v %+v, want %+v", err, res.AsOf, want)
	}
	testkit.Eventually(t, "both committed", func() error {
		for _, s := range p.Statuses() {
			if want := []string{pos0.String(), pos1.String()}[s.Bucket]; s.Committed != want {
				return errorf("%+v", s)
			}
		}
		return nil
	})
	var oldest int64
	for b := range 2 {
		_, st, _, err := readCommit(context.Background(), e.st, "puma", "orders", b)
		if err != nil {
			t.Fatal(err)
		}
		if oldest == 0 || st.CommitMs < oldest {
			oldest = st.CommitMs
		}
	}
	res, err = c.Query(context.Background(), Query{App: "orders", FromMs: t0, ToMs: t0 + 1})
	if want := (AsOf{TimeMs: oldest, WatermarkMs: t0 + 61_500}); err != nil || res.AsOf != want || oldest != clock.UnixMilli() {
		t.Fatalf("store: %v %+v, want %+v", err, res.AsOf, want)
	}
}

// TestBadFilters: where and order_by name what the app has.
func TestBadFilters(t *testing.T) {
	e := newEnv(t, orders(t))
	p := e.node("n1")
	c := NewCommitted(e.st, "puma", e.apps, func(string) int { return 1 })
	for _, src := range []querier{p, c} {
		for _, bad := range []struct {
			q    Query
			want string
		}{
			{Query{Where: map[string][]string{"city": {"x"}}}, `where: app orders has no group key "city" (it groups by region, kind)`},
			{Query{Where: map[string][]string{"kind": {}}}, `where: no value given for "kind"`},
			{Query{OrderBy: "count"}, `order_by: app orders has no aggregate "count" (it has n, total, lo, hi, mean)`},
		} {
			bad.q.App, bad.q.FromMs, bad.q.ToMs = "orders", 0, 1
			_, err := src.Query(context.Background(), bad.q)
			var bq *BadQueryError
			if !errors.As(err, &bq) || !strings.Contains(bq.Msg, bad.want) {
				t.Errorf("%T %+v: %v, want a BadQueryError with %q", src, bad.q, err, bad.want)
			}
		}
	}
}

// TestWhereLimitTruncated: with where and a limit, an answer is
// truncated only when rows that pass the filter were left out, not when
// later windows hold only cells the filter drops.
func TestWhereLimitTruncated(t *testing.T) {
	_, p := queryFixture(t)
	// eu has 3 rows (two in the first window, one in the second); the
	// third window holds only us.
	q := Query{App: "orders", FromMs: t0, ToMs: t0 + 3600_000, Where: map[string][]string{"region": {"eu"}}, Limit: 3}
	res, err := p.Query(context.Background(), q)
	if err != nil || len(res.Rows) != 3 || res.Truncated {
		t.Fatalf("limit 3 of 3 eu rows: %v, %d rows, truncated %v", err, len(res.Rows), res.Truncated)
	}
	q.Limit = 2
	if res, err := p.Query(context.Background(), q); err != nil || len(res.Rows) != 2 || !res.Truncated {
		t.Fatalf("limit 2 of 3 eu rows: %v %+v", err, res)
	}
}
