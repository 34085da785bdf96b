package puma

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/store"
)

// lateStore fails the next Put once armed, as a call that timed out or
// whose connection broke does, but keeps its cells to write them later
// (land): what HBase does with a put still queued in the gateway or
// retried by its client after the caller gave up on it.
type lateStore struct {
	store.Store
	mu    sync.Mutex
	armed bool
	held  [][]store.Cell
	fail  bool // every Put is written, and fails
}

func (l *lateStore) Put(ctx context.Context, table string, cells []store.Cell) error {
	l.mu.Lock()
	armed := l.armed
	l.armed = false
	if armed {
		l.held = append(l.held, append([]store.Cell(nil), cells...))
	}
	l.mu.Unlock()
	if armed {
		return errInjected
	}
	if err := l.Store.Put(ctx, table, cells); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail {
		return errInjected
	}
	return nil
}

func (l *lateStore) arm() {
	l.mu.Lock()
	l.armed = true
	l.mu.Unlock()
}

// land writes the held puts.
func (l *lateStore) land(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	held := l.held
	l.held = nil
	l.mu.Unlock()
	for _, cells := range held {
		if err := l.Store.Put(context.Background(), "puma", cells); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLatePutOfFailedAttempt: a Put of a checkpoint's cells that failed
// but is written later anyway (a timeout or a broken connection to the
// HBase gateway, which still applies it) must not replace what the next
// attempt wrote and committed: the committed state and a recovery count
// every line. On the embedded store and on HBase.
func TestLatePutOfFailedAttempt(t *testing.T) {
	t.Run("bolt", func(t *testing.T) {
		e := newEnv(t)
		checkLatePut(t, e, e.st, "orders")
	})
	t.Run("hbase", func(t *testing.T) {
		st, category := hbaseCategory(t, "late_")
		checkLatePut(t, newEnv(t), st, category)
	})
}

func checkLatePut(t *testing.T, e *env, st store.Store, category string) {
	e.apps = []*apps.App{orders(t, func(s *apps.Spec) { s.Category = category })}
	ctx := context.Background()
	ls := &lateStore{Store: st}
	s := testShardOf(t, e.node("n1", func(c *Config, d *Deps) { d.Store = ls }), category, 0)
	feed(s, 1, order(t0, "eu", "book", 1))
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	// The cells of the second line: their Put fails, but is not lost.
	feed(s, 2, order(t0, "eu", "book", 1))
	ls.arm()
	if err := s.checkpoint(ctx); !errors.Is(err, errInjected) {
		t.Fatalf("checkpoint: %v", err)
	}
	// The third line, and a checkpoint that commits the three.
	feed(s, 3, order(t0, "eu", "book", 1))
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	// Now the failed Put lands.
	ls.land(t)
	want := []string{"+0..+60s {kind=book region=eu} {hi=1 lo=1 mean=1 n=3 total=3}"}
	c := NewCommitted(st, "puma", e.apps, func(string) int { return 1 })
	equalRows(t, "committed state", rows(t, c, Query{}), want)
	again := testShardOf(t, e.node("n2", func(c *Config, d *Deps) { d.Store = st }), category, 0)
	equalRows(t, "recovered state", memRows(t, again, Query{}), want)
}

// TestFailedPutsDoNotPileUp: attempts whose Puts are written but fail
// (a reply lost) each write at an epoch of their own; the next one
// deletes what they wrote first, so that their versions do not push the
// committed one out of the versions the store keeps (the embedded store
// keeps three).
func TestFailedPutsDoNotPileUp(t *testing.T) {
	e := newEnv(t, orders(t))
	ctx := context.Background()
	ls := &lateStore{Store: e.st}
	s := testShard(t, e.node("n1", func(c *Config, d *Deps) { d.Store = ls }), 0)
	feed(s, 1, order(t0, "eu", "book", 1))
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	E := s.committed.Epoch
	ls.mu.Lock()
	ls.fail = true
	ls.mu.Unlock()
	for i := range 5 {
		feed(s, int64(2+i), order(t0, "eu", "book", 1))
		if err := s.checkpoint(ctx); !errors.Is(err, errInjected) {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	if n := versionsAbove(t, e.st, E); n > 1 {
		t.Fatalf("%d versions above the committed epoch, want 1 at most", n)
	}
	want := []string{"+0..+60s {kind=book region=eu} {hi=1 lo=1 mean=1 n=1 total=1}"}
	equalRows(t, "committed during the failures", rows(t, committed(e), Query{}), want)
	s2 := testShard(t, e.node("n2"), 0)
	equalRows(t, "recovered", memRows(t, s2, Query{}), want)
}
