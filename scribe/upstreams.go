package scribe

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/backoff"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/layout"
)

// Where the shipper sends batches. agent.upstream is either a fixed list
// of writers, tried in turn on errors (the first one takes everything
// while it answers), or a coordinator URL (zk://host:port[,host:port]/root,
// the writers' coord): the agent then watches the group of live writers
// (layout.WriterMembers, each member's data the Scribe address it
// advertises) and sends each batch to the next of them in turn. Each
// sender (agent.max_in_flight of them) does so on connections of its
// own; the batches may reach a bucket out of order through different
// writers, within Puma's seen-window as with one writer. A writer that
// dies costs the batch it was sending one retry to the next writer; one
// that answers TRY_LATER tryLaterLimit times in a row (a full disk, a
// fence it cannot decide) is passed over like a failed one, so that the
// batches go to the others meanwhile. A fixed list stays on its writer
// through TRY_LATER, backing off, as a stock Scribe client does.

// errNoWriter: the coord group of writers is empty (or not read yet).
var errNoWriter = errors.New("no live writer")

// CoordUpstream reports whether upstream is a coordinator URL rather than
// writer addresses, and returns the URL. A zk:// URL of several servers
// (zk://a:2181,b:2181/root) arrives split at its commas by the flag and
// YAML list parsers; it is joined again.
func CoordUpstream(upstream []string) (string, bool) {
	if len(upstream) == 0 || !strings.Contains(upstream[0], "://") {
		return "", false
	}
	return strings.Join(upstream, ","), true
}

// upstreamSource names the writer of the next batch.
type upstreamSource interface {
	// next returns an address; an error wrapping errNoWriter says there
	// is none to send to for now.
	next() (string, error)
	// spread: after each batch the shipper moves on to the next writer
	// (keeping the connection for its turn) instead of staying.
	spread() bool
	// failed says that connecting to addr or a call on it failed.
	failed(addr string)
	// tryLater says that addr answered TRY_LATER; true when it is now
	// passed over (the sender moves on to another writer).
	tryLater(addr string) bool
	// answered says that addr answered OK.
	answered(addr string)
}

// tryLaterLimit is how many TRY_LATER answers in a row pass a live
// writer over (coordinator URL upstream).
const tryLaterLimit = 3

// source is the upstreamSource of one sender: the live writers (shared;
// safe for concurrent use), or the list of agent.upstream with a position
// of its own, so that each sender starts at the first address.
func (a *Agent) source() upstreamSource {
	if a.members != nil {
		return a.members
	}
	return &staticSource{addrs: a.cfg.Upstream}
}

// staticSource is the list of agent.upstream, in turn.
type staticSource struct {
	addrs []string
	i     int
}

func (s *staticSource) next() (string, error) {
	a := s.addrs[s.i]
	s.i = (s.i + 1) % len(s.addrs)
	return a, nil
}

func (s *staticSource) spread() bool { return false }

func (s *staticSource) failed(string) {}

func (s *staticSource) tryLater(string) bool { return false }

func (s *staticSource) answered(string) {}

// memberSource is the live writers of a coord group, as last read by
// watch.
type memberSource struct {
	co    coord.Coord
	url   string
	mu    sync.Mutex
	addrs []string // sorted, deduplicated
	read  bool     // the group was read at least once
	err   error    // the last failure to read it, nil once read again
	i     int
	live  atomic.Int64 // len(addrs), for the metric
	// down are writers that failed lately, until when they are passed
	// over (while another is live): a stalled writer, still listed until
	// its session expires, would otherwise cost an upstream_timeout at
	// each of its turns.
	down     map[string]time.Time
	later    map[string]int // TRY_LATER answers in a row, by writer
	cooldown time.Duration
	now      func() time.Time
}

func newMemberSource(co coord.Coord, url, agentID string, cooldown time.Duration, now func() time.Time) *memberSource {
	// Agents start at different writers, so that they do not all send
	// their first batches to the same one.
	h := fnv.New32a()
	_, _ = h.Write([]byte(agentID)) // a hash never fails to write
	return &memberSource{co: co, url: url, i: int(h.Sum32() % 1024), down: map[string]time.Time{}, later: map[string]int{}, cooldown: cooldown, now: now}
}

// next is the next live writer in turn, passing over those that failed
// within the cooldown unless every one did.
func (s *memberSource) next() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.none(); err != nil {
		return "", err
	}
	now := s.now()
	for range s.addrs {
		s.i = (s.i + 1) % len(s.addrs)
		if until, ok := s.down[s.addrs[s.i]]; !ok || now.After(until) {
			delete(s.down, s.addrs[s.i])
			return s.addrs[s.i], nil
		}
	}
	s.i = (s.i + 1) % len(s.addrs)
	return s.addrs[s.i], nil
}

func (s *memberSource) failed(addr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down[addr] = s.now().Add(s.cooldown)
}

// tryLater passes addr over, as failed, once it answered TRY_LATER
// tryLaterLimit times in a row, if another writer is live: with one, the
// sender stays and backs off.
func (s *memberSource) tryLater(addr string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.later[addr]++
	if s.later[addr] < tryLaterLimit || len(s.addrs) < 2 {
		return false
	}
	delete(s.later, addr)
	s.down[addr] = s.now().Add(s.cooldown)
	return true
}

func (s *memberSource) answered(addr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.later) > 0 {
		delete(s.later, addr)
	}
}

// none says why there is no writer to send to, or nil; s.mu is held.
func (s *memberSource) none() error {
	if len(s.addrs) > 0 {
		return nil
	}
	switch {
	case s.err != nil:
		return fmt.Errorf("%w: cannot read %s at %s: %w", errNoWriter, layout.WriterMembers, s.url, s.err)
	case !s.read:
		return fmt.Errorf("%w: %s at %s not read yet", errNoWriter, layout.WriterMembers, s.url)
	}
	return fmt.Errorf("%w in %s at %s", errNoWriter, layout.WriterMembers, s.url)
}

// has reports whether addr is a live writer.
func (s *memberSource) has(addr string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, found := slices.BinarySearch(s.addrs, addr)
	return found
}

func (s *memberSource) spread() bool { return true }

// ready says whether a writer is live, and if not, why.
func (s *memberSource) ready() (bool, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.none(); err != nil {
		return false, "not ready: agent: " + err.Error()
	}
	return true, ""
}

// watch keeps addrs current until ctx ends: it reads the group and waits
// for its next change, retrying a failed read with backoff (the list
// read last stays in use meanwhile, and the failure is reported by
// ready once there is no writer).
func (a *Agent) watchWriters(ctx context.Context) error {
	s := a.members
	bo := backoff.WithJitter(a.cfg.RetryMin.D(), a.cfg.RetryMax.D())
	for {
		ms, changed, err := s.co.Members(ctx, layout.WriterMembers)
		if ctx.Err() != nil {
			return nil //nolint:nilerr // the agent is stopping: its watch is over, not failed
		}
		if err != nil {
			s.mu.Lock()
			s.err = err
			s.mu.Unlock()
			a.c.shipErrors.Add(1)
			a.rl.Warn("writers watch failed", "cannot read the live writers, retrying", "group", layout.WriterMembers, "coord", s.url, "err", err)
			if !sleep(ctx, a.clock, bo.Next()) {
				return nil
			}
			continue
		}
		bo.Reset()
		addrs := make([]string, 0, len(ms))
		for _, m := range ms {
			if len(m.Data) > 0 {
				addrs = append(addrs, string(m.Data))
			}
		}
		slices.Sort(addrs)
		addrs = slices.Compact(addrs)
		s.mu.Lock()
		before := s.addrs
		s.addrs, s.read, s.err = addrs, true, nil
		for addr := range s.down {
			if _, found := slices.BinarySearch(addrs, addr); !found {
				delete(s.down, addr) // gone; should it come back, it is new
			}
		}
		for addr := range s.later {
			if _, found := slices.BinarySearch(addrs, addr); !found {
				delete(s.later, addr)
			}
		}
		s.mu.Unlock()
		s.live.Store(int64(len(addrs)))
		if !slices.Equal(before, addrs) {
			a.log.Info("live writers", "writers", addrs, "coord", s.url)
			if len(addrs) == 0 {
				a.log.Warn("no live writer; keeping the queue until one joins", "group", layout.WriterMembers, "coord", s.url)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}

// Readiness is what /readyz says of the agent: with a coordinator URL
// upstream, ready while a writer is live.
func (a *Agent) Readiness() (bool, string) {
	if a.members == nil {
		return true, ""
	}
	return a.members.ready()
}

// registerUpstreamMetrics adds the gauge of live writers (coordinator URL
// upstream only).
func registerUpstreamMetrics(reg prometheus.Registerer, s *memberSource) error {
	return reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "freeway_agent_upstream_writers",
		Help: "Live writers found in the coordinator (agent.upstream a coordinator URL); 0: the queue is kept until one joins."},
		func() float64 { return float64(s.live.Load()) }))
}

// poolIdle is how long a connection may wait in a connPool: beyond it,
// a writer may have closed it as idle (its idle_timeout, 10m by
// default), and a failed call on it would pass over a healthy writer.
const poolIdle = time.Minute

// connPool keeps one idle connection per writer between its turns
// (spread sources): each sender goroutine has its own.
type connPool map[string]pooled

type pooled struct {
	u     *upstream
	since time.Time
}

// take returns the idle connection to addr, or nil (none, or idle too
// long: closed).
func (p connPool) take(addr string, now time.Time) *upstream {
	c, ok := p[addr]
	if !ok {
		return nil
	}
	delete(p, addr)
	if now.Sub(c.since) > poolIdle {
		_ = c.u.c.Close() // stale; a new connection is dialled
		return nil
	}
	return c.u
}

// put keeps u for its next turn, and closes the idle connections to
// writers src no longer lists.
func (p connPool) put(u *upstream, src upstreamSource, now time.Time) {
	if old, ok := p[u.addr]; ok && old.u != u {
		_ = old.u.c.Close() // replaced by a connection just used
	}
	p[u.addr] = pooled{u: u, since: now}
	if m, ok := src.(*memberSource); ok {
		for addr, c := range p {
			if !m.has(addr) {
				_ = c.u.c.Close() // that writer left
				delete(p, addr)
			}
		}
	}
}

func (p connPool) closeAll() {
	for addr, c := range p {
		_ = c.u.c.Close() // shipping stopped; nothing to report to
		delete(p, addr)
	}
}
