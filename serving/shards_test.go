package serving

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/boltstore"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/puma"
	"github.com/freeway-dev/freeway/thrift/gen/freeway"
)

// gateStore holds the recovery of chosen shards: a read of a held shard's
// commit row waits until the gate opens, or fails while the shard is set
// to fail.
type gateStore struct {
	store.Store
	mu   sync.Mutex
	hold map[string]chan struct{} // commit row → closed when released
	fail map[string]error         // commit row → the error its reads get
}

func (g *gateStore) Get(ctx context.Context, table, row string, asOf int64) ([]store.Cell, error) {
	g.mu.Lock()
	gate, err := g.hold[row], g.fail[row]
	g.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return g.Store.Get(ctx, table, row, asOf)
}

func (g *gateStore) release(row string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c := g.hold[row]; c != nil {
		close(c)
		delete(g.hold, row)
	}
}

func (g *gateStore) heal(row string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.fail, row)
}

// pumaNode runs a Puma node with the orders app of testApps over three
// buckets of category shop, each holding one order, on embedded backends
// with the store st wraps.
func pumaNode(t *testing.T, wrap func(store.Store) store.Store, clock func() time.Time) *puma.Puma {
	t.Helper()
	dir := t.TempDir()
	fs, err := localfs.New(filepath.Join(dir, "dfs"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := boltstore.Open(filepath.Join(dir, "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	w0 := time.Date(2024, 5, 6, 7, 0, 0, 0, time.UTC).UnixMilli()
	for b, region := range []string{"eu", "us", "ap"} {
		line := fmt.Appendf(nil, `{"region": %q, "kind": "book", "amount": %d}`, region, 10*(b+1))
		blk := &segment.Block{ArrivalMs: w0 + 1000, Messages: [][]byte{line}}
		if err := dfs.WriteFile(fs, path.Join(layout.BucketDir("shop", b), layout.SegmentName(1, 1)), segment.AppendBlock([]byte(segment.Magic), blk)); err != nil {
			t.Fatal(err)
		}
	}
	co := inproc.NewHub().Session()
	t.Cleanup(func() { co.Close() })
	cfg := puma.DefaultConfig()
	cfg.ID = "n1"
	cfg.PollInterval = config.Duration(5 * time.Millisecond)
	cfg.CheckpointInterval = config.Duration(100 * time.Millisecond)
	p, err := puma.New(cfg, puma.Deps{
		FS: fs, Store: wrap(st), Coord: co, Apps: testApps(t)[:1],
		Buckets: func(string) int { return 3 }, Common: component.Common{Log: testLog(), Now: clock},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("puma: %v", err)
		}
	})
	return p
}

// TestShardStatesReachClients: with shop/1 still recovering (its store
// reads held) and shop/2 failing (its store reads fail), /readyz says
// which and why, and every answer, HTTP, says that it lacks them, while
// shop/0 answers. Once both recover, the answer is complete and has the
// exact shape of a complete answer.
func TestShardStatesReachClients(t *testing.T) {
	gs := &gateStore{
		hold: map[string]chan struct{}{"c/shop/1": make(chan struct{})},
		fail: map[string]error{"c/shop/2": errors.New("injected: region server down")},
	}
	// Puma's clock stands still until the shards are healed, so that the
	// failed one is not tried again (and seen recovering) meanwhile.
	var mu sync.Mutex
	clock := time.Now()
	p := pumaNode(t, func(st store.Store) store.Store { gs.Store = st; return gs }, func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return clock
	})
	s := newServer(t, p, func(c *Config, d *Deps) { d.Ready = p.Readiness; c.ThriftListen = "127.0.0.1:0" })
	run(t, s)
	qc := thriftClient(t, s)
	from, to := time.Date(2024, 5, 6, 7, 0, 0, 0, time.UTC).Unix(), time.Date(2024, 5, 6, 8, 0, 0, 0, time.UTC).Unix()
	thriftQuery := func() *freeway.QueryResult_ {
		t.Helper()
		res, err := qc.Query(context.Background(), &freeway.QueryRequest{App: "orders", FromUnix: from, ToUnix: to})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	row := func(region string, amount float64) *freeway.Row {
		return &freeway.Row{WindowStartUnix: from, WindowEndUnix: from + 60, Key: map[string]string{"region": region, "kind": "book"}, Values: map[string]float64{"n": 1, "total": amount, "lo": amount}}
	}
	const q = "/api/v1/query?app=orders&from=2024-05-06T07:00:00Z&to=2024-05-06T08:00:00Z"
	// shop/0 may answer before Run's first pass has tried shop/1 and
	// shop/2, before shop/2 failed, and before the pass ends (the node's
	// readiness is not known before): wait for the node to hold the
	// states this test is about, then check that they reach clients.
	testkit.Eventually(t, "shop/1 recovering and shop/2 failed, the first pass over", func() error {
		st := p.Statuses()
		if st[1].State != puma.StateRecovering || st[1].Since.IsZero() || st[2].State != puma.StateFailed {
			return fmt.Errorf("%+v", st)
		}
		if rd := p.Readiness(); rd.Reason == "puma is not running" {
			return errors.New(rd.Reason)
		}
		return nil
	})
	testkit.Eventually(t, "shop/0 answers", func() error {
		if body := get(t, s, q).Body.String(); !strings.Contains(body, `"region":"eu"`) {
			return errors.New(body)
		}
		return nil
	})
	w := get(t, s, "/readyz")
	if w.Code != 503 || !strings.Contains(w.Body.String(), "shop/1: recovering") || !strings.Contains(w.Body.String(), "shop/2: failed") ||
		!strings.Contains(w.Body.String(), "injected: region server down") || strings.Contains(w.Body.String(), "shop/0") {
		t.Fatalf("readyz: %d\n%s", w.Code, w.Body)
	}
	w = get(t, s, q)
	body, asOf := cutAsOf(t, w.Body.String())
	mu.Lock()
	wantAsOf := AsOfJSON{Mode: "fresh", Time: time.UnixMilli(clock.UnixMilli()).UTC().Format(time.RFC3339Nano), Watermark: "2024-05-06T07:00:01Z"}
	mu.Unlock()
	if asOf != wantAsOf {
		t.Fatalf("as_of %+v, want %+v", asOf, wantAsOf)
	}
	want := `{"app":"orders","rows":[` +
		`{"window_start":"2024-05-06T07:00:00Z","window_end":"2024-05-06T07:01:00Z","key":{"kind":"book","region":"eu"},"values":{"lo":10,"n":1,"total":10}}` +
		`],"partial":true,"missing_shards":[` +
		`{"category":"shop","bucket":1,"state":"recovering"},` +
		`{"category":"shop","bucket":2,"state":"failed","error":"recover shard shop/2: read commit row c/shop/2: injected: region server down"}]}`
	if w.Code != 200 || body != want {
		t.Fatalf("partial answer: %d\n%s\nwant\n%s", w.Code, body, want)
	}

	wantThrift := &freeway.QueryResult_{App: "orders", Rows: []*freeway.Row{row("eu", 10)}, Partial: thrift.BoolPtr(true), MissingShards: []*freeway.MissingShard{
		{Category: "shop", Bucket: 1, State: "recovering"},
		{Category: "shop", Bucket: 2, State: "failed", Error: thrift.StringPtr("recover shard shop/2: read commit row c/shop/2: injected: region server down")},
	}, AsOf: &freeway.AsOf{Mode: "fresh", TimeMs: thrift.Int64Ptr(clock.UnixMilli()), WatermarkMs: thrift.Int64Ptr(from*1000 + 1000)}}
	if got := thriftQuery(); !got.Equals(wantThrift) {
		t.Fatalf("partial Thrift answer:\n%v\nwant\n%v", got, wantThrift)
	}

	gs.release("c/shop/1")
	gs.heal("c/shop/2")
	mu.Lock()
	clock = clock.Add(time.Hour)
	mu.Unlock()
	testkit.Eventually(t, "every shard running", func() error {
		if w := get(t, s, "/readyz"); w.Code != http.StatusOK {
			return fmt.Errorf("%d %s", w.Code, w.Body)
		}
		return nil
	})
	want = `{"app":"orders","rows":[` +
		`{"window_start":"2024-05-06T07:00:00Z","window_end":"2024-05-06T07:01:00Z","key":{"kind":"book","region":"ap"},"values":{"lo":30,"n":1,"total":30}},` +
		`{"window_start":"2024-05-06T07:00:00Z","window_end":"2024-05-06T07:01:00Z","key":{"kind":"book","region":"eu"},"values":{"lo":10,"n":1,"total":10}},` +
		`{"window_start":"2024-05-06T07:00:00Z","window_end":"2024-05-06T07:01:00Z","key":{"kind":"book","region":"us"},"values":{"lo":20,"n":1,"total":20}}` +
		`]}`
	// Running is not yet read: wait for the shards' readers to apply their
	// segments, then the answer must have exactly a complete one's shape.
	testkit.Eventually(t, "complete answer", func() error {
		if got, _ := cutAsOf(t, get(t, s, q).Body.String()); got != want {
			return fmt.Errorf("\n%s\nwant\n%s", got, want)
		}
		return nil
	})
	wantThrift = &freeway.QueryResult_{App: "orders", Rows: []*freeway.Row{row("ap", 30), row("eu", 10), row("us", 20)},
		AsOf: &freeway.AsOf{Mode: "fresh", TimeMs: thrift.Int64Ptr(clock.UnixMilli()), WatermarkMs: thrift.Int64Ptr(from*1000 + 1000)}}
	if got := thriftQuery(); !got.Equals(wantThrift) || got.Partial != nil || got.MissingShards != nil || got.Truncated != nil {
		t.Fatalf("complete Thrift answer:\n%v\nwant\n%v", got, wantThrift)
	}
}

// cutAsOf splits an answer of /api/v1/query into the answer without its
// as_of (the shape clients before it knew, exactly) and its as_of.
func cutAsOf(t *testing.T, body string) (string, AsOfJSON) {
	t.Helper()
	body = strings.TrimSpace(body)
	i := strings.LastIndex(body, `,"as_of":`)
	if i < 0 {
		t.Fatalf("no as_of in %s", body)
	}
	var a AsOfJSON
	if err := json.Unmarshal([]byte(body[i+len(`,"as_of":`):len(body)-1]), &a); err != nil {
		t.Fatalf("as_of of %s: %v", body, err)
	}
	return body[:i] + "}", a
}
