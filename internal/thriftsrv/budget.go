package thriftsrv

import (
	"cmp"
	"container/list"
	"context"
	"slices"
	"sync"
	"sync/atomic"
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

// Charge is what a call of n frame bytes takes from the budget in all:
// the chunks its frame is read into, and as much again for what decoding
// it allocates (more is taken while decoding if a call of many tiny
// values needs it). A frame of one chunk takes it at once; a larger one
// takes it chunk by chunk as the frame arrives (see Server).
func Charge(n int64) int64 {
	c := int64(chunkFor(n))
	return 2 * ((n + c - 1) / c * c)
}

// peerShare: what the calls of one peer (remote address) hold ahead of
// their bytes' arrival is at most 1/peerShare of the budget; see Budget.
const peerShare = 4

// flatShare: frames read whole into one slice (frameReader.fill) take
// their Charge before their bytes arrive, so together they may hold at
// most 1/flatShare of the budget; beyond it a frame is read in chunks,
// charged as they arrive.
const flatShare = 8

// Budget bounds the bytes that the calls of every Thrift listener of a
// process hold at once (their frames and what decoding them allocates),
// and pools the buffers frames are read into. The wiring creates one per
// process and gives it to every listener. Waiters are served in order, so
// a large call is not starved by small ones.
//
// A call whose frame is read in chunks holds a claim: its Charge, taken
// chunk by chunk. A chunk is given only if every claim can still be met
// in some order, each call's finishing freeing what it held for the next
// (the banker's algorithm), so calls each partly read never wait on one
// another for good; a stalled call's unmet claim goes last in that order
// and holds nothing back. The chunks after a call's first go before new
// calls: a burst of new calls cannot starve a call half read, whose
// finishing may be what makes room for them. A call whose decoding needs
// more than its charge waits for it the same way, its bytes a claim
// meanwhile (grow); one needing more than the whole budget takes all of
// it and runs alone.
//
// What the calls of one peer (a remote address, on any of the process's
// ports) hold ahead of their bytes is bounded too: a frame read whole
// until it is in, a frame read in chunks its chunk being read (the
// chunks before it have arrived). A call of a peer whose calls hold
// 1/peerShare of the budget so waits to start (skipped over, holding up
// no one behind it) until some of their bytes arrive, unless the peer
// holds nothing so. A client that opens many connections and stalls
// each after a frame's first bytes then holds that share, not the whole
// budget, and other peers' calls go on; a peer whose calls are
// arriving, however slowly, holds a chunk ahead on each, and its other
// calls start. Only a call's start waits for its peer: once it holds
// part of the budget its chunks never wait on the peer's other calls,
// so the peer's calls cannot wait on one another.
type Budget struct {
	limit  int64
	chunks sync.Pool // *[]byte of chunkSize
	small  sync.Pool // *[]byte of smallChunk
	flats  sync.Pool // *[]byte: frames' arguments in one slice (frameReader.rest)
	flat   atomic.Int64

	mu         sync.Mutex
	used       int64
	waiters    list.List // *waiter: new calls, in order
	reading    list.List // *waiter: next chunks of calls being read, first
	claims     []*claim  // of calls being read in chunks
	claimsHeld int64     // what they hold
	order      []*claim  // the claims by need, if ordered (safeLocked)
	ordered    bool
	peers      map[string]*peer

	inflight prometheus.Gauge
	waits    prometheus.Counter
	timeouts prometheus.Counter
	alone    prometheus.Counter
}

// claim is the share of the budget of a call whose frame is read in
// chunks, taken as the chunks arrive.
type claim struct {
	need int64 // what it may still take
	held int64 // what it has taken
	p    *peer // whose call it is, or nil
	cur  int64 // its chunk being read, counted in p.ahead
}

// peer is what the calls of one remote address hold of a Budget ahead of
// their bytes. Guarded by the budget's mu.
type peer struct {
	key   string
	ahead int64 // its calls' frames read whole not yet in, and chunks being read
	refs  int   // its connections (Budget.peerOf, Budget.donePeer)
}

type waiter struct {
	n     int64
	c     *claim        // nil: a request not part of a claim
	p     *peer         // whose call starts, or nil
	ready chan struct{} // closed when granted
}

// NewBudget returns a budget of limit bytes, its metrics registered with
// reg (nil: not exported).
func NewBudget(limit int64, reg prometheus.Registerer) *Budget {
	b := &Budget{
		limit: max(limit, 1),
		peers: map[string]*peer{},
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "freeway_thrift_inflight_bytes",
			Help: "Bytes held by Thrift calls being read, decoded and processed (charged to max_inflight_bytes)."}),
		waits: prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_thrift_inflight_waits_total",
			Help: "Calls that waited for room under max_inflight_bytes (a call read in chunks counts once per wait)."}),
		timeouts: prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_thrift_inflight_timeouts_total",
			Help: "Calls refused (TRY_LATER) after waiting for room under max_inflight_bytes."}),
		alone: prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_thrift_inflight_alone_total",
			Help: "Calls whose decoding needed more than max_inflight_bytes: each took all of it and ran alone."}),
	}
	b.chunks.New = func() any { c := make([]byte, chunkSize); return &c }
	b.small.New = func() any { c := make([]byte, smallChunk); return &c }
	if reg != nil {
		limitGauge := prometheus.NewGauge(prometheus.GaugeOpts{Name: "freeway_thrift_inflight_limit_bytes",
			Help: "max_inflight_bytes: the most Thrift calls may hold at once."})
		limitGauge.Set(float64(b.limit))
		reg.MustRegister(b.inflight, b.waits, b.timeouts, b.alone, limitGauge)
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
	if ok, _ := b.acquire(ctx, n, nil, nil, wait); ok {
		return n, true
	}
	return 0, false
}

// acquire takes n bytes, for claim c if not nil, waiting at most wait;
// it returns how long it waited (0 if it did not). With p, they are
// for a call of peer p, ahead of its bytes: without a claim, until
// doneReading says its frame is in; with one, until its next chunk, or
// close.
func (b *Budget) acquire(ctx context.Context, n int64, c *claim, p *peer, wait time.Duration) (bool, time.Duration) {
	b.mu.Lock()
	// A call being read goes before new calls: they cannot starve it of
	// its next chunk, and it may be what must finish to make room.
	q := &b.waiters
	if c != nil && c.held > 0 {
		q = &b.reading
	}
	if b.reading.Len() == 0 && (q == &b.reading || b.waiters.Len() == 0) &&
		b.used+n <= b.limit && b.peerAdmitsLocked(p, c, n) && (c == nil || b.safeLocked(c, n)) {
		b.grantLocked1(n, c, p)
		b.inflight.Set(float64(b.used))
		b.mu.Unlock()
		return true, 0
	}
	w := &waiter{n: n, c: c, p: p, ready: make(chan struct{})}
	elem := q.PushBack(w)
	// Earlier waiters may be claims that must wait for others to finish:
	// this one need not wait behind them.
	b.grantLocked()
	b.mu.Unlock()
	select {
	case <-w.ready:
		return true, 0
	default:
	}
	b.waits.Inc()

	start := time.Now()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-w.ready:
		return true, time.Since(start)
	case <-t.C:
	case <-ctx.Done():
	}
	b.mu.Lock()
	select {
	case <-w.ready:
		// Granted while timing out: keep it.
		b.mu.Unlock()
		return true, time.Since(start)
	default:
	}
	q.Remove(elem)
	// Those behind may fit now.
	b.grantLocked()
	b.mu.Unlock()
	b.timeouts.Inc()
	return false, time.Since(start)
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

// open starts claim c of total bytes (at most the whole budget) for a
// call of peer p (nil: of no peer).
func (b *Budget) open(c *claim, total int64, p *peer) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c.need, c.held, c.p = min(total, b.limit), 0, p
	b.claims = append(b.claims, c)
	b.ordered = false
}

// close ends claim c: what it took is then held as if taken by Acquire,
// and returned, for Release.
func (b *Budget) close(c *claim) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, o := range b.claims {
		if o == c {
			last := len(b.claims) - 1
			b.claims[i] = b.claims[last]
			b.claims[last] = nil
			b.claims = b.claims[:last]
			break
		}
	}
	b.claimsHeld -= c.held
	held := c.held
	if c.p != nil {
		c.p.ahead -= c.cur
	}
	// Not kept in order's array either.
	clear(b.order)
	b.order, b.ordered = b.order[:0], false
	c.need, c.held, c.p, c.cur = 0, 0, nil, 0
	// A claim gone may let others' chunks be given.
	b.grantLocked()
	return held
}

// take takes the next n bytes of claim c (at most what it still needs),
// waiting at most wait; it returns how long it waited.
func (b *Budget) take(ctx context.Context, c *claim, n int64, wait time.Duration) (bool, time.Duration) {
	n = min(n, c.need)
	if n <= 0 {
		return true, 0
	}
	return b.acquire(ctx, n, c, c.p, wait)
}

// grow takes n more bytes for a call whose frame is in and that holds
// held bytes (outside any claim), while it decodes, waiting at most wait:
// in turn with the chunks of calls being read, before new calls. It
// returns what it took: at most what the call lacks of the whole
// budget, which a call needing more takes, to run alone (so that a call
// of many tiny values within max_call_bytes is served, not refused for
// ever, and the budget bounds the rest of the process's calls still);
// nothing, and false, without room within wait, or if waiting could
// leave a call being read unable to finish (the call is then refused,
// as busy, and gives its bytes back).
func (b *Budget) grow(ctx context.Context, held, n int64, wait time.Duration) (int64, bool, time.Duration) {
	n = min(n, b.limit-held)
	if n <= 0 {
		return 0, true, 0
	}
	// While it waits, what it holds is not freed: it is a claim, so
	// that chunks are given only if calls being read can finish without
	// it, and it gets its bytes once they have.
	c := &claim{}
	b.mu.Lock()
	c.need, c.held = n, held
	b.claims = append(b.claims, c)
	b.claimsHeld += held
	b.ordered = false
	safe := b.safeLocked(c, 0)
	b.mu.Unlock()
	ok, waited := false, time.Duration(0)
	if safe {
		ok, waited = b.acquire(ctx, n, c, nil, wait)
	}
	b.close(c)
	if !ok {
		return 0, false, waited
	}
	return n, true, waited
}

// safeLocked reports whether, once claim c is given n more bytes, every
// claim can still be met: bytes held outside claims are all freed in the
// end (those calls take nothing more, but what TryAcquire finds free), so
// there must be an order of the claims in which each one's need fits in
// what the claims before it and everything else free. The claim needing
// least is always the best next one; one stalled half-way with much
// still to come goes last.
func (b *Budget) safeLocked(c *claim, n int64) bool {
	free := b.limit - b.claimsHeld - n
	need := c.need - n
	most := need
	for _, o := range b.claims {
		if o != c {
			most = max(most, o.need)
		}
	}
	if most <= free {
		// Any order does.
		return true
	}
	if !b.ordered {
		// Sorted once for every waiter a grantLocked pass looks at (each
		// is refused here until some claim ends).
		b.order = append(b.order[:0], b.claims...)
		slices.SortFunc(b.order, func(x, y *claim) int { return cmp.Compare(x.need, y.need) })
		b.ordered = true
	}
	placed := false
	for _, o := range b.order {
		if o == c {
			continue
		}
		if !placed && need <= o.need {
			if need > free {
				return false
			}
			free += c.held + n
			placed = true
		}
		if o.need > free {
			return false
		}
		free += o.held
	}
	return placed || need <= free
}

// peerAdmitsLocked reports whether n bytes may be given to a call of
// peer p: the start of a call only if the peer's calls would then hold
// at most its share ahead of their bytes, or hold nothing so (a call
// larger than the share goes alone); a call's later chunks always.
func (b *Budget) peerAdmitsLocked(p *peer, c *claim, n int64) bool {
	return p == nil || c != nil && c.held > 0 || p.ahead == 0 || p.ahead+n <= b.limit/peerShare
}

func (b *Budget) grantLocked1(n int64, c *claim, p *peer) {
	b.used += n
	if p != nil {
		// A claim's chunk before this one has arrived: it was read
		// before this one was asked for.
		if c != nil {
			p.ahead -= c.cur
			c.cur = n
		}
		p.ahead += n
	}
	if c != nil {
		c.need -= n
		c.held += n
		b.claimsHeld += n
		b.ordered = false
	}
}

// grantLocked gives waiters what they asked: the chunks of calls being
// read first, then new calls in order, each up to the first that does
// not fit; a claim's chunk that would leave some claim unmet waits for
// others to finish (safeLocked) without holding up those behind it.
func (b *Budget) grantLocked() {
	if b.grantQueueLocked(&b.reading) {
		b.grantQueueLocked(&b.waiters)
	}
	b.inflight.Set(float64(b.used))
}

// grantQueueLocked grants q's waiters in order up to the first that does
// not fit, and reports whether all that could be were.
func (b *Budget) grantQueueLocked(q *list.List) bool {
	for e := q.Front(); e != nil; {
		w := e.Value.(*waiter)
		next := e.Next()
		// A call whose peer holds its share waits for the peer's other
		// calls, not holding up others' behind it.
		if b.peerAdmitsLocked(w.p, w.c, w.n) && (w.c == nil || b.safeLocked(w.c, w.n)) {
			if b.used+w.n > b.limit {
				return false
			}
			b.grantLocked1(w.n, w.c, w.p)
			q.Remove(e)
			close(w.ready)
		}
		e = next
	}
	return true
}

// peerOf returns the peer of remote address key (its host), for a
// connection's calls, until donePeer.
func (b *Budget) peerOf(key string) *peer {
	b.mu.Lock()
	defer b.mu.Unlock()
	p := b.peers[key]
	if p == nil {
		p = &peer{key: key}
		b.peers[key] = p
	}
	p.refs++
	return p
}

// donePeer says a connection of p is done.
func (b *Budget) donePeer(p *peer) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p.refs--; p.refs == 0 {
		delete(b.peers, p.key)
	}
}

// doneReading says n bytes taken (by acquire, without a claim) for a
// call of p are no longer ahead of its bytes: its frame is in, or the
// read is over.
func (b *Budget) doneReading(p *peer, n int64) {
	if p == nil || n <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	p.ahead -= n
	// The peer's calls waiting for its share may start now.
	b.grantLocked()
}

// peerAtShare reports whether p's calls hold so much ahead of their
// bytes that another call's first chunk would not start (for logs).
func (b *Budget) peerAtShare(p *peer) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return p != nil && p.ahead > 0 && p.ahead+2*chunkSize > b.limit/peerShare
}

// startFlat reserves a share of what frames read whole may hold for one
// of charge bytes, reporting false if none is left (see flatShare).
func (b *Budget) startFlat(charge int64) bool {
	if b.flat.Add(charge) > b.limit/flatShare {
		b.flat.Add(-charge)
		return false
	}
	return true
}

// endFlat returns what startFlat reserved.
func (b *Budget) endFlat(charge int64) { b.flat.Add(-charge) }

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
