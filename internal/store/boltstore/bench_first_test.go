package boltstore_test

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/boltstore"
)

// BenchmarkCheckpointPutFirst: a shard's first checkpoint, 1 M new cells
// into an empty store in Puts of 64 Ki (issue 10's goal: 1 s; the bench's
// `-only cells` case), then (second) a new version of each of them, the
// next checkpoint of every cell. It reports each one's CPU time and the
// bytes it wrote (wchar of /proc/self/io: bbolt's pwrites), per op.
//
//	go test -run '^$' -bench BenchmarkCheckpointPutFirst -benchtime 2x ./internal/store/boltstore
func BenchmarkCheckpointPutFirst(b *testing.B) {
	const n = 1_000_000
	for _, second := range []bool{false, true} {
		name := "first"
		if second {
			name = "second"
		}
		b.Run(name, func(b *testing.B) {
			var cpu time.Duration
			var written int64
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				s, err := boltstore.Open(filepath.Join(b.TempDir(), "store.db"))
				if err != nil {
					b.Fatal(err)
				}
				cells := benchCells(n, 1)
				if second {
					putChunks(b, s, cells)
					cells = benchCells(n, 2)
				}
				c, w := timedPut(b, s, cells)
				cpu, written = cpu+c, written+w
				if err := s.Close(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
			b.ReportMetric(float64(written)/1e6/float64(b.N), "MB-written/op")
		})
	}
}

// wchar is the bytes this process has written (read /proc/self/io).
func wchar(b *testing.B) int64 {
	f, err := os.Open("/proc/self/io")
	if err != nil {
		b.Skip("no /proc/self/io")
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), []byte("wchar: ")); ok {
			w, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return w
		}
	}
	b.Fatal("no wchar in /proc/self/io")
	return 0
}

// BenchmarkCheckpointPutSparse: a later checkpoint of a store of 1 M
// cells (each holding one version) in which only some cells changed,
// spread evenly over the rows (every 100th: 1 %, every 10th: 10 %): a
// new version of each, in Puts of 64 Ki. Per op its CPU time and the
// bytes it wrote: a changed leaf is written whole, so these grow with
// the page size.
//
//	go test -run '^$' -bench BenchmarkCheckpointPutSparse -benchtime 3x ./internal/store/boltstore
func BenchmarkCheckpointPutSparse(b *testing.B) {
	const n = 1_000_000
	for _, every := range []int{100, 10} {
		b.Run(fmt.Sprintf("1in%d", every), func(b *testing.B) {
			s, err := boltstore.Open(filepath.Join(b.TempDir(), "store.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			putChunks(b, s, benchCells(n, 1))
			var cpu time.Duration
			var written int64
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				all := benchCells(n, int64(2+i))
				cells := make([]store.Cell, 0, n/every)
				for j := (i * 7) % every; j < n; j += every {
					cells = append(cells, all[j])
				}
				c, w := timedPut(b, s, cells)
				cpu, written = cpu+c, written+w
				b.StartTimer()
			}
			b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
			b.ReportMetric(float64(written)/1e6/float64(b.N), "MB-written/op")
		})
	}
}

// timedPut puts cells with the benchmark's timer running (it is stopped
// before and after) and returns the process's CPU time and the bytes it
// wrote meanwhile.
func timedPut(b *testing.B, s *boltstore.Store, cells []store.Cell) (time.Duration, int64) {
	c0, w0 := cpuTime(), wchar(b)
	b.StartTimer()
	putChunks(b, s, cells)
	b.StopTimer()
	return cpuTime() - c0, wchar(b) - w0
}
