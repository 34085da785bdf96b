package puma

import (
	"context"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/boltstore"
)

func openStore(t *testing.T) store.Store {
	t.Helper()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "store.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// withStore runs a node on st rather than the env's store.
func withStore(st store.Store) func(*Config, *Deps) {
	return func(_ *Config, d *Deps) { d.Store = st }
}

// answer queries src over [from, to) and returns the rows and the shards
// listed as missing.
func answer(t *testing.T, src querier, from, to int64) ([]string, []MissingShard) {
	t.Helper()
	res, err := src.Query(context.Background(), Query{App: "orders", FromMs: from, ToMs: to, GroupBy: []string{}, AllWindows: true})
	if err != nil {
		t.Fatal(err)
	}
	return formatRows(res), res.Missing
}

// TestRebuildAfterRetentionSaysIncomplete: a store rebuilt (its commit
// rows lost) after retention deleted the first segments of a bucket: the
// shard does not present what is left as whole. Its state, its answers
// from memory and from the store, across a restart, say it lacks the
// lines that arrived before the deleted segments' time, and answers over
// later windows are whole.
func TestRebuildAfterRetentionSaysIncomplete(t *testing.T) {
	e := newEnv(t, orders(t))
	first := e.publish("orders", 0, stock(order(t0, "eu", "a", 1), order(t0+1000, "eu", "a", 2)))
	e.publish("orders", 0, stock(order(t0+2000, "eu", "a", 4)))
	last := e.publish("orders", 0, stock(order(t0+3000, "eu", "a", 8)))

	whole := e.node("a")
	r := start(t, whole)
	waitCommitted(t, whole, last)
	rows, missing := answer(t, whole, t0-3600_000, t0+3600_000)
	if len(missing) != 0 || !strings.Contains(rows[0], "n=4") {
		t.Fatalf("before: %q, missing %+v", rows, missing)
	}
	r.stop(t)

	// Retention deletes the first segment (Puma and everyone were past
	// it), then the store is lost.
	dir := names.BucketDir("orders", 0)
	deletedAt := time.UnixMilli(arrival + 10_000)
	if err := names.WriteRetentionMark(e.fs, dir, names.RetentionMark{Through: first.Segment, ThroughMs: deletedAt.UnixMilli()}, "t"); err != nil {
		t.Fatal(err)
	}
	if err := e.fs.Remove(path.Join(dir, first.Segment)); err != nil {
		t.Fatal(err)
	}
	rebuilt := openStore(t)
	p := e.node("b", withStore(rebuilt))
	r = start(t, p)
	waitCommitted(t, p, last)
	check := func(what string, src querier) {
		t.Helper()
		rows, missing := answer(t, src, t0-3600_000, t0+3600_000)
		if len(missing) != 1 || missing[0].State != StateIncomplete || missing[0].Bucket != 0 ||
			!strings.Contains(missing[0].Error, first.Segment) || !strings.Contains(missing[0].Error, deletedAt.UTC().Format(time.RFC3339)) {
			t.Errorf("%s: missing %+v, want shard 0 incomplete through %s", what, missing, first.Segment)
		}
		if len(rows) != 1 || !strings.Contains(rows[0], "n=2") {
			t.Errorf("%s: rows %q, want what is left", what, rows)
		}
		// Windows after the lost lines' arrival (and max_future) are whole.
		late := deletedAt.UnixMilli() + orders(t).MaxFutureMs + gapSlackMs
		if _, missing := answer(t, src, late, late+3600_000); len(missing) != 0 {
			t.Errorf("%s: a later range lists %+v", what, missing)
		}
	}
	check("from memory", p)
	if st := p.Statuses(); !strings.Contains(st[0].Incomplete, first.Segment) {
		t.Errorf("status %+v does not say what it lacks", st[0])
	}
	r.stop(t)
	check("from the store", NewCommitted(rebuilt, "puma", e.apps, func(string) int { return 1 }))
	// It stays said across a restart.
	p = e.node("c", withStore(rebuilt))
	start(t, p)
	waitCommitted(t, p, last)
	check("after a restart", p)
}

// vanishingFS removes a segment just as a reader comes to open it: a
// segment deleted (by hand) after the reader listed it.
type vanishingFS struct {
	dfs.FS
	segment string
}

func (f *vanishingFS) Open(name string) (dfs.Reader, error) {
	if path.Base(name) == f.segment {
		f.FS.Remove(name)
	}
	return f.FS.Open(name)
}

// TestVanishedSegmentSaysIncomplete: a segment gone before the shard read
// it is not passed over silently: the shard reads on, and says what it
// lacks.
func TestVanishedSegmentSaysIncomplete(t *testing.T) {
	e := newEnv(t, orders(t))
	e.publish("orders", 0, stock(order(t0, "eu", "a", 1)))
	gone := e.publish("orders", 0, stock(order(t0+1000, "eu", "a", 2)))
	last := e.publish("orders", 0, stock(order(t0+2000, "eu", "a", 4)))
	published := time.UnixMilli(arrival)
	goneFile := filepath.Join(e.root, filepath.FromSlash(path.Join(names.BucketDir("orders", 0), gone.Segment)))
	if err := os.Chtimes(goneFile, published, published); err != nil {
		t.Fatal(err)
	}
	fs, _ := localfs.New(e.root)
	p := e.node("a", func(_ *Config, d *Deps) { d.FS = &vanishingFS{FS: fs, segment: gone.Segment} })
	start(t, p)
	waitCommitted(t, p, last)
	rows, missing := answer(t, p, t0-3600_000, t0+3600_000)
	if len(missing) != 1 || missing[0].State != StateIncomplete || !strings.Contains(missing[0].Error, "vanished") ||
		!strings.Contains(missing[0].Error, published.UTC().Format(time.RFC3339)) {
		t.Errorf("missing %+v, want the shard incomplete up to %v", missing, published)
	}
	if len(rows) != 1 || !strings.Contains(rows[0], "n=2") {
		t.Errorf("rows %q, want the two segments read", rows)
	}
}
