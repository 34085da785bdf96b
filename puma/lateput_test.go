package puma

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/testkit"
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

	// The next commit once armed (armCommit): it waits for gate to
	// close, fails, and is applied after the next Put that succeeds.
	commitArmed bool
	gate        chan struct{}
	commit      func()
	lostReply   bool // the armed commit is applied before it fails
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
	fail, commit := l.fail, l.commit
	l.commit = nil
	l.mu.Unlock()
	if commit != nil {
		commit()
	}
	if fail {
		return errInjected
	}
	return nil
}

func (l *lateStore) CheckAndPut(ctx context.Context, table, row, column string, expected []byte, cells []store.Cell) (bool, error) {
	l.mu.Lock()
	hold := l.commitArmed && len(cells) > 0 && cells[0].Column == "commit"
	if hold {
		l.commitArmed = false
		l.commit = func() { _, _ = l.Store.CheckAndPut(context.Background(), table, row, column, expected, cells) }
	}
	gate := l.gate
	l.mu.Unlock()
	if !hold {
		return l.Store.CheckAndPut(ctx, table, row, column, expected, cells)
	}
	select {
	case <-gate:
	case <-ctx.Done():
	}
	if l.lostReply {
		l.landCommit()
	}
	return false, errInjected
}

// landCommit applies the held commit now.
func (l *lateStore) landCommit() {
	l.mu.Lock()
	commit := l.commit
	l.commit = nil
	l.mu.Unlock()
	commit()
}

func (l *lateStore) armCommit() {
	l.mu.Lock()
	l.commitArmed, l.gate = true, make(chan struct{})
	l.mu.Unlock()
}

// commitHeld reports whether the armed commit was called.
func (l *lateStore) commitHeld() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.commitArmed && l.gate != nil
}

func (l *lateStore) open() {
	l.mu.Lock()
	close(l.gate)
	l.mu.Unlock()
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

// TestLateCommitOfFailedAttempt: a commit that failed but is applied
// later anyway (its reply lost, or the gateway still retrying it when the
// caller gave up) must not commit the cells of a later attempt: the
// committed position and the cells under it agree, and every line is
// counted once. On the embedded store and on HBase.
func TestLateCommitOfFailedAttempt(t *testing.T) {
	t.Run("bolt", func(t *testing.T) {
		e := newEnv(t)
		checkLateCommit(t, e, e.st, "orders")
	})
	t.Run("hbase", func(t *testing.T) {
		st, category := hbaseCategory(t, "latec_")
		checkLateCommit(t, newEnv(t), st, category)
	})
}

func checkLateCommit(t *testing.T, e *env, st store.Store, category string) {
	e.apps = []*apps.App{orders(t, func(s *apps.Spec) { s.Category = category })}
	ls := &lateStore{Store: st}
	p := e.node("n1", func(c *Config, d *Deps) { d.Store = ls })
	start(t, p)
	waitCommitted(t, p, e.publish(category, 0, stock(order(t0, "eu", "book", 1))))
	// The commit of the second line fails, and lands later: after the
	// next Put, whose attempt took the third line as well.
	ls.armCommit()
	e.publish(category, 0, stock(order(t0, "eu", "book", 1)))
	testkit.Eventually(t, "the commit of the second line", func() error {
		if !ls.commitHeld() {
			return errors.New("not yet")
		}
		return nil
	})
	pos := e.publish(category, 0, stock(order(t0, "eu", "book", 1)))
	testkit.Eventually(t, "read of the third line", func() error {
		for _, s := range p.Statuses() {
			if s.Position == pos.String() {
				return nil
			}
		}
		return errors.New("not yet")
	})
	ls.open()
	waitCommitted(t, p, pos)
	want := []string{"+0..+60s {kind=book region=eu} {hi=1 lo=1 mean=1 n=3 total=3}"}
	equalRows(t, "node", rows(t, p, Query{}), want)
	c := NewCommitted(st, "puma", e.apps, func(string) int { return 1 })
	equalRows(t, "committed state", rows(t, c, Query{}), want)
}

// TestCommitReplyLost: a commit applied whose reply is lost is found in
// the commit row: the checkpoint succeeds.
func TestCommitReplyLost(t *testing.T) {
	e := newEnv(t, orders(t))
	ctx := context.Background()
	ls := &lateStore{Store: e.st, lostReply: true}
	s := testShard(t, e.node("n1", func(c *Config, d *Deps) { d.Store = ls }), 0)
	feed(s, 1, order(t0, "eu", "book", 1))
	ls.armCommit()
	ls.open()
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	feed(s, 2, order(t0, "eu", "book", 1))
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"+0..+60s {kind=book region=eu} {hi=1 lo=1 mean=1 n=2 total=2}"}
	equalRows(t, "committed state", rows(t, committed(e), Query{}), want)
}

// TestLateCommitBeforeFence: a failed commit that lands before the next
// attempt could fence it stands: the shard stops, and its recovery
// resumes from that commit, counting every line once.
func TestLateCommitBeforeFence(t *testing.T) {
	e := newEnv(t, orders(t))
	ctx := context.Background()
	ls := &lateStore{Store: e.st}
	s := testShard(t, e.node("n1", func(c *Config, d *Deps) { d.Store = ls }), 0)
	feed(s, 1, order(t0, "eu", "book", 1))
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	feed(s, 2, order(t0, "eu", "book", 1))
	ls.armCommit()
	ls.open()
	if err := s.checkpoint(ctx); !errors.Is(err, errInjected) {
		t.Fatalf("checkpoint: %v", err)
	}
	ls.landCommit()
	feed(s, 3, order(t0, "eu", "book", 1))
	if err := s.checkpoint(ctx); !errors.Is(err, errFenced) {
		t.Fatalf("checkpoint after the commit landed: %v", err)
	}
	again := testShard(t, e.node("n2"), 0)
	if again.pos.Offset != 2 {
		t.Fatalf("recovered at %v, want offset 2", again.pos)
	}
	feed(again, 3, order(t0, "eu", "book", 1))
	want := []string{"+0..+60s {kind=book region=eu} {hi=1 lo=1 mean=1 n=3 total=3}"}
	equalRows(t, "recovered state", memRows(t, again, Query{}), want)
}
