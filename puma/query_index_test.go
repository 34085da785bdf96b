package puma

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/config"
)

// TestPointAndTopNAgreeWithScan: a node's answers to point queries
// (where fixing every group key: each key looked up per window) and to
// limits with and without order_by (a bounded heap fed as the cells are
// read) are exactly those of a scan of every cell and a sort of every
// row: the committed state's answer from the store (a scan and a merge)
// with no limit, cut to the limit. Random cells over 30 minutes, amounts
// of a few values so that order_by has many ties, and a memory limit
// that evicts the older windows, so that the answers read memory and
// store together; where with several values per key (some absent), the
// app's key and subsets of it, roll-ups and all windows.
func TestPointAndTopNAgreeWithScan(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	e.apps = evictApps(t, "orders")
	const windows, regions, kinds = 30, 40, 7
	p := e.node("n1", func(c *Config, d *Deps) { c.MemoryLimit = config.ByteSize(4 * 150 * 250) })
	s := testShardOf(t, p, "orders", 0)
	adopt(p, s)
	rng := rand.New(rand.NewPCG(10, 10))
	off := int64(1)
	for w := range windows {
		var lines [][]byte
		for r := range regions {
			for k := range kinds {
				// About half the keys in each window, some twice.
				for range rng.IntN(3) - rng.IntN(2) {
					lines = append(lines, order(t0+int64(w)*60_000+rng.Int64N(60_000), fmt.Sprint("r", r), fmt.Sprint("k", k), rng.IntN(4)))
				}
			}
		}
		feed(s, off, lines...)
		off += int64(len(lines))
		if err := s.checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if mem, _ := p.Memory("orders"); mem.EvictedWindows < windows/3 {
		t.Fatalf("memory %+v: too few windows evicted for the test", mem)
	}
	ref := NewCommitted(e.st, "puma", e.apps, func(string) int { return 1 })

	answer := func(src querier, q Query) ([]string, bool) {
		t.Helper()
		res, err := src.Query(ctx, q)
		if err != nil {
			t.Fatalf("query %+v: %v", q, err)
		}
		return formatRows(res), res.Truncated
	}
	pick := func(prefix string, n, most int) []string {
		var out []string
		for range 1 + rng.IntN(most) {
			out = append(out, fmt.Sprint(prefix, rng.IntN(n)))
		}
		return out
	}
	groupBys := [][]string{nil, {}, {"kind"}, {"region"}, {"kind", "region"}}
	aggs := []string{"n", "total", "lo", "hi", "mean"}
	for i := range 400 {
		w0 := rng.IntN(windows)
		q := Query{App: "orders", FromMs: t0 + int64(w0)*60_000, ToMs: t0 + int64(w0+1+rng.IntN(windows-w0))*60_000}
		if rng.IntN(2) == 0 {
			q.GroupBy = groupBys[rng.IntN(len(groupBys))]
		}
		switch rng.IntN(6) {
		case 0:
			q.AllWindows = true
		case 1:
			q.WindowMs = 5 * 60_000
		}
		switch rng.IntN(3) {
		case 0: // a point query: every group key fixed (regions past 39 never seen)
			q.Where = map[string][]string{"region": pick("r", regions+5, 3), "kind": pick("k", kinds, 2)}
		case 1:
			q.Where = map[string][]string{"region": pick("r", regions, 4)}
		}
		if rng.IntN(3) > 0 {
			q.OrderBy, q.Desc = aggs[rng.IntN(len(aggs))], rng.IntN(2) == 0
		}
		all, _ := answer(ref, q)
		q.Limit = rng.IntN(4) * (1 + rng.IntN(8))
		want, wantTrunc := all, false
		if q.Limit > 0 && len(all) > q.Limit {
			want, wantTrunc = all[:q.Limit], true
		}
		got, trunc := answer(p, q)
		if strings.Join(got, "\n") != strings.Join(want, "\n") || trunc != wantTrunc {
			t.Fatalf("query %d %+v: truncated %v (want %v)\ngot:\n  %s\nwant:\n  %s", i, q, trunc, wantTrunc, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
	}
}

// TestPointKeys: the keys a where fixing every group key allows, and
// none past maxPoints.
func TestPointKeys(t *testing.T) {
	where := []keyCond{{i: 1, vals: map[string]bool{"b": true, "a": true}}, {i: 0, vals: map[string]bool{"x": true}}}
	if got := strings.Join(pointKeys(where, 2), "|"); got != "x\x00a|x\x00b" {
		t.Fatalf("point keys %q", got)
	}
	many := map[string]bool{}
	for i := range 100 {
		many[fmt.Sprint(i)] = true
	}
	if got := pointKeys([]keyCond{{i: 0, vals: many}, {i: 1, vals: many}}, 2); got != nil {
		t.Fatalf("%d point keys past the bound", len(got))
	}
}
