package diskqueue

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// cpuPerOp reports the process's CPU time (user and system, every
// goroutine's) per op as cpu-ns/op: on a shared, loaded machine wall
// time says more about the neighbours. Call the returned function when
// the ops are done.
func cpuPerOp(b *testing.B) func() {
	start := cpuTime(b)
	return func() {
		b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
	}
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func benchBatch() []Entry {
	es := make([]Entry, 100)
	for i := range es {
		es[i] = Entry{Category: "access", Message: bytes.Repeat([]byte("x"), 200), Time: 1}
	}
	return es
}

// BenchmarkAppend is Append of 100 entries of 200 bytes, fsynced, from 1
// and 16 goroutines (group commit).
func BenchmarkAppend(b *testing.B) {
	for _, writers := range []int{1, 16} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			q, _ := open(b, b.TempDir(), func(o *Options) { o.MaxBytes = 64 << 30 })
			defer q.Close()
			es := benchBatch()
			b.SetBytes(int64(len(es) * RecordSize(&es[0])))
			var next atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			report := cpuPerOp(b)
			var wg sync.WaitGroup
			for range writers {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						if _, err := q.Append(es); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			report()
			b.ReportMetric(float64(q.Stats().Syncs)/float64(b.N), "fsyncs/op")
		})
	}
}

// BenchmarkReadAck reads and acknowledges batches of up to 1MiB; one op
// is one entry.
func BenchmarkReadAck(b *testing.B) {
	q, _ := open(b, b.TempDir(), func(o *Options) { o.MaxBytes = 64 << 30 })
	defer q.Close()
	es := benchBatch()
	for i := 0; i < b.N; i += len(es) {
		if _, err := q.Append(es[:min(len(es), b.N-i)]); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(int64(RecordSize(&es[0])))
	b.ReportAllocs()
	b.ResetTimer()
	report := cpuPerOp(b)
	defer report()
	for n := 0; n < b.N; {
		bt, err := q.Read(context.Background(), 1<<20, 10000)
		if err != nil {
			b.Fatal(err)
		}
		if err := q.Ack(bt); err != nil {
			b.Fatal(err)
		}
		n += len(bt.Entries)
	}
}

// BenchmarkAppendRead is the agent's queue under load: 4 goroutines append
// calls of 1,000 entries of 176 bytes (group commits) while the consumer
// reads batches of up to 1 MiB right behind them and acknowledges each.
// One op is one entry; cpu-ns/op is the process's CPU for both sides.
func BenchmarkAppendRead(b *testing.B) {
	q, _ := open(b, b.TempDir(), func(o *Options) { o.MaxBytes = 64 << 30 })
	defer q.Close()
	es := make([]Entry, 1000)
	for i := range es {
		es[i] = Entry{Category: "access", Message: bytes.Repeat([]byte("x"), 176), Time: 1}
	}
	calls := (b.N + len(es) - 1) / len(es)
	total := calls * len(es)
	b.SetBytes(int64(RecordSize(&es[0])))
	b.ReportAllocs()
	b.ResetTimer()
	start := cpuTime(b)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for next.Add(1) <= int64(calls) {
				if _, err := q.Append(es); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	for n := 0; n < total; {
		bt, err := q.Read(context.Background(), 1<<20, 10000)
		if err != nil {
			b.Fatal(err)
		}
		if err := q.Ack(bt); err != nil {
			b.Fatal(err)
		}
		n += len(bt.Entries)
	}
	wg.Wait()
	b.ReportMetric(float64(cpuTime(b)-start)/float64(total), "cpu-ns/entry")
}
