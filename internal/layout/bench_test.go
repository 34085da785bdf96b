package layout

import (
	"os"
	"path/filepath"
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

// BenchmarkBucketListing is one listing of a local-disk bucket of 100,000
// segment names (about three hours of a busy bucket at 100 ms segments;
// a week is ~6 M): by names, as Published and the takeover list, and
// whole (ReadDir: an lstat per entry), as the takeover listed before.
// It reports the process's CPU time per name.
//
//	go test -run '^$' -bench BenchmarkBucketListing -benchtime 3x ./internal/layout
func BenchmarkBucketListing(b *testing.B) {
	const n = 100_000
	root := b.TempDir()
	fsys, err := localfs.New(root)
	if err != nil {
		b.Fatal(err)
	}
	dir := BucketDir("bench", 0)
	// The files straight on the disk, unsynced: the listing reads names.
	if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
		b.Fatal(err)
	}
	var last string
	for i := range n {
		last = SegmentName(1, uint64(i+1))
		if err := os.WriteFile(filepath.Join(root, dir, last), nil, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	for _, c := range []struct {
		name string
		list func() error
	}{
		{"names", func() error { _, err := Published(fsys, dir, last); return err }},
		{"readdir", func() error { _, err := fsys.ReadDir(dir); return err }},
	} {
		b.Run(c.name, func(b *testing.B) {
			start := cpuTime(b)
			for b.Loop() {
				if err := c.list(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N)/n, "cpu-ns/name")
		})
	}
}
