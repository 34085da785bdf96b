package ptail

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
)

// slowClock is a reader's clock that runs with the real one, moved on by
// the bucket's listings (as if each took listing) and by opens of
// segments (reading), so that a test sees a reader in a bucket of
// millions of names without making one.
type slowClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *slowClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *slowClock) advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

// slowBucket makes every listing of the bucket take listing and every
// open of a segment take reading on the reader's clock.
func slowBucket(fsys *dfstest.Faulty, r *Reader, listing, reading time.Duration) *slowClock {
	c := &slowClock{}
	r.now = c.now
	fsys.SetHook(func(call dfstest.Call) error {
		switch {
		case call.Op == dfstest.OpReadDir && call.Name == dir:
			c.advance(listing)
		case call.Op == dfstest.OpOpen:
			c.advance(reading)
		}
		return nil
	})
	return c
}

// TestSlowListingsAreFewInABacklog: a reader working through a backlog in
// a bucket whose listing takes a second (a local disk holding days of
// 100 ms segments) lists it at most once per layout.ListBudget seconds of its
// time, not once a poll, and reads every segment in order, those
// published after its listing by their names. Before, it listed every
// 200 ms poll: a second's listing for every two segments read.
func TestSlowListingsAreFewInABacklog(t *testing.T) {
	fsys := newFS(t)
	r := NewReader(fsys, dir, Position{}, 200*time.Millisecond, logger(t))
	defer func() { _ = r.Close() }()
	clock := slowBucket(fsys, r, time.Second, 100*time.Millisecond)
	start := clock.now()
	for s := uint64(1); s <= 60; s++ {
		publish(t, fsys, 1, s, []string{fmt.Sprint(s)})
	}
	got := msgsOf(readN(t, r, 30))
	for s := uint64(61); s <= 90; s++ {
		publish(t, fsys, 1, s, []string{fmt.Sprint(s)})
	}
	got = append(got, msgsOf(readN(t, r, 60))...)
	for i, m := range got {
		if m != fmt.Sprint(i+1) {
			t.Fatalf("block %d is %q, want %d", i, m, i+1)
		}
	}
	elapsed := clock.now().Sub(start)
	limit := 1 + int(elapsed/(layout.ListBudget*time.Second))
	if n := bucketListings(fsys); n > limit {
		t.Errorf("%d listings of a bucket whose listing takes 1 s, in %v of the reader's time; want at most %d (one per %d s)", n, elapsed.Round(time.Second), limit, layout.ListBudget)
	}
}

// TestPutOffListingIsDoneOnceAllowed: a caught-up reader without a
// notifier, whose bucket was taken twice (epoch 2 published a segment,
// then epoch 3 took over and has published nothing yet: only a listing
// finds epoch 2's segment), puts the listing off while layout.ListBudget
// forbids it, then lists as soon as it may: Next does not wait its
// (hour-long) poll.
func TestPutOffListingIsDoneOnceAllowed(t *testing.T) {
	fsys := newFS(t)
	r := NewReader(fsys, dir, Position{}, time.Hour, logger(t))
	defer func() { _ = r.Close() }()
	clock := slowBucket(fsys, r, time.Second, 0)
	publish(t, fsys, 1, 1, []string{"e1"})
	if got := msgsOf(readN(t, r, 1)); got[0] != "e1" {
		t.Fatalf("read %q, want e1", got)
	}
	takeOver(t, fsys, 2)
	publish(t, fsys, 2, 1, []string{"e2"})
	takeOver(t, fsys, 3)
	listed := bucketListings(fsys)
	var b segment.Block
	if _, ok, err := r.TryNext(&b); ok || err != nil {
		t.Fatalf("TryNext before the listing is allowed: ok %v, err %v; want nothing yet", ok, err)
	}
	if n := bucketListings(fsys) - listed; n != 0 || !r.deferred {
		t.Fatalf("%d listings, deferred %v, within the budget; want 0, put off", n, r.deferred)
	}
	// Allowed in a little while: Next waits that long, not an hour.
	clock.advance(r.listed.Add(r.listGap()).Sub(clock.now()) - 300*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := r.Next(ctx, &b); err != nil {
		t.Fatalf("next: %v", err)
	}
	if got := string(b.Messages[0]); got != "e2" {
		t.Fatalf("read %q, want e2", got)
	}
}

// TestHandoffIsReadWithinTheBudget: a caught-up reader whose bucket a new
// writer took (epoch 2) reads the new writer's first segment at its next
// look, by one listing the budget does not put off: a handoff (every
// writer restart) would otherwise leave the bucket unread for up to
// layout.ListBudget listings' time (a minute at 6 M names). The listing
// is made once per new owner: after it, the budget holds again.
func TestHandoffIsReadWithinTheBudget(t *testing.T) {
	fsys := newFS(t)
	r := NewReader(fsys, dir, Position{}, time.Hour, logger(t))
	defer func() { _ = r.Close() }()
	slowBucket(fsys, r, time.Second, 0)
	publish(t, fsys, 1, 1, []string{"e1"})
	if got := msgsOf(readN(t, r, 1)); got[0] != "e1" {
		t.Fatalf("read %q, want e1", got)
	}
	takeOver(t, fsys, 2)
	var b segment.Block
	listed := bucketListings(fsys)
	if _, ok, err := r.TryNext(&b); ok || err != nil {
		t.Fatalf("TryNext before the new writer published: ok %v, err %v; want nothing", ok, err)
	}
	if n := bucketListings(fsys) - listed; n != 0 || !r.deferred {
		t.Fatalf("%d listings, deferred %v, before the new writer published; want 0, put off", n, r.deferred)
	}
	publish(t, fsys, 2, 1, []string{"e2"})
	if _, ok, err := r.TryNext(&b); !ok || err != nil {
		t.Fatalf("TryNext after the new writer published: ok %v, err %v; want its segment within the budget", ok, err)
	}
	if got := string(b.Messages[0]); got != "e2" {
		t.Fatalf("read %q, want e2", got)
	}
	if n := bucketListings(fsys) - listed; n != 1 {
		t.Fatalf("%d listings for the handoff, want 1", n)
	}
	// The same owner again (the reader read what it had): no listing for
	// it within the budget.
	if handoff, err := r.newOwnerPublished(); handoff || err != nil {
		t.Fatalf("newOwnerPublished for the owner already listed for: %v, %v; want false", handoff, err)
	}
	publish(t, fsys, 2, 4, []string{"gap"}) // two names missing: the listing waits for the budget
	if _, ok, err := r.TryNext(&b); ok || err != nil {
		t.Fatalf("TryNext at a gap within the budget: ok %v, err %v; want nothing yet", ok, err)
	}
	if n := bucketListings(fsys) - listed; n != 1 {
		t.Fatalf("%d listings, want still 1", n)
	}
}
