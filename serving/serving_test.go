package serving

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/thrift/lib/go/thrift"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/puma"
	"github.com/freeway-dev/freeway/thrift/gen/freeway"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// now is the injected clock of every test server.
var now = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

func testApps(t testing.TB) []*apps.App {
	t.Helper()
	var out []*apps.App
	for _, s := range []apps.Spec{
		{
			Name: "orders", Category: "shop", Format: "json", Where: `kind != "refund"`,
			MaxCells: 100_000,
			Window:   config.Duration(time.Minute),
			GroupBy:  []string{"region", "kind"},
			Aggregates: []apps.AggregateSpec{
				{Name: "n", Fn: "count"},
				{Name: "total", Fn: "sum", Field: "amount"},
				{Name: "lo", Fn: "min", Field: "amount"},
			},
		},
		{
			Name: "web_hits", Category: "web", Format: "logfmt",
			Window:     config.Duration(10 * time.Second),
			Aggregates: []apps.AggregateSpec{{Fn: "count"}},
		},
	} {
		a, err := apps.Compile(s, "$.apps[0]")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

// fakeSource answers every query with res (or err) and records it.
type fakeSource struct {
	apps []*apps.App
	mu   sync.Mutex
	qs   []puma.Query
	res  *puma.Result
	err  error
}

func (f *fakeSource) Apps() []*apps.App { return f.apps }

func (f *fakeSource) Query(ctx context.Context, q puma.Query) (*puma.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.qs = append(f.qs, q)
	if f.err != nil {
		return nil, f.err
	}
	if _, ok := ctx.Deadline(); !ok {
		return nil, errors.New("query without a deadline")
	}
	if f.res != nil {
		return f.res, nil
	}
	return &puma.Result{App: q.App}, nil
}

func (f *fakeSource) last(t *testing.T) puma.Query {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.qs) == 0 {
		t.Fatal("no query reached the source")
	}
	return f.qs[len(f.qs)-1]
}

func (f *fakeSource) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.qs)
}

func testLog() *slog.Logger {
	if os.Getenv("SERVING_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// newServer returns a server on free loopback ports whose listeners are
// closed at the end of the test (by Run if the test runs it).
func newServer(t *testing.T, src Source, mod ...func(*Config, *Deps)) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Listen = "127.0.0.1:0"
	cfg.ThriftListen = ""
	reg := prometheus.NewPedanticRegistry()
	deps := Deps{Source: src, Gatherer: reg, Common: component.Common{Log: testLog(), Now: func() time.Time { return now }, Metrics: reg}}
	for _, m := range mod {
		m(&cfg, &deps)
	}
	s, err := New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.ln.Close()
		if s.thrift != nil {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_ = s.thrift.Serve(ctx) // closes the listener
		}
	})
	return s
}

// get serves one request through the handler.
func get(t *testing.T, s *Server, target string) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, target, nil))
	return w
}

func decode(t *testing.T, w *httptest.ResponseRecorder) map[string]any {
	t.Helper()
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("content type %q, body %s", ct, w.Body)
	}
	var m map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &m); err != nil {
		t.Fatalf("body %q: %v", w.Body, err)
	}
	return m
}

func TestApps(t *testing.T) {
	src := &fakeSource{apps: testApps(t)}
	s := newServer(t, src)
	w := get(t, s, "/api/v1/apps")
	if w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	var got struct {
		Apps []map[string]any `json:"apps"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := []map[string]any{
		{
			"name": "orders", "category": "shop", "format": "json", "window": "1m", "window_seconds": 60.0, "windows": []any{"1m"},
			"group_by": []any{"region", "kind"}, "where": `kind != "refund"`, "max_cells": 100_000.0,
			"aggregates": []any{
				map[string]any{"name": "n", "fn": "count"},
				map[string]any{"name": "total", "fn": "sum", "field": "amount"},
				map[string]any{"name": "lo", "fn": "min", "field": "amount"},
			},
		},
		{
			"name": "web_hits", "category": "web", "format": "logfmt", "window": "10s", "window_seconds": 10.0, "windows": []any{"10s"},
			"group_by":   []any{},
			"aggregates": []any{map[string]any{"name": "count", "fn": "count"}},
		},
	}
	if !reflect.DeepEqual(got.Apps, want) {
		t.Fatalf("apps:\n%v\nwant\n%v", got.Apps, want)
	}

	// No apps: an empty list, not null.
	w = get(t, newServer(t, &fakeSource{}), "/api/v1/apps")
	if strings.TrimSpace(w.Body.String()) != `{"apps":[]}` {
		t.Fatalf("no apps: %s", w.Body)
	}
}

// rejectingSource is a source that keeps rejected lines, as a Puma node.
type rejectingSource struct {
	*fakeSource
	rej map[string]puma.Rejections
}

func (r *rejectingSource) Rejections(app string) (puma.Rejections, bool) {
	x, ok := r.rej[app]
	return x, ok
}

// TestAppsWithRejections: a Puma node's apps list what they did not
// aggregate, by reason, with the last rejected lines.
func TestAppsWithRejections(t *testing.T) {
	src := &rejectingSource{fakeSource: &fakeSource{apps: testApps(t)}, rej: map[string]puma.Rejections{
		"orders": {
			Dropped: map[string]uint64{"future": 2, "late": 0},
			Samples: []puma.Rejected{{Reason: "future", Error: "event time 2100-01-01T00:00:00Z is ahead", Line: `{"ts": 4102444800}`, Bucket: 3, At: now}},
		},
	}}
	w := get(t, newServer(t, src), "/api/v1/apps")
	var got struct {
		Apps []AppJSON `json:"apps"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || len(got.Apps) != 2 {
		t.Fatalf("%v: %s", err, w.Body)
	}
	o, web := got.Apps[0], got.Apps[1]
	want := []RejectedJSON{{Reason: "future", Error: "event time 2100-01-01T00:00:00Z is ahead", Line: `{"ts": 4102444800}`, Bucket: 3, At: "2024-05-06T07:08:09Z"}}
	if !reflect.DeepEqual(o.Dropped, map[string]uint64{"future": 2, "late": 0}) || !reflect.DeepEqual(o.Rejected, want) {
		t.Fatalf("orders: %+v", o)
	}
	if web.Dropped != nil || web.Rejected != nil || strings.Contains(w.Body.String(), `"rejected":null`) {
		t.Fatalf("web_hits: %+v in %s", web, w.Body)
	}
}

// memoSource is a source that holds cells in memory, as a Puma node.
type memoSource struct {
	*fakeSource
	mem map[string]puma.AppMemory
}

func (m *memoSource) AppState(app string) (puma.AppState, bool) {
	if app == "orders" {
		return puma.AppState{State: "backfilling", BackfillShards: 2, SegmentsRead: 5, SegmentsLeft: 7}, true
	}
	return puma.AppState{State: "live"}, true
}

func (m *memoSource) Memory(app string) (puma.AppMemory, bool) {
	x, ok := m.mem[app]
	return x, ok
}

// TestAppsWithMemory: a Puma node's apps show their cells in memory,
// bytes per cell and what was evicted to the store, and whether they are
// live or backfilling (with the backfill's progress).
func TestAppsWithMemory(t *testing.T) {
	src := &memoSource{fakeSource: &fakeSource{apps: testApps(t)}, mem: map[string]puma.AppMemory{
		"orders": {Cells: 10, Bytes: 1500, BytesPerCell: 150, EvictedWindows: 3, EvictedCells: 30, EvictedBeforeMs: now.UnixMilli()},
	}}
	w := get(t, newServer(t, src), "/api/v1/apps")
	var got struct {
		Apps []AppJSON `json:"apps"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || len(got.Apps) != 2 {
		t.Fatalf("%v: %s", err, w.Body)
	}
	want := MemoryJSON{Cells: 10, Bytes: 1500, BytesPerCell: 150, EvictedWindows: 3, EvictedCells: 30, EvictedBefore: "2024-05-06T07:08:09Z"}
	if got.Apps[0].Memory == nil || *got.Apps[0].Memory != want || got.Apps[1].Memory != nil {
		t.Fatalf("apps %+v", got.Apps)
	}
	if o, web := got.Apps[0], got.Apps[1]; o.State != "backfilling" || o.Backfill == nil || *o.Backfill != (BackfillJSON{Shards: 2, SegmentsRead: 5, SegmentsLeft: 7}) || web.State != "live" || web.Backfill != nil {
		t.Fatalf("states %+v %+v", o, web)
	}
}

func TestQueryParameters(t *testing.T) {
	src := &fakeSource{apps: testApps(t)}
	s := newServer(t, src, func(c *Config, d *Deps) { c.MaxRows = 500 })
	nowMs := now.UnixMilli()
	cases := []struct {
		query string
		want  puma.Query
	}{
		{"app=orders", puma.Query{App: "orders", FromMs: nowMs - 3600_000, ToMs: nowMs, Limit: 500}},
		{"app=orders&from=2024-05-06T06:00:00Z", puma.Query{App: "orders", FromMs: nowMs - (3600+8*60+9)*1000, ToMs: nowMs, Limit: 500}},
		{"app=orders&to=2024-05-06T09:08:09.5%2B02:00", puma.Query{App: "orders", FromMs: nowMs - 3600_000 + 500, ToMs: nowMs + 500, Limit: 500}},
		{"app=orders&from=1700000000&to=1700000060.25", puma.Query{App: "orders", FromMs: 1700000000_000, ToMs: 1700000060_250, Limit: 500}},
		{"app=orders&from=1.001&to=2.999", puma.Query{App: "orders", FromMs: 1001, ToMs: 2999, Limit: 500}},
		{"app=orders&from=-1.5&to=0", puma.Query{App: "orders", FromMs: -1500, ToMs: 0, Limit: 500}},
		{"app=orders&group_by=kind", puma.Query{App: "orders", FromMs: nowMs - 3600_000, ToMs: nowMs, GroupBy: []string{"kind"}, Limit: 500}},
		{"app=orders&group_by=kind,region", puma.Query{App: "orders", FromMs: nowMs - 3600_000, ToMs: nowMs, GroupBy: []string{"kind", "region"}, Limit: 500}},
		{"app=orders&group_by=", puma.Query{App: "orders", FromMs: nowMs - 3600_000, ToMs: nowMs, GroupBy: []string{}, Limit: 500}},
		{"app=orders&window=all", puma.Query{App: "orders", FromMs: nowMs - 3600_000, ToMs: nowMs, AllWindows: true, Limit: 500}},
		{"app=orders&limit=7", puma.Query{App: "orders", FromMs: nowMs - 3600_000, ToMs: nowMs, Limit: 7}},
		{"app=orders&limit=100000", puma.Query{App: "orders", FromMs: nowMs - 3600_000, ToMs: nowMs, Limit: 500}},
	}
	for _, c := range cases {
		w := get(t, s, "/api/v1/query?"+c.query)
		if w.Code != 200 {
			t.Errorf("%s: status %d: %s", c.query, w.Code, w.Body)
			continue
		}
		got := src.last(t)
		if !reflect.DeepEqual(got, c.want) || (c.want.GroupBy == nil) != (got.GroupBy == nil) {
			t.Errorf("%s:\n got %#v\nwant %#v", c.query, got, c.want)
		}
	}
}

func TestBadQueryParameters(t *testing.T) {
	src := &fakeSource{apps: testApps(t)}
	s := newServer(t, src)
	for _, c := range []struct{ query, want string }{
		{"", "missing parameter app"},
		{"app=", "missing parameter app"},
		{"app=orders&color=red", `unknown parameter "color"`},
		{"app=orders&app=orders", `parameter "app" given 2 times`},
		{"app=orders&from=1&from=2", `parameter "from" given 2 times`},
		{"app=orders&from=yesterday", `bad from: "yesterday" is neither RFC 3339 nor Unix seconds`},
		{"app=orders&to=2024-13-01T00:00:00Z", "bad to:"},
		{"app=orders&from=NaN", "bad from:"},
		{"app=orders&from=Inf", "bad from:"},
		{"app=orders&from=1e300", "bad from:"},
		{"app=orders&from=10&to=10", "from must be before to"},
		{"app=orders&from=11&to=10", "from must be before to"},
		{"app=orders&from=2024-05-06T07:08:10Z", "from must be before to"}, // after the default to (now)
		{"app=orders&group_by=kind,,region", "empty field name"},
		{"app=orders&group_by=,", "empty field name"},
		{"app=orders&window=", "bad window \"\": want all, or a window length"},
		{"app=orders&window=fortnight", "bad window \"fortnight\""},
		{"app=orders&window=0s", "bad window \"0s\""},
		{"app=orders&window=-1m", "bad window \"-1m\""},
		{"app=orders&window=1500ms", "bad window \"1500ms\""},
		{"app=orders&limit=0", "want a positive integer"},
		{"app=orders&limit=-3", "want a positive integer"},
		{"app=orders&limit=ten", "want a positive integer"},
		{"app=orders&limit=99999999999999999999", "want a positive integer"},
		{"app=orders&limit=%zz", `bad query string: invalid URL escape "%zz"`},
		{"app=orders&from=1;to=2", "bad query string: invalid semicolon separator"},
	} {
		n := src.count()
		w := get(t, s, "/api/v1/query?"+c.query)
		if w.Code != http.StatusBadRequest {
			t.Errorf("%q: status %d, want 400: %s", c.query, w.Code, w.Body)
			continue
		}
		if msg, _ := decode(t, w)["error"].(string); !strings.Contains(msg, c.want) {
			t.Errorf("%q: error %q, want %q", c.query, msg, c.want)
		}
		if src.count() != n {
			t.Errorf("%q reached the source", c.query)
		}
	}
}

// TestSourceErrors: the source's BadQueryError is the caller's (400, its
// message); anything else is the server's (500).
func TestSourceErrors(t *testing.T) {
	src := &fakeSource{apps: testApps(t), err: &puma.BadQueryError{Msg: `app orders does not group by "city"`}}
	s := newServer(t, src)
	w := get(t, s, "/api/v1/query?app=orders&group_by=city")
	if w.Code != 400 || decode(t, w)["error"] != `app orders does not group by "city"` {
		t.Fatalf("bad query: %d %s", w.Code, w.Body)
	}
	src.err = errors.New("store unreachable")
	w = get(t, s, "/api/v1/query?app=orders")
	if w.Code != 500 || !strings.Contains(decode(t, w)["error"].(string), "store unreachable") {
		t.Fatalf("source error: %d %s", w.Code, w.Body)
	}
}

func TestQueryAnswer(t *testing.T) {
	w0 := time.Date(2024, 5, 6, 7, 0, 0, 0, time.UTC).UnixMilli()
	src := &fakeSource{apps: testApps(t), res: &puma.Result{App: "orders", Truncated: true, Rows: []puma.Row{
		{WindowStartMs: w0, WindowEndMs: w0 + 60_000, Key: map[string]string{"region": "eu", "kind": "<book>&"}, Values: map[string]any{"n": 3.0, "total": 12.5, "lo": nil}},
		{WindowStartMs: w0 + 60_000, WindowEndMs: w0 + 120_000, Key: map[string]string{}, Values: map[string]any{"n": 1e21, "total": -0.25, "lo": 1.0 / 3}},
	}}}
	s := newServer(t, src)
	w := get(t, s, "/api/v1/query?app=orders")
	if w.Code != 200 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	want := `{"app":"orders","rows":[` +
		`{"window_start":"2024-05-06T07:00:00Z","window_end":"2024-05-06T07:01:00Z","key":{"kind":"<book>&","region":"eu"},"values":{"lo":null,"n":3,"total":12.5}},` +
		`{"window_start":"2024-05-06T07:01:00Z","window_end":"2024-05-06T07:02:00Z","key":{},"values":{"lo":0.3333333333333333,"n":1e+21,"total":-0.25}}` +
		`],"truncated":true,"as_of":{"mode":"fresh"}}`
	if got := strings.TrimSpace(w.Body.String()); got != want {
		t.Fatalf("answer:\n%s\nwant\n%s", got, want)
	}

	// No rows: an empty list, and no truncated flag.
	src.res = &puma.Result{App: "orders"}
	if got := strings.TrimSpace(get(t, s, "/api/v1/query?app=orders").Body.String()); got != `{"app":"orders","rows":[],"as_of":{"mode":"fresh"}}` {
		t.Fatalf("empty answer: %s", got)
	}
}

// TestUnencodableAnswer: a value JSON cannot carry is the server's error,
// reported as one, not a 200 with a cut body.
func TestUnencodableAnswer(t *testing.T) {
	src := &fakeSource{apps: testApps(t), res: &puma.Result{App: "orders", Rows: []puma.Row{
		{Key: map[string]string{}, Values: map[string]any{"total": math.Inf(1)}},
	}}}
	w := get(t, newServer(t, src), "/api/v1/query?app=orders")
	if w.Code != 500 {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	decode(t, w)
}

func TestProbesAndMetrics(t *testing.T) {
	ready := false
	var mu sync.Mutex
	src := &fakeSource{apps: testApps(t)}
	s := newServer(t, src, func(c *Config, d *Deps) {
		d.Ready = func() puma.Readiness {
			mu.Lock()
			defer mu.Unlock()
			if ready {
				return puma.Readiness{Ready: true}
			}
			return puma.Readiness{Reason: "1 of 2 shards are not running here (1 failed)", Shards: []puma.Status{
				{Category: "shop", Bucket: 1, State: puma.StateFailed, Error: "store unreachable", Failures: 2, LastAttempt: now, RetryAt: now.Add(4 * time.Second)},
			}}
		}
	})
	if w := get(t, s, "/healthz"); w.Code != 200 || w.Body.String() != "ok\n" {
		t.Fatalf("healthz: %d %q", w.Code, w.Body)
	}
	want := "not ready: 1 of 2 shards are not running here (1 failed)\n" +
		"shop/1: failed at 2024-05-06T07:08:09Z (2 in a row, next try at 2024-05-06T07:08:13Z): store unreachable\n"
	if w := get(t, s, "/readyz"); w.Code != 503 || w.Body.String() != want {
		t.Fatalf("readyz before ready: %d %q, want %q", w.Code, w.Body, want)
	}
	mu.Lock()
	ready = true
	mu.Unlock()
	if w := get(t, s, "/readyz"); w.Code != 200 || w.Body.String() != "ready\n" {
		t.Fatalf("readyz: %d %q", w.Code, w.Body)
	}
	get(t, s, "/api/v1/query?app=orders")
	get(t, s, "/api/v1/query?app=")
	w := get(t, s, "/metrics")
	if w.Code != 200 {
		t.Fatalf("metrics: %d", w.Code)
	}
	for _, line := range []string{
		`freeway_serving_requests_total{code="200",handler="query"} 1`,
		`freeway_serving_requests_total{code="400",handler="query"} 1`,
		`freeway_serving_requests_total{code="503",handler="readyz"} 1`,
		`freeway_serving_request_seconds_count{handler="query"} 2`,
	} {
		if !strings.Contains(w.Body.String(), line) {
			t.Errorf("metrics lack %s", line)
		}
	}
	// Without a Ready func the server is always ready.
	if w := get(t, newServer(t, src), "/readyz"); w.Code != 200 {
		t.Fatalf("readyz without Ready: %d", w.Code)
	}
}

func TestUnknownPaths(t *testing.T) {
	s := newServer(t, &fakeSource{apps: testApps(t)})
	for _, p := range []string{"/nope", "/api/v1/querry", "/api/v2/query", "/index.html"} {
		w := get(t, s, p)
		if w.Code != 404 || !strings.Contains(decode(t, w)["error"].(string), "no such endpoint GET "+p) {
			t.Errorf("%s: %d %s", p, w.Code, w.Body)
		}
	}
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/api/v1/query?app=orders", nil))
	if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") == "" {
		t.Errorf("POST query: %d %v %s", w.Code, w.Header(), w.Body)
	}
	decode(t, w)
}

// TestIndexPage: / is the dashboard, its assets are served from the
// binary with their types, and nothing else is answered under /ui/.
func TestIndexPage(t *testing.T) {
	s := newServer(t, &fakeSource{apps: testApps(t)})
	w := get(t, s, "/")
	if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") {
		t.Fatalf("index: %d %v", w.Code, w.Header())
	}
	body := w.Body.String()
	for _, want := range []string{`<script src="/ui/app.js">`, `<script src="/ui/vendor/uplot-1.6.32/uPlot.iife.min.js">`, `href="/ui/style.css"`} {
		if !strings.Contains(body, want) {
			t.Errorf("index page lacks %s", want)
		}
	}
	for path, ctype := range map[string]string{
		"/ui/app.js": "text/javascript", "/ui/style.css": "text/css", "/ui/vendor/uplot-1.6.32/uPlot.iife.min.js": "text/javascript",
		"/ui/vendor/uplot-1.6.32/uPlot.min.css": "text/css",
	} {
		w := get(t, s, path)
		if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), ctype) || w.Body.Len() < 100 {
			t.Errorf("%s: %d %q, %d bytes", path, w.Code, w.Header().Get("Content-Type"), w.Body.Len())
		}
	}
	// Files only: a directory of them is not listed.
	for _, path := range []string{"/ui/nope.js", "/ui/", "/ui/index.html", "/ui/vendor/", "/ui/vendor", "/ui/vendor/uplot-1.6.32/"} {
		if w := get(t, s, path); w.Code != 404 || strings.Contains(w.Body.String(), "app.js") || strings.Contains(w.Body.String(), "uplot") {
			t.Errorf("%s: %d %q", path, w.Code, w.Body.String())
		}
	}
}

func TestParseTime(t *testing.T) {
	for in, want := range map[string]int64{
		"2024-05-06T07:08:09Z":          now.UnixMilli(),
		"2024-05-06T09:08:09.123+02:00": now.UnixMilli() + 123,
		"2024-05-06T07:08:09.1239999Z":  now.UnixMilli() + 123,
		"1714979289":                    now.UnixMilli(),
		"1714979289.123":                now.UnixMilli() + 123,
		"1714979289.1239999":            now.UnixMilli() + 123,
		"0.001":                         1,
		"1.001":                         1001,
		"4.35":                          4350,
		"-2.5":                          -2500,
		"-0.5":                          -500,
		"+3":                            3000,
		".5":                            500,
		"1e3":                           1_000_000,
		"99999999999":                   99999999999_000,
	} {
		got, err := ParseTime(in)
		if err != nil || got.UnixMilli() != want {
			t.Errorf("ParseTime(%q) = %v (%d ms), %v; want %d ms", in, got, got.UnixMilli(), err, want)
		}
	}
	for _, in := range []string{"", "now", "NaN", "nan", "Inf", "-Inf", "1e300", "1,5", "0x10", "2024-05-06", "2024-05-06 07:08:09Z", "1_000"} {
		if got, err := ParseTime(in); err == nil {
			t.Errorf("ParseTime(%q) = %v, want an error", in, got)
		}
	}
	// Milliseconds are Unix seconds out of range, and told so, not
	// "neither RFC 3339 nor Unix seconds".
	for _, in := range []string{"1714979289000", "-1714979289000", "1e300"} {
		if _, err := ParseTime(in); err == nil || !strings.Contains(err.Error(), "out of range for Unix seconds") || !strings.Contains(err.Error(), "milliseconds") {
			t.Errorf("ParseTime(%q): %v, want out of range, naming milliseconds", in, err)
		}
	}
}

// running is a server's Run in a goroutine.
func run(t *testing.T, s *Server) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("Run did not return")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func TestRunServesHTTP(t *testing.T) {
	src := &fakeSource{apps: testApps(t)}
	s := newServer(t, src)
	stop := run(t, s)
	resp, err := http.Get("http://" + s.Addr() + "/api/v1/query?" + url.Values{"app": {"orders"}, "group_by": {""}}.Encode())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != `{"app":"orders","rows":[],"as_of":{"mode":"fresh"}}` {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if q := src.last(t); q.GroupBy == nil || len(q.GroupBy) != 0 {
		t.Fatalf("group_by= reached the source as %#v", q.GroupBy)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.Get("http://" + s.Addr() + "/healthz"); err == nil {
		resp.Body.Close()
		t.Fatal("still serving after Run returned")
	}
}

// TestRunEndsWhenHTTPFails: a failed HTTP listener ends Run (with the
// error) even while the Thrift server runs.
func TestRunEndsWhenHTTPFails(t *testing.T) {
	s := newServer(t, &fakeSource{apps: testApps(t)}, func(c *Config, d *Deps) { c.ThriftListen = "127.0.0.1:0" })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	// Wait until both servers accept, then break the HTTP one.
	for _, addr := range []string{s.Addr(), s.ThriftAddr()} {
		c, err := thriftsrv.Dial(addr, thriftsrv.Limits{}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	s.ln.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Run returned no error")
		}
	case <-time.After(30 * time.Second):
		cancel()
		<-done //nolint:errcheck // the test has failed already; only waiting for Run
		t.Fatal("Run did not return after its HTTP listener failed")
	}
}

func thriftClient(t *testing.T, s *Server) *freeway.QueryClient {
	t.Helper()
	c, err := thriftsrv.Dial(s.ThriftAddr(), thriftsrv.Limits{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return freeway.NewQueryClient(c.TClient())
}

func TestThrift(t *testing.T) {
	w0 := time.Date(2024, 5, 6, 7, 0, 0, 0, time.UTC).UnixMilli()
	src := &fakeSource{apps: testApps(t), res: &puma.Result{App: "orders", Rows: []puma.Row{
		{WindowStartMs: w0, WindowEndMs: w0 + 60_000, Key: map[string]string{"region": "eu", "kind": "book"}, Values: map[string]any{"n": 3.0, "total": 12.5, "lo": nil}},
	}}}
	s := newServer(t, src, func(c *Config, d *Deps) { c.ThriftListen = "127.0.0.1:0"; c.MaxRows = 50 })
	run(t, s)
	qc := thriftClient(t, s)
	ctx := context.Background()

	infos, err := qc.Apps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	field := "amount"
	want := []*freeway.AppInfo{
		{Name: "orders", Category: "shop", WindowSeconds: 60, WindowsSeconds: []int64{60}, GroupBy: []string{"region", "kind"}, Aggregates: []*freeway.Aggregate{
			{Name: "n", Fn: "count"}, {Name: "total", Fn: "sum", Field: &field}, {Name: "lo", Fn: "min", Field: &field},
		}},
		{Name: "web_hits", Category: "web", WindowSeconds: 10, WindowsSeconds: []int64{10}, GroupBy: []string{}, Aggregates: []*freeway.Aggregate{{Name: "count", Fn: "count"}}},
	}
	if len(infos) != len(want) {
		t.Fatalf("apps: %v", infos)
	}
	for i := range want {
		if !infos[i].Equals(want[i]) {
			t.Errorf("app %d: %v, want %v", i, infos[i], want[i])
		}
	}

	res, err := qc.Query(ctx, &freeway.QueryRequest{App: "orders", FromUnix: 1714975200, ToUnix: 1714978800})
	if err != nil {
		t.Fatal(err)
	}
	wantRes := &freeway.QueryResult_{App: "orders", Rows: []*freeway.Row{{
		WindowStartUnix: w0 / 1000, WindowEndUnix: w0/1000 + 60,
		Key:    map[string]string{"region": "eu", "kind": "book"},
		Values: map[string]float64{"n": 3, "total": 12.5}, // no value: absent
	}}, AsOf: &freeway.AsOf{Mode: "fresh"}}
	if !res.Equals(wantRes) || res.Truncated != nil || res.Partial != nil || res.MissingShards != nil {
		t.Fatalf("result %v, want %v", res, wantRes)
	}
	// A cut answer says so, as over HTTP.
	src.mu.Lock()
	src.res = &puma.Result{App: "orders", Rows: src.res.Rows, Truncated: true}
	src.mu.Unlock()
	res, err = qc.Query(ctx, &freeway.QueryRequest{App: "orders", FromUnix: 1714975200, ToUnix: 1714978800, Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	wantRes.Truncated = thrift.BoolPtr(true)
	if !res.Equals(wantRes) {
		t.Fatalf("truncated result %v, want %v", res, wantRes)
	}
	for _, c := range []struct {
		req  *freeway.QueryRequest
		want puma.Query
	}{
		{&freeway.QueryRequest{App: "orders", FromUnix: 10, ToUnix: 20}, puma.Query{App: "orders", FromMs: 10_000, ToMs: 20_000, Limit: 50}},
		{&freeway.QueryRequest{App: "orders", FromUnix: 10, ToUnix: 20, GroupBy: []string{}, AllWindows: true, Limit: 7}, puma.Query{App: "orders", FromMs: 10_000, ToMs: 20_000, GroupBy: []string{}, AllWindows: true, Limit: 7}},
		{&freeway.QueryRequest{App: "orders", FromUnix: -20, ToUnix: -10, GroupBy: []string{"kind"}, Limit: 1000}, puma.Query{App: "orders", FromMs: -20_000, ToMs: -10_000, GroupBy: []string{"kind"}, Limit: 50}},
	} {
		if _, err := qc.Query(ctx, c.req); err != nil {
			t.Fatal(err)
		}
		if got := src.last(t); !reflect.DeepEqual(got, c.want) || (got.GroupBy == nil) != (c.want.GroupBy == nil) {
			t.Errorf("%v reached the source as %#v, want %#v", c.req, got, c.want)
		}
	}
}

func TestThriftErrors(t *testing.T) {
	src := &fakeSource{apps: testApps(t)}
	s := newServer(t, src, func(c *Config, d *Deps) { c.ThriftListen = "127.0.0.1:0" })
	run(t, s)
	qc := thriftClient(t, s)
	ctx := context.Background()
	queryError := func(req *freeway.QueryRequest, want string) {
		t.Helper()
		_, err := qc.Query(ctx, req)
		var qe *freeway.QueryError
		if !errors.As(err, &qe) || !strings.Contains(qe.Message, want) {
			t.Errorf("%v: %v, want a QueryError with %q", req, err, want)
		}
	}
	n := src.count()
	queryError(&freeway.QueryRequest{App: "orders", FromUnix: 20, ToUnix: 20}, "from must be before to")
	queryError(&freeway.QueryRequest{App: "orders", FromUnix: math.MaxInt64 / 10, ToUnix: math.MaxInt64}, "out of range")
	queryError(&freeway.QueryRequest{App: "orders", FromUnix: math.MinInt64, ToUnix: 0}, "out of range")
	if src.count() != n {
		t.Error("a bad range reached the source")
	}
	src.err = &puma.BadQueryError{Msg: `unknown app "nope"`}
	queryError(&freeway.QueryRequest{App: "nope", FromUnix: 1, ToUnix: 2}, `unknown app "nope"`)
	src.err = errors.New("store unreachable")
	queryError(&freeway.QueryRequest{App: "orders", FromUnix: 1, ToUnix: 2}, "internal error: store unreachable")
	// The connection is still good.
	src.err = nil
	if _, err := qc.Query(ctx, &freeway.QueryRequest{App: "orders", FromUnix: 1, ToUnix: 2}); err != nil {
		t.Fatal(err)
	}
}

func TestNewValidates(t *testing.T) {
	s := newServer(t, &fakeSource{}, func(c *Config, d *Deps) { d.Log, d.Metrics, d.Gatherer, d.Now = nil, nil, nil, nil })
	if w := get(t, s, "/metrics"); w.Code != 404 {
		t.Fatalf("/metrics without a gatherer: %d", w.Code)
	}
	for _, mod := range []func(*Config){
		func(c *Config) { c.Listen = "" },
		func(c *Config) { c.QueryTimeout = 0 },
		func(c *Config) { c.MaxRows = 0 },
	} {
		cfg := DefaultConfig()
		mod(&cfg)
		if _, err := New(cfg, Deps{Source: &fakeSource{}}); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	cfg := DefaultConfig()
	cfg.Listen, cfg.ThriftListen = "127.0.0.1:0", "256.0.0.1:1"
	if _, err := New(cfg, Deps{Source: &fakeSource{}}); err == nil {
		t.Error("a bad Thrift address accepted")
	}
}
