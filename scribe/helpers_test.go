package scribe

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/diskqueue"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// got is one entry as upstream received it.
type got struct {
	seq int64 // 0 for entries sent with Log
	cat string
	msg string
}

// dedupKey is what Puma deduplicates an agent's entry by: the agent id,
// the incarnation of the queue that numbered it, and its sequence number.
type dedupKey struct {
	agent, incarnation string
	seq                int64
}

// fakeUpstream is a fake calligraphus: it records every call and answers
// with answer(call index, batch), OK by default.
type fakeUpstream struct {
	srv    *scribeapi.Server
	mu     sync.Mutex
	calls  []*scribethrift.Batch // every LogBatch (and Log, as a batch with seq 0)
	ok     []*scribethrift.Batch // those answered OK
	answer func(n int, b *scribethrift.Batch) (scribethrift.ResultCode, error)
	// gate, if set, runs at the start of every call outside mu (it may
	// block, so that calls overlap); active counts the calls inside it.
	gate      func(b *scribethrift.Batch)
	active    atomic.Int64
	maxActive atomic.Int64
}

func (u *fakeUpstream) LogBatch(_ context.Context, b *scribethrift.Batch) (scribethrift.ResultCode, error) {
	if u.gate != nil {
		n := u.active.Add(1)
		for m := u.maxActive.Load(); n > m && !u.maxActive.CompareAndSwap(m, n); m = u.maxActive.Load() {
		}
		u.gate(b)
		u.active.Add(-1)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	n := len(u.calls)
	u.calls = append(u.calls, b)
	rc, err := scribethrift.ResultCode_OK, error(nil)
	if u.answer != nil {
		rc, err = u.answer(n, b)
	}
	if err == nil && rc == scribethrift.ResultCode_OK {
		u.ok = append(u.ok, b)
	}
	return rc, err
}

func (u *fakeUpstream) Log(ctx context.Context, es []*scribethrift.LogEntry) (scribethrift.ResultCode, error) {
	return u.LogBatch(ctx, &scribethrift.Batch{Messages: es})
}

// received returns what was answered OK, in order, with duplicates (a
// re-sent batch) removed after checking they are identical: an entry's
// identity is (agent id, incarnation, sequence number), and one identity
// with two contents is a collision that would make Puma drop an entry.
func (u *fakeUpstream) received(t testing.TB) []got {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []got
	byKey := map[dedupKey]got{}
	for _, b := range u.ok {
		for i, e := range b.Messages {
			g := got{cat: e.Category, msg: string(e.Message)}
			if b.FirstSeq != 0 {
				g.seq = b.FirstSeq + int64(i)
				k := dedupKey{b.AgentID, b.GetIncarnation(), g.seq}
				if prev, dup := byKey[k]; dup {
					if prev != g {
						t.Fatalf("entry identity %s/%d (incarnation set: %v) re-sent with other content: %v then %v",
							k.agent, k.seq, k.incarnation != "", prev, g)
					}
					continue
				}
				byKey[k] = g
			}
			out = append(out, g)
		}
	}
	return out
}

// pumaCounts replays what upstream answered OK through Puma's
// deduplication (per agent id and incarnation, an entry whose sequence
// number was seen is dropped, and so is one more than segment.SeqWindow
// below the highest seen, unchecked) and counts each message that
// survives.
func (u *fakeUpstream) pumaCounts() map[string]int {
	u.mu.Lock()
	defer u.mu.Unlock()
	type id struct {
		key string
		seq int64
	}
	seen := map[id]bool{}
	top := map[string]int64{}
	n := map[string]int{}
	for _, b := range u.ok {
		key := b.AgentID
		if b.IsSetIncarnation() {
			key += "/" + b.GetIncarnation()
		}
		for i, e := range b.Messages {
			if b.FirstSeq != 0 {
				seq := b.FirstSeq + int64(i)
				if seen[id{key, seq}] || seq <= top[key]-segment.SeqWindow {
					continue
				}
				seen[id{key, seq}] = true
				top[key] = max(top[key], seq)
			}
			n[string(e.Message)]++
		}
	}
	return n
}

// wantOnce checks that Puma would count exactly the messages want, each once.
func wantOnce(t testing.TB, counts map[string]int, want []string) {
	t.Helper()
	wanted := map[string]bool{}
	for _, m := range want {
		wanted[m] = true
		if counts[m] != 1 {
			t.Errorf("%q counted %d times, want once", m, counts[m])
		}
	}
	for m, c := range counts {
		if !wanted[m] {
			t.Errorf("%q counted %d times, never accepted", m, c)
		}
	}
}

func msgs(es []*scribethrift.LogEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, string(e.Message))
	}
	return out
}

func (u *fakeUpstream) count(t testing.TB) int { return len(u.received(t)) }

func (u *fakeUpstream) callsSnapshot() []*scribethrift.Batch {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.calls)
}

// startUpstream serves a fake calligraphus on addr ("127.0.0.1:0" for any
// port) until the test ends.
func startUpstream(t testing.TB, addr string, answer func(int, *scribethrift.Batch) (scribethrift.ResultCode, error)) *fakeUpstream {
	t.Helper()
	return startUpstreamLimits(t, addr, thriftsrv.Limits{}, answer)
}

// startUpstreamLimits is startUpstream with the port's limits.
func startUpstreamLimits(t testing.TB, addr string, limits thriftsrv.Limits, answer func(int, *scribethrift.Batch) (scribethrift.ResultCode, error)) *fakeUpstream {
	t.Helper()
	u := &fakeUpstream{answer: answer}
	srv, err := scribeapi.Listen(addr, u, scribeapi.Info{Name: "fake-calligraphus"}, limits, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	u.srv = srv
	serve(t, srv.Serve)
	return u
}

// serve runs f until the test ends.
func serve(t testing.TB, f func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
}

// deadAddr is an address nothing listens on (until a test binds it).
func deadAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func testConfig(dir string, upstream ...string) Config {
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.Upstream = upstream
	cfg.QueueDir = dir
	cfg.RetryMin = config.Duration(time.Millisecond)
	cfg.RetryMax = config.Duration(20 * time.Millisecond)
	cfg.TailPollInterval = config.Duration(2 * time.Millisecond)
	cfg.TailRotateWait = config.Duration(10 * time.Millisecond)
	cfg.UpstreamTimeout = config.Duration(10 * time.Second)
	// One batch in flight: most tests check the order upstream sees;
	// inflight_test.go has the others.
	cfg.MaxInFlight = 1
	return cfg
}

// agent is a running Agent.
type agent struct {
	*Agent
	reg  *prometheus.Registry
	logs *testkit.LogBuffer
	stop func() error
}

func startAgent(t testing.TB, cfg Config) *agent {
	t.Helper()
	return startAgentClock(t, cfg, nil)
}

func startAgentClock(t testing.TB, cfg Config, clk clock) *agent {
	t.Helper()
	return startAgentWith(t, cfg, nil, clk)
}

// startAgentWith runs an agent until the test ends: its upstream the
// writers of writers when not nil (a coord upstream), its waits on clk
// when not nil.
func startAgentWith(t testing.TB, cfg Config, writers coord.Coord, clk clock) *agent {
	t.Helper()
	return startAgentSetup(t, cfg, writers, clk, nil, nil)
}

// startAgentSetup is startAgentWith, calling setup (when not nil) with the
// agent before it runs, and fileHook (when not nil) before each change to
// its files.
func startAgentSetup(t testing.TB, cfg Config, writers coord.Coord, clk clock, setup func(*Agent), fileHook func(diskqueue.FileOp, string) error) *agent {
	t.Helper()
	lb := &testkit.LogBuffer{}
	reg := prometheus.NewPedanticRegistry()
	a, err := newAgent(cfg, Deps{Common: component.Common{Log: lb.Logger(), Metrics: reg}, Writers: writers}, clk, fileHook)
	if err != nil {
		t.Fatalf("new agent: %v", err)
	}
	if setup != nil {
		setup(a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stop := sync.OnceValue(func() error {
		cancel()
		return <-done
	})
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("agent run: %v", err)
		}
	})
	return &agent{Agent: a, reg: reg, logs: lb, stop: stop}
}

func (a *agent) stopped(t testing.TB) {
	t.Helper()
	if err := a.stop(); err != nil {
		t.Fatalf("agent run: %v", err)
	}
}

func dial(t testing.TB, addr string) *scribeapi.Client {
	t.Helper()
	c, err := scribeapi.Dial(addr, thriftsrv.Limits{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func entries(cat, prefix string, from, n int) []*scribethrift.LogEntry {
	es := make([]*scribethrift.LogEntry, n)
	for i := range es {
		es[i] = &scribethrift.LogEntry{Category: cat, Message: fmt.Appendf(nil, "%s-%d", prefix, from+i)}
	}
	return es
}

func mustLog(t testing.TB, c *scribeapi.Client, es []*scribethrift.LogEntry) {
	t.Helper()
	rc, err := c.Log(context.Background(), es)
	if err != nil || rc != scribethrift.ResultCode_OK {
		t.Fatalf("log: %v %v", rc, err)
	}
}

// wantSeq checks that gs are prefix-from..., numbered 1.. in order.
func wantSeq(t testing.TB, gs []got, cat, prefix string, n int) {
	t.Helper()
	if len(gs) != n {
		t.Fatalf("received %d entries, want %d", len(gs), n)
	}
	for i, g := range gs {
		want := got{seq: int64(i + 1), cat: cat, msg: fmt.Sprintf("%s-%d", prefix, i)}
		if g != want {
			t.Fatalf("entry %d = %+v, want %+v", i, g, want)
		}
	}
}
