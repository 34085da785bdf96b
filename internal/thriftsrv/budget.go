package thriftsrv

import (
	"container/list"
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/connlimit"
)

// DefaultBudget is the default of max_inflight_bytes.
const DefaultBudget = 256 << 20

// Frames are read into pooled chunks: large enough for few reads per
// call, small enough that a frame wastes at most part of one; frames up
// to smallChunk bytes (most Scribe calls) use one small chunk.
const (
	chunkSize  = 64 << 10
	smallChunk = 4 << 10
)

// chunkFor is the chunk size a frame of n bytes is read into.
func chunkFor(n int64) int {
	if n <= smallChunk {
		return smallChunk
	}
	return chunkSize
}

// Charge is what a call of n frame bytes takes from the budget before it
// is read: the chunks its frame is read into, and as much again for what
// decoding it allocates (more is taken while decoding if a call of many
// tiny values needs it).
func Charge(n int64) int64 {
	c := int64(chunkFor(n))
	return 2 * ((n + c - 1) / c * c)
}

// Budget bounds the bytes that the calls of every Thrift listener of a
// process hold at once (their frames and what decoding them allocates),
// and pools the buffers frames are read into. The wiring creates one per
// process and gives it to every listener. Waiters are served in order, so
// a large call is not starved by small ones.
type Budget struct {
	limit  int64
	chunks sync.Pool // *[]byte of chunkSize
	small  sync.Pool // *[]byte of smallChunk
	flats  sync.Pool // *[]byte: frames' arguments in one slice (frameReader.rest)

	mu      sync.Mutex
	used    int64
	waiters list.List // *waiter

	inflight prometheus.Gauge
	waits    prometheus.Counter
	timeouts prometheus.Counter
}

type waiter struct {
	n     int64
	ready chan struct{} // closed when granted
}

// NewBudget returns a budget of limit bytes, its metrics registered with
// reg (nil: not exported).
func NewBudget(limit int64, reg prometheus.Registerer) *Budget {
	b := &Budget{
		limit: max(limit, 1),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "freeway_thrift_inflight_bytes",
			Help: "Bytes held by Thrift calls being read, decoded and processed (charged to max_inflight_bytes)."}),
		waits: prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_thrift_inflight_waits_total",
			Help: "Calls that waited for room under max_inflight_bytes."}),
		timeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_thrift_inflight_timeouts_total",
			Help: "Calls refused (TRY_LATER) after waiting for room under max_inflight_bytes."}),
	}
	b.chunks.New = func() any { c := make([]byte, chunkSize); return &c }
	b.small.New = func() any { c := make([]byte, smallChunk); return &c }
	if reg != nil {
		limitGauge := prometheus.NewGauge(prometheus.GaugeOpts{Name: "freeway_thrift_inflight_limit_bytes",
			Help: "max_inflight_bytes: the most Thrift calls may hold at once."})
		limitGauge.Set(float64(b.limit))
		reg.MustRegister(b.inflight, b.waits, b.timeouts, limitGauge)
	}
	return b
}

// Limit is the budget's size.
func (b *Budget) Limit() int64 { return b.limit }

// Used is what calls hold now.
func (b *Budget) Used() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// Acquire takes n bytes, waiting at most wait (or until ctx ends) behind
// earlier waiters. A request over the whole budget takes all of it (the
// call then runs alone). It returns what was taken, for Release, and
// false if nothing was.
func (b *Budget) Acquire(ctx context.Context, n int64, wait time.Duration) (int64, bool) {
	n = min(n, b.limit)
	b.mu.Lock()
	if b.waiters.Len() == 0 && b.used+n <= b.limit {
		b.used += n
		b.inflight.Set(float64(b.used))
		b.mu.Unlock()
		return n, true
	}
	w := &waiter{n: n, ready: make(chan struct{})}
	elem := b.waiters.PushBack(w)
	b.mu.Unlock()
	b.waits.Inc()

	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-w.ready:
		return n, true
	case <-t.C:
	case <-ctx.Done():
	}
	b.mu.Lock()
	select {
	case <-w.ready:
		// Granted while timing out: keep it.
		b.mu.Unlock()
		return n, true
	default:
	}
	front := b.waiters.Front() == elem
	b.waiters.Remove(elem)
	if front {
		// Those behind may fit now.
		b.grantLocked()
	}
	b.mu.Unlock()
	b.timeouts.Inc()
	return 0, false
}

// TryAcquire takes n bytes if they are free now. It does not queue
// behind waiters: it serves calls already admitted that find, while
// decoding, that they need a little more, and that would otherwise be
// refused whenever anyone waits.
func (b *Budget) TryAcquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.limit {
		return false
	}
	b.used += n
	b.inflight.Set(float64(b.used))
	return true
}

// Release returns n bytes taken by Acquire or TryAcquire.
func (b *Budget) Release(n int64) {
	if n <= 0 {
		return
	}
	b.mu.Lock()
	b.used -= n
	if b.used < 0 {
		b.mu.Unlock()
		panic("thriftsrv: budget released more than was acquired")
	}
	b.grantLocked()
	b.mu.Unlock()
}

func (b *Budget) grantLocked() {
	for e := b.waiters.Front(); e != nil; e = b.waiters.Front() {
		w := e.Value.(*waiter)
		if b.used+w.n > b.limit {
			break
		}
		b.used += w.n
		b.waiters.Remove(e)
		close(w.ready)
	}
	b.inflight.Set(float64(b.used))
}

func (b *Budget) getChunk(size int) *[]byte {
	if size == smallChunk {
		return b.small.Get().(*[]byte)
	}
	return b.chunks.Get().(*[]byte)
}

func (b *Budget) putChunk(c *[]byte) {
	if len(*c) == smallChunk {
		b.small.Put(c)
		return
	}
	b.chunks.Put(c)
}

// newServerMetrics registers the server metrics with reg, shared by the
// process's listeners.
func newServerMetrics(reg prometheus.Registerer) (refused, closed *prometheus.CounterVec) {
	refused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_thrift_calls_refused_total",
		Help: "Calls read, discarded and refused (TRY_LATER for Scribe) without being processed, by listener and reason (too_large: over max_call_bytes; busy: no room under max_inflight_bytes)."},
		[]string{"listener", "reason"})
	closed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_thrift_connections_closed_total",
		Help: "Connections the server closed, by listener and reason (idle_timeout, read_timeout, protocol: not framed binary Thrift, or not TLS on a TLS port; tls_handshake: a failed TLS handshake; malformed: a bad call, panic)."},
		[]string{"listener", "reason"})
	if reg != nil {
		refused = connlimit.Register(reg, refused)
		closed = connlimit.Register(reg, closed)
	}
	return refused, closed
}
