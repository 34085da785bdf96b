package puma

import (
	"testing"

	"github.com/freeway-dev/freeway/internal/apps"
)

func TestCommittedMatchesMemory(t *testing.T) {
	e := newEnv(t, orders(t), orders(t, func(s *apps.Spec) { s.Name = "orders2"; s.GroupBy = []string{"kind"} }))
	e.buckets = 2
	pos0 := e.publish("orders", 0, stock(fourOrders()...))
	pos1 := e.publish("orders", 1, stock(order(t0+5000, "eu", "book", 100), order(t0+3600_000, "us", "book", 1)))
	p := e.node("n1")
	start(t, p)
	eventually(t, "committed", func() error {
		st := p.Statuses()
		if len(st) != 2 {
			return errorf("%d shards", len(st))
		}
		for _, s := range st {
			if want := []string{pos0.String(), pos1.String()}[s.Bucket]; s.Committed != want {
				return errorf("%+v", s)
			}
		}
		return nil
	})
	c := committed(e)
	for _, q := range []Query{
		{},
		{App: "orders2"},
		{GroupBy: []string{"region"}},
		{GroupBy: []string{}, AllWindows: true},
		{FromMs: t0 + 60_000, ToMs: t0 + 3600_000 + 1},
		{FromMs: t0 + 1, ToMs: t0 + 60_001},
		{Limit: 1},
	} {
		mem := rows(t, p, q)
		if len(mem) == 0 && q.FromMs == 0 {
			t.Fatalf("%+v: no rows", q)
		}
		equalRows(t, "committed", rows(t, c, q), mem)
	}
	if list := c.Apps(); len(list) != 2 || list[0].Name() != "orders" || list[1].Name() != "orders2" {
		t.Fatalf("Apps() = %v", list)
	}
}

// TestCommittedHidesUncommitted: a node whose commits fail shows its fresh
// state from memory; the committed reader shows the last commit.
func TestCommittedHidesUncommitted(t *testing.T) {
	e := newEnv(t, orders(t))
	fst := &faultStore{Store: e.st}
	first := e.publish("orders", 0, stock(fourOrders()...))
	p := e.node("n1", func(c *Config, d *Deps) { d.Store = fst })
	r := start(t, p)
	waitCommitted(t, p, first)
	fst.set(func(f *faultStore) { f.failCommit = true })
	second := e.publish("orders", 0, stock(order(t0+1000, "eu", "book", 1), order(t0+600_000, "us", "pen", 1)))
	waitRead(t, p, 0, second)
	n := fst.fails()
	eventually(t, "failed commits", func() error {
		if fst.fails() < n+2 {
			return errorf("not yet")
		}
		return nil
	})
	equalRows(t, "committed", rows(t, committed(e), Query{}), fourOrdersRows)
	if got := rows(t, p, Query{}); len(got) != 4 {
		t.Fatalf("memory: %v", got)
	}
	fst.set(func(f *faultStore) { f.failCommit = false })
	waitCommitted(t, p, second)
	equalRows(t, "committed once commits work again", rows(t, committed(e), Query{}), rows(t, p, Query{}))
	r.stop(t)
}
