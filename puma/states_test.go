package puma

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/backoff"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// holdStore holds every read of one row until released.
type holdStore struct {
	store.Store
	row  string
	once sync.Once
	gate chan struct{}
}

func (h *holdStore) Get(ctx context.Context, table, row string, asOf int64) ([]store.Cell, error) {
	if row == h.row {
		select {
		case <-h.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return h.Store.Get(ctx, table, row, asOf)
}

func (h *holdStore) release() { h.once.Do(func() { close(h.gate) }) }

// testClock is a clock that moves only when told.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func stateOf(p *Puma, bucket int) Status {
	for _, st := range p.Statuses() {
		if st.Bucket == bucket {
			return st
		}
	}
	return Status{}
}

// TestFailedShardIsReported: a shard whose recovery fails on a malformed
// cell row is reported failed, with its error, in Statuses, Readiness and
// every answer, and the other shard keeps answering. Once the row is
// repaired, Run's retry recovers it and answers are complete again.
func TestFailedShardIsReported(t *testing.T) {
	e := newEnv(t, orders(t))
	e.buckets = 2
	pos0 := e.publish("orders", 0, stock(fourOrders()...))
	pos1 := e.publish("orders", 1, stock(order(t0+5000, "us", "book", 100)))
	p1 := e.node("n1")
	r1 := start(t, p1)
	testkit.Eventually(t, "both committed", func() error {
		st := p1.Statuses()
		if st[0].Committed != pos0.String() || st[1].Committed != pos1.String() {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	complete := rows(t, p1, Query{})
	epoch := stateOf(p1, 1).Epoch
	r1.stop(t)

	// A row of bucket 1 whose window part is not a window: recovery
	// cannot load it, and must not load the shard without it.
	bad := appPrefix("orders", 1, e.apps[0], fingerprint(e.apps[0], e.apps[0].WindowMs)) + "not-a-window"
	if err := e.st.Put(context.Background(), "puma", []store.Cell{{Row: bad, Column: "v", Timestamp: epoch, Value: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	// The clock stands still until the repair, so that Run does not try
	// the failed shard again while the test looks at it.
	clock := &testClock{now: time.Now()}
	reg := prometheus.NewPedanticRegistry()
	p2 := e.node("n2", func(c *Config, d *Deps) { d.Now = clock.Now; d.Metrics = reg })
	start(t, p2)
	// Both may be so before Run's first pass ends, and the node's
	// readiness known only after it: wait for it too.
	testkit.Eventually(t, "orders/0 running, orders/1 failed, the first pass over", func() error {
		if st := stateOf(p2, 0); st.State != StateRunning {
			return fmt.Errorf("%+v", st)
		}
		if st := stateOf(p2, 1); st.State != StateFailed || st.Failures < 1 {
			return fmt.Errorf("%+v", st)
		}
		if !p2.running.Load() {
			return errors.New("the first pass is not over")
		}
		return nil
	})
	st := stateOf(p2, 1)
	if !strings.Contains(st.Error, "malformed cell row") || st.LastAttempt.IsZero() || !st.RetryAt.After(st.LastAttempt) {
		t.Fatalf("failed status %+v", st)
	}
	m := gather(t, reg)
	for state, want := range map[string]float64{"running": 1, "failed": 1, "recovering": 0, "elsewhere": 0} {
		if got := m["freeway_puma_shards{state="+state+"}"]; got != want {
			t.Errorf("freeway_puma_shards{state=%q} = %v, want %v", state, got, want)
		}
	}
	rd := p2.Readiness()
	if rd.Ready || len(rd.Shards) != 1 || rd.Shards[0].Bucket != 1 || !strings.Contains(rd.String(), "orders/1: failed at ") ||
		!strings.Contains(rd.String(), "malformed cell row") || !strings.Contains(rd.Reason, "1 of 2 shards") {
		t.Fatalf("readiness %+v:\n%s", rd, rd)
	}
	res, err := p2.Query(context.Background(), Query{App: "orders", FromMs: t0 - 3600_000, ToMs: t0 + 3600_000})
	if err != nil {
		t.Fatal(err)
	}
	equalRows(t, "orders/0 answers", formatRows(res), fourOrdersRows)
	if len(res.Missing) != 1 || res.Missing[0].Bucket != 1 || res.Missing[0].State != StateFailed || !strings.Contains(res.Missing[0].Error, "malformed cell row") {
		t.Fatalf("missing %+v", res.Missing)
	}

	// Repaired: the next retry recovers it.
	if err := e.st.DeleteUpTo(context.Background(), "puma", bad, bad+"\x00", store.Latest-1); err != nil {
		t.Fatal(err)
	}
	if again := stateOf(p2, 1); again.State != StateFailed || again.LastAttempt != st.LastAttempt {
		t.Fatalf("tried again before its retry time: %+v", again)
	}
	clock.advance(retryMax)
	testkit.Eventually(t, "orders/1 recovered", func() error {
		if !p2.Ready() {
			return errors.New(p2.Readiness().String())
		}
		return nil
	})
	res, err = p2.Query(context.Background(), Query{App: "orders", FromMs: t0 - 3600_000, ToMs: t0 + 3600_000})
	if err != nil || res.Partial() {
		t.Fatalf("%v %+v", err, res)
	}
	equalRows(t, "complete again", formatRows(res), complete)
}

// TestRecoveringShardIsReported: while a shard's recovery waits on a slow
// store it is reported recovering, and answers lack it and say so.
func TestRecoveringShardIsReported(t *testing.T) {
	e := newEnv(t, orders(t))
	e.buckets = 2
	e.publish("orders", 0, stock(fourOrders()...))
	pos1 := e.publish("orders", 1, stock(order(t0+5000, "us", "book", 100)))
	hs := &holdStore{Store: e.st, row: commitRow("orders", 1), gate: make(chan struct{})}
	defer hs.release()
	p := e.node("n1", func(c *Config, d *Deps) { d.Store = hs })
	start(t, p)
	// orders/0 may recover before Run's first pass has tried orders/1
	// (nor is the node's readiness known before that pass ends): wait for
	// both.
	testkit.Eventually(t, "orders/0 running, the first pass over", func() error {
		if st := stateOf(p, 0); st.State != StateRunning {
			return fmt.Errorf("%+v", st)
		}
		if !p.running.Load() {
			return errors.New("the first pass is not over")
		}
		return nil
	})
	if st := stateOf(p, 1); st.State != StateRecovering || st.Since.IsZero() || st.Error != "" {
		t.Fatalf("orders/1: %+v", st)
	}
	if rd := p.Readiness(); rd.Ready || !strings.Contains(rd.String(), "orders/1: recovering since ") || strings.Contains(rd.String(), "orders/0") {
		t.Fatalf("readiness:\n%s", rd)
	}
	testkit.Eventually(t, "orders/0 read", func() error {
		res, err := p.Query(context.Background(), Query{App: "orders", FromMs: t0 - 3600_000, ToMs: t0 + 3600_000})
		if err != nil {
			return err
		}
		if got := formatRows(res); strings.Join(got, "\n") != strings.Join(fourOrdersRows, "\n") {
			return fmt.Errorf("rows %v", got)
		}
		if len(res.Missing) != 1 || res.Missing[0] != (MissingShard{Category: "orders", Bucket: 1, State: StateRecovering}) {
			return fmt.Errorf("missing %+v", res.Missing)
		}
		return nil
	})
	hs.release()
	waitRead(t, p, 1, pos1)
	if res, err := p.Query(context.Background(), Query{App: "orders", FromMs: t0 - 3600_000, ToMs: t0 + 3600_000}); err != nil || res.Partial() || len(res.Rows) != 4 {
		t.Fatalf("%v %+v", err, res)
	}
	if !p.Ready() {
		t.Fatal(p.Readiness())
	}
}

func TestRetryDelay(t *testing.T) {
	for failures, want := range map[int]time.Duration{0: 2 * time.Second, 1: 2 * time.Second, 2: 4 * time.Second, 5: 32 * time.Second, 6: time.Minute, 100: time.Minute} {
		if got := backoff.Delay(retryMin, retryMax, failures); got != want {
			t.Errorf("retry delay after %d failures = %v, want %v", failures, got, want)
		}
	}
}

func TestClipError(t *testing.T) {
	if got := clipError("short"); got != "short" {
		t.Fatal(got)
	}
	long := strings.Repeat("é", maxErrorText) // 2 bytes a rune
	got := clipError(long)
	if !strings.HasSuffix(got, fmt.Sprintf("… (%d bytes)", len(long))) || len(got) > maxErrorText+32 || !utf8.ValidString(got) {
		t.Fatalf("%d bytes: %q", len(got), got[len(got)-40:])
	}
}
