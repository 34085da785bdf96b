package layout

import (
	"syscall"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
)

// BenchmarkPublishedCaughtUp is a reader's listing once it has caught up
// (nothing after it) in a bucket of 2,000 segments: about three minutes
// of a busy bucket on a local disk (100 ms segments), kept by retention.
// It reports the process's CPU time per listing (cpu-ns/op).
func BenchmarkPublishedCaughtUp(b *testing.B) {
	fsys, err := localfs.New(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	dir := BucketDir("bench", 0)
	var last string
	for i := range 2000 {
		last = SegmentName(1, uint64(i+1))
		if err := dfs.WriteFile(fsys, dir+"/"+last, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	start := cpuTime(b)
	for b.Loop() {
		if _, err := Published(fsys, dir, last); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
