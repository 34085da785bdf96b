package puma

import (
	"context"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/testkit"
)

func TestCommittedMatchesMemory(t *testing.T) {
	e := newEnv(t, orders(t), orders(t, func(s *apps.Spec) { s.Name = "orders2"; s.GroupBy = []string{"kind"} }))
	e.buckets = 2
	pos0 := e.publish("orders", 0, stock(fourOrders()...))
	pos1 := e.publish("orders", 1, stock(order(t0+5000, "eu", "book", 100), order(t0+3600_000, "us", "book", 1)))
	p := e.node("n1")
	start(t, p)
	testkit.Eventually(t, "committed", func() error {
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
	testkit.Eventually(t, "failed commits", func() error {
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

// TestCommittedPartial: a shard whose committed cells cannot be read is
// missing from the committed answer, with its error, and none of its
// cells show (not even those read before the damaged one); the other
// shards answer. When no shard can be read, the query fails.
func TestCommittedPartial(t *testing.T) {
	e := newEnv(t, orders(t))
	e.buckets = 2
	pos0 := e.publish("orders", 0, stock(fourOrders()...))
	pos1 := e.publish("orders", 1, stock(order(t0+5000, "eu", "book", 100)))
	p := e.node("n1")
	r := start(t, p)
	testkit.Eventually(t, "committed", func() error {
		st := p.Statuses()
		if st[0].Committed != pos0.String() || st[1].Committed != pos1.String() {
			return errorf("%+v", st)
		}
		return nil
	})
	r.stop(t)
	c := committed(e)
	q := Query{App: "orders", FromMs: t0 - 3600_000, ToMs: t0 + 3600_000}
	// A cell of bucket 1 that sorts after its good one and cannot be
	// decoded.
	damage := func(bucket int) {
		row := appPrefix("orders", bucket, e.apps[0], fingerprint(e.apps[0], e.apps[0].WindowMs)) + windowKey(t0) + "/\xff"
		epoch := p.Statuses()[bucket].Epoch
		if err := e.st.Put(context.Background(), "puma", []store.Cell{{Row: row, Column: "v", Timestamp: epoch, Value: []byte{1, 2, 3}}}); err != nil {
			t.Fatal(err)
		}
	}
	damage(1)
	res, err := c.Query(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	equalRows(t, "orders/0 answers alone", formatRows(res), fourOrdersRows)
	if len(res.Missing) != 1 || res.Missing[0].Bucket != 1 || res.Missing[0].State != StateFailed || !strings.Contains(res.Missing[0].Error, "scan orders/1") {
		t.Fatalf("missing %+v", res.Missing)
	}
	damage(0)
	if res, err := c.Query(context.Background(), q); err == nil || !strings.Contains(err.Error(), "no shard of category orders can be read") {
		t.Fatalf("nothing readable: %v %+v", err, res)
	}
}
