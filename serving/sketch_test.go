package serving

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/internal/agg"
	"github.com/freeway-dev/freeway/puma"
	"github.com/freeway-dev/freeway/thrift/gen/freeway"
)

// sketchRow is a row with an answer of every kind.
func sketchRow(w0 int64) puma.Row {
	return puma.Row{WindowStartMs: w0, WindowEndMs: w0 + 3600_000, Key: map[string]string{"region": "eu"}, Values: map[string]any{
		"n":     3.0,
		"users": 42.0,
		"ms":    agg.Quantiles{{Q: 0.99, Value: 80.5}, {Q: 0.5, Value: 12}}, // in the order asked
		"top":   []agg.TopItem{{Value: "/a", Count: 120}, {Value: "/b", Count: 7, Error: 2}},
		"first": "u1",
		"last":  17.0,
		"lo":    nil,
	}}
}

// TestSketchAnswersOverHTTP: values carry count_distinct as a number,
// percentile as an object of its quantiles in the order asked, topk as a
// list of {value, count, error}, first of text as a string; window= takes
// a length.
func TestSketchAnswersOverHTTP(t *testing.T) {
	w0 := time.Date(2024, 5, 6, 7, 0, 0, 0, time.UTC).UnixMilli()
	src := &fakeSource{apps: testApps(t), res: &puma.Result{App: "orders", Rows: []puma.Row{sketchRow(w0)}}}
	s := newServer(t, src)
	w := get(t, s, "/api/v1/query?app=orders&window=1h")
	if w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	want := `{"app":"orders","rows":[` +
		`{"window_start":"2024-05-06T07:00:00Z","window_end":"2024-05-06T08:00:00Z","key":{"region":"eu"},"values":{` +
		`"first":"u1","last":17,"lo":null,"ms":{"0.99":80.5,"0.5":12},"n":3,` +
		`"top":[{"value":"/a","count":120,"error":0},{"value":"/b","count":7,"error":2}],"users":42}}` +
		`],"as_of":{"mode":"fresh"}}`
	if got := strings.TrimSpace(w.Body.String()); got != want {
		t.Fatalf("answer:\n%s\nwant\n%s", got, want)
	}
	if q := src.last(t); q.WindowMs != 3600_000 || q.AllWindows {
		t.Fatalf("window=1h reached the source as %+v", q)
	}
	get(t, s, "/api/v1/query?app=orders&window=7d")
	if q := src.last(t); q.WindowMs != 7*24*3600_000 {
		t.Fatalf("window=7d reached the source as %+v", q)
	}
}

// TestSketchAnswersOverThrift: values keeps the numbers, as old clients
// read them; structured_values carries the rest, and is unset on a row
// without any; window_seconds reaches the source, and a negative one is
// refused.
func TestSketchAnswersOverThrift(t *testing.T) {
	w0 := time.Date(2024, 5, 6, 7, 0, 0, 0, time.UTC).UnixMilli()
	plain := puma.Row{WindowStartMs: w0, WindowEndMs: w0 + 3600_000, Key: map[string]string{}, Values: map[string]any{"n": 1.0}}
	src := &fakeSource{apps: testApps(t), res: &puma.Result{App: "orders", Rows: []puma.Row{sketchRow(w0), plain}}}
	s := newServer(t, src, func(c *Config, d *Deps) { c.ThriftListen = "127.0.0.1:0" })
	run(t, s)
	qc := thriftClient(t, s)
	ctx := context.Background()
	res, err := qc.Query(ctx, &freeway.QueryRequest{App: "orders", FromUnix: 1714975200, ToUnix: 1714978800, WindowSeconds: thrift.Int64Ptr(3600)})
	if err != nil {
		t.Fatal(err)
	}
	want := &freeway.QueryResult_{App: "orders", Rows: []*freeway.Row{{
		WindowStartUnix: w0 / 1000, WindowEndUnix: w0/1000 + 3600,
		Key:    map[string]string{"region": "eu"},
		Values: map[string]float64{"n": 3, "users": 42, "last": 17},
		StructuredValues: map[string]*freeway.Value{
			"ms":    {Quantiles: []*freeway.Quantile{{Quantile: 0.99, Value: 80.5}, {Quantile: 0.5, Value: 12}}},
			"top":   {Top: []*freeway.TopItem{{Value: "/a", Count: 120}, {Value: "/b", Count: 7, Error: 2}}},
			"first": {Text: thrift.StringPtr("u1")},
		},
	}, {
		WindowStartUnix: w0 / 1000, WindowEndUnix: w0/1000 + 3600,
		Key: map[string]string{}, Values: map[string]float64{"n": 1},
	}}, AsOf: &freeway.AsOf{Mode: "fresh"}}
	if !res.Equals(want) || res.Rows[1].IsSetStructuredValues() {
		t.Fatalf("result %v, want %v", res, want)
	}
	if q := src.last(t); q.WindowMs != 3600_000 {
		t.Fatalf("window_seconds 3600 reached the source as %+v", q)
	}
	_, err = qc.Query(ctx, &freeway.QueryRequest{App: "orders", FromUnix: 1, ToUnix: 2, WindowSeconds: thrift.Int64Ptr(-60)})
	if qe, ok := err.(*freeway.QueryError); !ok || !strings.Contains(qe.Message, "window_seconds -60 is out of range") {
		t.Fatalf("negative window_seconds: %v", err)
	}
}
