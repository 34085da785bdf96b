package puma

import (
	"context"
	"errors"
	"strings"
	"testing"
)

// TestOrderBySketches: rows order by a sketch whose answer is a number
// (count_distinct, last of numbers); ordering by one that answers an
// object, a list or text (percentile, topk, first of text) is the
// caller's error, named.
func TestOrderBySketches(t *testing.T) {
	e := newEnv(t, visits(t))
	s := testShardOf(t, e.node("n1"), "visits", 0)
	vs := someVisits(3000, 1, 5)
	var lines [][]byte
	for _, v := range vs {
		lines = append(lines, v.line())
	}
	feed(s, 1, lines...)
	adopt(s.p, s)
	ctx := context.Background()
	base := Query{App: "visits", FromMs: t0 - 24*3600_000, ToMs: t0 + 24*3600_000, AllWindows: true, GroupBy: []string{"page"}}
	for _, by := range []string{"users", "last_ms"} {
		q := base
		q.OrderBy, q.Desc = by, true
		res, err := s.p.Query(ctx, q)
		if err != nil {
			t.Fatalf("order_by %s: %v", by, err)
		}
		if len(res.Rows) != 4 {
			t.Fatalf("order_by %s: %d rows", by, len(res.Rows))
		}
		for i := 1; i < len(res.Rows); i++ {
			if res.Rows[i-1].Values[by].(float64) < res.Rows[i].Values[by].(float64) {
				t.Fatalf("order_by %s: rows out of order: %v then %v", by, res.Rows[i-1].Values[by], res.Rows[i].Values[by])
			}
		}
	}
	for _, by := range []string{"ms", "top", "first_user"} {
		q := base
		q.OrderBy = by
		_, err := s.p.Query(ctx, q)
		var bq *BadQueryError
		if !errors.As(err, &bq) || !strings.Contains(bq.Msg, "not numbers") {
			t.Errorf("order_by %s: %v", by, err)
		}
	}
}
