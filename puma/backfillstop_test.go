package puma

import (
	"context"
	"errors"
	"fmt"
	"path"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// TestBackfillStopReleasesCells: a shard stopped in the middle of a
// backfill gives the cells the backfill built back to the node's budget
// (puma.max_cells, puma.memory_limit) and to the app's max_cells, as it
// gives back its own: a node that stops and takes shards again must not
// count cells nobody holds. While it runs, the backfill's cells show in
// the app's freeway_puma_cells and freeway_puma_cell_bytes, which then
// add up to what the budget counts.
//
// The backfill is held mid-way by a read error on one of the segments it
// has yet to read (the live reading is past them all), so that it is
// certainly running when the node stops.
func TestBackfillStopReleasesCells(t *testing.T) {
	e := newEnv(t, orders(t))
	r1 := start(t, e.node("n1"))
	last := publishHistory(e, 0, 12)
	waitCommitted(t, r1.p, last)
	r1.stop(t)

	kinds := orders(t, func(s *apps.Spec) {
		s.Name, s.GroupBy, s.MaxCells = "kinds", []string{"kind"}, 1000
		s.Aggregates = []apps.AggregateSpec{{Name: "n", Fn: "count"}, {Name: "total", Fn: "sum", Field: "amount"}}
	})
	e.apps = []*apps.App{orders(t), kinds}
	stuck := names.SegmentName(1, 7)
	faulty := dfstest.NewFaulty(e.fs)
	var refused atomic.Int64
	faulty.SetHook(func(c dfstest.Call) error {
		if (c.Op == dfstest.OpOpen || c.Op == dfstest.OpRead) && path.Base(c.Name) == stuck {
			refused.Add(1)
			return errors.New("injected: cannot read " + stuck)
		}
		return nil
	})
	reg := prometheus.NewRegistry()
	p2 := e.node("n2", func(c *Config, d *Deps) { d.FS, d.Metrics = faulty, reg })
	if n, b := p2.Cells(); n != 0 || b != 0 {
		t.Fatalf("a new node counts %d cells, %d bytes", n, b)
	}
	r2 := start(t, p2)
	testkit.Eventually(t, "backfill stuck at "+stuck, func() error {
		st, _ := p2.AppState("kinds")
		if st.State != "backfilling" || st.SegmentsRead < 5 || refused.Load() == 0 {
			return fmt.Errorf("kinds %+v, %d reads refused", st, refused.Load())
		}
		return nil
	})
	// The backfill's stall shows, the live reading's does not.
	testkit.Eventually(t, "the backfill shown stuck", func() error {
		if rs := stateOf(p2, 0).ReadStalls; len(rs) != 1 || rs[0].Reader != "backfill:kinds" || path.Base(rs[0].Segment) != stuck || rs[0].Kind != "io" {
			return fmt.Errorf("read stalls %+v", rs)
		}
		return nil
	})
	mem, _ := p2.Memory("kinds")
	if mem.Cells == 0 {
		t.Fatalf("the backfill built no cells: %+v", mem)
	}
	// The per-app gauges count the backfill's cells: with the live app's
	// and the dedup state's they are what the node's budget counts.
	cells, bytes := p2.Cells()
	sumCells := gaugeOf(t, reg, "freeway_puma_cells", "kinds") + gaugeOf(t, reg, "freeway_puma_cells", "orders")
	if int64(sumCells) != cells {
		t.Fatalf("freeway_puma_cells add up to %v, the node counts %d", sumCells, cells)
	}
	sumBytes := gaugeOf(t, reg, "freeway_puma_cell_bytes", "kinds") + gaugeOf(t, reg, "freeway_puma_cell_bytes", "orders") +
		gaugeOf(t, reg, "freeway_puma_dedup_bytes", "")
	if int64(sumBytes) != bytes {
		t.Fatalf("freeway_puma_cell_bytes and dedup bytes add up to %v, the node counts %d", sumBytes, bytes)
	}

	r2.stop(t)
	if n, b := p2.Cells(); n != 0 || b != 0 {
		t.Fatalf("after its shard stopped mid-backfill the node counts %d cells, %d bytes (the backfill held %d cells)", n, b, mem.Cells)
	}
	if n := p2.appCells["kinds"].n.Load(); n != 0 {
		t.Fatalf("after its shard stopped mid-backfill kinds' max_cells counts %d cells", n)
	}
}

// gaugeOf is the value of the series of gauge name with app label app
// ("": the series without labels) in reg.
func gaugeOf(t *testing.T, reg *prometheus.Registry, name, app string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if app == "" && len(m.GetLabel()) == 0 {
				return m.GetGauge().GetValue()
			}
			for _, l := range m.GetLabel() {
				if l.GetName() == "app" && l.GetValue() == app {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no series %s{app=%q}", name, app)
	return 0
}

// scanFailStore fails every Scan that starts with prefix.
type scanFailStore struct {
	store.Store
	prefix string
}

func (f *scanFailStore) Scan(ctx context.Context, table, start, stop string, asOf int64, fn func(row string, cells []store.Cell) error) error {
	if strings.HasPrefix(start, f.prefix) {
		return errInjected
	}
	return f.Store.Scan(ctx, table, start, stop, asOf, fn)
}

// TestBackfillFailedRecoveryReleases: a recovery that fails after it
// loaded a resumed backfill's dedup state (reading its windows fails)
// gives what it charged back when the shard is released, as a shard that
// stops does (shard.run releases it whatever recovery did).
func TestBackfillFailedRecoveryReleases(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, orders(t))
	r1 := start(t, e.node("n1"))
	last := publishHistory(e, 0, 12)
	waitCommitted(t, r1.p, last)
	r1.stop(t)

	e.apps = []*apps.App{orders(t), kindsApp(t, "orders")}
	p2 := e.node("n2")
	s := testShard(t, p2, 0)
	bf := s.backfills[0]
	r := s.backfillReader(bf)
	defer r.Close()
	if joined, err := s.backfillStep(bf, r, 5); joined || err != nil {
		t.Fatalf("step: %v %v", joined, err)
	}
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	s.release()

	fail := &scanFailStore{Store: e.st, prefix: backfillWindowPrefix("orders", 0, "kinds")}
	p3 := e.node("n3", func(c *Config, d *Deps) { d.Store = fail })
	co := e.hub.Session()
	defer co.Close()
	lease, err := co.Acquire(ctx, "puma/orders/0", "n3")
	if err != nil {
		t.Fatal(err)
	}
	s3, err := newShard(p3, "orders", 0, lease)
	if err != nil {
		t.Fatal(err)
	}
	if err := s3.recover(ctx); !errors.Is(err, errInjected) {
		t.Fatalf("recover: %v, want the injected error", err)
	}
	s3.release()
	if n, b := p3.Cells(); n != 0 || b != 0 {
		t.Fatalf("after a failed recovery the node counts %d cells, %d bytes", n, b)
	}
}
