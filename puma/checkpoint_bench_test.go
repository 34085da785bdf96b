package puma

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/ptail"
)

// BenchmarkCheckpoint: a checkpoint of every cell of a shard changed, on
// the embedded store, at 22 k cells (the end-to-end bench's shard) and at
// 1 M (issue 10's goal: at most 1 s). It reports the process's CPU time
// per checkpoint beside the wall time (the machine is shared).
//
//	go test -run '^$' -bench BenchmarkCheckpoint -benchtime 3x ./puma
func BenchmarkCheckpoint(b *testing.B) {
	for _, n := range []int{22_000, 1_000_000} {
		b.Run(fmt.Sprintf("cells=%d", n), func(b *testing.B) {
			e := newEnv(b, orders(b, func(s *apps.Spec) { s.Retention = config.Duration(48 * time.Hour) }))
			s := testShard(b, e.node("n1"), 0)
			ctx := context.Background()
			// n keys of one window: region × kind.
			lines := make([][]byte, 0, 1000)
			touch := func(v int) {
				for i := 0; i < n; i += 1000 {
					lines = lines[:0]
					for j := i; j < min(i+1000, n); j++ {
						lines = append(lines, order(t0, fmt.Sprint("r", j%1000), fmt.Sprint("k", j/1000), v))
					}
					s.apply(stock(lines...), ptail.Position{Offset: int64(v)})
				}
			}
			touch(1)
			if err := s.checkpoint(ctx); err != nil { // the first: every cell new
				b.Fatal(err)
			}
			var cpu time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				touch(i + 2)
				c0 := cpuTime()
				b.StartTimer()
				if err := s.checkpoint(ctx); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				cpu += cpuTime() - c0
				b.StartTimer()
			}
			b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
		})
	}
}

// BenchmarkRecover: a shard's recovery of 1 M committed cells of one
// window (the orders app: count, sum, min, max, avg) from the embedded
// store, with the process's CPU time per recovery (issue 10's goal: at
// most 3 s).
//
//	go test -run '^$' -bench BenchmarkRecover$ -benchtime 3x ./puma
func BenchmarkRecover(b *testing.B) {
	const n = 1_000_000
	e := newEnv(b, orders(b, func(s *apps.Spec) { s.Retention = config.Duration(48 * time.Hour) }))
	s := testShard(b, e.node("n1"), 0)
	lines := make([][]byte, 0, 1000)
	for i := 0; i < n; i += 1000 {
		lines = lines[:0]
		for j := i; j < min(i+1000, n); j++ {
			lines = append(lines, order(t0, fmt.Sprint("r", j%1000), fmt.Sprint("k", j/1000), 1))
		}
		s.apply(stock(lines...), ptail.Position{Offset: int64(i + 1)})
	}
	if err := s.checkpoint(context.Background()); err != nil {
		b.Fatal(err)
	}
	s.release()
	var cpu time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c0 := cpuTime()
		r := testShard(b, e.node(fmt.Sprint("r", i)), 0)
		cpu += cpuTime() - c0
		b.StopTimer()
		if got := r.tables[0].ncells; got != n {
			b.Fatalf("recovered %d cells, want %d", got, n)
		}
		r.release()
		b.StartTimer()
	}
	b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
