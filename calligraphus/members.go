package calligraphus

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cespare/xxhash/v2"

	"github.com/freeway-dev/freeway/internal/backoff"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/ratelog"
)

// view is one state of the group of live writers (layout.WriterMembers)
// and the preferred writer of each bucket under it.
type view struct {
	ids  []string          // sorted
	addr map[string]string // member ID → advertised Scribe address
	self bool              // this writer has joined and is listed

	mu     sync.Mutex
	assign map[string][]int // category → index into ids, per bucket
}

// newView is the view of members by the writer self, which has joined
// the group if joined.
func newView(members []coord.Member, self string, joined bool) *view {
	v := &view{addr: map[string]string{}, assign: map[string][]int{}}
	for _, m := range members {
		v.ids = append(v.ids, m.ID)
		v.addr[m.ID] = string(m.Data)
		v.self = v.self || (joined && m.ID == self)
	}
	slices.Sort(v.ids)
	return v
}

// preferred is the ID of the writer that should hold bucket b of
// category (of n buckets), "" when no writer is known. Every writer with
// the same view computes the same: rendezvous hashing of (lease name,
// member ID), bounded so that no writer is preferred for more than
// ceil(n / writers) buckets of a category (plain rendezvous hashing
// leaves one of three writers with 6 of 12 buckets half of the time).
func (v *view) preferred(category string, b, n int) string {
	if len(v.ids) == 0 || b < 0 || b >= n {
		return ""
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	a, ok := v.assign[category]
	if !ok || len(a) != n {
		a = assign(v.ids, category, n)
		v.assign[category] = a
	}
	return v.ids[a[b]]
}

// assign gives each of n buckets of category a writer among ids (their
// indexes), at most ceil(n/len(ids)) each, each bucket to the writer of
// highest rendezvous score that still has room.
func assign(ids []string, category string, n int) []int {
	limit := (n + len(ids) - 1) / len(ids)
	load := make([]int, len(ids))
	out := make([]int, n)
	order := make([]int, len(ids))
	scores := make([]uint64, len(ids))
	for b := 0; b < n; b++ {
		lease := layout.WriterLease(category, b)
		for i, id := range ids {
			order[i] = i
			scores[i] = xxhash.Sum64String(lease + "\x00" + id)
		}
		slices.SortFunc(order, func(x, y int) int {
			switch {
			case scores[x] > scores[y]:
				return -1
			case scores[x] < scores[y]:
				return 1
			}
			return 0
		})
		for _, i := range order {
			if load[i] < limit {
				out[b] = i
				load[i]++
				break
			}
		}
	}
	return out
}

// currentView is the latest view of the live writers (empty before the
// first read of the group).
func (c *Calligraphus) currentView() *view {
	if v := c.members.Load(); v != nil {
		return v
	}
	return &view{addr: map[string]string{}}
}

// membership joins the group of live writers with this writer's
// advertised address and keeps the view of it current until ctx ends;
// it then leaves the group. Each change of the group (a writer joining,
// leaving or dying) asks for a rebalance.
//
// It reads the group before it has joined, and while it cannot: a writer
// restarted after a crash cannot join while its predecessor's registration
// lives on (up to a session timeout), and it must meanwhile forward
// entries to the holders it sees there rather than refuse them. Until it
// has joined it is no member (view.self), even though the group lists its
// id: that may be the dead predecessor, or a live process misconfigured
// with the same id, whose membership this one must not act on.
func (c *Calligraphus) membership(ctx context.Context) {
	joins := make(chan coord.Membership, 1)
	go func() { joins <- c.join(ctx) }()
	var m coord.Membership
	pending := joins // nil once the join has ended
	defer func() {
		if pending != nil {
			m = <-pending // ctx has ended: the join returns soon
		}
		if m == nil {
			return
		}
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if err := m.Leave(lctx); err != nil {
			c.log.Warn("cannot leave the group of writers", "err", err)
		}
	}()
	for {
		members, changed, err := c.deps.Coord.Members(ctx, layout.WriterMembers)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.log.Warn("cannot read the group of writers; retrying", "err", err)
			if !backoff.Sleep(ctx, time.Second) {
				return
			}
			continue
		}
		v := newView(members, c.cfg.ID, m != nil)
		c.members.Store(v)
		c.m.writers.Set(float64(len(v.ids)))
		c.askRebalance()
		select {
		case <-changed:
		case m = <-pending:
			pending = nil // joined (or ctx ended): read again, as a member
		case <-ctx.Done():
			return
		}
	}
}

// join joins the group of live writers, retrying until it succeeds or ctx
// ends (then it returns nil).
func (c *Calligraphus) join(ctx context.Context) coord.Membership {
	for {
		m, err := c.deps.Coord.Join(ctx, layout.WriterMembers, c.cfg.ID, []byte(c.advertised))
		if err == nil {
			return m
		}
		if ctx.Err() != nil {
			return nil
		}
		// Most often the id is still registered by this writer's previous
		// process, until its coord session ends; if it lasts, another live
		// process has the same id.
		c.log.Warn("cannot join the group of writers (is another live writer configured with this id?); retrying",
			"group", layout.WriterMembers, "id", c.cfg.ID, "err", err)
		if !backoff.Sleep(ctx, time.Second) {
			return nil
		}
	}
}

// rebalanceEvery is how often a writer looks for buckets it holds that
// another live writer is preferred for, besides at each change of the
// group.
const rebalanceEvery = 2 * time.Second

func (c *Calligraphus) askRebalance() {
	select {
	case c.rebalanceCh <- struct{}{}:
	default:
	}
}

// rebalance hands off, until ctx ends, the buckets this writer holds
// that another live writer is preferred for: the bucket writer publishes
// its open segment and releases the lease; the next entries for the
// bucket reach the preferred writer (directly or forwarded), which takes
// it.
//
// It also takes, every round until each is taken, the buckets that held
// an unpublished segment at start, or when a writer left the group
// (leftBuckets): a writer that died while this one lives leaves them as
// one that died before it started does.
func (c *Calligraphus) rebalance(ctx context.Context) {
	t := time.NewTicker(rebalanceEvery)
	defer t.Stop()
	left := c.leftBuckets(ctx)
	var members []string // the group at the last round; nil before the first
	for {
		if len(left) > 0 {
			left = c.takeLeft(ctx, left)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.rebalanceCh:
		}
		v := c.currentView()
		if departed(members, v.ids) {
			left = mergeLeft(left, c.leftBuckets(ctx))
		}
		if len(v.ids) > 0 {
			members = v.ids
		}
		c.mu.Lock()
		ws := make([]*bucketWriter, 0, len(c.writers))
		for _, w := range c.writers {
			ws = append(ws, w)
		}
		c.mu.Unlock()
		c.takePreferred(ctx, v)
		for _, w := range ws {
			if !w.owned.Load() {
				continue
			}
			// Only a member hands off: a writer missing from the group (its
			// session just expired and it has not joined again) would hand
			// off every bucket.
			if !v.self {
				continue
			}
			pref := v.preferred(w.id.category, w.id.bucket, c.deps.Router.Buckets(w.id.category))
			if pref != "" && pref != c.cfg.ID {
				select {
				case w.handoffReqs <- struct{}{}:
				default:
				}
			}
		}
	}
}

// destination is where a bucket's entries of a call go: here (addr "") or to
// the writer at addr.
type destination struct {
	addr   string
	holder string // for logs
}

// routeOf decides where the entries of a bucket that this process does
// not hold (as far as its bucket writer knows) go. The holder of the
// lease, if any, takes them; a bucket nobody holds goes to its preferred
// writer. A forwarded batch is never forwarded again: it is written here
// (taking the bucket if nobody holds it) or refused.
func (c *Calligraphus) routeOf(ctx context.Context, id bucketID, forwarded bool) (destination, error) {
	v := c.currentView()
	if !forwarded {
		if d, ok := c.cachedHolder(id, v); ok {
			return d, nil
		}
	}
	lease := layout.WriterLease(id.category, id.bucket)
	holder, _, err := c.deps.Coord.Holder(ctx, lease)
	if err != nil {
		return destination{}, fmt.Errorf("look up holder of %s: %w", lease, err)
	}
	switch {
	case holder == c.cfg.ID:
		return destination{}, nil // an ending bucket writer of ours; the next one takes over
	case holder != "":
		if forwarded {
			return destination{}, fmt.Errorf("%w: forwarded batch for a bucket held by %s", errNotOwner, holder)
		}
		addr, ok := v.addr[holder]
		if !ok {
			return destination{}, fmt.Errorf("%w: %s holds it and is not among the live writers", errNotOwner, holder)
		}
		c.holderMu.Lock()
		if len(c.holderCache) >= 4096 {
			clear(c.holderCache) // bounded: entries expire, but a map keeps its keys
		}
		c.holderCache[id] = cachedHolder{holder: holder, until: c.now().Add(holderCacheFor)}
		c.holderMu.Unlock()
		return destination{addr: addr, holder: holder}, nil
	case forwarded:
		return destination{}, nil
	}
	pref := v.preferred(id.category, id.bucket, c.deps.Router.Buckets(id.category))
	addr, ok := v.addr[pref]
	if pref == "" || pref == c.cfg.ID || !ok || !v.self {
		return destination{}, nil
	}
	return destination{addr: addr, holder: pref}, nil
}

// holderCacheFor is how long a writer forwards a bucket's entries to the
// holder it looked up without looking again: a holder that has changed
// meanwhile answers TRY_LATER (it never forwards a forwarded batch), and
// the failure drops the entry (forgetHolder).
const holderCacheFor = 500 * time.Millisecond

type cachedHolder struct {
	holder string
	until  time.Time
}

// cachedHolder returns where the last look-up of bucket id's holder sent
// its entries, while fresh and while that writer is live.
func (c *Calligraphus) cachedHolder(id bucketID, v *view) (destination, bool) {
	c.holderMu.Lock()
	h, ok := c.holderCache[id]
	c.holderMu.Unlock()
	if !ok || c.now().After(h.until) {
		return destination{}, false
	}
	addr, live := v.addr[h.holder]
	if !live {
		return destination{}, false
	}
	return destination{addr: addr, holder: h.holder}, true
}

// forgetHolders drops the cached holders of ids after a failed forward.
func (c *Calligraphus) forgetHolders(ids []bucketID) {
	c.holderMu.Lock()
	defer c.holderMu.Unlock()
	for _, id := range ids {
		delete(c.holderCache, id)
	}
}

// keeps reports whether this writer keeps bucket id while idle: a bucket
// of a routed category (one an app consumes) that it is the preferred
// live writer of.
func (c *Calligraphus) keeps(id bucketID) bool {
	v := c.currentView()
	if !v.self {
		return false
	}
	n, routed := c.deps.Router.Routed()[id.category]
	return routed && v.preferred(id.category, id.bucket, n) == c.cfg.ID
}

// takePreferred takes the buckets of routed categories (those an app
// consumes: all their buckets are known) that this writer is preferred
// for and nobody holds, without waiting for entries: so a dead writer's
// buckets have a writer again as soon as its session ends, and a bucket
// moves on a hand-off even while no entries come.
func (c *Calligraphus) takePreferred(ctx context.Context, v *view) {
	if !v.self {
		return
	}
	// Taking a bucket is a coordinator round trip and a few dfs ones:
	// several at once, bounded.
	sem := make(chan struct{}, takeParallel)
	var wg sync.WaitGroup
	defer wg.Wait()
	for cat, n := range c.deps.Router.Routed() {
		for b := 0; b < n; b++ {
			if ctx.Err() != nil {
				return
			}
			id := bucketID{cat, b}
			if v.preferred(cat, b, n) != c.cfg.ID || c.holds(id) {
				continue
			}
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				c.takeIfFree(ctx, id)
			}()
		}
	}
}

// takeParallel bounds the buckets takePreferred takes at once.
const takeParallel = 8

// takeIfFree takes bucket id if nobody holds it.
func (c *Calligraphus) takeIfFree(ctx context.Context, id bucketID) {
	holder, _, err := c.deps.Coord.Holder(ctx, layout.WriterLease(id.category, id.bucket))
	if err != nil || holder != "" {
		return // held elsewhere (to be handed off), or try at the next round
	}
	// A reservation of nothing keeps the writer from ending for idleness
	// while it takes the lease.
	w, err := c.reserve(id, 0)
	if err != nil {
		return
	}
	if err := w.own(ctx); err != nil {
		c.log.Debug("cannot take preferred bucket", "category", ratelog.Clip(id.category), "bucket", id.bucket, "err", err)
	}
	w.unreserve(0)
}
