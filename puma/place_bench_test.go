package puma

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
)

// BenchmarkPlace measures the table's part of a line alone (issue 10's
// count+sum cell): the lines are extracted beforehand, so that an op is
// place's key lookup and cell update, for a cell that exists. It also
// reports the Go heap of the cells (heap-bytes/cell, after a collection)
// and the bytes accounted for them (bytes/cell).
//
//	go test -run '^$' -bench BenchmarkPlace -benchmem ./puma
func BenchmarkPlace(b *testing.B) {
	for _, groups := range []int{1000, 100_000, 1_000_000} {
		b.Run(fmt.Sprintf("groups=%d", groups), func(b *testing.B) {
			app, err := apps.Compile(apps.Spec{
				Name: "b", Category: "c", Format: "json",
				Time:       &apps.TimeSpec{Field: "ts", Layout: "unix"},
				GroupBy:    []string{"user"},
				Aggregates: []apps.AggregateSpec{{Name: "n", Fn: "count"}, {Name: "total", Fn: "sum", Field: "bytes"}},
			}, "$")
			if err != nil {
				b.Fatal(err)
			}
			t, err := newTable(app, tableDeps{})
			if err != nil {
				b.Fatal(err)
			}
			lines := make([][]byte, max(groups, 4096))
			exs := make([]*apps.Extracted, len(lines))
			for i := range lines {
				lines[i] = fmt.Appendf(nil, `{"ts": %d, "user": "u%d", "bytes": %d}`, 1_700_000_040+i%20, (i*7919)%groups, i*13%5000)
				ex, err := t.extractor.Extract(lines[i], 0)
				if err != nil {
					b.Fatal(err)
				}
				in := ex.Inputs()
				for j := range in {
					in[j].Value.Str = strings.Clone(in[j].Value.Str)
				}
				exs[i] = apps.InputsOf(ex.TimeMs, []byte(string(ex.Key)), in)
			}
			bt := newBlockTime(0, time.Now().UnixMilli())
			heap := func() int64 {
				var ms runtime.MemStats
				runtime.GC()
				runtime.ReadMemStats(&ms)
				return int64(ms.HeapAlloc)
			}
			before := heap()
			for i := range exs { // make every cell: measure updates, not inserts
				t.place(t.spans[0], exs[i], lines[i], bt)
			}
			heapPerCell := float64(heap()-before) / float64(t.ncells)
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := processCPU(b)
			for i := 0; i < b.N; i++ {
				j := i % len(exs)
				t.place(t.spans[0], exs[j], lines[j], bt)
			}
			b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
			b.ReportMetric(heapPerCell, "heap-bytes/cell")
			b.ReportMetric(float64(t.bytes)/float64(t.ncells), "bytes/cell")
			runtime.KeepAlive(exs)
		})
	}
}
