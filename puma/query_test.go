package puma

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// queryFixture runs a node over three windows of orders in two buckets,
// so that answers merge partial cells of both shards.
func queryFixture(t *testing.T) (*env, *Puma) {
	t.Helper()
	e := newEnv(t, orders(t), orders(t, func(s *apps.Spec) { s.Name = "other"; s.Category = "other" }))
	e.buckets = 2
	p0 := e.publish("orders", 0, stock(
		order(t0+1000, "eu", "book", 10),
		order(t0+2000, "eu", "pen", 1),
		order(t0+61_000, "eu", "book", 4),
	))
	p1 := e.publish("orders", 1, stock(
		order(t0+3000, "us", "book", 20),
		order(t0+4000, "eu", "book", 2),
		order(t0+121_000, "us", "pen", 3),
	))
	p := e.node("n1")
	start(t, p)
	testkit.Eventually(t, "both shards read", func() error {
		st := p.Statuses() // sorted: orders/0, orders/1, other/0, other/1
		if len(st) != 4 || st[0].Position != p0.String() || st[1].Position != p1.String() {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	return e, p
}

func TestQuery(t *testing.T) {
	_, p := queryFixture(t)
	cases := []struct {
		name string
		q    Query
		want []string
	}{
		{"full key, merged across shards", Query{}, []string{
			"+0..+60s {kind=book region=eu} {hi=10 lo=2 mean=6 n=2 total=12}",
			"+0..+60s {kind=pen region=eu} {hi=1 lo=1 mean=1 n=1 total=1}",
			"+0..+60s {kind=book region=us} {hi=20 lo=20 mean=20 n=1 total=20}",
			"+60..+120s {kind=book region=eu} {hi=4 lo=4 mean=4 n=1 total=4}",
			"+120..+180s {kind=pen region=us} {hi=3 lo=3 mean=3 n=1 total=3}",
		}},
		{"group_by subset", Query{GroupBy: []string{"kind"}}, []string{
			"+0..+60s {kind=book} {hi=20 lo=2 mean=10.666666666666666 n=3 total=32}",
			"+0..+60s {kind=pen} {hi=1 lo=1 mean=1 n=1 total=1}",
			"+60..+120s {kind=book} {hi=4 lo=4 mean=4 n=1 total=4}",
			"+120..+180s {kind=pen} {hi=3 lo=3 mean=3 n=1 total=3}",
		}},
		{"group_by reordered", Query{GroupBy: []string{"kind", "region"}, FromMs: t0 + 60_000, ToMs: t0 + 120_000}, []string{
			"+60..+120s {kind=book region=eu} {hi=4 lo=4 mean=4 n=1 total=4}",
		}},
		{"group_by empty merges all keys", Query{GroupBy: []string{}}, []string{
			"+0..+60s {} {hi=20 lo=1 mean=8.25 n=4 total=33}",
			"+60..+120s {} {hi=4 lo=4 mean=4 n=1 total=4}",
			"+120..+180s {} {hi=3 lo=3 mean=3 n=1 total=3}",
		}},
		{"window=all", Query{GroupBy: []string{"region"}, AllWindows: true}, []string{
			"+0..+120s {region=eu} {hi=10 lo=1 mean=4.25 n=4 total=17}",
			"+0..+180s {region=us} {hi=20 lo=3 mean=11.5 n=2 total=23}",
		}},
		{"window=all, everything", Query{GroupBy: []string{}, AllWindows: true}, []string{
			"+0..+180s {} {hi=20 lo=1 mean=6.666666666666667 n=6 total=40}",
		}},
		{"from is inclusive, to exclusive, on window start", Query{GroupBy: []string{}, FromMs: t0 + 59_999, ToMs: t0 + 120_000}, []string{
			"+60..+120s {} {hi=4 lo=4 mean=4 n=1 total=4}",
		}},
		{"a range inside one window holds no start", Query{FromMs: t0 + 1, ToMs: t0 + 59_999}, nil},
		{"limit: the first rows in (window, key) order", Query{Limit: 2}, []string{
			"+0..+60s {kind=book region=eu} {hi=10 lo=2 mean=6 n=2 total=12}",
			"+0..+60s {kind=pen region=eu} {hi=1 lo=1 mean=1 n=1 total=1}",
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			equalRows(t, c.name, rows(t, p, c.q), c.want)
		})
	}

	q := Query{App: "orders", FromMs: t0, ToMs: t0 + 3600_000, Limit: 2}
	res, err := p.Query(context.Background(), q)
	if err != nil || !res.Truncated || len(res.Rows) != 2 || res.App != "orders" {
		t.Fatalf("limit 2: %v %+v", err, res)
	}
	q.Limit = 5
	if res, err := p.Query(context.Background(), q); err != nil || res.Truncated || len(res.Rows) != 5 {
		t.Fatalf("limit 5 of 5: %v %+v", err, res)
	}
	// Another app of another category answers empty, not with orders.
	if got := rows(t, p, Query{App: "other"}); len(got) != 0 {
		t.Fatalf("other app: %v", got)
	}
}

func TestBadQueries(t *testing.T) {
	e := newEnv(t, orders(t))
	p := e.node("n1")
	c := NewCommitted(e.st, "puma", e.apps, func(string) int { return 1 })
	for _, src := range []querier{p, c} {
		for _, bad := range []struct {
			q    Query
			want string
		}{
			{Query{App: "nope", FromMs: 0, ToMs: 1}, `unknown app "nope"`},
			{Query{App: "orders", FromMs: 0, ToMs: 1, GroupBy: []string{"city"}}, `does not group by "city"`},
			{Query{App: "orders", FromMs: 0, ToMs: 1, GroupBy: []string{"kind", "kind"}}, `"kind" twice`},
			{Query{App: "orders", FromMs: 5, ToMs: 5}, "from must be before to"},
			{Query{App: "orders", FromMs: 6, ToMs: 5}, "from must be before to"},
			{Query{App: "orders", FromMs: 0, ToMs: 1, Limit: -1}, "limit"},
		} {
			_, err := src.Query(context.Background(), bad.q)
			var bq *BadQueryError
			if !errors.As(err, &bq) || !strings.Contains(bq.Msg, bad.want) {
				t.Errorf("%T %+v: %v, want a BadQueryError with %q", src, bad.q, err, bad.want)
			}
		}
	}
}

func TestQueryCanceled(t *testing.T) {
	_, p := queryFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Query(ctx, Query{App: "orders", FromMs: 0, ToMs: 1}); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled query: %v", err)
	}
}
