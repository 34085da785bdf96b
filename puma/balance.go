package puma

import (
	"context"
	"hash/fnv"
	"slices"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/coord"
	names "github.com/freeway-dev/freeway/internal/layout"
)

// Balance. A node with an advertised query address (Deps.Advertise, from
// puma.listen) joins layout.PumaMembers with it, and spreads the shards
// over the live members: each shard has one preferred member, computed
// alike by every node from the same list of shards and members
// (assignShards: rendezvous hashing of the shard's lease name and the
// member id, bounded so that no member is preferred for more than its
// share rounded up). A node takes the shards it is preferred for; it
// stands by for the others, and takes one whose lease has been held by
// nobody for puma.takeover_grace (a dead node's shards are taken within
// the coordinator's session timeout plus the grace, even before its
// membership ends); it hands a shard it runs but is no longer preferred
// for over, but only to a preferred member that asks for it: a final
// checkpoint, then the lease is released, so that the new owner reads
// again only what came after.
//
// Asking. A node preferred for a shard that another node holds joins the
// shard's group layout.PumaWants (ephemeral: it ends with the node's
// coord session) and leaves it once it runs the shard, is no longer
// preferred for it, or the shard failed here (try.broke: it would likely
// fail again). The holder checks the group at each pass (at least every
// 2s), so a node slow to start is handed its shards as soon as it asks,
// and a member that never asks (hung, or its Puma loop stuck) is never
// handed one: the shard would have no reader for a grace period, then be
// taken over again, for ever. The rule is the same for both hand-offs,
// the shard taken over after the grace from a member that did not take
// it, and the shard that membership changes made another member's (a
// node joining): the reasoning is the same (a member that does not take
// the shard is no better a holder; before, a joined but hung member was
// handed its shards, left them unread for a grace period, and had them
// taken over), and the joining node asks at its first pass, so the
// hand-off waits at most one more pass of the holder. Only the preferred
// member's ask counts: a stale one from a member preferred before is
// ignored until that member withdraws it. A shard that failed here is not
// asked for again until it has run here to a clean stop: it stays with
// whoever took it over (or comes back when its lease is free). A node
// without an advertised address (`freeway all`) takes every shard it can,
// as before.

// balanceMetrics are the balance's and the query listener's counters.
type balanceMetrics struct {
	handoffs       prometheus.Counter
	partialServed  prometheus.Counter
	partialRefused prometheus.Counter
	partialLarge   prometheus.Counter
}

func newBalanceMetrics(reg prometheus.Registerer, p *Puma) *balanceMetrics {
	m := &balanceMetrics{
		handoffs:       prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_puma_handoffs_total", Help: "Shards this node handed over to the node preferred for them (checkpointed, then released)."}),
		partialServed:  prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_puma_partial_requests_total", Help: "Partial-state requests answered on puma.listen."}),
		partialRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_puma_partial_refused_total", Help: "Partial-state requests refused as bad (400) on puma.listen."}),
		partialLarge:   prometheus.NewCounter(prometheus.CounterOpts{Name: "freeway_puma_partial_too_large_total", Help: "Partial-state requests refused (422) because the partial would have more than puma.max_partial_rows rows."}),
	}
	owned := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "freeway_puma_shards_owned", Help: "Shards this node holds the lease of (recovering or running)."}, func() float64 {
		p.mu.RLock()
		defer p.mu.RUnlock()
		return float64(len(p.shards))
	})
	if reg != nil {
		reg.MustRegister(m.handoffs, m.partialServed, m.partialRefused, m.partialLarge, owned)
	}
	return m
}

// score is the rendezvous weight of member for lease.
func score(lease, member string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(lease))
	h.Write([]byte{0})
	h.Write([]byte(member))
	x := h.Sum64()
	// splitmix64's finalizer: fnv's low bits are poorly mixed.
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// assignShards gives each shard (by lease name) its preferred member: in
// lease order, the member of highest score that is preferred for fewer
// than ceil(shards/members) shards so far. Every node computes the same
// from the same lists, and a member joining or leaving moves few shards.
func assignShards(leases, members []string) map[string]string {
	out := make(map[string]string, len(leases))
	if len(members) == 0 {
		return out
	}
	leases = slices.Sorted(slices.Values(leases))
	limit := (len(leases) + len(members) - 1) / len(members)
	load := map[string]int{}
	ranked := make([]string, len(members))
	for _, l := range leases {
		copy(ranked, members)
		sort.Slice(ranked, func(i, j int) bool {
			si, sj := score(l, ranked[i]), score(l, ranked[j])
			if si != sj {
				return si > sj
			}
			return ranked[i] < ranked[j]
		})
		for _, m := range ranked {
			if load[m] < limit {
				out[l] = m
				load[m]++
				break
			}
		}
	}
	return out
}

// members keeps the live Puma members up to date until ctx ends, and
// signals changed (without blocking) at each change.
func (p *Puma) watchMembers(ctx context.Context, changed chan<- struct{}) {
	for ctx.Err() == nil {
		ms, ch, err := p.deps.Coord.Members(ctx, names.PumaMembers)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			p.log.Warn("cannot list puma members; retrying", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		ids := make([]string, 0, len(ms))
		for _, m := range ms {
			ids = append(ids, m.ID)
		}
		p.mu.Lock()
		p.members = ids
		p.mu.Unlock()
		select {
		case changed <- struct{}{}:
		default:
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

// join registers the node in layout.PumaMembers with its advertised
// address, retrying until ctx ends; it returns the membership (nil if
// ctx ended first).
func (p *Puma) join(ctx context.Context) coord.Membership {
	for {
		m, err := p.deps.Coord.Join(ctx, names.PumaMembers, p.cfg.ID, []byte(p.deps.Advertise))
		if err == nil {
			p.log.Info("puma joined the members", "advertise", p.deps.Advertise)
			return m
		}
		if ctx.Err() != nil {
			return nil
		}
		p.log.Warn("cannot join the puma members; retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

// preferences is the preferred member of every shard of the node's apps
// (nil when the node does not balance: no advertised address, or no
// member known yet).
func (p *Puma) preferences() map[string]string {
	if p.deps.Advertise == "" {
		return nil
	}
	p.mu.RLock()
	members := p.members
	p.mu.RUnlock()
	if len(members) == 0 {
		return nil
	}
	var leases []string
	for _, cat := range p.categories {
		for b := 0; b < p.deps.Buckets(cat); b++ {
			leases = append(leases, shardID{cat, b}.lease())
		}
	}
	return assignShards(leases, members)
}

// standBy reports whether the node leaves shard id, not preferred here
// (preferred is another member), to the preferred node: yes while its
// lease is held, or has been free for less than the takeover grace.
func (p *Puma) standBy(ctx context.Context, id shardID) bool {
	holder, _, err := p.deps.Coord.Holder(ctx, id.lease())
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil || holder != "" {
		delete(p.unheld, id)
		return true
	}
	since, ok := p.unheld[id]
	if !ok {
		p.unheld[id] = now
		return true
	}
	return now.Sub(since) < p.cfg.TakeoverGrace.D()
}

// handOff stops shard id running here, preferred for member to, if to
// asks for it (is in the shard's layout.PumaWants group): its run takes a
// final checkpoint and releases the lease. A preferred member that does
// not ask (hung, slow to start, or the shard failed there) is not handed
// the shard: it would leave it unread until the takeover grace, and take
// it over again.
func (p *Puma) handOff(ctx context.Context, id shardID, to string) {
	p.mu.RLock()
	s := p.shards[id]
	p.mu.RUnlock()
	if s == nil || s.stop == nil || s.handingOff.Load() {
		return
	}
	ms, _, err := p.deps.Coord.Members(ctx, names.PumaWants(id.category, id.bucket))
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn("cannot list who asks for shard; kept until the next pass", "shard", id.lease(), "err", err)
		}
		return
	}
	if !slices.ContainsFunc(ms, func(m coord.Member) bool { return m.ID == to }) {
		return
	}
	if s.handingOff.Swap(true) {
		return
	}
	p.bm.handoffs.Inc()
	p.log.Info("handing shard over to its preferred node", "shard", id.lease(), "to", to)
	s.stop()
}

// want makes the node ask for shard id (join its layout.PumaWants group)
// or stop asking. A failed join is tried again at the next pass.
func (p *Puma) want(ctx context.Context, id shardID, wanted bool) {
	p.mu.RLock()
	m, asking := p.wants[id]
	p.mu.RUnlock()
	if wanted == asking {
		return
	}
	if !wanted {
		p.mu.Lock()
		delete(p.wants, id)
		p.mu.Unlock()
		p.withdraw(ctx, id, m)
		return
	}
	m, err := p.deps.Coord.Join(ctx, names.PumaWants(id.category, id.bucket), p.cfg.ID, nil)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn("cannot ask for shard; retrying at the next pass", "shard", id.lease(), "err", err)
		}
		return
	}
	p.mu.Lock()
	p.wants[id] = m
	p.mu.Unlock()
}

// withdraw ends the node's asking for shard id, with up to 10s even once
// ctx ended. Should it fail, the membership ends with the node's coord
// session; meanwhile the holder may hand the shard over, and, not taken
// here, it is taken over again after the grace.
func (p *Puma) withdraw(ctx context.Context, id shardID, m coord.Membership) {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := m.Leave(lctx); err != nil {
		p.log.Warn("cannot stop asking for shard", "shard", id.lease(), "err", err)
	}
}

// withdrawAll stops asking for every shard.
func (p *Puma) withdrawAll(ctx context.Context) {
	p.mu.Lock()
	wants := p.wants
	p.wants = map[shardID]coord.Membership{}
	p.mu.Unlock()
	for id, m := range wants {
		p.withdraw(ctx, id, m)
	}
}

// leave ends the node's membership, with up to 10s even once ctx ended.
func (p *Puma) leave(ctx context.Context, m coord.Membership) {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := m.Leave(lctx); err != nil {
		p.log.Warn("cannot leave the puma members", "err", err)
	}
}
