package durable

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkSyncedCommit is one synced 64 KiB commit (a write, then a
// sync) of the agent's queue or a segment, by how the file's blocks are
// got and how it is synced: appended to a file that grows (a new file's
// blocks), or overwritten in place in a file written before (a reused
// file's), synced by fsync or SyncData (fdatasync). bench/PROFILE.md,
// "(datasync)" and "(qreuse)", has its figures on this machine; cpu-µs/op
// is the process's CPU time a commit (the kernel's share of the write and
// the sync included).
//
//	go test -run XXX -bench SyncedCommit -benchtime 2000x ./internal/durable
func BenchmarkSyncedCommit(b *testing.B) {
	rec := make([]byte, 64<<10)
	for i := range rec {
		rec[i] = byte(i * 7)
	}
	syncs := map[string]func(*os.File) error{"fsync": (*os.File).Sync, "fdatasync": SyncData}
	for _, place := range []string{"append", "overwrite"} {
		for _, name := range []string{"fdatasync", "fsync"} {
			b.Run(place+"/"+name, func(b *testing.B) {
				f, err := os.Create(filepath.Join(b.TempDir(), "data"))
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				if place == "overwrite" {
					for i := range b.N {
						if _, err := f.WriteAt(rec, int64(i)*int64(len(rec))); err != nil {
							b.Fatal(err)
						}
					}
					if err := f.Sync(); err != nil {
						b.Fatal(err)
					}
				}
				b.SetBytes(int64(len(rec)))
				b.ResetTimer()
				cpu0 := cpuTime(b)
				for i := range b.N {
					if _, err := f.WriteAt(rec, int64(i)*int64(len(rec))); err != nil {
						b.Fatal(err)
					}
					if err := syncs[name](f); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
			})
		}
	}
}
