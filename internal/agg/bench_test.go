package agg

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// BenchmarkAdd: one input into a state, per function, cycling over n
// random values drawn from n (1 k, 100 k, 1 M) distinct ones (numbers for
// percentile).
func BenchmarkAdd(b *testing.B) {
	for _, fn := range []string{"count_distinct", "topk", "percentile", "first", "last"} {
		for _, n := range []int{1_000, 100_000, 1_000_000} {
			b.Run(fmt.Sprintf("%s/%d", fn, n), func(b *testing.B) {
				k := kind(b, fn, Params{})
				r := rand.New(rand.NewPCG(1, 2))
				ins := make([]Input, n)
				for i := range ins {
					v := r.IntN(n)
					ins[i] = Input{Str: fmt.Sprint("/p/", v), Num: float64(v) + 1, IsNum: true, TimeMs: int64(i)}
				}
				s := k.Init()
				b.ReportAllocs()
				b.ResetTimer()
				for i := range b.N {
					s.Add(&ins[i%len(ins)])
				}
			})
		}
	}
}

// BenchmarkMergeMarshal: merging two full states, and encoding one.
func BenchmarkMergeMarshal(b *testing.B) {
	for _, fn := range []string{"count_distinct", "topk", "percentile", "first", "last"} {
		k := kind(b, fn, Params{})
		r := rand.New(rand.NewPCG(3, 4))
		full := func() State {
			s := k.Init()
			for i := range 100_000 {
				v := r.IntN(100_000)
				s.Add(&Input{Str: fmt.Sprint("/p/", v), Num: float64(v) + 1, IsNum: true, TimeMs: int64(i)})
			}
			return s
		}
		a, c := full(), full()
		b.Run("merge/"+fn, func(b *testing.B) {
			for range b.N {
				d := k.Init()
				d.Merge(a)
				d.Merge(c)
			}
		})
		b.Run("marshal/"+fn, func(b *testing.B) {
			var buf []byte
			for range b.N {
				buf = a.Marshal(buf[:0])
			}
			b.ReportMetric(float64(len(buf)), "bytes")
		})
	}
}
