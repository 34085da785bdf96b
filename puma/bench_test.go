package puma

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"

	"github.com/freeway-dev/freeway/ptail"
)

// BenchmarkShardApply: one block of 1000 orders over 100 keys into one shard.
func BenchmarkShardApply(b *testing.B) {
	e := newEnv(b, orders(b))
	s := testShard(b, e.node("n1"), 0)
	var lines [][]byte
	for i := range 1000 {
		lines = append(lines, order(t0+int64(i)*10, fmt.Sprint("r", i%10), fmt.Sprint("k", i/100), i))
	}
	blk := stock(lines...)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.apply(blk, ptail.Position{Offset: int64(i)})
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(lines)), "ns/entry")
}

// bigShard is a shard holding a day of one-minute windows with 100 keys
// each: 144,000 cells, nothing dirty.
func bigShard(b *testing.B) (*Puma, *shard) {
	e := newEnv(b, orders(b, func(s *apps.Spec) { s.Retention = config.Duration(48 * time.Hour) }))
	p := e.node("n1")
	s := testShard(b, p, 0)
	for w := range 1440 {
		var lines [][]byte
		for k := range 100 {
			lines = append(lines, order(t0+int64(w)*60_000, fmt.Sprint("r", k%10), fmt.Sprint("k", k/10), k))
		}
		s.apply(stock(lines...), ptail.Position{})
	}
	for _, t := range s.tables {
		t.takeDirty(0, func(cellKey, cell) int64 { return 0 })
	}
	close(s.ready)
	p.shards[shardID{"orders", 0}] = s
	return p, s
}

// BenchmarkQueryOneWindow: the last window of a day of them.
func BenchmarkQueryOneWindow(b *testing.B) {
	p, _ := bigShard(b)
	q := Query{App: "orders", FromMs: t0 + 1439*60_000, ToMs: t0 + 1440*60_000}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := p.Query(context.Background(), q)
		if err != nil || len(res.Rows) != 100 {
			b.Fatalf("%v %d rows", err, len(res.Rows))
		}
	}
}

// BenchmarkQueryAll: every cell of the day, merged to one row per key.
func BenchmarkQueryAll(b *testing.B) {
	p, _ := bigShard(b)
	q := Query{App: "orders", FromMs: t0, ToMs: t0 + 1440*60_000, AllWindows: true}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res, err := p.Query(context.Background(), q)
		if err != nil || len(res.Rows) != 100 {
			b.Fatalf("%v %d rows", err, len(res.Rows))
		}
	}
}

// BenchmarkIdleCheckpoint: a checkpoint of the big shard with one cell
// changed: what holding the lock costs the readers every interval.
func BenchmarkIdleCheckpoint(b *testing.B) {
	_, s := bigShard(b)
	ctx := context.Background()
	line := order(t0+1439*60_000, "r1", "k1", 1)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.apply(stock(line), ptail.Position{Offset: int64(i + 1)})
		if err := s.checkpoint(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
