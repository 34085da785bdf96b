package scribe

import (
	"context"
	"time"
)

// clock is the agent's time source; tests substitute it.
type clock interface {
	Now() time.Time
	// After is time.After.
	After(d time.Duration) <-chan time.Time
}

// realClock reads now (the agent's Deps.Now) and waits on real timers.
type realClock struct{ now func() time.Time }

func (c realClock) Now() time.Time                       { return c.now() }
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
