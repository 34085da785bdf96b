package coord_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// TestCampaign: of two processes campaigning for one lease, one leads and
// the other stands by (saying so once); when the leader stops, the lease
// is released and the other leads; a closed coordinator ends the campaign
// with ErrClosed.
func TestCampaign(t *testing.T) {
	hub := inproc.NewHub()
	type campaigner struct {
		cancel  context.CancelFunc
		leading atomic.Bool
		led     atomic.Int32
		log     testkit.LogBuffer
		done    chan error
	}
	start := func(s *inproc.Session, owner string) *campaigner {
		c := &campaigner{done: make(chan error, 1)}
		ctx, cancel := context.WithCancel(context.Background())
		c.cancel = cancel
		go func() {
			c.done <- coord.Campaign(ctx, s, "lead", owner, 5*time.Millisecond, c.log.Logger(), nil, func(ctx context.Context, l coord.Lease) {
				c.led.Add(1)
				c.leading.Store(true)
				defer c.leading.Store(false)
				select {
				case <-ctx.Done():
				case <-l.Lost():
				}
			})
		}()
		return c
	}
	s1, s2 := hub.Session(), hub.Session()
	a := start(s1, "a")
	testkit.WaitFor(t, "a to lead", a.leading.Load)
	b := start(s2, "b")
	testkit.WaitFor(t, "b to stand by", func() bool { return strings.Contains(b.log.String(), "standing by") })
	time.Sleep(50 * time.Millisecond) // b retries several times meanwhile
	if b.led.Load() != 0 {
		t.Fatal("b led while a held the lease")
	}
	if n := len(b.log.Lines("standing by")); n != 1 {
		t.Errorf("b said it stands by %d times, want once", n)
	}
	if !strings.Contains(b.log.String(), "holder=a") {
		t.Errorf("b's log does not name the holder: %s", b.log.String())
	}

	a.cancel()
	if err := <-a.done; err != nil {
		t.Fatalf("a's campaign ended with %v, want nil", err)
	}
	testkit.WaitFor(t, "b to lead once a stopped", b.leading.Load)

	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-b.done; !errors.Is(err, coord.ErrClosed) {
		t.Fatalf("b's campaign on a closed coordinator ended with %v, want ErrClosed", err)
	}
	b.cancel()
}

// TestCampaignLeadEndsWithTheLease: lead runs under a context that ends
// the moment the lease is lost (a session expiry), so work that only
// watches its context stops acting as owner then; the campaign then
// takes the lease again and leads anew.
func TestCampaignLeadEndsWithTheLease(t *testing.T) {
	hub := inproc.NewHub()
	s := hub.Session()
	t.Cleanup(func() { s.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	var led atomic.Int32
	var log testkit.LogBuffer
	ended := make(chan struct{}, 2)
	done := make(chan error, 1)
	go func() {
		done <- coord.Campaign(ctx, s, "lead", "a", 5*time.Millisecond, log.Logger(), nil, func(ctx context.Context, _ coord.Lease) {
			led.Add(1)
			<-ctx.Done() // the context alone, not Lost
			ended <- struct{}{}
		})
	}()
	testkit.WaitFor(t, "a to lead", func() bool { return led.Load() == 1 })
	s.Expire()
	select {
	case <-ended:
	case <-time.After(testkit.Deadline):
		t.Fatal("lead's context did not end when its lease was lost")
	}
	testkit.WaitFor(t, "a to lead again", func() bool { return led.Load() == 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("campaign ended with %v", err)
	}
}
