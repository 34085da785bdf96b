// Package backoff computes the waits between retries: capped exponential
// backoff, with optional jitter. Every retry loop of Freeway takes its
// waits from here (the agent's shipper and tailers, a Puma shard's reads
// and restarts, accept errors, the HBase master's start, HDFS closes).
//
// It computes durations; the caller waits them, on its own clock, so
// that tests can drive retries without sleeping (Sleep waits one on the
// real clock). It keeps no state
// beyond one Backoff value, which is not safe for concurrent use.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Sleep waits d, or until ctx ends; false if ctx ended first.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Backoff yields Min, 2·Min, 4·Min, ... capped at Max, one value per
// Next, until Reset starts it over. With Jitter, each wait d is drawn
// from [d/2, d] instead, so that clients that failed together (agents
// that lost their upstream at once) do not retry in lockstep.
type Backoff struct {
	Min, Max time.Duration
	Jitter   bool
	// Rand returns a number in [0, 1) for the jitter; nil is
	// math/rand/v2's Float64. Tests set it.
	Rand func() float64

	cur time.Duration
}

// New returns a Backoff from lo to hi, without jitter.
func New(lo, hi time.Duration) *Backoff { return &Backoff{Min: lo, Max: hi} }

// WithJitter returns a Backoff from lo to hi, with jitter.
func WithJitter(lo, hi time.Duration) *Backoff {
	return &Backoff{Min: lo, Max: hi, Jitter: true}
}

// Next returns the next wait.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = min(b.Min, b.Max)
	} else {
		b.cur = min(2*b.cur, b.Max)
	}
	if !b.Jitter {
		return b.cur
	}
	r := b.Rand
	if r == nil {
		r = rand.Float64
	}
	return b.cur/2 + time.Duration(r()*float64(b.cur/2))
}

// Reset makes the next wait Min again, after a success.
func (b *Backoff) Reset() { b.cur = 0 }

// Delay is the wait after n failures in a row, without jitter: lo for
// n <= 1, then doubling up to hi. It is for callers that keep the
// failure count rather than a Backoff (a retry time in a status).
func Delay(lo, hi time.Duration, n int) time.Duration {
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}
