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

// BenchmarkCheckpointFirst: the first checkpoint of a shard of 1 M new
// cells of one window into an empty embedded store, what the real
// binary's bench times (`bin/benchrun -only cells`: issue 10's goal, at
// most 1 s), with the process's CPU time per checkpoint beside the wall
// time. BenchmarkCheckpoint times the checkpoints after it (every cell
// changed, the store holding older versions).
//
//	go test -run '^$' -bench BenchmarkCheckpointFirst -benchtime 3x ./puma
func BenchmarkCheckpointFirst(b *testing.B) {
	const n = 1_000_000
	ctx := context.Background()
	var cpu time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		e := newEnv(b, orders(b, func(s *apps.Spec) { s.Retention = config.Duration(48 * time.Hour) }))
		s := testShard(b, e.node(fmt.Sprint("n", i)), 0)
		lines := make([][]byte, 0, 1000)
		for i := 0; i < n; i += 1000 {
			lines = lines[:0]
			for j := i; j < min(i+1000, n); j++ {
				lines = append(lines, order(t0, fmt.Sprint("r", j%1000), fmt.Sprint("k", j/1000), 1))
			}
			s.apply(stock(lines...), ptail.Position{Offset: int64(i + 1)})
		}
		c0 := cpuTime()
		b.StartTimer()
		if err := s.checkpoint(ctx); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		cpu += cpuTime() - c0
		s.release()
		b.StartTimer()
	}
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
}
