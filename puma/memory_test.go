package puma

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/prometheus/client_golang/prometheus"
)

// TestMemoryLimitFlood: a flood of distinct group keys, far more than
// puma.memory_limit has room for, stops creating cells once their
// accounted bytes reach the limit, over every shard of the node; the
// keys that were there keep aggregating exactly, every refused line is
// counted (max_cells, with a message naming memory_limit), every line
// taken is in the answer once, and a node recovering the checkpoint gives
// the same answers.
func TestMemoryLimitFlood(t *testing.T) {
	const limit = 32 << 10
	e := newEnv(t, orders(t))
	e.buckets = 2
	reg := prometheus.NewPedanticRegistry()
	p := e.node("n1", func(c *Config, d *Deps) {
		c.MemoryLimit = limit
		d.Metrics = reg
	})
	s0, s1 := testShard(t, p, 0), testShard(t, p, 1)
	adopt(p, s0)
	adopt(p, s1)
	feed(s0, 1, order(t0, "eu", "book", 1))
	feed(s1, 1, order(t0, "eu", "pen", 1))
	const flood = 20_000
	for i := range flood {
		s := []*shard{s0, s1}[i%2]
		feed(s, int64(2+i), order(t0+int64(i%60)*1000, fmt.Sprint("r", i), "x", 1), order(t0, "eu", "book", 1))
	}
	cells, bytes := p.Cells()
	if held := int64(s0.tables[0].ncells + s1.tables[0].ncells); cells != held || cells < 10 || cells > flood/10 {
		t.Fatalf("%d cells counted, %d held: the limit did not bound them", cells, held)
	}
	// A new cell is taken only while the bytes are below the limit: they
	// exceed it by less than one cell.
	if one := s0.tables[0].layout.cellOverhead(fmt.Sprint(`["r`, flood, `","x"]`)); bytes < limit || bytes >= limit+one {
		t.Fatalf("%d bytes accounted, limit %d, a cell %d", bytes, limit, one)
	}
	if bytes != s0.tables[0].bytes+s1.tables[0].bytes {
		t.Fatalf("%d bytes accounted, %d held", bytes, s0.tables[0].bytes+s1.tables[0].bytes)
	}
	got := rows(t, p, Query{GroupBy: []string{"region", "kind"}, AllWindows: true, FromMs: t0, ToMs: t0 + 3600_000})
	taken := 0
	var kept []string
	for _, r := range got {
		if strings.Contains(r, "kind=x") {
			if !strings.HasSuffix(r, "{hi=1 lo=1 mean=1 n=1 total=1}") {
				t.Fatalf("flood row %s", r)
			}
			taken++
		} else {
			kept = append(kept, r)
		}
	}
	equalRows(t, "existing keys", kept, []string{
		"+0..+60s {kind=book region=eu} {hi=1 lo=1 mean=1 n=20001 total=20001}",
		"+0..+60s {kind=pen region=eu} {hi=1 lo=1 mean=1 n=1 total=1}",
	})
	if taken != int(cells)-3 { // eu/book is in both shards
		t.Fatalf("%d flood rows, %d cells", taken, cells)
	}
	rej, _ := p.Rejections("orders")
	if rej.Dropped["max_cells"] != uint64(flood-taken) {
		t.Fatalf("max_cells %d, want %d", rej.Dropped["max_cells"], flood-taken)
	}
	if gather(t, reg)["freeway_puma_records_dropped_total{app=orders,reason=max_cells}"] != float64(flood-taken) {
		t.Fatal("not in the metric")
	}
	var sampled int
	for _, sm := range rej.Samples {
		if sm.Reason == "max_cells" && strings.Contains(sm.Error, "puma.memory_limit (32KiB") {
			sampled++
		}
	}
	if sampled != SamplesPerReason {
		t.Fatalf("samples %+v", rej.Samples)
	}

	// Recovery is exact: another node loads the committed cells whole,
	// whatever its limit.
	ctx := context.Background()
	for _, s := range []*shard{s0, s1} {
		if err := s.checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	p2 := e.node("n2", func(c *Config, d *Deps) { c.MemoryLimit = 1 })
	r0, r1 := testShard(t, p2, 0), testShard(t, p2, 1)
	adopt(p2, r0)
	adopt(p2, r1)
	equalRows(t, "recovered", rows(t, p2, Query{GroupBy: []string{"region", "kind"}, AllWindows: true, FromMs: t0, ToMs: t0 + 3600_000}), got)
	feed(r0, 100_000, order(t0, "eu", "book", 1), order(t0, "new", "x", 1))
	if r0.tables[0].drops[reasonMaxCells] != 1 {
		t.Fatalf("drops %v", r0.tables[0].drops)
	}
}

// TestAppMaxCells: an app's max_cells bounds its cells over the node's
// shards; another app of the same category keeps aggregating every line,
// and the node's budget counts both.
func TestAppMaxCells(t *testing.T) {
	e := newEnv(t,
		orders(t, func(s *apps.Spec) { s.MaxCells = 10 }),
		orders(t, func(s *apps.Spec) { s.Name = "orders2"; s.GroupBy = []string{"kind"} }))
	e.buckets = 2
	p := e.node("n1")
	s0, s1 := testShard(t, p, 0), testShard(t, p, 1)
	adopt(p, s0)
	adopt(p, s1)
	const flood = 1000
	for i := range flood {
		s := []*shard{s0, s1}[i%2]
		feed(s, int64(1+i), order(t0, fmt.Sprint("r", i), "x", 1))
	}
	if n := s0.tables[0].ncells + s1.tables[0].ncells; n != 10 {
		t.Fatalf("orders holds %d cells, want 10", n)
	}
	if n := p.cells.n.Load(); n != 10+2 {
		t.Fatalf("node counts %d cells, want 12", n)
	}
	equalRows(t, "orders", rows(t, p, Query{App: "orders", GroupBy: []string{}}), []string{"+0..+60s {} {hi=1 lo=1 mean=1 n=10 total=10}"})
	equalRows(t, "orders2", rows(t, p, Query{App: "orders2", GroupBy: []string{}}), []string{fmt.Sprintf("+0..+60s {} {hi=1 lo=1 mean=1 n=%d total=%d}", flood, flood)})
	rej, _ := p.Rejections("orders")
	if rej.Dropped["max_cells"] != flood-10 {
		t.Fatalf("orders max_cells %d", rej.Dropped["max_cells"])
	}
	if len(rej.Samples) == 0 || !strings.Contains(rej.Samples[0].Error, "the app's max_cells (10") {
		t.Fatalf("samples %+v", rej.Samples)
	}
	if rej2, _ := p.Rejections("orders2"); rej2.Dropped["max_cells"] != 0 {
		t.Fatalf("orders2 max_cells %d", rej2.Dropped["max_cells"])
	}
	// A stopping shard gives its cells back to the app's bound too.
	s1.release()
	if n := p.appCells["orders"].n.Load(); n != int64(s0.tables[0].ncells) {
		t.Fatalf("app counts %d cells after a shard stopped, %d held", n, s0.tables[0].ncells)
	}
}

// TestMemoryLimitBoundsHeap: at more than twenty times as many distinct
// keys as puma.memory_limit has room for, the live heap grows by less
// than the limit plus a stated overhead (16 MiB: the accounted bytes are
// an estimate of a cell, and the shard's buffers and samples come on
// top), where the keys taken whole need more (about 55 MiB measured
// when each cell was an allocation of its own, 185 bytes a cell; about
// 37 MiB at the 128 bytes a cell this test measures since a window keeps
// its cells in arrays). Go heap after a collection, not RSS: it
// does not depend on when the runtime returns memory to the system.
func TestMemoryLimitBoundsHeap(t *testing.T) {
	if testing.Short() {
		t.Skip("feeds 300k lines")
	}
	const limit = 1 << 20
	const overhead = 16 << 20
	e := newEnv(t, orders(t))
	p := e.node("n1", func(c *Config, d *Deps) { c.MemoryLimit = limit })
	s := testShard(t, p, 0)
	adopt(p, s)
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	const keys, batch = 300_000, 1000
	for i := 0; i < keys; i += batch {
		lines := make([][]byte, 0, batch)
		for j := range batch {
			lines = append(lines, order(t0+int64(j%60)*1000, fmt.Sprint("region-with-a-long-name-", i+j), "x", 1))
		}
		feed(s, int64(1+i), lines...)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	grown := int64(ms.HeapAlloc) - int64(before)
	cells, bytes := p.Cells()
	t.Logf("%d cells, %d bytes accounted, heap grew %d bytes (%d a cell)", cells, bytes, grown, grown/max(cells, 1))
	if grown > limit+overhead {
		t.Fatalf("heap grew %s, more than the limit %s plus %s", config.ByteSize(grown), config.ByteSize(limit), config.ByteSize(overhead))
	}
	taken := uint64(s.tables[0].ncells)
	if d := s.tables[0].drops[reasonMaxCells]; d+taken != keys || taken*20 > keys {
		t.Fatalf("%d taken, %d refused, of %d", taken, d, keys)
	}
	equalRows(t, "taken", rows(t, p, Query{GroupBy: []string{}, AllWindows: true, FromMs: t0, ToMs: t0 + 3600_000}),
		[]string{fmt.Sprintf("+0..+60s {} {hi=1 lo=1 mean=1 n=%d total=%d}", taken, taken)})
	runtime.KeepAlive(s)
}
