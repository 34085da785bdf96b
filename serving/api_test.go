package serving

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/apache/thrift/lib/go/thrift"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/boltstore"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/puma"
	"github.com/freeway-dev/freeway/thrift/gen/freeway"
)

// TestQueryFilterParameters: where, order_by and mode reach the source as
// the query's Where, OrderBy/Desc, and the source of the mode.
func TestQueryFilterParameters(t *testing.T) {
	src := &fakeSource{apps: testApps(t)}
	s := newServer(t, src, func(c *Config, d *Deps) { c.MaxRows = 500 })
	nowMs := now.UnixMilli()
	base := puma.Query{App: "orders", FromMs: nowMs - 3600_000, ToMs: nowMs, Limit: 500}
	with := func(f func(q *puma.Query)) puma.Query {
		q := base
		f(&q)
		return q
	}
	for _, c := range []struct {
		query string
		want  puma.Query
	}{
		{"app=orders&where=region:eu", with(func(q *puma.Query) { q.Where = map[string][]string{"region": {"eu"}} })},
		{"app=orders&where=region:eu&where=kind:book&where=region:us", with(func(q *puma.Query) {
			q.Where = map[string][]string{"region": {"eu", "us"}, "kind": {"book"}}
		})},
		{"app=orders&where=region:", with(func(q *puma.Query) { q.Where = map[string][]string{"region": {""}} })},
		{"app=orders&where=path:/a:b%20c", with(func(q *puma.Query) { q.Where = map[string][]string{"path": {"/a:b c"}} })},
		{"app=orders&order_by=total", with(func(q *puma.Query) { q.OrderBy, q.Desc = "total", true })},
		{"app=orders&order_by=total:desc", with(func(q *puma.Query) { q.OrderBy, q.Desc = "total", true })},
		{"app=orders&order_by=total:asc&window=all&group_by=region&limit=3", with(func(q *puma.Query) {
			q.OrderBy, q.AllWindows, q.GroupBy, q.Limit = "total", true, []string{"region"}, 3
		})},
		{"app=orders&mode=fresh", base},
	} {
		w := get(t, s, "/api/v1/query?"+c.query)
		if w.Code != 200 {
			t.Errorf("%s: status %d: %s", c.query, w.Code, w.Body)
			continue
		}
		if got := src.last(t); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s:\n got %#v\nwant %#v", c.query, got, c.want)
		}
	}
	for _, c := range []struct{ query, want string }{
		{"app=orders&where=region", `bad where "region": want key:value`},
		{"app=orders&where=:eu", `bad where ":eu": want key:value`},
		{"app=orders&order_by=", `bad order_by "": no aggregate named`},
		{"app=orders&order_by=:asc", `bad order_by ":asc": no aggregate named`},
		{"app=orders&order_by=total:up", `bad order_by "total:up": want an aggregate, then optionally :asc or :desc`},
		{"app=orders&order_by=n&order_by=total", `parameter "order_by" given 2 times`},
		{"app=orders&mode=stale", `bad mode "stale": want fresh or committed`},
		{"app=orders&mode=committed", "mode=committed: this serving process has no store reader"},
	} {
		n := src.count()
		w := get(t, s, "/api/v1/query?"+c.query)
		if msg, _ := decode(t, w)["error"].(string); w.Code != 400 || !strings.Contains(msg, c.want) {
			t.Errorf("%s: %d %q, want 400 with %q", c.query, w.Code, msg, c.want)
		}
		if src.count() != n {
			t.Errorf("%s reached the source", c.query)
		}
	}
}

// TestModes: beside a Puma node, mode=committed answers from the store's
// reader and the default is fresh; a serving process with the store only
// answers committed by default and refuses fresh. The answer's as_of
// names the mode, the time of the data and the watermark.
func TestModes(t *testing.T) {
	w0 := time.Date(2024, 5, 6, 7, 0, 0, 0, time.UTC).UnixMilli()
	fresh := &fakeSource{apps: testApps(t), res: &puma.Result{App: "orders", AsOf: puma.AsOf{TimeMs: now.UnixMilli(), WatermarkMs: w0 + 1500}}}
	stored := &fakeSource{apps: testApps(t), res: &puma.Result{App: "orders", AsOf: puma.AsOf{TimeMs: w0 + 250}}}
	s := newServer(t, fresh, func(c *Config, d *Deps) { d.Committed = stored; c.ThriftListen = "127.0.0.1:0" })
	for _, c := range []struct {
		query string
		src   *fakeSource
		asOf  string
	}{
		{"app=orders", fresh, `{"mode":"fresh","time":"2024-05-06T07:08:09Z","watermark":"2024-05-06T07:00:01.5Z"}`},
		{"app=orders&mode=fresh", fresh, `{"mode":"fresh","time":"2024-05-06T07:08:09Z","watermark":"2024-05-06T07:00:01.5Z"}`},
		{"app=orders&mode=committed", stored, `{"mode":"committed","time":"2024-05-06T07:00:00.25Z"}`},
	} {
		nf, ns := fresh.count(), stored.count()
		w := get(t, s, "/api/v1/query?"+c.query)
		var got struct {
			AsOf json.RawMessage `json:"as_of"`
		}
		if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || w.Code != 200 || string(got.AsOf) != c.asOf {
			t.Errorf("%s: %d %s, want as_of %s", c.query, w.Code, w.Body, c.asOf)
		}
		if (fresh.count() > nf) != (c.src == fresh) || (stored.count() > ns) != (c.src == stored) {
			t.Errorf("%s: answered by the wrong source", c.query)
		}
	}
	// The same over Thrift.
	run(t, s)
	qc := thriftClient(t, s)
	res, err := qc.Query(context.Background(), &freeway.QueryRequest{App: "orders", FromUnix: 10, ToUnix: 20, Mode: thrift.StringPtr("committed")})
	if want := (&freeway.AsOf{Mode: "committed", TimeMs: thrift.Int64Ptr(w0 + 250)}); err != nil || !res.AsOf.Equals(want) {
		t.Fatalf("thrift committed: %v %v, want %v", err, res, want)
	}
	res, err = qc.Query(context.Background(), &freeway.QueryRequest{App: "orders", FromUnix: 10, ToUnix: 20})
	if want := (&freeway.AsOf{Mode: "fresh", TimeMs: thrift.Int64Ptr(now.UnixMilli()), WatermarkMs: thrift.Int64Ptr(w0 + 1500)}); err != nil || !res.AsOf.Equals(want) {
		t.Fatalf("thrift default: %v %v, want %v", err, res, want)
	}

	// A serving process with the store only.
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	store := newServer(t, puma.NewCommitted(st, "puma", testApps(t), func(string) int { return 1 }))
	w := get(t, store, "/api/v1/query?app=orders")
	if w.Code != 200 || !strings.Contains(w.Body.String(), `"as_of":{"mode":"committed"}`) {
		t.Fatalf("store default: %d %s", w.Code, w.Body)
	}
	w = get(t, store, "/api/v1/query?app=orders&mode=fresh")
	if msg, _ := decode(t, w)["error"].(string); w.Code != 400 || !strings.Contains(msg, "mode=fresh: this serving process has no Puma node; it answers from the store only (mode=committed)") {
		t.Fatalf("store, mode=fresh: %d %s", w.Code, w.Body)
	}
}

// TestThriftFilters: the request's where, order_by and mode reach the
// source as over HTTP; bad ones are QueryErrors of code 400.
func TestThriftFilters(t *testing.T) {
	src := &fakeSource{apps: testApps(t)}
	s := newServer(t, src, func(c *Config, d *Deps) { c.ThriftListen = "127.0.0.1:0"; c.MaxRows = 50 })
	run(t, s)
	qc := thriftClient(t, s)
	ctx := context.Background()
	req := &freeway.QueryRequest{App: "orders", FromUnix: 10, ToUnix: 20, AllWindows: true, GroupBy: []string{"region"}, Limit: 3,
		Where: map[string][]string{"kind": {"book", "pen"}}, OrderBy: thrift.StringPtr("total:asc"), Mode: thrift.StringPtr("fresh")}
	if _, err := qc.Query(ctx, req); err != nil {
		t.Fatal(err)
	}
	want := puma.Query{App: "orders", FromMs: 10_000, ToMs: 20_000, AllWindows: true, GroupBy: []string{"region"}, Limit: 3,
		Where: map[string][]string{"kind": {"book", "pen"}}, OrderBy: "total"}
	if got := src.last(t); !reflect.DeepEqual(got, want) {
		t.Fatalf("reached the source as %#v, want %#v", got, want)
	}
	for _, c := range []struct {
		req  *freeway.QueryRequest
		want string
	}{
		{&freeway.QueryRequest{App: "orders", FromUnix: 10, ToUnix: 20, Where: map[string][]string{"": {"x"}}}, "bad where: an empty group key"},
		{&freeway.QueryRequest{App: "orders", FromUnix: 10, ToUnix: 20, Where: map[string][]string{"kind": {}}}, `bad where: no value given for "kind"`},
		{&freeway.QueryRequest{App: "orders", FromUnix: 10, ToUnix: 20, OrderBy: thrift.StringPtr("n:sideways")}, `bad order_by "n:sideways"`},
		{&freeway.QueryRequest{App: "orders", FromUnix: 10, ToUnix: 20, Mode: thrift.StringPtr("")}, `bad mode "": want fresh or committed`},
		{&freeway.QueryRequest{App: "orders", FromUnix: 10, ToUnix: 20, Mode: thrift.StringPtr("committed")}, "mode=committed: this serving process has no store reader"},
	} {
		n := src.count()
		_, err := qc.Query(ctx, c.req)
		var qe *freeway.QueryError
		if !errors.As(err, &qe) || qe.GetCode() != 400 || !strings.Contains(qe.Message, c.want) {
			t.Errorf("%v: %v, want a QueryError 400 with %q", c.req, err, c.want)
		}
		if src.count() != n {
			t.Errorf("%v reached the source", c.req)
		}
	}
}

// TestStatus: /api/v1/status on a Puma node: the process's components,
// the modes, every shard with its owner, state, position, lag and
// checkpoint age, each app's watermark and lag, and the reports of the
// other components under their names.
func TestStatus(t *testing.T) {
	var clock = time.Now()
	p := pumaNode(t, func(st store.Store) store.Store { return st }, func() time.Time { return clock })
	s := newServer(t, p, func(c *Config, d *Deps) {
		d.Components = []string{"agent", "puma", "serving"}
		d.Status = []StatusProvider{{Name: "agent", Report: func(context.Context) any { return map[string]int{"queue_entries": 7} }}}
		d.Now = func() time.Time { return clock.Add(90 * time.Second) }
	})
	var st map[string]any
	testkit.Eventually(t, "every shard running and committed", func() error {
		w := get(t, s, "/api/v1/status")
		st = decode(t, w)
		shards, _ := st["shards"].([]any)
		if w.Code != 200 || len(shards) != 3 {
			return errors.New(w.Body.String())
		}
		for _, x := range shards {
			sh := x.(map[string]any)
			if sh["state"] != "running" || sh["committed_position"] == nil || sh["committed_position"] != sh["position"] {
				return errors.New(w.Body.String())
			}
		}
		return nil
	})
	if !reflect.DeepEqual(st["components"], []any{"agent", "puma", "serving"}) || !reflect.DeepEqual(st["modes"], []any{"fresh"}) ||
		st["default_mode"] != "fresh" || st["shards_from"] != "puma" || !reflect.DeepEqual(st["agent"], map[string]any{"queue_entries": 7.0}) {
		t.Fatalf("status: %v", st)
	}
	sh := st["shards"].([]any)[1].(map[string]any)
	lastCommit, _ := time.Parse(time.RFC3339Nano, sh["last_commit"].(string))
	if sh["category"] != "shop" || sh["bucket"] != 1.0 || sh["owner"] != "n1" || sh["lag_segments"] != 0.0 ||
		sh["checkpoint_age_seconds"] != clock.Add(90*time.Second).Sub(lastCommit).Seconds() ||
		!reflect.DeepEqual(sh["watermarks"], map[string]any{"orders": "2024-05-06T07:00:01Z"}) {
		t.Fatalf("shard shop/1: %v", sh)
	}
	app := st["apps"].([]any)[0].(map[string]any)
	wm := time.Date(2024, 5, 6, 7, 0, 1, 0, time.UTC)
	if app["name"] != "orders" || app["category"] != "shop" || app["shards"] != 3.0 || app["shards_running"] != 3.0 ||
		app["watermark"] != "2024-05-06T07:00:01Z" || app["behind_seconds"] != clock.Add(90*time.Second).Sub(wm).Seconds() || app["lag_segments"] != 0.0 {
		t.Fatalf("app: %v", app)
	}

	// A provider may not take a field's name.
	_, err := New(Config{Listen: "127.0.0.1:0", QueryTimeout: DefaultConfig().QueryTimeout, MaxRows: 1},
		Deps{Source: p, Status: []StatusProvider{{Name: "shards", Report: func(context.Context) any { return nil }}}})
	if err == nil || !strings.Contains(err.Error(), `status provider "shards"`) {
		t.Fatalf("provider named shards: %v", err)
	}
}

// TestStatusFromTheStore: a serving process without a Puma node shows
// the shards as the store has them: the node and time of each one's last
// commit.
func TestStatusFromTheStore(t *testing.T) {
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	reg := prometheus.NewRegistry()
	s, err := New(Config{Listen: "127.0.0.1:0", QueryTimeout: DefaultConfig().QueryTimeout, MaxRows: 1},
		Deps{Source: puma.NewCommitted(st, "puma", testApps(t), func(string) int { return 2 }), Common: component.Common{Metrics: reg, Version: "v1.2.3", Now: func() time.Time { return now }}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.ln.Close()
	w := get(t, s, "/api/v1/status")
	want := `{"time":"2024-05-06T07:08:09Z","version":"v1.2.3","components":["serving"],"modes":["committed"],"default_mode":"committed","shards_from":"store",` +
		`"shards":[{"category":"shop","bucket":0},{"category":"shop","bucket":1},{"category":"web","bucket":0},{"category":"web","bucket":1}],` +
		`"apps":[{"name":"orders","category":"shop","shards":2,"shards_running":0},{"name":"web_hits","category":"web","shards":2,"shards_running":0}]}`
	if got := strings.TrimSpace(w.Body.String()); w.Code != http.StatusOK || got != want {
		t.Fatalf("status: %d\n%s\nwant\n%s", w.Code, got, want)
	}
}

// stalledNode is a Puma node whose shard shop/1 says its reading fails.
type stalledNode struct {
	*puma.Puma
	since time.Time
}

func (n stalledNode) ShardStatuses(ctx context.Context) []puma.Status {
	out := n.Puma.ShardStatuses(ctx)
	for i := range out {
		if out[i].Bucket == 1 {
			out[i].ReadStalls = []puma.ReadStall{{Reader: "live", Since: n.since, Failures: 7, Segment: "shop/1/x.seg", Offset: 1234, Kind: "checksum", Error: "read x: checksum error: invalid checksum"}}
		}
	}
	return out
}

// TestStatusShowsReadStalls: a shard whose reading fails (puma's
// ReadStalls) shows in /api/v1/status with the segment, offset, kind,
// failures and how long, and is counted in its apps' shards_read_stalled.
func TestStatusShowsReadStalls(t *testing.T) {
	clock := time.Now()
	p := pumaNode(t, func(st store.Store) store.Store { return st }, func() time.Time { return clock })
	s := newServer(t, stalledNode{Puma: p, since: clock}, func(c *Config, d *Deps) { d.Now = func() time.Time { return clock.Add(90 * time.Second) } })
	w := get(t, s, "/api/v1/status")
	st := decode(t, w)
	var stalled []any
	for _, x := range st["shards"].([]any) {
		if sh := x.(map[string]any); sh["bucket"] == 1.0 {
			stalled, _ = sh["read_stalled"].([]any)
		} else if sh["read_stalled"] != nil {
			t.Fatalf("shard %v", sh)
		}
	}
	want := map[string]any{"reader": "live", "since": rfc3339(clock), "stalled_seconds": 90.0, "failures": 7.0, "segment": "shop/1/x.seg", "offset": 1234.0,
		"kind": "checksum", "error": "read x: checksum error: invalid checksum"}
	if len(stalled) != 1 || !reflect.DeepEqual(stalled[0], want) {
		t.Fatalf("read_stalled %v", stalled)
	}
	if app := st["apps"].([]any)[0].(map[string]any); app["shards_read_stalled"] != 1.0 {
		t.Fatalf("app %v", app)
	}
}
