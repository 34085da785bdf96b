package puma

import (
	"fmt"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/apps/appstest"
	"github.com/freeway-dev/freeway/internal/demo"
	"github.com/freeway-dev/freeway/internal/loadgen"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/ptail"
)

// BenchmarkApply measures Puma's per-record cost (B3 of BENCHMARKS.md):
// parse a line, filter, extract the key, update a cell, for several group
// counts and both formats.
//
//	go test -run '^$' -bench BenchmarkApply -benchmem ./puma
func BenchmarkApply(b *testing.B) {
	for _, groups := range []int{1000, 100_000, 1_000_000} {
		b.Run(fmt.Sprintf("json/groups=%d", groups), func(b *testing.B) {
			app, err := apps.Compile(apps.Spec{
				Name: "b", Category: "c", Format: "json",
				Time:    &apps.TimeSpec{Field: "ts", Layout: "unix"},
				GroupBy: []string{"user"},
				Aggregates: []apps.AggregateSpec{
					{Fn: "count"}, {Fn: "sum", Field: "bytes"}, {Fn: "max", Field: "bytes"},
				},
			}, "$")
			if err != nil {
				b.Fatal(err)
			}
			t, err := newTable(app, tableDeps{})
			if err != nil {
				b.Fatal(err)
			}
			// One line per group, so that every group is touched.
			lines := make([][]byte, max(groups, 4096))
			for i := range lines {
				lines[i] = fmt.Appendf(nil, `{"ts": %d, "user": "u%d", "bytes": %d, "path": "/some/path/%d", "agent": "Mozilla/5.0 (X11; Linux x86_64)"}`, 1_700_000_000+i%60, (i*7919)%groups, i*13%5000, i%100)
			}
			bt := newBlockTime(0, time.Now().UnixMilli())
			for _, l := range lines { // warm the table: measure updates, not inserts
				t.apply(l, bt)
			}
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := processCPU(b)
			for i := 0; i < b.N; i++ {
				t.apply(lines[i%len(lines)], bt)
			}
			b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
			b.ReportMetric(float64(t.ncells), "cells")
		})
	}
	b.Run("regex/access-log", func(b *testing.B) {
		app, err := apps.Compile(apps.Spec{
			Name: "http", Category: "access", Format: "regex",
			Pattern:    `^(?P<ip>\S+) \S+ \S+ \[(?P<ts>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+)[^"]*" (?P<status>\d{3}) (?P<bytes>\d+|-)`,
			Time:       &apps.TimeSpec{Field: "ts", Layout: "02/Jan/2006:15:04:05 -0700"},
			GroupBy:    []string{"status", "method"},
			Aggregates: []apps.AggregateSpec{{Fn: "count"}, {Fn: "sum", Field: "bytes"}},
		}, "$")
		if err != nil {
			b.Fatal(err)
		}
		t, err := newTable(app, tableDeps{})
		if err != nil {
			b.Fatal(err)
		}
		lines, err := demo.Lines()
		if err != nil {
			b.Fatal(err)
		}
		bt := newBlockTime(0, time.Now().UnixMilli())
		b.ReportAllocs()
		b.ResetTimer()
		cpu0 := processCPU(b)
		for i := 0; i < b.N; i++ {
			t.apply(lines[i%len(lines)], bt)
		}
		b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
}

// BenchmarkApplyEntry is issue 10's end-to-end app in Puma alone: the
// bench's 176-byte JSON lines (internal/loadgen, 10 k keys), a count and
// a sum of value per key per minute (unix_ms time), fed a block of 1,000
// lines from one agent at a time through the shard (the agent's
// sequence numbers, the shared parse, extraction, placement). An op is
// one entry; every line's cell exists (the table is warmed first).
//
//	go test -run '^$' -bench BenchmarkApplyEntry -benchmem ./puma
func BenchmarkApplyEntry(b *testing.B) {
	app := appstest.Compile(b, apps.Spec{
		Name: "bench", Category: "bench", Format: "json",
		Time:    &apps.TimeSpec{Field: "ts", Layout: "unix_ms"},
		GroupBy: []string{"key"},
		Aggregates: []apps.AggregateSpec{
			{Name: "n", Fn: "count"}, {Name: "total", Fn: "sum", Field: "value"},
		},
	})
	e := newEnv(b, app)
	s := testShardOf(b, e.node("n1"), "bench", 0)
	// 40 blocks of 1,000 lines, 150 µs apart (the bench's step), all in
	// one minute.
	spec := loadgen.Lines{Format: loadgen.JSON, Size: 176, Keys: 10000, Seed: 1, Start: time.UnixMilli(1764583200000), Step: 150 * time.Microsecond}
	blocks := make([]*segment.Block, 40)
	for i := range blocks {
		blk := &segment.Block{Agent: "bench-agent", ArrivalMs: 1764583200000, Seqs: make([]uint64, 1000)}
		for j := range 1000 {
			line, _ := spec.Append(nil, int64(i*1000+j), 0)
			blk.Messages = append(blk.Messages, line)
		}
		blocks[i] = blk
	}
	seq := uint64(0)
	feed := func(blk *segment.Block) {
		for j := range blk.Seqs {
			seq++
			blk.Seqs[j] = seq
		}
		s.apply(blk, ptail.Position{Offset: int64(seq)})
	}
	for _, blk := range blocks { // every cell made: measure updates
		feed(blk)
	}
	if s.entries != 40_000 {
		b.Fatalf("%d entries applied, want 40000", s.entries)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU(b)
	n := 0
	for n < b.N {
		feed(blocks[(n/1000)%len(blocks)])
		n += 1000
	}
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(n), "cpu-ns/entry")
	b.StopTimer()
	for _, t := range s.tables {
		if got := t.drops; got != [nReasons]uint64{} {
			b.Fatalf("lines rejected: %v", got)
		}
	}
}
