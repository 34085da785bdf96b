package puma

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/ptail"
)

// threeApps are three JSON apps of the orders category.
func threeApps(t testing.TB) []*apps.App {
	return []*apps.App{orders(t), kindsApp(t, "orders"), orders(t, func(s *apps.Spec) {
		s.Name, s.GroupBy = "channels", []string{"channel"} // a field the others do not read
		s.Aggregates = []apps.AggregateSpec{{Name: "hi", Fn: "max", Field: "amount"}}
	})}
}

// TestSharedParseAnswersAsOwnParse: three apps of one category fed by one
// parse per line answer as when each parses the lines itself.
func TestSharedParseAnswersAsOwnParse(t *testing.T) {
	var lines [][]byte
	for i := range 500 {
		l := order(t0+int64(i)*300, fmt.Sprint("r", i%7), fmt.Sprint("k", i%5), i)
		lines = append(lines, append(l[:len(l)-1], fmt.Sprintf(`, "channel": "c%d"}`, i%3)...))
		if i%50 == 0 {
			lines = append(lines, []byte(`{"ts": "later", "region": 3}`), []byte(`not json`))
		}
	}
	answers := func(shared bool) []string {
		e := newEnv(t, threeApps(t)...)
		s := testShard(t, e.node("n1"), 0)
		if !shared {
			for i := range s.parse.group {
				s.parse.group[i] = -1
			}
		} else if len(s.parse.shared) != 1 {
			t.Fatalf("%d shared parsers, want one for the three JSON apps", len(s.parse.shared))
		}
		s.apply(stock(lines...), ptail.Position{Offset: 1})
		var out []string
		for _, app := range []string{"orders", "kinds", "channels"} {
			out = append(out, memRows(t, s, Query{App: app})...)
		}
		for _, tb := range s.tables {
			out = append(out, fmt.Sprint(tb.app.Name(), " rejected ", tb.drops))
		}
		return out
	}
	equalRows(t, "shared parse", answers(true), answers(false))
}

// TestApplyAllocatesNothingForAnExistingCell: a line of a cell that
// exists costs no allocation, by the apps' shared parse or each app's
// own: the key is looked up by the extractor's bytes, and copied into a
// string only for a cell the table adds (the answers of
// TestSharedParseAnswersAsOwnParse and the apps' fuzz targets say the
// keys kept are the lines').
func TestApplyAllocatesNothingForAnExistingCell(t *testing.T) {
	line := order(t0, "r1", "k1", 5)
	line = append(line[:len(line)-1], `, "channel": "c1"}`...)
	for _, shared := range []bool{true, false} {
		e := newEnv(t, threeApps(t)...)
		s := testShard(t, e.node("n1"), 0)
		if !shared {
			for i := range s.parse.group {
				s.parse.group[i] = -1
			}
		}
		bt := newBlockTime(0, t0)
		s.applyLine(line, bt) // the cells
		cells := 0
		for _, tb := range s.tables {
			cells += int(tb.ncells)
		}
		if n := testing.AllocsPerRun(100, func() { s.applyLine(line, bt) }); n != 0 {
			t.Fatalf("shared parse %v: %v allocations a line of existing cells, want 0", shared, n)
		}
		after := 0
		for _, tb := range s.tables {
			after += int(tb.ncells)
		}
		if cells != 3 || after != cells {
			t.Fatalf("shared parse %v: %d cells, then %d: want one cell an app", shared, cells, after)
		}
	}
}

// BenchmarkSharedParse: three JSON apps of one category, each line parsed
// once for all of them or once per app.
//
//	go test -run '^$' -bench BenchmarkSharedParse ./puma
func BenchmarkSharedParse(b *testing.B) {
	for _, shared := range []bool{false, true} {
		b.Run(fmt.Sprintf("shared=%v", shared), func(b *testing.B) {
			e := newEnv(b, threeApps(b)...)
			s := testShard(b, e.node("n1"), 0)
			if !shared {
				for i := range s.parse.group {
					s.parse.group[i] = -1
				}
			}
			var lines [][]byte
			for i := range 1000 {
				lines = append(lines, order(t0+int64(i)*10, fmt.Sprint("r", i%10), fmt.Sprint("k", i/100), i))
			}
			blk := stock(lines...)
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := processCPU(b)
			for i := 0; i < b.N; i++ {
				s.apply(blk, ptail.Position{Offset: int64(i)})
			}
			b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N*len(lines)), "cpu-ns/entry")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(lines)), "ns/entry")
		})
	}
}

// processCPU is the process's CPU time so far (user + system, every
// goroutine): on a shared machine, CPU per op says more than wall time.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
