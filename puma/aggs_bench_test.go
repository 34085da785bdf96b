package puma

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/ptail"
)

// benchAggs are the aggregators of BenchmarkAggregators, one app each.
var benchAggs = []apps.AggregateSpec{
	{Name: "v", Fn: "count"},
	{Name: "v", Fn: "sum", Field: "bytes"},
	{Name: "v", Fn: "min", Field: "bytes"},
	{Name: "v", Fn: "max", Field: "bytes"},
	{Name: "v", Fn: "avg", Field: "bytes"},
	{Name: "v", Fn: "count_distinct", Field: "path"},
	{Name: "v", Fn: "topk", Field: "path", K: 10},
	{Name: "v", Fn: "percentile", Field: "bytes", Quantiles: []float64{0.5, 0.9, 0.99}},
	{Name: "v", Fn: "first", Field: "path"},
	{Name: "v", Fn: "last", Field: "path"},
}

func benchApp(b *testing.B, aggs ...apps.AggregateSpec) *apps.App {
	b.Helper()
	app, err := apps.Compile(apps.Spec{
		Name: "b", Category: "c", Format: "json",
		Time:       &apps.TimeSpec{Field: "ts", Layout: "unix"},
		GroupBy:    []string{"user"},
		Aggregates: aggs,
	}, "$")
	if err != nil {
		b.Fatal(err)
	}
	return app
}

// benchLines are lines over keys users, each user with a few paths and
// byte counts, in one minute.
func benchLines(keys int) [][]byte {
	lines := make([][]byte, max(keys, 4096))
	for i := range lines {
		lines[i] = fmt.Appendf(nil, `{"ts": %d, "user": "u%d", "bytes": %d, "path": "/some/path/%d"}`, 1_700_000_040+i%60, (i*7919)%keys, i*13%5000, i%7)
	}
	return lines
}

// BenchmarkAggregators measures each aggregator alone (an app of one
// aggregate, grouped by user) at 1 k, 100 k and 1 M keys: records/s on
// one goroutine (one core) updating cells that exist (the table is warmed
// with every key first, then fed the same lines again), and the
// bytes per cell: as accounted (freeway_puma_cell_bytes over the cells,
// sketches at their stored size: bytes/cell) and as the Go heap grew
// building the table (heap-bytes/cell, after a collection).
//
//	go test -run '^$' -bench BenchmarkAggregators -benchtime 2000000x ./puma
func BenchmarkAggregators(b *testing.B) {
	for _, a := range benchAggs {
		for _, keys := range []int{1000, 100_000, 1_000_000} {
			b.Run(fmt.Sprintf("%s/keys=%d", a.Fn, keys), func(b *testing.B) {
				t, err := newTable(benchApp(b, a), tableDeps{})
				if err != nil {
					b.Fatal(err)
				}
				lines := benchLines(keys)
				bt := newBlockTime(0, time.Now().UnixMilli())
				heap := func() int64 {
					var ms runtime.MemStats
					runtime.GC()
					runtime.ReadMemStats(&ms)
					return int64(ms.HeapAlloc)
				}
				before := heap()
				for _, l := range lines {
					t.apply(l, bt)
				}
				// Sketches are accounted at their stored size, as after a
				// checkpoint.
				t.takeDirty(0, func(_ cellKey, c cell) int64 { return t.layout.varBytes(t.layout.encodeCell(c)) })
				heapPerCell := float64(heap()-before) / float64(t.ncells)
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					t.apply(lines[i%len(lines)], bt)
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
				b.ReportMetric(float64(t.bytes)/float64(t.ncells), "bytes/cell")
				b.ReportMetric(heapPerCell, "heap-bytes/cell")
				b.ReportMetric(float64(t.ncells), "cells")
			})
		}
	}
}

// sketchShard is a shard of an app with a count, a distinct count and
// percentiles, holding cells cells (one window, a key each), all changed.
func sketchShard(b *testing.B, e *env, cells int) *shard {
	b.Helper()
	s := testShardOf(b, e.node("n1"), "c", 0)
	lines := benchLines(cells)
	for i := 0; i < len(lines); i += 1000 {
		s.apply(stock(lines[i:min(i+1000, len(lines))]...), ptail.Position{Segment: "s", Offset: int64(i + 1)})
	}
	return s
}

func sketchEnv(b *testing.B) *env {
	app := benchApp(b, apps.AggregateSpec{Name: "n", Fn: "count"},
		apps.AggregateSpec{Name: "paths", Fn: "count_distinct", Field: "path"},
		apps.AggregateSpec{Name: "bytes", Fn: "percentile", Field: "bytes", Quantiles: []float64{0.5, 0.99}})
	app.RetentionMs = int64(365 * 24 * time.Hour / time.Millisecond)
	return newEnv(b, app)
}

// BenchmarkCheckpoint1M: the checkpoint of a shard whose 1 M cells (with
// a distinct count and percentiles each) all changed, to the embedded
// store.
//
//	go test -run '^$' -bench 'Benchmark(Checkpoint|Recover)1M' -benchtime 1x ./puma
func BenchmarkCheckpoint1M(b *testing.B) {
	const cells = 1_000_000
	e := sketchEnv(b)
	s := sketchShard(b, e, cells)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i > 0 {
			b.StopTimer()
			for _, t := range s.tables {
				markAll(t.spans[0])
			}
			b.StartTimer()
		}
		if err := s.checkpoint(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/checkpoint")
	b.ReportMetric(float64(s.tables[0].ncells), "cells")
}

// BenchmarkRecover1M: a shard's recovery of 1 M committed cells (with a
// distinct count and percentiles each) from the embedded store.
func BenchmarkRecover1M(b *testing.B) {
	const cells = 1_000_000
	e := sketchEnv(b)
	s := sketchShard(b, e, cells)
	if err := s.checkpoint(context.Background()); err != nil {
		b.Fatal(err)
	}
	s.release()
	b.ResetTimer()
	var n int
	for i := 0; i < b.N; i++ {
		r := testShardOf(b, e.node(fmt.Sprint("r", i)), "c", 0)
		n = r.tables[0].ncells
		b.StopTimer()
		r.release()
		b.StartTimer()
	}
	if n != cells {
		b.Fatalf("recovered %d cells, want %d", n, cells)
	}
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/recovery")
}

// markAll marks every cell of sp changed.
func markAll(sp *span) {
	for _, wc := range sp.windows {
		for i := range int32(wc.len()) {
			wc.mark(i)
		}
	}
}
