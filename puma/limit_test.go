package puma

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"

	"github.com/freeway-dev/freeway/internal/testkit"
)

// TestLimitIsThePrefixOfTheSortedAnswer: for every limit, an answer with
// a limit is the first rows of the answer without one, in the same order,
// and says it is truncated exactly when rows were left out; from memory
// (window by window) and from the store (bounded heap), for every shape
// of query.
func TestLimitIsThePrefixOfTheSortedAnswer(t *testing.T) {
	e := newEnv(t, orders(t))
	e.buckets = 3
	rng := rand.New(rand.NewPCG(7, 11))
	var last [3]string
	for b := range 3 {
		var lines [][]byte
		for range 300 {
			// Keys spread over every shard, so that shards merge.
			w := int64(rng.IntN(12)) * 60_000
			lines = append(lines, order(t0+w+int64(rng.IntN(60_000)), fmt.Sprint("r", rng.IntN(5)), fmt.Sprint("k", rng.IntN(7)), rng.IntN(100)))
		}
		last[b] = e.publish("orders", b, stock(lines...)).String()
	}
	p := e.node("n1")
	start(t, p)
	testkit.Eventually(t, "committed", func() error {
		for _, st := range p.Statuses() {
			if st.Committed != last[st.Bucket] {
				return fmt.Errorf("%+v", st)
			}
		}
		return nil
	})
	c := committed(e)
	for _, src := range []querier{p, c} {
		for _, q := range []Query{
			{},
			{GroupBy: []string{"kind"}},
			{GroupBy: []string{}},
			{AllWindows: true},
			{GroupBy: []string{"region"}, AllWindows: true},
			{FromMs: t0 + 3*60_000, ToMs: t0 + 7*60_000 + 1},
		} {
			all := rows(t, src, q)
			if len(all) < 5 {
				t.Fatalf("%T %+v: %d rows, the test tests little", src, q, len(all))
			}
			for _, limit := range []int{1, 2, 3, 7, 10, 35, len(all) - 1, len(all), len(all) + 1, 10 * len(all)} {
				lq := q
				lq.App, lq.Limit = "orders", limit
				if lq.FromMs == 0 {
					lq.FromMs, lq.ToMs = t0-24*3600_000, t0+24*3600_000
				}
				res, err := src.Query(context.Background(), lq)
				if err != nil {
					t.Fatal(err)
				}
				want := all[:min(limit, len(all))]
				if got := formatRows(res); !slices.Equal(got, want) || res.Truncated != (limit < len(all)) {
					t.Fatalf("%T %+v: truncated %v, rows\n%v\nwant the first %d of\n%v", src, lq, res.Truncated, got, limit, all)
				}
			}
		}
	}
}

// TestLimitCostsTheRowsNotTheLimit: a query's limit is a bound, not a
// size. Serving sets every query's limit to max_rows (2 M in the bench),
// and the bounded heap of a one-shard answer was made with room for the
// whole limit: 96 MB zeroed for a point query of one row, and a GC cycle
// of the million cells beside it, query after query. What a query
// allocates is measured in bytes (no time), with a bound far below the
// limit's room and far above the few rows' needs.
func TestLimitCostsTheRowsNotTheLimit(t *testing.T) {
	e := newEnv(t, orders(t))
	var lines [][]byte
	for i := range 200 {
		lines = append(lines, order(t0+int64(i)*100, fmt.Sprint("r", i%5), fmt.Sprint("k", i%7), i))
	}
	last := e.publish("orders", 0, stock(lines...)).String()
	p := e.node("n1")
	start(t, p)
	testkit.Eventually(t, "committed", func() error {
		for _, st := range p.Statuses() {
			if st.Committed != last {
				return fmt.Errorf("%+v", st)
			}
		}
		return nil
	})
	const limit = 1_000_000 // room for it: 48 MB of rows
	for _, q := range []Query{
		{Where: map[string][]string{"region": {"r1"}, "kind": {"k1"}}}, // a point query
		{},                 // every cell, in window order
		{OrderBy: "total"}, // a top-N
	} {
		q.App, q.Limit, q.FromMs, q.ToMs = "orders", limit, t0-3600_000, t0+3600_000
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		res, err := p.Query(context.Background(), q)
		runtime.ReadMemStats(&after)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Rows) == 0 {
			t.Fatalf("%+v: no rows, the test tests nothing", q)
		}
		if n := after.TotalAlloc - before.TotalAlloc; n > 8<<20 {
			t.Fatalf("%+v: %d rows, %d bytes allocated: the limit's room, not the rows'", q, len(res.Rows), n)
		}
	}
}
