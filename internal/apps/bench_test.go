package apps

import (
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/loadgen"
)

// BenchmarkExtract: Puma's extraction for the end-to-end bench's app (a
// count and a sum of value per key per minute, unix_ms time) from its
// 176-byte lines: the field scan, the number's parse, the key.
//
//	go test -run '^$' -bench BenchmarkExtract ./internal/apps
//
// "where-text" is the bench's probe app (make bench adds it beside the
// count and sum): a filter comparing the key with a text, false on every
// line but the probes'.
func BenchmarkExtract(b *testing.B) {
	spec := loadgen.Lines{Format: loadgen.JSON, Size: 176, Keys: 10000, Seed: 1, Start: time.Unix(1764583200, 0), Step: time.Millisecond}
	lines := make([][]byte, 1000)
	for i := range lines {
		lines[i], _ = spec.Append(nil, int64(i), 0)
	}
	for _, c := range []struct {
		name string
		spec Spec
	}{
		{"count-sum", Spec{Name: "bench", Category: "bench", Format: "json", Time: &TimeSpec{Field: "ts", Layout: "unix_ms"},
			GroupBy:    []string{"key"},
			Aggregates: []AggregateSpec{{Name: "n", Fn: "count"}, {Name: "total", Fn: "sum", Field: "value"}}}},
		{"where-text", Spec{Name: "probe", Category: "bench", Format: "json", Time: &TimeSpec{Field: "ts", Layout: "unix_ms"},
			Where: `key == "probe"`, GroupBy: []string{"id"}, Aggregates: []AggregateSpec{{Name: "n", Fn: "count"}}}},
	} {
		b.Run(c.name, func(b *testing.B) {
			a, err := Compile(c.spec, "$")
			if err != nil {
				b.Fatal(err)
			}
			x := a.NewExtractor()
			b.ReportAllocs()
			b.SetBytes(int64(len(lines[0])))
			cpu0 := benchCPU(b)
			for i := 0; b.Loop(); i++ {
				if _, err := x.Extract(lines[i%len(lines)], 0); err != nil && !errors.Is(err, ErrFiltered) {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(benchCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// benchCPU is the process's CPU time so far (user + system): on a shared
// machine, CPU per op says more than wall time.
func benchCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
