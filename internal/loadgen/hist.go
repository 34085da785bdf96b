package loadgen

import (
	"math/bits"
	"time"
)

// hist is a histogram of durations with about 3% precision: a bucket per
// power of two of nanoseconds, split in 32. Fixed size, so a long run
// costs no memory; not safe for concurrent use (one per connection,
// merged at the end).
type hist struct {
	counts [64 * 32]uint64
	n      uint64
	max    time.Duration
}

const subBits = 5

func bucketOf(d time.Duration) int {
	v := uint64(max(d, 0))
	if v < 1<<subBits {
		return int(v)
	}
	exp := bits.Len64(v) - 1 - subBits
	return (exp+1)<<subBits | int(v>>exp)&(1<<subBits-1)
}

// lowerBound is the smallest duration of bucket b.
func lowerBound(b int) time.Duration {
	if b < 1<<subBits {
		return time.Duration(b)
	}
	exp := b>>subBits - 1
	return time.Duration((uint64(1<<subBits) | uint64(b&(1<<subBits-1))) << exp)
}

func (h *hist) add(d time.Duration) {
	h.counts[bucketOf(d)]++
	h.n++
	h.max = max(h.max, d)
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantile is the duration under which a fraction q of the samples
// fall (the middle of its bucket; the maximum for q = 1).
func (h *hist) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	if q >= 1 {
		return h.max
	}
	rank := uint64(q*float64(h.n-1)) + 1
	var seen uint64
	for b, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, hi := lowerBound(b), lowerBound(b+1)
			return min((lo+hi)/2, h.max)
		}
	}
	return h.max
}
