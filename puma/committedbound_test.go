package puma

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/ptail"
)

// countScanStore counts the rows its Scans hand over.
type countScanStore struct {
	store.Store
	rows atomic.Int64
}

func (c *countScanStore) Scan(ctx context.Context, table, start, stop string, asOf int64, fn func(row string, cells []store.Cell) error) error {
	return c.Store.Scan(ctx, table, start, stop, asOf, func(row string, cells []store.Cell) error {
		c.rows.Add(1)
		return fn(row, cells)
	})
}

// TestCommittedPartialBounded: the partial state serving builds from the
// store for the shards whose nodes do not answer (Committed.Partial) is
// bounded as a node's is: over PartialBounds.Rows (puma.max_partial_rows)
// or Bytes (serving.fanout_max_bytes, its rows' size as a node sends
// them) it is refused whole with a TooLargeError that names the bound; at
// the bounds it is answered. A shard far over the rows bound is not read
// to its end. The code before built the whole partial whatever its size.
func TestCommittedPartialBounded(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, orders(t))
	e.buckets = 2
	const keys = 2000 // rows of bucket 0; bucket 1 has 10
	var lines [][]byte
	for k := range keys {
		lines = append(lines, order(t0, fmt.Sprint("r", k), "x", k))
	}
	end0 := e.publish("orders", 0, stock(lines...))
	lines = nil
	for k := range 10 {
		lines = append(lines, order(t0, fmt.Sprint("r", k), "y", k))
	}
	end1 := e.publish("orders", 1, stock(lines...))
	r := start(t, e.node("n1"))
	waitEnds(t, r.p, map[int]ptail.Position{0: end0, 1: end1})
	r.stop(t)

	counting := &countScanStore{Store: e.st}
	c := NewCommitted(counting, "puma", e.apps, func(string) int { return e.buckets })
	q := Query{App: "orders", FromMs: t0, ToMs: t0 + 60_000}
	whole, err := c.Partial(ctx, q, []int{0, 1}, PartialBounds{})
	if err != nil {
		t.Fatal(err)
	}
	if len(whole.Rows) != keys+10 {
		t.Fatalf("%d rows, want %d", len(whole.Rows), keys+10)
	}
	// rowBytes is what the rows take in the partial's JSON.
	js, err := json.Marshal(whole.Rows)
	if err != nil {
		t.Fatal(err)
	}
	size := whole.rowBytes()
	if int64(len(js)) != size+1 { // "[" and "]" in place of the last comma
		t.Fatalf("rows encode to %d bytes, rowBytes says %d", len(js), size)
	}

	refused := func(b PartialBounds, bound string) {
		t.Helper()
		part, err := c.Partial(ctx, q, []int{0, 1}, b)
		if !IsTooLarge(err) || !strings.Contains(err.Error(), bound) || !strings.Contains(err.Error(), "narrow") {
			t.Fatalf("bounds %+v: partial %v, error %v; want a TooLargeError naming %s", b, part != nil, err, bound)
		}
	}
	answered := func(b PartialBounds) {
		t.Helper()
		part, err := c.Partial(ctx, q, []int{0, 1}, b)
		if err != nil || len(part.Rows) != keys+10 || len(part.Buckets) != 2 {
			t.Fatalf("bounds %+v: %v", b, err)
		}
	}
	answered(PartialBounds{Rows: keys + 10, Bytes: size})
	refused(PartialBounds{Rows: keys + 9}, "puma.max_partial_rows")
	refused(PartialBounds{Bytes: size - 1}, "serving.fanout_max_bytes")

	// Far over the rows bound in bucket 0: refused before the shard is
	// read to its end.
	counting.rows.Store(0)
	refused(PartialBounds{Rows: 10}, "puma.max_partial_rows")
	if n := counting.rows.Load(); n >= keys {
		t.Fatalf("read %d rows of a shard of %d to refuse it at 10", n, keys)
	}
	counting.rows.Store(0)
	refused(PartialBounds{Bytes: 100}, "serving.fanout_max_bytes")
	if n := counting.rows.Load(); n >= keys {
		t.Fatalf("read %d rows of a shard of %d to refuse it at 100 bytes", n, keys)
	}
	// A grouping that merges the rows fits where the rows would not.
	part, err := c.Partial(ctx, Query{App: "orders", FromMs: t0, ToMs: t0 + 60_000, GroupBy: []string{"kind"}}, []int{0, 1}, PartialBounds{Rows: 2, Bytes: 1000})
	if err != nil || len(part.Rows) != 2 {
		t.Fatalf("by kind: %v %v", part, err)
	}

	// A query answered from the store alone (mode=committed, or serving
	// without a Puma node) is held to the rows bound too, whatever its
	// limit: its rows before order and limit are what it holds.
	limited := Query{App: "orders", FromMs: t0, ToMs: t0 + 60_000, Limit: 5}
	if res, err := NewCommitted(e.st, "puma", e.apps, func(string) int { return e.buckets }).WithMaxRows(keys+10).Query(ctx, limited); err != nil || len(res.Rows) != 5 {
		t.Fatalf("committed query at its bound: %v", err)
	}
	counting.rows.Store(0)
	res, err := NewCommitted(counting, "puma", e.apps, func(string) int { return e.buckets }).WithMaxRows(10).Query(ctx, limited)
	if !IsTooLarge(err) || !strings.Contains(err.Error(), "puma.max_partial_rows") {
		t.Fatalf("committed query over its bound: %v, error %v; want a TooLargeError", res, err)
	}
	if n := counting.rows.Load(); n >= keys {
		t.Fatalf("read %d rows of a shard of %d to refuse a committed query at 10", n, keys)
	}
}

// waitEnds waits until the node has committed each bucket's end.
func waitEnds(t *testing.T, p *Puma, ends map[int]ptail.Position) {
	t.Helper()
	testkit.Eventually(t, "commits", func() error {
		n := 0
		for _, s := range p.Statuses() {
			if end, ok := ends[s.Bucket]; ok && s.Committed == end.String() {
				n++
			}
		}
		if n != len(ends) {
			return fmt.Errorf("%d of %d buckets committed", n, len(ends))
		}
		return nil
	})
}
