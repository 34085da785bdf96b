package puma

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/prometheus/client_golang/prometheus"
)

// TestKeyFlood: a flood of distinct group keys stops at puma.max_cells,
// over every shard of the node; the keys that were there keep aggregating
// exactly, the refused lines are counted, sampled and logged.
func TestKeyFlood(t *testing.T) {
	e := newEnv(t, orders(t))
	e.buckets = 2
	reg := prometheus.NewPedanticRegistry()
	var logs testkit.LogBuffer
	p := e.node("n1", func(c *Config, d *Deps) {
		c.MaxCells = 100
		d.Metrics = reg
		d.Log = slog.New(slog.NewTextHandler(&logs, nil))
	})
	s0, s1 := testShard(t, p, 0), testShard(t, p, 1)
	adopt(p, s0)
	adopt(p, s1)
	feed(s0, 1, order(t0, "eu", "book", 1), order(t0, "us", "pen", 1))
	feed(s1, 1, order(t0, "eu", "pen", 1))
	const flood = 10_000
	for i := range flood {
		s := []*shard{s0, s1}[i%2]
		feed(s, int64(2+i), order(t0+int64(i%120)*1000, fmt.Sprint("r", i), "x", 1), order(t0, "eu", "book", 1))
		feed(s1, int64(2+i), order(t0, "eu", "pen", 2))
	}
	if n := p.cells.n.Load(); n != 100 {
		t.Fatalf("%d cells counted, want 100", n)
	}
	if n := s0.tables[0].ncells + s1.tables[0].ncells; n != 100 {
		t.Fatalf("%d cells in memory, want 100", n)
	}
	got := rows(t, p, Query{GroupBy: []string{"region", "kind"}, AllWindows: true, FromMs: t0, ToMs: t0 + 3600_000})
	var kept []string
	for _, r := range got {
		if !strings.Contains(r, "kind=x") {
			kept = append(kept, r)
		}
	}
	equalRows(t, "existing keys", kept, []string{
		"+0..+60s {kind=book region=eu} {hi=1 lo=1 mean=1 n=10001 total=10001}",
		"+0..+60s {kind=pen region=eu} {hi=2 lo=1 mean=1.999900009999 n=10001 total=20001}",
		"+0..+60s {kind=pen region=us} {hi=1 lo=1 mean=1 n=1 total=1}",
	})
	rej, _ := p.Rejections("orders")
	if rej.Dropped["max_cells"] != flood-96 {
		t.Fatalf("max_cells %d, want %d", rej.Dropped["max_cells"], flood-96)
	}
	if gather(t, reg)["freeway_puma_records_dropped_total{app=orders,reason=max_cells}"] != flood-96 {
		t.Fatal("not in the metric")
	}
	var sampled int
	for _, sm := range rej.Samples {
		if sm.Reason == "max_cells" && strings.Contains(sm.Error, "puma.max_cells (100") && strings.Contains(sm.Line, `"kind":"x"`) {
			sampled++
		}
	}
	if sampled != SamplesPerReason {
		t.Fatalf("samples %+v", rej.Samples)
	}
	if n := strings.Count(logs.String(), "reason=max_cells"); n < 1 || n > 10 {
		t.Fatalf("%d log lines:\n%s", n, logs.String())
	}

	// Time moves on: the refused line of a new window still moves the
	// watermark, retention drops the old windows and gives their cells
	// back, and the new window's lines are taken.
	feed(s0, 20_000, order(t0+2*3600_000, "eu", "book", 1))
	if err := s0.checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := p.cells.n.Load(); n != int64(s0.tables[0].ncells+s1.tables[0].ncells) || n >= 100 {
		t.Fatalf("%d cells counted, %d in memory", n, s0.tables[0].ncells+s1.tables[0].ncells)
	}
	feed(s0, 20_001, order(t0+2*3600_000, "eu", "book", 1))
	equalRows(t, "the new window", rows(t, p, Query{FromMs: t0 + 2*3600_000, ToMs: t0 + 3*3600_000}), []string{"+7200..+7260s {kind=book region=eu} {hi=1 lo=1 mean=1 n=1 total=1}"})
	// A stopping shard gives its cells back.
	s1.release()
	if n := p.cells.n.Load(); n != int64(s0.tables[0].ncells) {
		t.Fatalf("%d cells counted after a shard stopped, %d in memory", n, s0.tables[0].ncells)
	}
}

// TestMaxCellsLoadsCommittedState: recovery loads every committed cell,
// even beyond max_cells (lowered since); new keys are refused until there
// is room, existing ones keep aggregating.
func TestMaxCellsLoadsCommittedState(t *testing.T) {
	e := newEnv(t, orders(t))
	ctx := context.Background()
	s := testShard(t, e.node("n1"), 0)
	for i := range 10 {
		feed(s, int64(i+1), order(t0, fmt.Sprint("r", i), "x", 1))
	}
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	p2 := e.node("n2", func(c *Config, d *Deps) { c.MaxCells = 5 })
	s2 := testShard(t, p2, 0)
	if s2.tables[0].ncells != 10 || p2.cells.n.Load() != 10 {
		t.Fatalf("loaded %d cells, counted %d", s2.tables[0].ncells, p2.cells.n.Load())
	}
	feed(s2, 20, order(t0, "r0", "x", 1), order(t0, "new", "x", 1))
	equalRows(t, "rows", memRows(t, s2, Query{GroupBy: []string{}}), []string{"+0..+60s {} {hi=1 lo=1 mean=1 n=11 total=11}"})
	if s2.tables[0].drops[reasonMaxCells] != 1 {
		t.Fatalf("drops %v", s2.tables[0].drops)
	}
}

// TestMaxCellsThroughSegments: the bound holds for a running node reading
// segments; a refused line creates no window but moves the watermark, so
// that retention can free room.
func TestMaxCellsThroughSegments(t *testing.T) {
	e := newEnv(t, orders(t))
	var lines [][]byte
	for i := range 50 {
		lines = append(lines, order(t0+1000, fmt.Sprint("r", i), "x", 1))
	}
	e.publish("orders", 0, stock(lines...))
	pos := e.publish("orders", 0, stock(order(t0+200_000, "new", "x", 1), order(t0+1000, "r1", "x", 1)))
	p := e.node("n1", func(c *Config, d *Deps) { c.MaxCells = 20 })
	start(t, p)
	waitCommitted(t, p, pos)
	equalRows(t, "rows", rows(t, p, Query{GroupBy: []string{}}), []string{"+0..+60s {} {hi=1 lo=1 mean=1 n=21 total=21}"})
	p.mu.RLock()
	s := p.shards[shardID{"orders", 0}]
	p.mu.RUnlock()
	s.mu.RLock()
	defer s.mu.RUnlock()
	if tb := s.tables[0]; tb.watermark != t0+200_000 || len(tb.spans[0].windows) != 1 || tb.drops[reasonMaxCells] != 31 {
		t.Fatalf("watermark %+d, %d windows, drops %v", tb.watermark-t0, len(tb.spans[0].windows), tb.drops)
	}
}
