package freeway

import (
	"fmt"
	"slices"
	"testing"

	"github.com/freeway-dev/freeway/calligraphus"
	"github.com/freeway-dev/freeway/internal/apps"
)

// TestRoutesReadJSONKeysByScan: the writer reads a JSON category's shard
// key with its scan (Route.JSONFields, the app's key fields), and routes
// every line as the full parse would; other formats keep the full parse.
func TestRoutesReadJSONKeysByScan(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Buckets = 8
	cfg.Apps = []apps.Spec{
		{Name: "j", Category: "j", Format: "json", GroupBy: []string{"user", "geo.country"}, Aggregates: []apps.AggregateSpec{{Name: "n", Fn: "count"}}},
		{Name: "r", Category: "r", Format: "regex", Pattern: `^(?P<user>\S+)`, GroupBy: []string{"user"}, Aggregates: []apps.AggregateSpec{{Name: "n", Fn: "count"}}},
	}
	routes, err := cfg.Routes()
	if err != nil {
		t.Fatal(err)
	}
	if got := routes["j"].JSONFields; !slices.Equal(got, []string{"user", "geo.country"}) {
		t.Fatalf("JSON category: JSONFields %q, want the app's group_by", got)
	}
	if got := routes["r"].JSONFields; got != nil {
		t.Fatalf("regex category: JSONFields %q, want none", got)
	}
	full := map[string]calligraphus.Route{}
	for c, r := range routes {
		r.JSONFields = nil
		full[c] = r
	}
	scan, byFull := calligraphus.NewRouter(cfg.Buckets, routes), calligraphus.NewRouter(cfg.Buckets, full)
	lines := []string{`{"user":"a\"b","geo":{"country":"ch"}}`, `not json`, `{"user":1,"geo":[]}`}
	for i := range 300 {
		lines = append(lines, fmt.Sprintf(`{"user":"u%d","geo":{"country":"c%d"},"n":%d}`, i, i%7, i))
	}
	spread := map[int]bool{}
	for _, l := range lines {
		b1, ok1 := scan.Bucket("j", []byte(l))
		b2, ok2 := byFull.Bucket("j", []byte(l))
		if b1 != b2 || ok1 != ok2 {
			t.Fatalf("line %s: bucket %d/%v by the scan, %d/%v by the full parse", l, b1, ok1, b2, ok2)
		}
		spread[b1] = true
	}
	if len(spread) != cfg.Buckets {
		t.Errorf("the lines went to %d of %d buckets", len(spread), cfg.Buckets)
	}
}
