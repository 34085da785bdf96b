package puma

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
)

// millionCells is a node whose one shard holds 1,000,000 cells: 1,000
// one-minute windows of 1,000 keys each, loaded as recovery loads them.
func millionCells(b *testing.B) *Puma { return cellsGrid(b, 1000, 1000) }

// cellsGrid is a node whose one shard holds windows × keys cells, loaded
// as recovery loads them; key k is (r<k%37>, k<k>), with amounts that
// tie often (k%97 + w) so that an order_by has ties to break.
func cellsGrid(b *testing.B, windows, keysPer int) *Puma {
	e := newEnv(b, orders(b, func(s *apps.Spec) { s.Retention = config.Duration(30 * 24 * time.Hour) }))
	p := e.node("n1")
	s := testShard(b, p, 0)
	t := s.tables[0]
	keys := make([]string, keysPer)
	for k := range keys {
		keys[k] = apps.EncodeKey([]string{fmt.Sprint("r", k%37), fmt.Sprint("k", k)})
	}
	for w := range windows {
		for k, key := range keys {
			c := t.layout.newCell()
			v := float64(w)
			if windows == 1 {
				v = float64(k % 997)
			}
			addIn(t.layout, c, []apps.Input{num(1), num(v), num(v), num(v), num(v)})
			t.load(0, t0+int64(w)*60_000, key, c, 0)
		}
	}
	close(s.ready)
	p.shards[shardID{"orders", 0}] = s
	return p
}

// BenchmarkQueryLimit: the first 10 rows of an answer of 1,000,000 rows
// (every cell of the shard, one row each), and for reference the same
// query merged to 1,000 rows (window=all).
//
//	go test -run '^$' -bench BenchmarkQueryLimit -benchmem ./puma
func BenchmarkQueryLimit(b *testing.B) {
	p := millionCells(b)
	for _, c := range []struct {
		name string
		q    Query
	}{
		{"rows=1M/limit=10", Query{App: "orders", FromMs: t0, ToMs: t0 + 1000*60_000, Limit: 10}},
		{"rows=1M/limit=100k", Query{App: "orders", FromMs: t0, ToMs: t0 + 1000*60_000, Limit: 100_000}},
		{"rows=1k/limit=10/window=all", Query{App: "orders", FromMs: t0, ToMs: t0 + 1000*60_000, Limit: 10, AllWindows: true}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				res, err := p.Query(context.Background(), c.q)
				if err != nil || len(res.Rows) != c.q.Limit || !res.Truncated {
					b.Fatalf("%v %d rows", err, len(res.Rows))
				}
			}
		})
	}
}

// BenchmarkFirstRows: picking the first 10 of 1,000,000 merged rows, as a
// query answered from the store (puma.Committed) or with window=all does,
// with the bounded heap against a sort of every row.
func BenchmarkFirstRows(b *testing.B) {
	p := millionCells(b)
	q := Query{App: "orders", FromMs: t0, ToMs: t0 + 1000*60_000}
	pl, err := newPlan(p.apps["orders"], q)
	if err != nil {
		b.Fatal(err)
	}
	m := newMerger(pl)
	p.shards[shardID{"orders", 0}].tables[0].spans[0].each(q.FromMs, q.ToMs, m.add)
	for _, c := range []struct {
		name  string
		limit int
	}{{"heap", 10}, {"sort", 0}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				rows, _, _ := m.first(c.limit)
				if len(rows) < 10 {
					b.Fatalf("%d rows", len(rows))
				}
			}
		})
	}
}

// BenchmarkDashboardQueries: the rolled-up queries the web page asks over
// 1,000,000 cells (1,000 windows × 1,000 keys): the top 10 values of a
// group key over the range, and the per-window series of 5 chosen keys.
//
//	go test -run '^$' -bench BenchmarkDashboardQueries -benchmem ./puma
func BenchmarkDashboardQueries(b *testing.B) {
	p := millionCells(b)
	from, to := t0, t0+1000*60_000
	for _, c := range []struct {
		name string
		q    Query
		rows int
	}{
		{"top10/window=all/order_by", Query{App: "orders", FromMs: from, ToMs: to, GroupBy: []string{"region"}, AllWindows: true, OrderBy: "n", Desc: true, Limit: 10}, 10},
		{"series/5keys/where", Query{App: "orders", FromMs: from, ToMs: to, GroupBy: []string{"kind"},
			Where: map[string][]string{"kind": {"k1", "k2", "k3", "k4", "k5"}}, Limit: 100_000}, 5000},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				res, err := p.Query(context.Background(), c.q)
				if err != nil || len(res.Rows) != c.rows {
					b.Fatalf("%v %d rows", err, len(res.Rows))
				}
			}
		})
	}
}

// BenchmarkPointTopN: the queries of issue 10's goals over 1,000,000
// cells, on 1,000 windows of 1,000 keys and on one window of 1,000,000
// keys (make bench's cells run): a point query (where fixes every group
// key), a top-10 (order_by + limit), and every cell.
//
//	go test -run '^$' -bench BenchmarkPointTopN -benchmem ./puma
func BenchmarkPointTopN(b *testing.B) {
	for _, g := range []struct {
		name          string
		windows, keys int
		pointKey      int
		pointRows     int
	}{{"1000x1000", 1000, 1000, 500, 1000}, {"1x1M", 1, 1_000_000, 500_000, 1}} {
		p := cellsGrid(b, g.windows, g.keys)
		from, to := t0, t0+int64(g.windows)*60_000
		where := map[string][]string{"region": {fmt.Sprint("r", g.pointKey%37)}, "kind": {fmt.Sprint("k", g.pointKey)}}
		for _, c := range []struct {
			name string
			q    Query
			rows int
		}{
			{"point", Query{App: "orders", FromMs: from, ToMs: to, Where: where}, g.pointRows},
			{"top10/order_by=total", Query{App: "orders", FromMs: from, ToMs: to, OrderBy: "total", Desc: true, Limit: 10}, 10},
			{"limit10", Query{App: "orders", FromMs: from, ToMs: to, Limit: 10}, 10},
			// Every cell, with serving's max_rows (2 M in make bench) as
			// the limit of a query that has none.
			{"all/limit=max_rows", Query{App: "orders", FromMs: from, ToMs: to, Limit: 2_000_000}, g.windows * g.keys},
			{"all/order_by=total/limit=max_rows", Query{App: "orders", FromMs: from, ToMs: to, OrderBy: "total", Desc: true, Limit: 2_000_000}, g.windows * g.keys},
		} {
			b.Run(g.name+"/"+c.name, func(b *testing.B) {
				b.ReportAllocs()
				cpu0, n := processCPU(b), 0
				for b.Loop() {
					res, err := p.Query(context.Background(), c.q)
					if err != nil || len(res.Rows) != c.rows {
						b.Fatalf("%v %d rows", err, len(res.Rows))
					}
					n++
				}
				b.ReportMetric(float64(processCPU(b)-cpu0)/float64(n), "cpu-ns/op")
			})
		}
	}
}
