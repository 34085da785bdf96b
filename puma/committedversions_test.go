package puma

import (
	"context"
	"sync"
	"testing"

	"github.com/freeway-dev/freeway/internal/apps"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/hbasestore"
	"github.com/freeway-dev/freeway/ptail"
)

// pausedScanStore holds its first Scan until release is closed, and
// closes at when it is there.
type pausedScanStore struct {
	store.Store
	once        sync.Once
	at, release chan struct{}
}

func (p *pausedScanStore) Scan(ctx context.Context, table, start, stop string, asOf int64, fn func(row string, cells []store.Cell) error) error {
	p.once.Do(func() {
		close(p.at)
		<-p.release
	})
	return p.Store.Scan(ctx, table, start, stop, asOf, fn)
}

// TestCommittedReadOutlivedByCommits: an answer from the store reads its
// cells as of the commit it read first; should the shard commit new
// versions of a cell meanwhile, as many as the store keeps, the version
// as of that commit is gone by the time the scan reaches it. The answer
// is then whole: as of that commit or a later one, never without the
// cell. The code before answered without it (a count of 0, or a row
// missing, where every commit since had counted the line), silently.
// On the embedded store (3 versions) and on HBase (5).
func TestCommittedReadOutlivedByCommits(t *testing.T) {
	t.Run("bolt", func(t *testing.T) {
		e := newEnv(t)
		checkCommittedReadOutlived(t, e, e.st, "orders", store.MinVersions)
	})
	t.Run("hbase", func(t *testing.T) {
		st, category := hbaseCategory(t, "outlived_")
		checkCommittedReadOutlived(t, newEnv(t), st, category, hbasestore.Versions)
	})
}

func checkCommittedReadOutlived(t *testing.T, e *env, st store.Store, category string, versions int) {
	e.apps = []*apps.App{orders(t, func(s *apps.Spec) { s.Category = category })}
	ctx := context.Background()
	p := e.node("n1", func(c *Config, d *Deps) { d.Store = st })
	s := testShardOf(t, p, category, 0)
	pos := func(i int) ptail.Position { return ptail.Position{Segment: names.SegmentName(1, 1), Offset: int64(i)} }
	line := func(i int) {
		t.Helper()
		s.apply(stock(order(t0+1000, "eu", "book", 1)), pos(i))
		if err := s.checkpoint(ctx); err != nil {
			t.Fatal(err)
		}
	}
	line(1)

	paused := &pausedScanStore{Store: st, at: make(chan struct{}), release: make(chan struct{})}
	c := NewCommitted(paused, "puma", e.apps, func(string) int { return 1 })
	type answer struct {
		res *Result
		err error
	}
	got := make(chan answer, 1)
	go func() {
		res, err := c.Query(ctx, Query{App: "orders", FromMs: t0, ToMs: t0 + 60_000, GroupBy: []string{}})
		got <- answer{res, err}
	}()
	<-paused.at // the commit row read, its cells not yet
	n := 1
	for range versions {
		n++
		line(n)
	}
	close(paused.release)
	a := <-got
	if a.err != nil {
		t.Fatal(a.err)
	}
	if len(a.res.Rows) != 1 {
		t.Fatalf("answer has %d rows, want the window of the %d lines committed: %v (missing %v)", len(a.res.Rows), n, formatRows(a.res), a.res.Missing)
	}
	// As of the first commit (1 line) or a later one (up to n).
	if v, ok := a.res.Rows[0].Values["n"].(float64); !ok || v < 1 || v > float64(n) {
		t.Fatalf("answer counts %v, want 1..%d: %v", a.res.Rows[0].Values["n"], n, formatRows(a.res))
	}
}
