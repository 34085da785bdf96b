package scribe

import (
	"context"
	"math/rand/v2"
	"time"
)

// clock is the agent's time source; tests substitute it.
type clock interface {
	Now() time.Time
	// After is time.After.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// sleep waits d on c, or until ctx ends; it reports whether ctx is still
// live.
func sleep(ctx context.Context, c clock, d time.Duration) bool {
	select {
	case <-c.After(d):
		return true
	case <-ctx.Done():
		return false
	}
}

// backoff is capped exponential backoff with jitter: the n-th wait is
// drawn from [d/2, d] where d = min(max, min·2ⁿ), so that agents that lost
// their upstream together do not retry in lockstep.
type backoff struct {
	min, max time.Duration
	cur      time.Duration
	// rand returns a number in [0, 1).
	rand func() float64
}

func newBackoff(min, max time.Duration) *backoff {
	return &backoff{min: min, max: max, rand: rand.Float64}
}

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	return b.cur/2 + time.Duration(b.rand()*float64(b.cur/2))
}

func (b *backoff) reset() { b.cur = 0 }
