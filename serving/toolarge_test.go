package serving

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/ptail"
	"github.com/freeway-dev/freeway/puma"
	"github.com/freeway-dev/freeway/thrift/gen/freeway"
)

// TestFanoutTooLarge: a query whose partial state is over a bound, the
// node's puma.max_partial_rows or serving's fanout_max_bytes, is refused
// whole with a clear error (puma.TooLargeError; HTTP 422 and Thrift
// QueryError code 422, saying which bound and what to do) and counted;
// not answered from the store as if the node had failed, and not read
// into memory past the bound. A query under the bounds is answered fresh.
// The code before read up to 512 MiB of each node's answer, and a node
// built its whole partial whatever its size.
func TestFanoutTooLarge(t *testing.T) {
	dir := t.TempDir()
	app := salesApp(t)
	root := newRoot(t, filepath.Join(dir, "dfs"))
	ends := make([]ptail.Position, fanBuckets)
	for b := range fanBuckets {
		ends[b] = root.publish(b, sales(b, 0))
	}
	st := openStore(t, filepath.Join(dir, "store.db"))
	hub := inproc.NewHub()
	const maxRows = 12 // a shard's rows by region and kind are more; by kind alone fewer
	var nodes []*fanNode
	for i := range 2 {
		co := hub.Session()
		t.Cleanup(func() { co.Close() })
		nodes = append(nodes, startNode(t, fmt.Sprintf("n%d", i), root.fs, st, co, app, true, time.Hour,
			func(c *puma.Config) { c.MaxPartialRows = maxRows }))
	}
	cover(t, nodes, ends, []int{0, 1, 2, 3, 4, 5})
	committed := puma.NewCommitted(st, "puma", []*apps.App{app}, func(string) int { return fanBuckets })
	fanout := func(maxBytes int64) *Fanout {
		co := hub.Session()
		t.Cleanup(func() { co.Close() })
		fo := NewFanout(FanoutDeps{Coord: co, Committed: committed, Apps: []*apps.App{app}, Buckets: func(string) int { return fanBuckets },
			Timeout: 30 * time.Second, MaxBytes: maxBytes})
		t.Cleanup(fo.Close)
		return fo
	}
	from, to := ft0-3600_000, ft0+3600_000
	small := puma.Query{App: "sales", FromMs: from, ToMs: to, GroupBy: []string{"kind"}, AllWindows: true}
	large := puma.Query{App: "sales", FromMs: from, ToMs: to}

	fo := fanout(0)
	got, err := fo.Query(context.Background(), small)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.StaleShards) > 0 || got.Partial() || len(got.Rows) != 2 {
		t.Fatalf("query under the bounds: %d rows, stale %v, missing %v", len(got.Rows), got.StaleShards, got.Missing)
	}
	tooLarge := func(fo *Fanout, q puma.Query, bound string) {
		t.Helper()
		before := testutil.ToFloat64(fo.tooLarge)
		failures, stale := testutil.ToFloat64(fo.failures.WithLabelValues("partial")), testutil.ToFloat64(fo.stale)
		res, err := fo.Query(context.Background(), q)
		var tl *puma.TooLargeError
		if !errors.As(err, &tl) || !strings.Contains(tl.Msg, bound) || !strings.Contains(tl.Msg, "narrow") {
			t.Fatalf("query over %s: answer %v, error %v", bound, res, err)
		}
		if testutil.ToFloat64(fo.tooLarge) != before+1 || testutil.ToFloat64(fo.failures.WithLabelValues("partial")) != failures || testutil.ToFloat64(fo.stale) != stale {
			t.Fatalf("query over %s: counted too large %v (was %v), failures %v (was %v), stale %v (was %v)", bound,
				testutil.ToFloat64(fo.tooLarge), before, testutil.ToFloat64(fo.failures.WithLabelValues("partial")), failures, testutil.ToFloat64(fo.stale), stale)
		}
	}
	tooLarge(fo, large, "puma.max_partial_rows")

	// Serving's own bound on a node's answer.
	tight := fanout(100)
	tooLarge(tight, small, "serving.fanout_max_bytes")

	// Over HTTP and Thrift: 422 and the message.
	srv := newServer(t, fo, func(c *Config, d *Deps) { c.ThriftListen = "127.0.0.1:0"; d.Committed = committed })
	run(t, srv)
	w := get(t, srv, fmt.Sprintf("/api/v1/query?app=sales&from=%d&to=%d", from/1000, to/1000))
	if w.Code != http.StatusUnprocessableEntity || !strings.Contains(w.Body.String(), "puma.max_partial_rows") {
		t.Fatalf("HTTP: %d %s", w.Code, w.Body)
	}
	_, err = thriftClient(t, srv).Query(context.Background(), &freeway.QueryRequest{App: "sales", FromUnix: from / 1000, ToUnix: to / 1000})
	var qe *freeway.QueryError
	if !errors.As(err, &qe) || qe.GetCode() != http.StatusUnprocessableEntity || !strings.Contains(qe.Message, "puma.max_partial_rows") {
		t.Fatalf("Thrift: %v", err)
	}
}

// TestFanoutStaleTooLarge: the partial state serving builds from the
// store for the shards no node answers for (stale_shards) is bounded as
// the nodes' are: a query over puma.max_partial_rows or
// serving.fanout_max_bytes is refused whole (422, counted in
// freeway_serving_fanout_too_large_total), where the code before built
// it whatever its size; one under them is answered from the store.
func TestFanoutStaleTooLarge(t *testing.T) {
	dir := t.TempDir()
	app := salesApp(t)
	root := newRoot(t, filepath.Join(dir, "dfs"))
	ends := make([]ptail.Position, fanBuckets)
	for b := range fanBuckets {
		ends[b] = root.publish(b, sales(b, 0))
	}
	st := openStore(t, filepath.Join(dir, "store.db"))
	hub := inproc.NewHub()
	seedCo := hub.Session()
	t.Cleanup(func() { seedCo.Close() })
	seed := startNode(t, "seed", root.fs, st, seedCo, app, false, 100*time.Millisecond)
	testkit.Eventually(t, "every shard committed", func() error {
		n := 0
		for _, s := range seed.p.Statuses() {
			if s.Committed == ends[s.Bucket].String() {
				n++
			}
		}
		if n != fanBuckets {
			return fmt.Errorf("%d of %d shards committed", n, fanBuckets)
		}
		return nil
	})
	seed.stop()

	committed := puma.NewCommitted(st, "puma", []*apps.App{app}, func(string) int { return fanBuckets })
	fanout := func(maxRows int, maxBytes int64) *Fanout {
		co := hub.Session()
		t.Cleanup(func() { co.Close() })
		fo := NewFanout(FanoutDeps{Coord: co, Committed: committed, Apps: []*apps.App{app}, Buckets: func(string) int { return fanBuckets },
			Timeout: 30 * time.Second, MaxBytes: maxBytes, MaxPartialRows: maxRows})
		t.Cleanup(fo.Close)
		return fo
	}
	from, to := ft0-3600_000, ft0+3600_000
	small := puma.Query{App: "sales", FromMs: from, ToMs: to, GroupBy: []string{"kind"}, AllWindows: true}
	large := puma.Query{App: "sales", FromMs: from, ToMs: to}
	const maxRows = 12

	fo := fanout(maxRows, 0)
	got, err := fo.Query(context.Background(), small)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.StaleShards) != fanBuckets || len(got.Rows) != 2 {
		t.Fatalf("query under the bounds: %d rows, stale %v", len(got.Rows), got.StaleShards)
	}
	refused := func(fo *Fanout, q puma.Query, bound string) {
		t.Helper()
		before, stale := testutil.ToFloat64(fo.tooLarge), testutil.ToFloat64(fo.stale)
		res, err := fo.Query(context.Background(), q)
		var tl *puma.TooLargeError
		if !errors.As(err, &tl) || !strings.Contains(tl.Msg, bound) || !strings.Contains(tl.Msg, "narrow") {
			if res != nil {
				t.Fatalf("query over %s: answered with %d rows", bound, len(res.Rows))
			}
			t.Fatalf("query over %s: error %v", bound, err)
		}
		if testutil.ToFloat64(fo.tooLarge) != before+1 || testutil.ToFloat64(fo.stale) != stale {
			t.Fatalf("query over %s: counted too large %v (was %v), stale %v (was %v)", bound, testutil.ToFloat64(fo.tooLarge), before, testutil.ToFloat64(fo.stale), stale)
		}
	}
	refused(fo, large, "puma.max_partial_rows")
	refused(fanout(0, 100), small, "serving.fanout_max_bytes")
	// The default bounds take the large query.
	if got, err := fanout(0, 0).Query(context.Background(), large); err != nil || len(got.Rows) <= maxRows {
		t.Fatalf("large query under the default bounds: %v", err)
	}

	srv := newServer(t, fo, func(c *Config, d *Deps) { d.Committed = committed })
	run(t, srv)
	w := get(t, srv, fmt.Sprintf("/api/v1/query?app=sales&from=%d&to=%d", from/1000, to/1000))
	if w.Code != http.StatusUnprocessableEntity || !strings.Contains(w.Body.String(), "puma.max_partial_rows") {
		t.Fatalf("HTTP: %d %s", w.Code, w.Body)
	}
}
