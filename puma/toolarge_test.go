package puma

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestPartialRowBound: a node builds no partial state of more than
// puma.max_partial_rows rows: the request is refused with 422 and a
// message naming the bound, and counted; one within the bound is
// answered whole. The code before built and sent every row.
func TestPartialRowBound(t *testing.T) {
	e := newEnv(t, orders(t))
	e.buckets = 2
	reg := prometheus.NewPedanticRegistry()
	p := e.node("n1", func(c *Config, d *Deps) {
		c.MaxPartialRows = 10
		d.Metrics = reg
	})
	s0, s1 := testShard(t, p, 0), testShard(t, p, 1)
	adopt(p, s0)
	adopt(p, s1)
	for i := range 8 { // 8 regions in each shard: 16 rows by region over both
		feed(s0, int64(1+i), order(t0, fmt.Sprint("r", i), "book", 1))
		feed(s1, int64(1+i), order(t0, fmt.Sprint("r", i+8), "book", 1))
	}
	h := p.PartialHandler()
	ask := func(req PartialRequest) *httptest.ResponseRecorder {
		body, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, PartialPath, bytes.NewReader(body)))
		return w
	}
	within := ask(NewPartialRequest(Query{App: "orders", FromMs: t0, ToMs: t0 + 3600_000, GroupBy: []string{"kind"}}, []int{0, 1}))
	var part Partial
	if within.Code != http.StatusOK || json.Unmarshal(within.Body.Bytes(), &part) != nil || len(part.Rows) != 1 || len(part.Buckets) != 2 {
		t.Fatalf("within the bound: %d %s", within.Code, within.Body)
	}
	// One shard's 8 rows are within the bound, both shards' 16 are not.
	one := ask(NewPartialRequest(Query{App: "orders", FromMs: t0, ToMs: t0 + 3600_000, GroupBy: []string{"region"}}, []int{1}))
	if one.Code != http.StatusOK || json.Unmarshal(one.Body.Bytes(), &part) != nil || len(part.Rows) != 8 {
		t.Fatalf("one shard: %d %s", one.Code, one.Body)
	}
	over := ask(NewPartialRequest(Query{App: "orders", FromMs: t0, ToMs: t0 + 3600_000, GroupBy: []string{"region"}}, []int{0, 1}))
	if over.Code != StatusTooLarge || !strings.Contains(over.Body.String(), "puma.max_partial_rows") {
		t.Fatalf("over the bound: %d %s", over.Code, over.Body)
	}
	if n := gather(t, reg)["freeway_puma_partial_too_large_total"]; n != 1 {
		t.Fatalf("counted %v refusals, want 1", n)
	}
}
