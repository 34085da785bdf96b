package puma

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// fourOrders is one segment's worth of orders in two windows.
func fourOrders() [][]byte {
	return [][]byte{
		order(t0+1000, "eu", "book", 10),
		order(t0+2000, "eu", "book", 30),
		order(t0+3000, "us", "pen", 2),
		order(t0+61_000, "eu", "book", 5),
	}
}

var fourOrdersRows = []string{
	"+0..+60s {kind=book region=eu} {hi=30 lo=10 mean=20 n=2 total=40}",
	"+0..+60s {kind=pen region=us} {hi=2 lo=2 mean=2 n=1 total=2}",
	"+60..+120s {kind=book region=eu} {hi=5 lo=5 mean=5 n=1 total=5}",
}

func TestStatusesShowCommits(t *testing.T) {
	e := newEnv(t, orders(t))
	e.buckets = 2
	e.publish("orders", 0, stock(fourOrders()...))
	pos1 := e.publish("orders", 1, stock(order(t0, "eu", "pen", 1)))
	p := e.node("n1")
	start(t, p)
	testkit.Eventually(t, "both shards committed", func() error {
		st := p.Statuses()
		if len(st) != 2 {
			return fmt.Errorf("%d shards", len(st))
		}
		for _, s := range st {
			if s.Epoch == 0 || s.Committed != s.Position {
				return fmt.Errorf("%+v", s)
			}
		}
		if st[0].Entries != 4 || st[1].Entries != 1 || st[1].Position != pos1.String() {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	equalRows(t, "rows", rows(t, p, Query{}), append(fourOrdersRows[:1:1], append([]string{
		"+0..+60s {kind=pen region=eu} {hi=1 lo=1 mean=1 n=1 total=1}",
	}, fourOrdersRows[1:]...)...))
}

func TestNewValidates(t *testing.T) {
	e := newEnv(t, orders(t), orders(t))
	cfg := e.config("n")
	if _, err := New(cfg, e.deps(e.st, e.hub.Session())); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("duplicate app: %v", err)
	}
	e.apps = e.apps[:1]
	cfg.CheckpointInterval = config.Duration(1)
	if _, err := New(cfg, e.deps(e.st, e.hub.Session())); err == nil {
		t.Fatal("tiny checkpoint interval accepted")
	}
	d := e.deps(e.st, e.hub.Session())
	d.Log, d.Metrics = nil, nil
	if _, err := New(e.config("n"), d); err != nil {
		t.Fatalf("without a logger: %v", err)
	}
	cfg = e.config("n")
	cfg.Table = "no/slash"
	if _, err := New(cfg, e.deps(e.st, e.hub.Session())); err == nil {
		t.Fatal("bad table accepted")
	}
	for _, tc := range []struct {
		mod  func(c *Config)
		path string
	}{
		{func(c *Config) { c.MaxCells = 0 }, "$.puma.max_cells"},
		{func(c *Config) { c.DedupHorizon = config.Duration(time.Second) }, "$.puma.dedup_horizon"},
		{func(c *Config) { c.MaxAgentsPerShard = 0 }, "$.puma.max_agents_per_shard"},
		{func(c *Config) { c.MaxAgentsPerShard = MaxAgentsLimit + 1 }, "$.puma.max_agents_per_shard"},
	} {
		cfg := e.config("n")
		tc.mod(&cfg)
		var fe *config.FieldError
		_, err := New(cfg, e.deps(e.st, e.hub.Session()))
		if !errors.As(err, &fe) || fe.Path != strings.TrimPrefix(tc.path, "$.puma.") {
			t.Errorf("want an error at %s (relative to the section), got %v", tc.path, err)
		}
		if !errors.As(config.Under("$.puma", err), &fe) || fe.Path != tc.path {
			t.Errorf("want an error placed at %s, got %v", tc.path, err)
		}
	}
}

func TestAppsAndApp(t *testing.T) {
	b := orders(t, func(s *apps.Spec) { s.Name = "b_orders" })
	a := orders(t, func(s *apps.Spec) { s.Name = "a_orders"; s.Category = "other" })
	e := newEnv(t, b, a)
	p := e.node("n")
	list := p.Apps()
	if len(list) != 2 || list[0] != a || list[1] != b {
		t.Fatalf("Apps() = %v", list)
	}
	if got, ok := p.App("b_orders"); !ok || got != b {
		t.Fatal("App(b_orders)")
	}
	if _, ok := p.App("nope"); ok {
		t.Fatal("App(nope)")
	}
}

func TestReady(t *testing.T) {
	e := newEnv(t, orders(t))
	e.buckets = 3
	p := e.node("n1")
	if p.Ready() {
		t.Fatal("ready before running")
	}
	r := start(t, p)
	testkit.Eventually(t, "ready", func() error {
		if !p.Ready() {
			return errors.New("not ready")
		}
		return nil
	})
	r.stop(t)
	if p.Ready() {
		t.Fatal("ready after stopping")
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t, orders(t, func(s *apps.Spec) { s.Where = `kind != "refund"` }))
	reg := prometheus.NewPedanticRegistry()
	pos := e.publish("orders", 0,
		agent("a1", 1, fourOrders()...),
		agent("a1", 1, fourOrders()...), // re-sent: 4 duplicates
		stock(
			[]byte("garbage"),
			[]byte(`{"kind": "x"}`),
			order(t0, "eu", "refund", 1),
			order(t0, "eu", "book", "n/a"),
			order(t0-3600_000, "eu", "book", 1),
		),
	)
	p := e.node("n1", func(c *Config, d *Deps) { d.Metrics = reg })
	r := start(t, p)
	waitCommitted(t, p, pos)
	// The status shows a commit before the checkpoint counts it (with
	// its time, at its end).
	testkit.WaitFor(t, "a checkpoint counted", func() bool { return gather(t, reg)["freeway_puma_checkpoints_total"] >= 1 })
	got := gather(t, reg)
	want := map[string]float64{
		"freeway_puma_entries_total":                                        9,
		"freeway_puma_duplicates_total":                                     4,
		"freeway_puma_cells{app=orders}":                                    3,
		"freeway_puma_records_dropped_total{app=orders,reason=late}":        1,
		"freeway_puma_records_dropped_total{app=orders,reason=parse_error}": 1,
		"freeway_puma_records_dropped_total{app=orders,reason=bad_time}":    1,
		"freeway_puma_records_dropped_total{app=orders,reason=filtered}":    1,
		"freeway_puma_records_dropped_total{app=orders,reason=bad_value}":   4,
		"freeway_puma_records_dropped_total{app=orders,reason=future}":      0,
		"freeway_puma_records_dropped_total{app=orders,reason=max_cells}":   0,
		"freeway_puma_sequence_regressions_total":                           0,
		"freeway_puma_watermark_seconds{app=orders}":                        float64(t0+61_000) / 1000,
		"freeway_puma_segment_lag{bucket=0,category=orders}":                0,
	}
	for k, w := range want {
		if g, ok := got[k]; !ok || g != w {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, w)
		}
	}
	for _, k := range []string{"freeway_puma_checkpoints_total", "freeway_puma_checkpoint_cells_total"} {
		if got[k] < 1 {
			t.Errorf("%s = %v, want > 0", k, got[k])
		}
	}
	if _, ok := got["freeway_puma_checkpoint_age_seconds"]; !ok {
		t.Error("no checkpoint age")
	}
	r.stop(t)
	got = gather(t, reg)
	for k := range got {
		if strings.HasPrefix(k, "freeway_puma_segment_lag") {
			t.Errorf("%s outlives its shard", k)
		}
	}
}

func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			got[metricName(mf.GetName(), m)] = metricValue(m)
		}
	}
	return got
}

func metricName(name string, m *dto.Metric) string {
	if len(m.Label) == 0 {
		return name
	}
	var ls []string
	for _, l := range m.Label {
		ls = append(ls, l.GetName()+"="+l.GetValue())
	}
	return name + "{" + strings.Join(ls, ",") + "}"
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

// TestReadyWithTwoNodes: a node is ready when every shard is recovered
// here or held by another node; one that owns nothing is ready too.
func TestReadyWithTwoNodes(t *testing.T) {
	e := newEnv(t, orders(t))
	e.buckets = 2
	p1 := e.node("n1")
	r1 := start(t, p1)
	testkit.Eventually(t, "n1 ready", func() error {
		if !p1.Ready() {
			return errors.New("not ready")
		}
		return nil
	})
	p2 := e.node("n2")
	if p2.Ready() {
		t.Fatal("n2 ready before running")
	}
	start(t, p2)
	testkit.Eventually(t, "n2 ready while n1 owns every shard", func() error {
		if !p2.Ready() {
			return errors.New("not ready")
		}
		return nil
	})
	for _, st := range p2.Statuses() {
		if st.State != StateElsewhere {
			t.Fatalf("n2 has %+v", st)
		}
	}
	// n2 answers, and says that every shard is elsewhere.
	res, err := p2.Query(context.Background(), Query{App: "orders", FromMs: 0, ToMs: 1})
	if err != nil || len(res.Missing) != 2 || res.Missing[1] != (MissingShard{Category: "orders", Bucket: 1, State: StateElsewhere}) {
		t.Fatalf("n2's answer: %v %+v", err, res)
	}
	r1.stop(t)
	testkit.Eventually(t, "n2 takes the shards over", func() error {
		st := p2.Statuses()
		if len(st) != 2 || st[0].State != StateRunning || st[1].State != StateRunning || !p2.Ready() {
			return fmt.Errorf("ready %v, shards %+v", p2.Ready(), st)
		}
		return nil
	})
}

// TestConcurrentReaders: queries, committed queries, statuses and metric
// scrapes run while shards read and checkpoint (for the race detector),
// and the answer is exact at the end.
func TestConcurrentReaders(t *testing.T) {
	e := newEnv(t, orders(t))
	e.buckets = 2
	reg := prometheus.NewPedanticRegistry()
	p := e.node("n1", func(c *Config, d *Deps) { d.Metrics = reg })
	start(t, p)
	c := committed(e)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, fn := range []func(){
		func() { rows(t, p, Query{GroupBy: []string{"kind"}}) },
		func() { rows(t, c, Query{AllWindows: true}) },
		func() { p.Statuses(); p.Ready() },
		func() {
			if _, err := reg.Gather(); err != nil {
				t.Error(err)
			}
		},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
					fn()
				}
			}
		}()
	}
	const segments, lines = 20, 50
	var last [2]string
	for i := range segments {
		var ls [][]byte
		for j := range lines {
			ls = append(ls, order(t0+int64(i*lines+j)*1000, "eu", fmt.Sprint("k", j%3), 1))
		}
		last[i%2] = e.publish("orders", i%2, agent(fmt.Sprint("a", i%2), uint64(i*lines+1), ls...)).String()
	}
	testkit.Eventually(t, "everything committed", func() error {
		st := p.Statuses()
		if len(st) != 2 {
			return fmt.Errorf("%d shards", len(st))
		}
		for _, s := range st {
			if s.Committed != last[s.Bucket] {
				return fmt.Errorf("%+v", s)
			}
		}
		return nil
	})
	close(stop)
	wg.Wait()
	want := []string{fmt.Sprintf("+0..+1020s {} {hi=1 lo=1 mean=1 n=%d total=%d}", segments*lines, segments*lines)}
	equalRows(t, "memory", rows(t, p, Query{GroupBy: []string{}, AllWindows: true}), want)
	equalRows(t, "committed", rows(t, c, Query{GroupBy: []string{}, AllWindows: true}), want)
}
