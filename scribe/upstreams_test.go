package scribe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	"github.com/freeway-dev/freeway/internal/coord/zkcoord"
	"github.com/freeway-dev/freeway/internal/enginetest"
	"github.com/freeway-dev/freeway/internal/layout"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

func TestCoordUpstream(t *testing.T) {
	for _, tc := range []struct {
		in    []string
		url   string
		isURL bool
	}{
		{[]string{"127.0.0.1:1464"}, "", false},
		{[]string{"a:1", "b:2"}, "", false},
		{[]string{"zk://127.0.0.1:2181/freeway"}, "zk://127.0.0.1:2181/freeway", true},
		// The flag and YAML list parsers split a multi-server URL.
		{[]string{"zk://a:2181", "b:2181/freeway?session_timeout=4s"}, "zk://a:2181,b:2181/freeway?session_timeout=4s", true},
	} {
		url, ok := CoordUpstream(tc.in)
		if url != tc.url || ok != tc.isURL {
			t.Errorf("CoordUpstream(%q) = %q, %v; want %q, %v", tc.in, url, ok, tc.url, tc.isURL)
		}
	}
	cfg := DefaultConfig()
	cfg.Upstream = []string{"http://x/y"}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "zk://host:port") {
		t.Errorf("validate http:// upstream: %v, want an error naming zk://", err)
	}
	cfg.Upstream = []string{"zk://a:2181", "b:2181/freeway"}
	if err := cfg.Validate(); err != nil {
		t.Errorf("validate zk:// upstream: %v", err)
	}
	// Without a coordinator from the wiring, the agent refuses to start.
	cfg = testConfig(t.TempDir(), "zk://127.0.0.1:2181/freeway")
	if _, err := New(cfg, Deps{}); err == nil || !strings.Contains(err.Error(), "no coordinator") {
		t.Errorf("new agent without a coordinator: %v, want an error", err)
	}
}

// startCoordAgent runs an agent whose upstream is the writers of co.
func startCoordAgent(t *testing.T, cfg Config, co coord.Coord) *agent {
	t.Helper()
	return startAgentWith(t, cfg, co, nil)
}

// joinWriter registers addr as a live writer until the test ends (or
// Leave).
func joinWriter(t *testing.T, co coord.Coord, id, addr string) coord.Membership {
	t.Helper()
	m, err := co.Join(context.Background(), layout.WriterMembers, id, []byte(addr))
	if err != nil {
		t.Fatalf("join %s: %v", id, err)
	}
	t.Cleanup(func() { _ = m.Leave(context.Background()) })
	return m
}

func gaugeValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) == 1 {
			return mf.Metric[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// waitFor polls cond until it holds, with a generous deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// merged is what the writers received OK, deduplicated and in sequence
// order: the agent's stream as Puma would read it back.
func merged(t *testing.T, ups ...*fakeUpstream) []got {
	t.Helper()
	var all []got
	seen := map[int64]bool{}
	for _, u := range ups {
		for _, g := range u.received(t) {
			if !seen[g.seq] {
				seen[g.seq] = true
				all = append(all, g)
			}
		}
	}
	for i := range all {
		for j := i + 1; j < len(all); j++ {
			if all[j].seq < all[i].seq {
				all[i], all[j] = all[j], all[i]
			}
		}
	}
	return all
}

// testSpread: the agent finds the writers in the coord group, spreads its
// batches across them one at a time in sequence order, and a writer that
// is listed but dead (SIGKILLed, its session not yet expired) costs
// retries, not entries.
func testSpread(t *testing.T, co coord.Coord, url string) {
	const n = 300
	ups := []*fakeUpstream{startUpstream(t, "127.0.0.1:0", nil), startUpstream(t, "127.0.0.1:0", nil), startUpstream(t, "127.0.0.1:0", nil)}
	for i, u := range ups {
		joinWriter(t, co, fmt.Sprintf("writer-%d", i), u.srv.Addr())
	}
	dead := deadAddr(t)
	joinWriter(t, co, "writer-dead", dead)

	cfg := testConfig(t.TempDir(), url)
	cfg.BatchEntries = 10
	a := startCoordAgent(t, cfg, co)
	waitFor(t, "4 live writers", func() bool { return gaugeValue(t, a.reg, "freeway_agent_upstream_writers") == 4 })
	if ok, why := a.Readiness(); !ok {
		t.Fatalf("not ready with writers live: %s", why)
	}
	c := dial(t, a.Addr())
	for i := 0; i < n; i += 10 {
		mustLog(t, c, entries("cat", "m", i, 10))
		// Let the shipper take each call as a batch of its own.
		waitFor(t, "the queue to drain", func() bool { return a.Status().QueueEntries == 0 })
	}
	wantSeq(t, merged(t, ups...), "cat", "m", n)
	busy := 0
	for i, u := range ups {
		if u.count(t) > 0 {
			busy++
		}
		// One batch in flight: each writer's batches are in order too.
		var last int64
		for _, b := range u.callsSnapshot() {
			if b.FirstSeq < last {
				t.Errorf("writer %d got batch %d after %d", i, b.FirstSeq, last)
			}
			last = b.FirstSeq
		}
	}
	if busy != len(ups) {
		t.Errorf("%d of %d writers got batches, want every one", busy, len(ups))
	}
	if got := float64(a.c.shipErrors.Load()); got == 0 {
		t.Errorf("no ship error counted, but a listed writer was dead")
	}
}

func TestUpstreamCoordSpread(t *testing.T) {
	testSpread(t, inproc.NewHub().Session(), "inproc://")
}

func TestUpstreamCoordSpreadZooKeeper(t *testing.T) {
	zk := enginetest.Addr(t, enginetest.ZK)
	url := fmt.Sprintf("zk://%s/freeway-test/agent-%08x?session_timeout=4s", zk, rand.Uint32())
	co, err := zkcoord.Open(url, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = co.Close() })
	testSpread(t, co, url)
}

// TestUpstreamCoordNoWriter: with no writer live the agent keeps its
// queue and says so (the gauge, /readyz); a writer that joins gets it
// all; one that leaves costs nothing.
func TestUpstreamCoordNoWriter(t *testing.T) {
	co := inproc.NewHub().Session()
	cfg := testConfig(t.TempDir(), "inproc://")
	cfg.BatchEntries = 5
	a := startCoordAgent(t, cfg, co)
	c := dial(t, a.Addr())
	mustLog(t, c, entries("cat", "m", 0, 20))
	waitFor(t, "a failed attempt", func() bool { return float64(a.c.shipErrors.Load()) > 0 })
	if ok, why := a.Readiness(); ok || !strings.Contains(why, "no live writer") {
		t.Errorf("readiness with no writer = %v %q, want not ready, no live writer", ok, why)
	}
	if got := gaugeValue(t, a.reg, "freeway_agent_upstream_writers"); got != 0 {
		t.Errorf("freeway_agent_upstream_writers = %g, want 0", got)
	}
	if got := a.Status().QueueEntries; got != 20 {
		t.Errorf("queue holds %d entries, want all 20", got)
	}

	first := startUpstream(t, "127.0.0.1:0", nil)
	m := joinWriter(t, co, "w1", first.srv.Addr())
	waitFor(t, "the queue to drain", func() bool { return a.Status().QueueEntries == 0 })
	if ok, why := a.Readiness(); !ok {
		t.Errorf("not ready with a writer: %s", why)
	}
	// The writer leaves; its successor gets what follows.
	second := startUpstream(t, "127.0.0.1:0", nil)
	joinWriter(t, co, "w2", second.srv.Addr())
	if err := m.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "1 live writer", func() bool { return gaugeValue(t, a.reg, "freeway_agent_upstream_writers") == 1 })
	before := first.count(t)
	mustLog(t, c, entries("cat", "m", 20, 20))
	waitFor(t, "the queue to drain", func() bool { return a.Status().QueueEntries == 0 })
	wantSeq(t, merged(t, first, second), "cat", "m", 40)
	if second.count(t) == 0 {
		t.Errorf("the writer that joined got nothing")
	}
	if after := first.count(t); after != before {
		t.Errorf("the writer that left got %d more entries", after-before)
	}
}

// TestUpstreamCoordPassesOverFailedWriter: a writer that fails a call (a
// stalled one times out) is passed over for upstream_timeout while
// another is live, rather than costing a failure at each of its turns.
func TestUpstreamCoordPassesOverFailedWriter(t *testing.T) {
	co := inproc.NewHub().Session()
	good := startUpstream(t, "127.0.0.1:0", nil)
	bad := startUpstream(t, "127.0.0.1:0", func(int, *scribethrift.Batch) (scribethrift.ResultCode, error) {
		return scribethrift.ResultCode_OK, errors.New("disk on fire")
	})
	joinWriter(t, co, "good", good.srv.Addr())
	joinWriter(t, co, "bad", bad.srv.Addr())
	cfg := testConfig(t.TempDir(), "inproc://")
	cfg.BatchEntries = 1
	cfg.UpstreamTimeout = config.Duration(time.Minute) // the cooldown outlasts the test
	a := startCoordAgent(t, cfg, co)
	waitFor(t, "2 live writers", func() bool { return gaugeValue(t, a.reg, "freeway_agent_upstream_writers") == 2 })
	c := dial(t, a.Addr())
	for i := range 30 {
		mustLog(t, c, entries("cat", "m", i, 1))
		waitFor(t, "the queue to drain", func() bool { return a.Status().QueueEntries == 0 })
	}
	wantSeq(t, merged(t, good, bad), "cat", "m", 30)
	if n := len(bad.callsSnapshot()); n != 1 {
		t.Errorf("the failing writer got %d calls, want 1 (then passed over)", n)
	}
}

// TestUpstreamCoordPassesOverTryLaterWriter: a writer that keeps
// answering TRY_LATER (its disk full, say) is passed over like a failed
// one after tryLaterLimit answers in a row, while another is live: the
// batches go to the other. The code before stayed on it, retrying the
// same batch for as long as it refused.
func TestUpstreamCoordPassesOverTryLaterWriter(t *testing.T) {
	co := inproc.NewHub().Session()
	good := startUpstream(t, "127.0.0.1:0", nil)
	busy := startUpstream(t, "127.0.0.1:0", func(int, *scribethrift.Batch) (scribethrift.ResultCode, error) {
		return scribethrift.ResultCode_TRY_LATER, nil
	})
	joinWriter(t, co, "good", good.srv.Addr())
	joinWriter(t, co, "busy", busy.srv.Addr())
	cfg := testConfig(t.TempDir(), "inproc://")
	cfg.BatchEntries = 1
	cfg.UpstreamTimeout = config.Duration(time.Minute) // the cooldown outlasts the test
	a := startCoordAgent(t, cfg, co)
	waitFor(t, "2 live writers", func() bool { return gaugeValue(t, a.reg, "freeway_agent_upstream_writers") == 2 })
	c := dial(t, a.Addr())
	for i := range 30 {
		mustLog(t, c, entries("cat", "m", i, 1))
		waitFor(t, "the queue to drain", func() bool { return a.Status().QueueEntries == 0 })
	}
	wantSeq(t, good.received(t), "cat", "m", 30)
	if n := len(busy.callsSnapshot()); n != tryLaterLimit {
		t.Errorf("the writer answering try_later got %d calls, want %d (then passed over)", n, tryLaterLimit)
	}
}

// TestUpstreamCoordOneWriterTryLater: with one live writer, one that
// answers TRY_LATER is not passed over (there is no other): the agent
// backs off and sends it the batch again until it takes it.
func TestUpstreamCoordOneWriterTryLater(t *testing.T) {
	co := inproc.NewHub().Session()
	busy := startUpstream(t, "127.0.0.1:0", func(n int, _ *scribethrift.Batch) (scribethrift.ResultCode, error) {
		if n < 2*tryLaterLimit {
			return scribethrift.ResultCode_TRY_LATER, nil
		}
		return scribethrift.ResultCode_OK, nil
	})
	joinWriter(t, co, "busy", busy.srv.Addr())
	cfg := testConfig(t.TempDir(), "inproc://")
	a := startCoordAgent(t, cfg, co)
	waitFor(t, "a live writer", func() bool { return gaugeValue(t, a.reg, "freeway_agent_upstream_writers") == 1 })
	c := dial(t, a.Addr())
	mustLog(t, c, entries("cat", "m", 0, 5))
	waitFor(t, "the queue to drain", func() bool { return a.Status().QueueEntries == 0 })
	wantSeq(t, busy.received(t), "cat", "m", 5)
	if n := len(busy.callsSnapshot()); n != 2*tryLaterLimit+1 {
		t.Errorf("the writer got %d calls, want %d", n, 2*tryLaterLimit+1)
	}
}

// TestConnPoolDropsStale: a connection idle in the pool past poolIdle is
// closed and not handed out (the writer may have closed it: a failed call
// on it would pass over a healthy writer); a fresh one is.
func TestConnPoolDropsStale(t *testing.T) {
	up := startUpstream(t, "127.0.0.1:0", nil)
	dialed := func() *upstream {
		c := dial(t, up.srv.Addr())
		return &upstream{addr: up.srv.Addr(), c: c}
	}
	src := &staticSource{addrs: []string{up.srv.Addr()}}
	t0 := time.Unix(1_700_000_000, 0)
	pool := connPool{}
	fresh := dialed()
	pool.put(fresh, src, t0)
	if got := pool.take(up.srv.Addr(), t0.Add(poolIdle/2)); got != fresh {
		t.Fatalf("take of a fresh connection = %v, want it", got)
	}
	stale := dialed()
	pool.put(stale, src, t0)
	if got := pool.take(up.srv.Addr(), t0.Add(poolIdle+time.Second)); got != nil {
		t.Fatalf("take of a stale connection = %v, want nil", got)
	}
	if _, err := stale.c.Log(context.Background(), entries("cat", "m", 0, 1)); err == nil {
		t.Errorf("the stale connection still works; it should have been closed")
	}
	if len(pool) != 0 {
		t.Errorf("pool holds %d connections, want none", len(pool))
	}
}
