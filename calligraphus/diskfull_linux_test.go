package calligraphus

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/freeway-dev/freeway/internal/dfs/localfs"
	"github.com/freeway-dev/freeway/internal/testkit"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// mountTmpfs mounts a tmpfs of size bytes until the test ends
// (testkit.MountTmpfs: root only, else the test is skipped).
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	return testkit.MountTmpfs(t, fmt.Sprintf("size=%d", size))
}

// The dfs is a local directory on a small tmpfs that fills up. Stock
// clients retry every TRY_LATER until OK. Every call is answered (OK or
// TRY_LATER), the writer takes calls again once the disk has room (the
// tmpfs grown), without a restart, and the bucket holds each entry once:
// none of a refused batch is published beside its retry.
func TestDiskFullAnswersTryLaterAndPublishesEachEntryOnce(t *testing.T) {
	mnt := mountTmpfs(t, 256<<10)
	fsys, err := localfs.New(mnt)
	if err != nil {
		t.Fatal(err)
	}
	_, co := inprocCoord(t)
	cfg := testConfig()
	cfg.SegmentMaxBytes = 16 << 10
	cfg.Compression = "none" // the padded lines fill the disk as sent
	s := startServer(t, cfg, fsys, co, nil)
	const clients, calls, per = 4, 40, 20
	pad := strings.Repeat("p", 200)
	var (
		tryLater atomic.Int64
		grow     sync.Once
		wg       sync.WaitGroup
	)
	for c := range clients {
		cl := s.dial(t)
		wg.Go(func() {
			for k := range calls {
				var ms []string
				for j := range per {
					ms = append(ms, fmt.Sprintf("c%d-%03d-%02d-%s", c, k, j, pad))
				}
				for {
					rc, err := cl.Log(context.Background(), entries("cat", ms...))
					if err != nil {
						t.Errorf("client %d call %d: %v", c, k, err)
						return
					}
					if rc == scribethrift.ResultCode_OK {
						break
					}
					if tryLater.Add(1) == 100 {
						// Room again: the disk grows, as when an
						// operator frees space.
						grow.Do(func() {
							if err := syscall.Mount("tmpfs", mnt, "tmpfs", syscall.MS_REMOUNT, "size=16m"); err != nil {
								t.Errorf("grow the tmpfs: %v", err)
							}
						})
					}
				}
			}
		})
	}
	wg.Wait()
	if tryLater.Load() < 100 {
		t.Fatalf("%d calls answered TRY_LATER: the disk never filled up", tryLater.Load())
	}
	if n := counter(t, s.reg, "freeway_calligraphus_try_later_total", "reason", "write_error"); n == 0 {
		t.Error("no TRY_LATER counted as write_error")
	}
	s.stop()
	seen := map[string]int{}
	var twice []string
	for _, e := range scan(t, fsys, "cat/0") {
		if seen[e.Msg]++; seen[e.Msg] == 2 {
			twice = append(twice, e.Msg[:min(len(e.Msg), 12)])
		}
	}
	if len(twice) > 0 {
		t.Errorf("%d entries published twice: %q", len(twice), twice)
	}
	if len(seen) != clients*calls*per {
		t.Errorf("%d entries published, want %d", len(seen), clients*calls*per)
	}
}
