package ptail

import (
	"context"
	"path"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// followed is a reader with a notifier and an hour's poll, read on a
// goroutine of its own block by block: nothing but a notice (or the
// reader's own looking) brings it a segment.
type followed struct {
	t     *testing.T
	fsys  *dfstest.Faulty
	n     *Notifier
	r     *Reader
	ctx   context.Context
	reads chan string
}

func follow(t *testing.T, fsys *dfstest.Faulty) *followed {
	n := NewNotifier()
	r := NewReader(fsys, dir, Position{}, time.Hour, logger(t)).SetNotifier(n)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); _ = r.Close() })
	return &followed{t: t, fsys: fsys, n: n, r: r, ctx: ctx, reads: make(chan string, 1)}
}

// next starts reading the next block; got returns it.
func (f *followed) next() {
	go func() {
		var b segment.Block
		if _, err := f.r.Next(f.ctx, &b); err != nil {
			f.reads <- "error: " + err.Error()
			return
		}
		f.reads <- string(b.Messages[0])
	}()
}

func (f *followed) got(want string) {
	f.t.Helper()
	var got string
	testkit.WaitFor(f.t, "the reader to read "+want, func() bool {
		select {
		case got = <-f.reads:
			return true
		default:
			return false
		}
	})
	if got != want {
		f.t.Fatalf("read %q, want %q", got, want)
	}
}

// waiting waits until the reader has looked for the segment its writer
// publishes after the one it is at, (epoch, seq+1), stats times.
func (f *followed) waiting(epoch int64, seq uint64, stats int) {
	f.t.Helper()
	name := path.Join(dir, layout.SegmentName(epoch, seq+1))
	testkit.WaitFor(f.t, "the reader to look for "+name, func() bool { return statsOf(f.fsys, name) >= stats })
}

// statsOf counts the Stats of name so far.
func statsOf(fsys *dfstest.Faulty, name string) int { return callsOf(fsys, dfstest.OpStat, name) }

// callsOf counts the calls op made on name so far.
func callsOf(fsys *dfstest.Faulty, op dfstest.Op, name string) int {
	n := 0
	for _, c := range fsys.Calls(op) {
		if c.Name == name {
			n++
		}
	}
	return n
}

// onFirstOpen runs fn at the first open of segment name in the bucket,
// before the open reaches the file system.
func onFirstOpen(fsys *dfstest.Faulty, name string, fn func()) {
	var done atomic.Bool
	fsys.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpOpen && c.Name == path.Join(dir, name) && done.CompareAndSwap(false, true) {
			fn()
		}
		return nil
	})
}

// bucketListings counts the listings of the bucket directory itself (not
// of its fence directory).
func bucketListings(fsys *dfstest.Faulty) int {
	n := 0
	for _, c := range fsys.Calls(dfstest.OpReadDir) {
		if c.Name == dir {
			n++
		}
	}
	return n
}

// TestCaughtUpReaderListsOnlyWhenNeeded: a caught-up reader with a
// notifier finds each segment its writer publishes next by its name, and
// lists the bucket neither at the end of a segment nor at the notice
// (before: twice per segment), within a poll.
func TestCaughtUpReaderListsOnlyWhenNeeded(t *testing.T) {
	fsys := newFS(t)
	f := follow(t, fsys)
	publish(t, fsys, 1, 1, []string{"s1"})
	f.next()
	f.got("s1")
	listed := bucketListings(fsys)
	for s := uint64(2); s <= 10; s++ {
		before := bucketListings(fsys)
		// This time's look at the name is one more than any before.
		next := path.Join(dir, layout.SegmentName(1, s))
		looked := statsOf(fsys, next)
		f.next()
		// Waiting: it looked for the next name (or listed the bucket,
		// as readers did before they looked for the next name).
		testkit.WaitFor(t, "the reader to look for "+next, func() bool {
			return statsOf(fsys, next) > looked || bucketListings(fsys) > before
		})
		publish(t, fsys, 1, s, []string{"s" + string(rune('0'+s%10))})
		f.n.Published(dir)
		f.got("s" + string(rune('0'+s%10)))
	}
	if got := bucketListings(fsys) - listed; got != 0 {
		t.Errorf("%d listings of the bucket for 9 segments published one at a time, want 0", got)
	}
	// Each name looked at twice: missed at the end of the segment before,
	// found at its notice. The name after a dropped one is looked at only
	// where a listing would be made otherwise, not at every miss.
	for s := uint64(2); s <= 10; s++ {
		if n := statsOf(fsys, path.Join(dir, layout.SegmentName(1, s))); n != 2 {
			t.Errorf("segment (1, %d) looked at %d times, want 2", s, n)
		}
	}
}

// TestNextByNameRefusesAFencedSegment: the segment a reader's writer
// publishes next, found by its name, is still passed over when a newer
// owner's seal leaves it out (a stalled writer published it after the
// newer owner took the bucket), as a listing passes it over, and the
// newer owner's segment is read.
func TestNextByNameRefusesAFencedSegment(t *testing.T) {
	fsys := newFS(t)
	f := follow(t, fsys)
	publish(t, fsys, 1, 1, []string{"old"})
	f.next()
	f.got("old")
	f.next()
	f.waiting(1, 1, 1)
	// A newer owner takes the bucket at epoch 2 and seals it: epoch 1
	// counts up to (1, 1).
	takeOver(t, fsys, 2)
	// The old writer, stalled, publishes its next segment after that.
	publish(t, fsys, 1, 2, []string{"stale"})
	f.n.Published(dir)
	f.waiting(1, 1, 2)
	publish(t, fsys, 2, 1, []string{"new"})
	f.n.Published(dir)
	f.got("new")
	if v := mustFence(t, fsys).Verdict(layout.SegmentName(1, 2)); v != layout.Fenced {
		t.Fatalf("the stale segment is %v, want fenced", v)
	}
}

// TestNextByNameSeesANewEpoch: a reader whose writer's next name never
// comes (the bucket was taken again at a newer epoch) reads the newer
// epoch's segment at its notice, without waiting for its poll.
func TestNextByNameSeesANewEpoch(t *testing.T) {
	fsys := newFS(t)
	f := follow(t, fsys)
	publish(t, fsys, 1, 1, []string{"e1"})
	f.next()
	f.got("e1")
	f.next()
	f.waiting(1, 1, 1)
	takeOver(t, fsys, 2)
	publish(t, fsys, 2, 1, []string{"e2"})
	f.n.Published(dir)
	f.got("e2")
	f.next()
	f.waiting(2, 1, 1)
	publish(t, fsys, 2, 2, []string{"e2 again"})
	f.n.Published(dir)
	f.got("e2 again")
}

func mustFence(t *testing.T, fsys *dfstest.Faulty) layout.Fence {
	t.Helper()
	fence, err := layout.ReadFence(fsys, dir)
	if err != nil {
		t.Fatal(err)
	}
	return fence
}

// takeOver is a newer owner taking the bucket at epoch: its intent, then
// its seal.
func takeOver(t *testing.T, fsys dfs.FS, epoch int64) {
	t.Helper()
	if err := layout.WriteIntent(fsys, dir, epoch); err != nil {
		t.Fatal(err)
	}
	if _, err := layout.WriteSeal(fsys, dir, epoch, "test"); err != nil {
		t.Fatal(err)
	}
}

// TestNextByNameSkipsADroppedName: a writer idle for a while drops the
// segment it created ahead, unused, so its next segment's name skips
// one; a caught-up reader finds that segment by its name too, without
// listing the bucket (a listing that takes seconds in a bucket of days
// of 100 ms segments, and waits for layout.ListBudget).
func TestNextByNameSkipsADroppedName(t *testing.T) {
	fsys := newFS(t)
	f := follow(t, fsys)
	publish(t, fsys, 1, 1, []string{"s1"})
	f.next()
	f.got("s1")
	listed := bucketListings(fsys)
	f.next()
	f.waiting(1, 1, 1)
	publish(t, fsys, 1, 3, []string{"s3"})
	f.n.Published(dir)
	f.got("s3")
	if n := bucketListings(fsys) - listed; n != 0 {
		t.Errorf("%d listings of the bucket to find (1, 3) after (1, 1), want 0", n)
	}
}

// TestNextByNameTakesTheNameBeforeASkip: seq+1 published between the
// reader's look for it and its look for seq+2 is read first, not passed
// over for seq+2.
func TestNextByNameTakesTheNameBeforeASkip(t *testing.T) {
	fsys := newFS(t)
	f := follow(t, fsys)
	publish(t, fsys, 1, 1, []string{"s1"})
	f.next()
	f.got("s1")
	f.next()
	f.waiting(1, 1, 1)
	skip := path.Join(dir, layout.SegmentName(1, 3))
	var once sync.Once
	fsys.SetHook(func(c dfstest.Call) error {
		if c.Op == dfstest.OpStat && c.Name == skip {
			// The writer publishes seq+1, then seq+2, between the
			// reader's two looks.
			once.Do(func() {
				publish(t, fsys, 1, 2, []string{"s2"})
				publish(t, fsys, 1, 3, []string{"s3"})
			})
		}
		return nil
	})
	f.n.Published(dir) // a notice with nothing new yet: the reader looks
	f.got("s2")
	f.next()
	f.got("s3")
}
