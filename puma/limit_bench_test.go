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
func millionCells(b *testing.B) *Puma {
	e := newEnv(b, orders(b, func(s *apps.Spec) { s.Retention = config.Duration(30 * 24 * time.Hour) }))
	p := e.node("n1")
	s := testShard(b, p, 0)
	t := s.tables[0]
	keys := make([]string, 1000)
	for k := range keys {
		keys[k] = apps.EncodeKey([]string{fmt.Sprint("r", k%37), fmt.Sprint("k", k)})
	}
	for w := range 1000 {
		for _, key := range keys {
			c := t.layout.newCell()
			addIn(t.layout, c, []apps.Input{num(1), num(float64(w)), num(float64(w)), num(float64(w)), num(float64(w))})
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
