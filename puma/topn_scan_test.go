package puma

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
)

// TestTopNScanAgreesWithMerge: a top-N by an aggregate read from its slot
// (topN.scan, which passes a cell by on its slot alone), and a limit
// without order_by (topN.scanKeys, on its window and key), answer as a
// merge of every cell sorted whole does (merger.first), rows and
// truncation, over windows whose slots hold ties, ±0, ±Inf and NaN
// (rows without a value), both orders and limits below and above the
// number of cells.
func TestTopNScanAgreesWithMerge(t *testing.T) {
	ctx := context.Background()
	p, s, app, rng := topNNode(t)
	const windows, keys = topNWindows, topNKeys
	for _, by := range []string{"n", "total", "lo", "hi", "mean", ""} {
		for i := range 60 {
			w0 := rng.IntN(windows)
			q := Query{App: "orders", FromMs: t0 + int64(w0)*60_000, ToMs: t0 + int64(w0+1+rng.IntN(windows-w0))*60_000,
				OrderBy: by, Desc: i%2 == 0, Limit: 1 + rng.IntN(25)}
			if i%10 == 9 {
				q.Limit = 10 * keys
			}
			pl, err := newPlan(app, q)
			if err != nil {
				t.Fatal(err)
			}
			if tn := newTopN(pl); by == "" && !tn.keyScannable() || by != "" && by != "mean" && !tn.scannable() {
				t.Fatalf("order_by %q: not scannable, the test would not test the scan", by)
			}
			agreesWithMerge(ctx, t, p, s, app, q)
		}
	}
}

// TestTopNSortOnceAgreesWithHeap: a query whose limit is at least the
// cells it reads (a query without a limit gets max_rows as one) keeps
// its rows unordered and sorts them once (topN.push makes them a heap
// only when they reach the limit); with the limit one below, at and
// above the cells read, and far above (max_rows), by each order_by, with
// and without a where (the general path), it answers as a merge of every
// cell sorted whole, over slots with ties, ±0, ±Inf and NaN.
func TestTopNSortOnceAgreesWithHeap(t *testing.T) {
	ctx := context.Background()
	p, s, app, rng := topNNode(t)
	for _, by := range []string{"n", "total", "lo", "hi", "mean", ""} {
		for i := range 16 {
			w0 := rng.IntN(topNWindows)
			q := Query{App: "orders", FromMs: t0 + int64(w0)*60_000, ToMs: t0 + int64(w0+1+rng.IntN(topNWindows-w0))*60_000,
				OrderBy: by, Desc: i%2 == 0}
			if i%4 >= 2 {
				q.Where = map[string][]string{"region": {"r1", "r3", "r4"}}
			}
			pl, err := newPlan(app, q)
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			s.snapshot(func(tables []*table) {
				pl.eachCell(tables[0].spans[pl.span], func(int64, string, cell) { n++ })
			})
			if n < 2 {
				t.Fatalf("query %+v reads %d cells", q, n)
			}
			for _, limit := range []int{n - 1, n, n + 1, 2_000_000} {
				q.Limit = limit
				agreesWithMerge(ctx, t, p, s, app, q)
			}
		}
	}
}

// The node of the top-N tests: windows of keys (about three in four
// present) whose slots were overwritten at random.
const topNWindows, topNKeys = 6, 300

func topNNode(t *testing.T) (*Puma, *shard, *apps.App, *rand.Rand) {
	app := orders(t, func(s *apps.Spec) { s.Retention = config.Duration(30 * 24 * time.Hour) })
	e := newEnv(t, app)
	p := e.node("n1")
	s := testShard(t, p, 0)
	tb := s.tables[0]
	const windows, keys = topNWindows, topNKeys
	rng := rand.New(rand.NewPCG(7, 8))
	edges := []float64{0, math.Copysign(0, -1), 1, -1, 2, 1e300, -1e300, math.Inf(1), math.Inf(-1), math.NaN()}
	for w := range windows {
		for k := range keys {
			if rng.IntN(4) == 0 {
				continue
			}
			c := tb.layout.newCell()
			addIn(tb.layout, c, []apps.Input{num(1), num(1), num(1), num(1), num(1)})
			tb.load(0, t0+int64(w)*60_000, apps.EncodeKey([]string{fmt.Sprint("r", k%7), fmt.Sprint("k", k)}), c, 0)
		}
	}
	for _, wc := range tb.spans[0].windows {
		for i := range wc.slots {
			switch rng.IntN(3) {
			case 0:
				wc.slots[i] = edges[rng.IntN(len(edges))]
			default: // few distinct values: many ties
				wc.slots[i] = float64(rng.IntN(5))
			}
		}
	}
	close(s.ready)
	p.shards[shardID{"orders", 0}] = s
	return p, s, app, rng
}

// agreesWithMerge fails t unless p answers q as a merge of every cell of
// s sorted whole (merger.first) does: rows and truncation.
func agreesWithMerge(ctx context.Context, t *testing.T, p *Puma, s *shard, app *apps.App, q Query) {
	t.Helper()
	pl, err := newPlan(app, q)
	if err != nil {
		t.Fatal(err)
	}
	m := newMerger(pl)
	s.snapshot(func(tables []*table) { pl.eachCell(tables[0].spans[pl.span], m.add) })
	rows, trunc, err := m.first(q.Limit)
	if err != nil {
		t.Fatal(err)
	}
	want := formatRows(pl.result(rows, trunc))
	res, err := p.Query(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	got := formatRows(res)
	if !slices.Equal(got, want) || res.Truncated != trunc {
		t.Fatalf("query %+v: truncated %v (want %v)\ngot:\n  %s\nwant:\n  %s", q, res.Truncated, trunc, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}
