package calligraphus

import (
	"context"
	"errors"
	"path"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/ratelog"
	"github.com/freeway-dev/freeway/internal/testkit"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// tempSeq is the sequence number of the unpublished segment file name,
// or 0 if it is none.
func tempSeq(name string) uint64 {
	seg, ok := layout.ParseTempSegment(path.Base(name))
	if !ok {
		return 0
	}
	_, seq, ok := layout.ParseSegmentName(seg)
	if !ok {
		return 0
	}
	return seq
}

// dropWaiting reports whether a goroutine is waiting in drop for the
// segments created ahead that are being discarded.
func dropWaiting() bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, "(*bucketWriter).drop") && strings.Contains(g, "(*WaitGroup).Wait") {
			return true
		}
	}
	return false
}

// TestExpiredAheadClosedOffRunLoop: a segment created ahead and left
// unused is closed and removed by a goroutine of its own, so that a batch
// that arrives while that close is under way (on HDFS it retries for
// seconds) is written and answered meanwhile; and the writer stops (and
// releases the bucket's lease) only once that segment is removed. The
// old writer closed it on the run loop: the batch waited for the close.
func TestExpiredAheadClosedOffRunLoop(t *testing.T) {
	t.Run("hdfslike", func(t *testing.T) {
		_, co := inprocCoord(t)
		testExpiredAheadClosedOffRunLoop(t, dfstest.NewFaulty(newLocal(t)).LikeHDFS(), co)
	})
	t.Run("engines", func(t *testing.T) {
		fsys, newCoord := engineBackends(t)
		testExpiredAheadClosedOffRunLoop(t, dfstest.NewFaulty(fsys), newCoord())
	})
}

func testExpiredAheadClosedOffRunLoop(t *testing.T, fsys *dfstest.Faulty, co coord.Coord) {
	s := startServer(t, testConfig(), fsys, co, nil)
	cl := s.dial(t)

	// Segment 1 holds a; segment 2 is created ahead when 1 is handed to
	// be closed, and expires unused: its close is held.
	var once sync.Once
	blocked, release := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	fsys.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpClose && tempSeq(c.Name) == 2 {
			once.Do(func() { close(blocked) })
			<-release
		}
		return nil
	})
	mustLog(t, cl, entries("cat", "a"))
	testkit.WaitFor(t, "the unused segment created ahead to expire and be closed", func() bool {
		select {
		case <-blocked:
			return true
		default:
			return false
		}
	})
	aheadName := ""
	for _, name := range hiddenFiles(t, fsys, "cat/0") {
		if tempSeq(name) == 2 {
			aheadName = name
		}
	}
	if aheadName == "" {
		t.Fatal("the segment created ahead is gone while its close is held")
	}

	b := logAsync(cl, entries("cat", "b"))
	var got result
	testkit.WaitFor(t, "batch b to be answered while the expired segment's close is held", func() bool {
		select {
		case got = <-b:
			return true
		default:
			return false
		}
	})
	if got.err != nil || got.rc != scribethrift.ResultCode_OK {
		t.Fatalf("batch b: %v %v, want OK", got.rc, got.err)
	}

	// Stopping waits for the discarded segment: the lease is not released
	// while it is still there.
	stopped := make(chan struct{})
	go func() { s.stop(); close(stopped) }()
	lease := layout.WriterLease("cat", 0)
	testkit.WaitFor(t, "the writer to wait for the discarded segment or release the lease", func() bool {
		if holder, _, err := co.Holder(context.Background(), lease); err == nil && holder == "" {
			return true
		}
		return dropWaiting()
	})
	if holder, _, _ := co.Holder(context.Background(), lease); holder == "" {
		t.Errorf("lease released while %s, created ahead and discarded, was still being closed", aheadName)
	}
	close(release)
	<-stopped
	if left := hiddenFiles(t, fsys, "cat/0"); len(left) > 0 {
		t.Errorf("unpublished files left after stop: %q", left)
	}
	if got := msgs(scan(t, fsys, "cat/0")); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("bucket holds %q", got)
	}
}

// TestAheadFailuresCountedAndRateLimited: when every segment created
// ahead fails (each batch then creates its own), the failures are counted
// in freeway_calligraphus_ahead_failures_total and the warning is
// rate-limited, not a line per batch.
func TestAheadFailuresCountedAndRateLimited(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t)).LikeHDFS()
	_, co := inprocCoord(t)
	var logs testkit.LogBuffer
	s := startServerWith(t, testConfig(), fsys, co, nil, func(c *Calligraphus) {
		c.log = logs.Logger()
		c.rl = ratelog.New(c.log, time.Minute, 10) // as New makes it
	})
	// The batches' segments have odd numbers, those created ahead even.
	var mu sync.Mutex
	failed := 0
	fsys.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpCreate && tempSeq(c.Name)%2 == 0 && tempSeq(c.Name) > 0 {
			mu.Lock()
			failed++
			mu.Unlock()
			return errors.New("injected: cannot create")
		}
		return nil
	})
	cl := s.dial(t)
	const batches = 25
	var want []string
	for i := range batches {
		msg := string(rune('a' + i))
		want = append(want, msg)
		mustLog(t, cl, entries("cat", msg))
	}
	s.stop()
	mu.Lock()
	n := failed
	mu.Unlock()
	if n < batches {
		t.Fatalf("%d creates ahead failed, want at least %d", n, batches)
	}
	if got := counter(t, s.reg, "freeway_calligraphus_ahead_failures_total"); int(got) != n {
		t.Errorf("freeway_calligraphus_ahead_failures_total = %v, want %d", got, n)
	}
	lines := logs.Lines("cannot create segment ahead")
	if len(lines) == 0 || len(lines) >= n {
		t.Errorf("%d warnings for %d failed creates ahead, want some, rate-limited", len(lines), n)
	}
	if got := msgs(scan(t, fsys, "cat/0")); !slices.Equal(got, want) {
		t.Errorf("bucket holds %q, want %q", got, want)
	}
}
