package puma

import (
	"fmt"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/demo"
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
