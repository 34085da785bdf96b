package puma

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/coord/zkcoord"
	"github.com/freeway-dev/freeway/internal/enginetest"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// takeover is one node "a" and one shard preferred for member "b", driven
// pass by pass (tryStart) on an injected clock: no test timing.
type takeover struct {
	t       *testing.T
	e       *env
	p       *Puma
	id      shardID
	pref    map[string]string
	ctx     context.Context
	wg      *sync.WaitGroup
	mu      sync.Mutex
	now     time.Time
	grace   time.Duration
	handoff func() float64
	open    func() coord.Coord // a session of the coordinator "a" uses
}

// newTakeover sets it up on the in-process coordinator, or on ZooKeeper
// when zk.
func newTakeover(t *testing.T, zk bool) *takeover {
	tk := &takeover{t: t, e: newEnv(t, orders(t)), id: shardID{"orders", 0}, now: time.Unix(1_800_000_000, 0), grace: time.Minute, wg: &sync.WaitGroup{}}
	tk.e.buckets = 1
	tk.open = func() coord.Coord { return tk.e.hub.Session() }
	if zk {
		addr := enginetest.Addr(t, enginetest.ZK)
		b := make([]byte, 4)
		rand.Read(b)
		root := "/fwtest_wants_" + hex.EncodeToString(b)
		tk.open = func() coord.Coord {
			c, err := zkcoord.Open("zk://"+addr+root+"?session_timeout=2s", nil)
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
	}
	co := tk.open()
	t.Cleanup(func() { co.Close() })
	tk.p = tk.e.node("a", func(c *Config, d *Deps) {
		c.TakeoverGrace = config.Duration(tk.grace)
		d.Coord, d.Advertise, d.Now, d.Metrics = co, "a:1", tk.clock, prometheus.NewPedanticRegistry()
	})
	tk.pref = map[string]string{tk.id.lease(): "b"}
	ctx, cancel := context.WithCancel(context.Background())
	tk.ctx = ctx
	t.Cleanup(func() { cancel(); tk.wg.Wait() })
	tk.handoff = func() float64 { return testutil.ToFloat64(tk.p.bm.handoffs) }
	return tk
}

func (tk *takeover) clock() time.Time { tk.mu.Lock(); defer tk.mu.Unlock(); return tk.now }
func (tk *takeover) advance(d time.Duration) {
	tk.mu.Lock()
	tk.now = tk.now.Add(d)
	tk.mu.Unlock()
}
func (tk *takeover) pass() { tk.p.tryStart(tk.ctx, tk.wg, tk.id, tk.pref) }
func (tk *takeover) running() *shard {
	tk.p.mu.RLock()
	defer tk.p.mu.RUnlock()
	return tk.p.shards[tk.id]
}

// takeOver has "a" take the shard, free and not taken by "b", once its
// lease has been free for the grace, and not before.
func (tk *takeover) takeOver() *shard {
	tk.t.Helper()
	tk.pass() // free from now on
	tk.advance(tk.grace - time.Second)
	tk.pass()
	if tk.running() != nil {
		tk.t.Fatal("taken before the lease was free for the takeover grace")
	}
	tk.advance(time.Second)
	tk.pass()
	s := tk.running()
	if s == nil {
		tk.t.Fatal("not taken once the lease was free for the grace")
	}
	return s
}

// keep runs passes over n grace periods and fails if the shard is handed
// over in any of them.
func (tk *takeover) keep(s *shard, n int) {
	tk.t.Helper()
	for i := range 2 * n {
		tk.advance(tk.grace / 2)
		tk.pass()
		if tk.running() != s || s.handingOff.Load() || tk.handoff() != 0 {
			tk.t.Fatalf("handed back %v after it was taken over, to a member that did not ask", time.Duration(i+1)*tk.grace/2)
		}
	}
}

// ask has member join the shard's group of askers, on its own session.
func (tk *takeover) ask(member string) coord.Membership {
	tk.t.Helper()
	co := tk.open()
	tk.t.Cleanup(func() { co.Close() })
	m, err := co.Join(context.Background(), names.PumaWants(tk.id.category, tk.id.bucket), member, nil)
	if err != nil {
		tk.t.Fatal(err)
	}
	return m
}

// TestNoHandBackUnasked: a shard taken over after the grace from its
// preferred member "b", a member that never takes it (hung, say), is not
// handed back to it, however long: it would go unread for a grace period
// and be taken over again, for ever. An ask from a member that is not
// preferred does not count either. On the in-process coordinator and on
// ZooKeeper.
func TestNoHandBackUnasked(t *testing.T) {
	t.Run("inproc", func(t *testing.T) { checkNoHandBackUnasked(t, false) })
	t.Run("zookeeper", func(t *testing.T) { checkNoHandBackUnasked(t, true) })
}

func checkNoHandBackUnasked(t *testing.T, zk bool) {
	tk := newTakeover(t, zk)
	s := tk.takeOver()
	tk.keep(s, 50)
	tk.ask("c")
	tk.keep(s, 5)
}

// TestHandBackWhenAsked: a shard taken over after the grace from its
// preferred member "b", slow to start, is kept while b does not ask for it
// and handed back (final checkpoint, lease released) at the first pass
// after b asks, with no grace periods to wait. On the in-process
// coordinator and on ZooKeeper.
func TestHandBackWhenAsked(t *testing.T) {
	t.Run("inproc", func(t *testing.T) { checkHandBackWhenAsked(t, false) })
	t.Run("zookeeper", func(t *testing.T) { checkHandBackWhenAsked(t, true) })
}

func checkHandBackWhenAsked(t *testing.T, zk bool) {
	tk := newTakeover(t, zk)
	s := tk.takeOver()
	tk.keep(s, 3)
	tk.ask("b")
	tk.pass()
	if !s.handingOff.Load() || tk.handoff() != 1 {
		t.Fatal("not handed back at the pass after the preferred member asked")
	}
	testkit.Eventually(t, "the shard to stop", func() error {
		if tk.running() != nil {
			return errors.New("still running")
		}
		return nil
	})
	// Stopped, its lease released: the preferred node may take it now.
	if holder, _, err := tk.p.deps.Coord.Holder(tk.ctx, tk.id.lease()); err != nil || holder != "" {
		t.Fatalf("lease held by %q after the hand-back (%v)", holder, err)
	}
}

// TestAskWhileHeldElsewhere: a node preferred for a shard asks for it
// while another node holds it, and stops asking once it runs it, or once
// another member is preferred. On the in-process coordinator and on
// ZooKeeper.
func TestAskWhileHeldElsewhere(t *testing.T) {
	t.Run("inproc", func(t *testing.T) { checkAskWhileHeldElsewhere(t, false) })
	t.Run("zookeeper", func(t *testing.T) { checkAskWhileHeldElsewhere(t, true) })
}

func checkAskWhileHeldElsewhere(t *testing.T, zk bool) {
	tk := newTakeover(t, zk)
	tk.pref = map[string]string{tk.id.lease(): "a"}
	askers := func() []string {
		ms, _, err := tk.p.deps.Coord.Members(tk.ctx, names.PumaWants(tk.id.category, tk.id.bucket))
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, m := range ms {
			ids = append(ids, m.ID)
		}
		return ids
	}
	other := tk.open()
	t.Cleanup(func() { other.Close() })
	l, err := other.Acquire(tk.ctx, tk.id.lease(), "x")
	if err != nil {
		t.Fatal(err)
	}
	tk.pass()
	if got := askers(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("preferred, held by x: askers %v, want [a]", got)
	}
	tk.pass()
	if got := askers(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("asking twice: askers %v", got)
	}
	// Preferred elsewhere now: a stops asking.
	tk.pref = map[string]string{tk.id.lease(): "b"}
	tk.pass()
	if got := askers(); len(got) != 0 {
		t.Fatalf("no longer preferred: askers %v, want none", got)
	}
	tk.pref = map[string]string{tk.id.lease(): "a"}
	tk.pass()
	if got := askers(); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("preferred again: askers %v, want [a]", got)
	}
	// x hands it over: a takes it at the next pass and stops asking.
	if err := l.Release(tk.ctx); err != nil {
		t.Fatal(err)
	}
	tk.pass()
	if tk.running() == nil {
		t.Fatal("not taken once released")
	}
	if got := askers(); len(got) != 0 {
		t.Fatalf("running here: askers %v, want none", got)
	}
}

// TestNoAskAfterFailure: a node whose run of a shard failed (a malformed
// row its recovery cannot load) does not ask for the shard once another
// node holds it, though it is preferred for it: it would likely fail
// again, and the shard go unread in between.
func TestNoAskAfterFailure(t *testing.T) {
	tk := newTakeover(t, false)
	tk.pref = map[string]string{tk.id.lease(): "a"}
	// A first run commits, and is stopped.
	pos := tk.e.publish("orders", 0, stock(fourOrders()...))
	tk.pass()
	testkit.Eventually(t, "committed", func() error {
		if st := stateOf(tk.p, 0); st.Committed != pos.String() {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	epoch := stateOf(tk.p, 0).Epoch
	tk.running().stop()
	testkit.Eventually(t, "stopped", func() error {
		if tk.running() != nil {
			return errors.New("still running")
		}
		return nil
	})
	a := tk.e.apps[0]
	bad := appPrefix("orders", 0, a, fingerprint(a, a.WindowMs)) + "not-a-window"
	if err := tk.e.st.Put(context.Background(), "puma", []store.Cell{{Row: bad, Column: "v", Timestamp: epoch, Value: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	tk.pass()
	testkit.Eventually(t, "the shard failed", func() error {
		tk.p.mu.RLock()
		defer tk.p.mu.RUnlock()
		if tr := tk.p.tries[tk.id]; tr == nil || tr.state != StateFailed {
			return fmt.Errorf("%+v", tr)
		}
		return nil
	})
	other := tk.open()
	t.Cleanup(func() { other.Close() })
	if _, err := other.Acquire(tk.ctx, tk.id.lease(), "x"); err != nil {
		t.Fatal(err)
	}
	tk.advance(2 * retryMax) // past the retry delay: the pass tries again
	tk.pass()
	tk.p.mu.RLock()
	tr := *tk.p.tries[tk.id]
	tk.p.mu.RUnlock()
	if tr.state != StateElsewhere {
		t.Fatalf("not tried again: %+v", tr)
	}
	ms, _, err := tk.p.deps.Coord.Members(tk.ctx, names.PumaWants(tk.id.category, tk.id.bucket))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 0 {
		t.Fatalf("asks for a shard that failed here: %v", ms)
	}
}

// TestNoTakeBackAfterHandBack: a shard handed back to its preferred
// member "b" (which asked) is left to b for a whole takeover grace
// counted from the hand-back: b takes it at its next pass. Before, the
// grace was counted from when the lease was first seen free, before "a"
// took the shard over, so a took it back at its first pass after the
// hand-back, ahead of b, and handed it back again when b asked: the shard
// flapped, each time a final checkpoint and a recovery. On the in-process
// coordinator and on ZooKeeper.
func TestNoTakeBackAfterHandBack(t *testing.T) {
	t.Run("inproc", func(t *testing.T) { checkNoTakeBackAfterHandBack(t, false) })
	t.Run("zookeeper", func(t *testing.T) { checkNoTakeBackAfterHandBack(t, true) })
}

func checkNoTakeBackAfterHandBack(t *testing.T, zk bool) {
	tk := newTakeover(t, zk)
	s := tk.takeOver()
	tk.keep(s, 3)
	tk.ask("b")
	tk.pass()
	if !s.handingOff.Load() {
		t.Fatal("not handed back at the pass after the preferred member asked")
	}
	testkit.Eventually(t, "the shard to stop", func() error {
		if tk.running() != nil {
			return errors.New("still running")
		}
		return nil
	})
	for i := range 4 {
		tk.pass()
		if tk.running() != nil {
			t.Fatalf("taken back %v after the hand-back, with the grace %v", time.Duration(i)*tk.grace/4, tk.grace)
		}
		tk.advance(tk.grace / 4)
	}
	// b never took it: it is taken over again once free for the grace.
	tk.pass()
	if tk.running() == nil {
		t.Fatal("not taken over once free for the grace after the hand-back")
	}
}
