package serving

import (
	"context"
	"encoding/json"
	"fmt"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/ptail"
	"github.com/freeway-dev/freeway/puma"
)

// TestFanoutApps: /api/v1/apps of a standalone serving that fans out
// shows what `freeway all` shows of an app, merged over the Puma nodes
// (puma.AppsPath): its state, its memory (cells and bytes summed) and
// what it did not aggregate (dropped counts summed, samples of every
// node), and names the nodes asked and those that did not answer. The
// code before showed none of it in a split deployment.
func TestFanoutApps(t *testing.T) {
	dir := t.TempDir()
	app := salesApp(t)
	root := newRoot(t, filepath.Join(dir, "dfs"))
	st := openStore(t, filepath.Join(dir, "store.db"))
	hub := inproc.NewHub()
	var nodes []*fanNode
	for i := range 2 {
		co := hub.Session()
		t.Cleanup(func() { co.Close() })
		nodes = append(nodes, startNode(t, fmt.Sprintf("n%d", i), root.fs, st, co, app, true, time.Hour))
	}
	// Balanced (three shards each) before anything is published, so
	// that no shard moves after it counted a line (a node's counts are of
	// the shards it runs, since they started there).
	testkit.Eventually(t, "shards balanced across the nodes", func() error {
		for _, n := range nodes {
			running := 0
			for _, s := range n.p.Statuses() {
				if s.State == puma.StateRunning {
					running++
				}
			}
			if running != fanBuckets/2 {
				return fmt.Errorf("node %s runs %d shards", n.p.ID(), running)
			}
		}
		return nil
	})
	ends := make([]ptail.Position, fanBuckets)
	for b := range fanBuckets {
		lines := sales(b, 0)
		if b%2 == 0 { // a bad line in half the buckets
			lines = append(lines, fmt.Appendf(nil, "not json %d", b))
		}
		ends[b] = root.publish(b, lines)
	}
	where := cover(t, nodes, ends, []int{0, 1, 2, 3, 4, 5})
	co := hub.Session()
	t.Cleanup(func() { co.Close() })
	committed := puma.NewCommitted(st, "puma", []*apps.App{app}, func(string) int { return fanBuckets })
	fo := NewFanout(FanoutDeps{Coord: co, Committed: committed, Apps: []*apps.App{app}, Buckets: func(string) int { return fanBuckets }, Timeout: 30 * time.Second})
	t.Cleanup(fo.Close)
	srv := newServer(t, fo, func(c *Config, d *Deps) { d.Committed = committed })
	run(t, srv)

	// What the nodes say, added up.
	var cells, bytes int64
	var samples []string
	for _, n := range nodes {
		m, _ := n.p.Memory("sales")
		cells, bytes = cells+m.Cells, bytes+m.Bytes
		rej, _ := n.p.Rejections("sales")
		for _, s := range rej.Samples {
			samples = append(samples, s.Line)
		}
	}
	slices.Sort(samples)
	if cells == 0 || len(samples) != 3 {
		t.Fatalf("the nodes hold %d cells, samples %v (shards on %v)", cells, samples, where)
	}
	check := func(body map[string]any, asked int) {
		t.Helper()
		a := body["apps"].([]any)[0].(map[string]any)
		mem, _ := a["memory"].(map[string]any)
		dropped, _ := a["dropped"].(map[string]any)
		var lines []string
		rejected, _ := a["rejected"].([]any)
		for _, x := range rejected {
			lines = append(lines, x.(map[string]any)["line"].(string))
		}
		slices.Sort(lines)
		if a["state"] != "live" || mem == nil || mem["cells"] != float64(cells) || mem["bytes"] != float64(bytes) ||
			dropped["parse_error"] != 3.0 || !reflect.DeepEqual(lines, samples) {
			t.Fatalf("app %v; want %d cells, %d bytes, samples %v", a, cells, bytes, samples)
		}
		pn, _ := body["puma_nodes"].(map[string]any)
		if pn == nil || pn["asked"] != float64(asked) {
			t.Fatalf("puma_nodes %v", body["puma_nodes"])
		}
	}
	w := get(t, srv, "/api/v1/apps")
	body := decode(t, w)
	check(body, 2)
	if m := body["puma_nodes"].(map[string]any)["missing"].([]any); len(m) != 0 {
		t.Fatalf("missing %v", m)
	}

	// A node whose shard shop/1 is stuck (a node's answer, as puma's
	// AppsHandler makes it): its stall shows in /api/v1/status, which
	// has the shards from the store.
	since := time.Now().Add(-time.Minute).UTC()
	stuck := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != puma.AppsPath {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode(puma.NodeAppReports{Node: "stuck", Apps: []puma.AppReport{}, ReadStalls: []puma.ShardReadStall{{Category: "shop", Bucket: 1,
			ReadStall: puma.ReadStall{Reader: "live", Since: since, Failures: 9, Segment: "shop/1/x.seg", Offset: 77, Kind: "checksum", Error: "checksum error"}}}})
	}))
	t.Cleanup(stuck.Close)
	stuckCo := hub.Session()
	t.Cleanup(func() { stuckCo.Close() })
	membership, err := stuckCo.Join(context.Background(), names.PumaMembers, "stuck", []byte(stuck.Listener.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	check(decode(t, get(t, srv, "/api/v1/apps")), 3)
	status := decode(t, get(t, srv, "/api/v1/status"))
	if pn, _ := status["puma_nodes"].(map[string]any); status["shards_from"] != "store" || pn == nil || pn["asked"] != 3.0 || len(pn["missing"].([]any)) != 0 {
		t.Fatalf("status %v", status)
	}
	for _, x := range status["shards"].([]any) {
		sh := x.(map[string]any)
		rs, _ := sh["read_stalled"].([]any)
		if sh["bucket"] != 1.0 {
			if rs != nil {
				t.Fatalf("shard %v", sh)
			}
			continue
		}
		if len(rs) != 1 || rs[0].(map[string]any)["segment"] != "shop/1/x.seg" || rs[0].(map[string]any)["offset"] != 77.0 || rs[0].(map[string]any)["kind"] != "checksum" {
			t.Fatalf("shard %v", sh)
		}
	}
	if err := membership.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}

	// A node that hangs, and one that advertises no address: named, the
	// others' reports still shown.
	hang := make(chan struct{})
	hung := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(hung.Close)
	t.Cleanup(func() { close(hang) })
	ghost := hub.Session()
	t.Cleanup(func() { ghost.Close() })
	if _, err := ghost.Join(context.Background(), names.PumaMembers, "ghost", []byte(hung.Listener.Addr().String())); err != nil {
		t.Fatal(err)
	}
	quiet := hub.Session()
	t.Cleanup(func() { quiet.Close() })
	if _, err := quiet.Join(context.Background(), names.PumaMembers, "quiet", nil); err != nil {
		t.Fatal(err)
	}
	fo.timeout = 300 * time.Millisecond
	body = decode(t, get(t, srv, "/api/v1/apps"))
	check(body, 4)
	// Counted as app reports that failed, apart from queries' partials.
	if apps, partial := testutil.ToFloat64(fo.failures.WithLabelValues("apps")), testutil.ToFloat64(fo.failures.WithLabelValues("partial")); apps != 1 || partial != 0 {
		t.Fatalf("failures: apps %v, partial %v; want 1 and 0 (the hung node's report)", apps, partial)
	}
	missing := body["puma_nodes"].(map[string]any)["missing"].([]any)
	if len(missing) != 2 || missing[0].(map[string]any)["node"] != "ghost" || missing[1].(map[string]any)["node"] != "quiet" ||
		!strings.Contains(missing[1].(map[string]any)["error"].(string), "no address") {
		t.Fatalf("missing %v", missing)
	}
}
