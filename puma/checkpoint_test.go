package puma

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/coord/inproc"
	names "github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/ptail"
)

var errInjected = errors.New("injected store failure")

// faultStore fails chosen store calls.
type faultStore struct {
	store.Store
	mu          sync.Mutex
	failCommit  bool // CheckAndPut of the commit column errors
	failPut     bool // Put errors
	failDelete  bool // DeleteUpTo errors
	commitFails int
}

func (f *faultStore) set(fn func(f *faultStore)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *faultStore) Put(ctx context.Context, table string, cells []store.Cell) error {
	f.mu.Lock()
	fail := f.failPut
	f.mu.Unlock()
	if fail {
		return errInjected
	}
	return f.Store.Put(ctx, table, cells)
}

func (f *faultStore) DeleteUpTo(ctx context.Context, table, start, stop string, ts int64) error {
	f.mu.Lock()
	fail := f.failDelete
	f.mu.Unlock()
	if fail {
		return errInjected
	}
	return f.Store.DeleteUpTo(ctx, table, start, stop, ts)
}

func (f *faultStore) CheckAndPut(ctx context.Context, table, row, column string, expected []byte, cells []store.Cell) (bool, error) {
	f.mu.Lock()
	fail := f.failCommit && len(cells) > 0 && cells[0].Column == "commit"
	if fail {
		f.commitFails++
	}
	f.mu.Unlock()
	if fail {
		return false, errInjected
	}
	return f.Store.CheckAndPut(ctx, table, row, column, expected, cells)
}

func (f *faultStore) fails() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.commitFails
}

// testShard is a shard driven by hand: no reader, no timer. Each gets
// its lease from a hub of its own, as two nodes that both believe they
// own the bucket would.
func testShard(t testing.TB, p *Puma, bucket int) *shard {
	t.Helper()
	return testShardOf(t, p, "orders", bucket)
}

// testShardOf is testShard for a bucket of another category.
func testShardOf(t testing.TB, p *Puma, category string, bucket int) *shard {
	t.Helper()
	co := inproc.NewHub().Session()
	t.Cleanup(func() { co.Close() })
	lease, err := co.Acquire(context.Background(), fmt.Sprintf("puma/%s/%d", category, bucket), p.cfg.ID)
	if err != nil {
		t.Fatal(err)
	}
	s, err := newShard(p, category, bucket, lease)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.recover(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// adopt makes a hand-driven shard one of the node's running shards, for
// the node's read methods, as after Run's first pass over its buckets.
func adopt(p *Puma, s *shard) {
	p.running.Store(true)
	select {
	case <-s.ready:
	default:
		close(s.ready)
	}
	p.mu.Lock()
	p.shards[shardID{s.category, s.bucket}] = s
	p.mu.Unlock()
}

// feed applies lines to a shard as one block at a made-up position.
func feed(s *shard, offset int64, lines ...[]byte) {
	s.apply(stock(lines...), ptail.Position{Segment: names.SegmentName(1, 1), Offset: offset})
}

// memRows answers q from a shard's memory alone.
func memRows(t testing.TB, s *shard, q Query) []string {
	t.Helper()
	p := &Puma{apps: s.p.apps, deps: s.p.deps, shards: map[shardID]*shard{{s.category, s.bucket}: s}}
	select {
	case <-s.ready:
	default:
		close(s.ready)
	}
	return rows(t, p, q)
}

func committed(e *env) *Committed {
	return NewCommitted(e.st, "puma", e.apps, func(string) int { return e.buckets })
}

// versions lists every stored version of the shard's cells above epoch.
func versionsAbove(t *testing.T, st store.Store, epoch int64) int {
	t.Helper()
	n := 0
	err := st.Scan(context.Background(), "puma", "s/", store.PrefixEnd("s/"), store.Latest, func(row string, cells []store.Cell) error {
		for _, c := range cells {
			if c.Timestamp > epoch {
				n++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestCleanRestartKeepsResults(t *testing.T) {
	e := newEnv(t, orders(t))
	e.buckets = 2
	e.publish("orders", 0, agent("a1", 1, fourOrders()...))
	e.publish("orders", 1, stock(order(t0+5000, "eu", "book", 100)))
	p1 := e.node("n1")
	r1 := start(t, p1)
	testkit.Eventually(t, "read", func() error {
		st := p1.Statuses()
		if len(st) != 2 || st[0].Entries != 4 || st[1].Entries != 1 {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	before := rows(t, p1, Query{})
	r1.stop(t) // the final checkpoint saves what was read

	equalRows(t, "committed after a clean stop", rows(t, committed(e), Query{}), before)
	p2 := e.node("n2")
	start(t, p2)
	testkit.Eventually(t, "ready", func() error {
		if !p2.Ready() {
			return errors.New("not ready")
		}
		return nil
	})
	equalRows(t, "memory after restart", rows(t, p2, Query{}), before)

	// Nothing is read twice, and the agent's high water survived: a
	// re-sent batch is skipped, new entries are counted.
	pos := e.publish("orders", 0, agent("a1", 4, order(t0+1000, "eu", "book", 1000), order(t0+1000, "eu", "book", 1)))
	waitRead(t, p2, 0, pos)
	testkit.Eventually(t, "one new entry", func() error {
		for _, s := range p2.Statuses() {
			if s.Bucket == 0 && (s.Entries != 1 || s.Dups != 1) {
				return fmt.Errorf("%+v", s)
			}
		}
		return nil
	})
	equalRows(t, "after the re-sent batch", rows(t, p2, Query{}), []string{
		"+0..+60s {kind=book region=eu} {hi=100 lo=1 mean=35.25 n=4 total=141}",
		"+0..+60s {kind=pen region=us} {hi=2 lo=2 mean=2 n=1 total=2}",
		"+60..+120s {kind=book region=eu} {hi=5 lo=5 mean=5 n=1 total=5}",
	})
}

func TestDedupe(t *testing.T) {
	e := newEnv(t, orders(t))
	p := e.node("n1")
	s := testShard(t, p, 0)
	lines := fourOrders()
	s.apply(agent("a1", 10, lines...), ptail.Position{Offset: 1})
	s.apply(agent("a1", 10, lines...), ptail.Position{Offset: 2}) // re-delivered
	s.apply(agent("a1", 12, lines[2:]...), ptail.Position{Offset: 3})
	s.apply(agent("a2", 10, lines...), ptail.Position{Offset: 4}) // another agent
	s.apply(agent("a1", 14, lines[3]), ptail.Position{Offset: 5}) // new
	if s.entries != 9 || s.dups != 6 {
		t.Fatalf("entries %d dups %d, want 9 and 6", s.entries, s.dups)
	}
	feed(s, 6, lines...)
	feed(s, 7, lines...) // stock clients: at least once, counted twice
	if s.entries != 17 || s.dups != 6 {
		t.Fatalf("entries %d dups %d, want 17 and 6", s.entries, s.dups)
	}
	equalRows(t, "rows", memRows(t, s, Query{GroupBy: []string{}}), []string{
		"+0..+60s {} {hi=30 lo=2 mean=14 n=12 total=168}",
		"+60..+120s {} {hi=5 lo=5 mean=5 n=5 total=25}",
	})
}

// TestCrashBeforeCommit: an attempt writes its cells and never commits
// (the process dies); recovery purges them and re-reads the segments, so
// the result is exact.
func TestCrashBeforeCommit(t *testing.T) {
	e := newEnv(t, orders(t))
	fst := &faultStore{Store: e.st}
	first := e.publish("orders", 0, stock(fourOrders()...))
	p1 := e.node("n1", func(c *Config, d *Deps) { d.Store = fst })
	r1 := start(t, p1)
	waitCommitted(t, p1, first)
	committedRows := rows(t, p1, Query{})
	var epoch int64
	for _, s := range p1.Statuses() {
		epoch = s.Epoch
	}

	// From now on every commit fails: the attempts write cells at new
	// epochs and stop short of the commit row, again and again.
	fst.set(func(f *faultStore) { f.failCommit = true })
	second := e.publish("orders", 0, stock(order(t0+1500, "eu", "book", 7)), stock(order(t0+2000, "us", "pen", 1)))
	waitRead(t, p1, 0, second)
	n := fst.fails()
	testkit.Eventually(t, "several failed commits", func() error {
		if fst.fails() < n+4 {
			return errors.New("not yet")
		}
		return nil
	})
	r1.stop(t) // its final checkpoint fails too: as good as a crash
	if versionsAbove(t, e.st, epoch) == 0 {
		t.Fatal("the failed attempts left no uncommitted versions; the test tests nothing")
	}
	equalRows(t, "committed reader hides the uncommitted attempts", rows(t, committed(e), Query{}), committedRows)

	p2 := e.node("n2")
	start(t, p2)
	waitCommitted(t, p2, second)
	want := []string{
		"+0..+60s {kind=book region=eu} {hi=30 lo=7 mean=15.666666666666666 n=3 total=47}",
		"+0..+60s {kind=pen region=us} {hi=2 lo=1 mean=1.5 n=2 total=3}",
		"+60..+120s {kind=book region=eu} {hi=5 lo=5 mean=5 n=1 total=5}",
	}
	equalRows(t, "recovered and re-read", rows(t, p2, Query{}), want)
	equalRows(t, "committed after recovery", rows(t, committed(e), Query{}), want)
}

// TestRecoverPurgesUncommitted plays a crashed attempt by hand: cells at
// a higher epoch, an attempt marker, no commit.
func TestRecoverPurgesUncommitted(t *testing.T) {
	e := newEnv(t, orders(t))
	p := e.node("n1")
	s := testShard(t, p, 0)
	feed(s, 100, fourOrders()...)
	if err := s.checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := memRows(t, s, Query{})
	E := s.committed.Epoch
	tb := s.tables[0]
	bogus := tb.layout.newCell()
	addIn(tb.layout, bogus, in(present(), num(1e6), num(1e6), num(1e6), num(1e6)))
	prefix := appPrefix("orders", 0, tb.app, tb.spans[0].fp)
	ctx := context.Background()
	if err := e.st.Put(ctx, "puma", []store.Cell{
		{Row: commitRow("orders", 0), Column: "attempt", Timestamp: E + 1, Value: []byte(fmt.Sprint(E + 1))},
		{Row: prefix + windowKey(t0) + "/eu\x00book", Column: "v", Timestamp: E + 1, Value: tb.layout.encodeCell(bogus)},
		{Row: prefix + windowKey(t0+600_000) + "/eu\x00new", Column: "v", Timestamp: E + 1, Value: tb.layout.encodeCell(bogus)},
	}); err != nil {
		t.Fatal(err)
	}
	equalRows(t, "committed reader", rows(t, committed(e), Query{}), want)

	s2 := testShard(t, e.node("n2"), 0)
	equalRows(t, "recovered", memRows(t, s2, Query{}), want)
	if n := versionsAbove(t, e.st, E); n != 0 {
		t.Fatalf("%d uncommitted versions left", n)
	}
	if s2.nextEpoch <= E+1 {
		t.Fatalf("next epoch %d reuses the crashed attempt's %d", s2.nextEpoch, E+1)
	}
	if s2.pos.Offset != 100 {
		t.Fatalf("position %v", s2.pos)
	}
}

// TestFencing: a second owner recovers and commits while the first still
// runs; the first must not write over the second's state.
func TestFencing(t *testing.T) {
	e := newEnv(t, orders(t))
	ctx := context.Background()
	s1 := testShard(t, e.node("n1"), 0)
	feed(s1, 1, order(t0, "eu", "book", 1))
	if err := s1.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}

	s2 := testShard(t, e.node("n2"), 0)
	feed(s2, 2, order(t0, "eu", "book", 2))
	if err := s2.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{"+0..+60s {kind=book region=eu} {hi=2 lo=1 mean=1.5 n=2 total=3}"}
	equalRows(t, "after the second owner's commit", rows(t, committed(e), Query{}), want)

	feed(s1, 3, order(t0, "eu", "book", 1000), order(t0+60_000, "us", "pen", 1000))
	if err := s1.checkpoint(ctx); !errors.Is(err, errFenced) {
		t.Fatalf("stale owner's checkpoint: %v, want errFenced", err)
	}
	equalRows(t, "after the stale owner's attempt", rows(t, committed(e), Query{}), want)
	cells, err := e.st.Get(ctx, "puma", commitRow("orders", 0), store.Latest)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cells {
		if c.Column == "commit" && !strings.Contains(string(c.Value), `"owner":"n2"`) {
			t.Fatalf("commit row %s", c.Value)
		}
	}
	// The new owner goes on committing.
	feed(s2, 4, order(t0, "eu", "book", 3))
	if err := s2.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	s3 := testShard(t, e.node("n3"), 0)
	equalRows(t, "recovered", memRows(t, s3, Query{}), []string{"+0..+60s {kind=book region=eu} {hi=3 lo=1 mean=2 n=3 total=6}"})
}

func TestRetentionDeletesFromStore(t *testing.T) {
	e := newEnv(t, orders(t)) // retention 1h
	ctx := context.Background()
	s := testShard(t, e.node("n1"), 0)
	feed(s, 1, order(t0, "eu", "book", 1), order(t0+60_000, "eu", "book", 1))
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	feed(s, 2, order(t0+3600_000+60_000, "eu", "book", 2)) // the window at t0 ends at the horizon
	if got := len(memRows(t, s, Query{})); got != 3 {
		t.Fatalf("%d rows before the checkpoint", got)
	}
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"+60..+120s {kind=book region=eu} {hi=1 lo=1 mean=1 n=1 total=1}",
		"+3660..+3720s {kind=book region=eu} {hi=2 lo=2 mean=2 n=1 total=2}",
	}
	equalRows(t, "memory", memRows(t, s, Query{}), want)
	equalRows(t, "committed", rows(t, committed(e), Query{}), want)
	if n := cellRows(t, e.st); n != 2 {
		t.Fatalf("%d cell rows in the store, want 2", n)
	}
}

func TestLeaseLossStopsShard(t *testing.T) {
	e := newEnv(t, orders(t))
	pos := e.publish("orders", 0, stock(fourOrders()...))
	co := e.hub.Session()
	t.Cleanup(func() { co.Close() })
	p := e.node("n1", func(c *Config, d *Deps) { d.Coord = co })
	start(t, p)
	waitCommitted(t, p, pos)
	p.mu.RLock()
	old := p.shards[shardID{"orders", 0}]
	p.mu.RUnlock()

	co.Expire()
	testkit.Eventually(t, "shard stopped", func() error {
		p.mu.RLock()
		defer p.mu.RUnlock()
		if p.shards[shardID{"orders", 0}] == old {
			return errors.New("still running")
		}
		return nil
	})
	// The node takes the bucket again once the lease is free, and resumes
	// from the commit.
	waitCommitted(t, p, pos)
	equalRows(t, "after re-acquiring", rows(t, p, Query{}), fourOrdersRows)
}

// TestRecoveryFencesTheOldOwner: once a new owner has recovered, the old
// one cannot even start an attempt, so it writes no cells at all.
func TestRecoveryFencesTheOldOwner(t *testing.T) {
	e := newEnv(t, orders(t))
	ctx := context.Background()
	s1 := testShard(t, e.node("n1"), 0)
	feed(s1, 1, order(t0, "eu", "book", 1))
	if err := s1.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	E := s1.committed.Epoch
	s2 := testShard(t, e.node("n2"), 0)
	feed(s1, 2, order(t0, "eu", "book", 1000))
	if err := s1.checkpoint(ctx); !errors.Is(err, errFenced) {
		t.Fatalf("old owner's checkpoint after the new owner's recovery: %v", err)
	}
	if n := versionsAbove(t, e.st, E); n != 0 {
		t.Fatalf("the old owner wrote %d cell versions", n)
	}
	if s2.nextEpoch <= s1.nextEpoch-1 {
		t.Fatalf("new owner's next epoch %d, old owner's %d", s2.nextEpoch, s1.nextEpoch)
	}
	feed(s2, 3, order(t0, "eu", "book", 2))
	if err := s2.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	equalRows(t, "committed", rows(t, committed(e), Query{}), []string{"+0..+60s {kind=book region=eu} {hi=2 lo=1 mean=1.5 n=2 total=3}"})
}

// TestFailedCommitsDoNotPileUp: an attempt whose commit fails is not
// retried at its epoch (the commit may still land:
// TestLateCommitOfFailedAttempt); the attempts after it first fence that
// commit, and write nothing while they cannot, so the committed version
// of a cell is never pushed out of the versions the store keeps.
func TestFailedCommitsDoNotPileUp(t *testing.T) {
	e := newEnv(t, orders(t))
	fst := &faultStore{Store: e.st}
	ctx := context.Background()
	s := testShard(t, e.node("n1", func(c *Config, d *Deps) { d.Store = fst }), 0)
	feed(s, 1, order(t0, "eu", "book", 1))
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	E := s.committed.Epoch
	fst.set(func(f *faultStore) { f.failCommit = true })
	for i := range 5 {
		feed(s, int64(2+i), order(t0, "eu", "book", 1))
		if err := s.checkpoint(ctx); !errors.Is(err, errInjected) {
			t.Fatalf("attempt %d: %v", i, err)
		}
		if s.nextEpoch != E+2 {
			t.Fatalf("attempt %d: next epoch %d, want %d", i, s.nextEpoch, E+2)
		}
	}
	want := []string{"+0..+60s {kind=book region=eu} {hi=1 lo=1 mean=1 n=1 total=1}"}
	equalRows(t, "committed during the failures", rows(t, committed(e), Query{}), want)
	// A crash now: the new owner finds the committed state intact.
	s2 := testShard(t, e.node("n2"), 0)
	equalRows(t, "recovered", memRows(t, s2, Query{}), want)
	if s2.nextEpoch != E+2 {
		t.Fatalf("new owner's next epoch %d, want %d", s2.nextEpoch, E+2)
	}
}

// TestRetentionSurvivesFailedCheckpoint: windows dropped from memory by a
// checkpoint that fails, or whose delete fails, are still deleted from the
// store by a later checkpoint.
func TestRetentionSurvivesFailedCheckpoint(t *testing.T) {
	e := newEnv(t, orders(t)) // retention 1h
	fst := &faultStore{Store: e.st}
	ctx := context.Background()
	s := testShard(t, e.node("n1", func(c *Config, d *Deps) { d.Store = fst }), 0)
	feed(s, 1, order(t0, "eu", "book", 1), order(t0+60_000, "eu", "book", 1))
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	// The checkpoint that expires the window at t0 fails to write its cells.
	feed(s, 2, order(t0+3600_000+60_000, "eu", "book", 2))
	fst.set(func(f *faultStore) { f.failPut = true })
	if err := s.checkpoint(ctx); !errors.Is(err, errInjected) {
		t.Fatalf("checkpoint: %v", err)
	}
	// The next one commits but cannot delete.
	fst.set(func(f *faultStore) { f.failPut, f.failDelete = false, true })
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if n := cellRows(t, e.st); n != 3 {
		t.Fatalf("%d cell rows, want 3 (the delete failed)", n)
	}
	// The one after that deletes, with nothing else to do.
	fst.set(func(f *faultStore) { f.failDelete = false })
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if n := cellRows(t, e.st); n != 2 {
		t.Fatalf("%d cell rows, want 2", n)
	}
	equalRows(t, "committed", rows(t, committed(e), Query{}), []string{
		"+60..+120s {kind=book region=eu} {hi=1 lo=1 mean=1 n=1 total=1}",
		"+3660..+3720s {kind=book region=eu} {hi=2 lo=2 mean=2 n=1 total=2}",
	})
}

func cellRows(t *testing.T, st store.Store) int {
	t.Helper()
	n := 0
	if err := st.Scan(context.Background(), "puma", "s/", store.PrefixEnd("s/"), store.Latest, func(string, []store.Cell) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestIdleCheckpointIsCurrent: a shard with nothing new is as committed as
// can be; its checkpoint age must not grow while it idles.
func TestIdleCheckpointIsCurrent(t *testing.T) {
	e := newEnv(t, orders(t))
	s := testShard(t, e.node("n1"), 0)
	long := time.Unix(1, 0)
	s.lastCommit.Store(&long)
	if err := s.checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s.lastCommitted().Equal(long) {
		t.Fatal("an idle checkpoint left the checkpoint age growing")
	}
}

// TestCheckpointAgeOnMonotonicClock: a shard's last commit keeps the
// monotonic reading of deps.Now (time.Now), so that the checkpoint age
// (freeway_puma_checkpoint_age_seconds) is measured on that clock. Kept
// as Unix nanoseconds it lost the reading and was measured on the wall
// clock: stepped back an hour (NTP), a shard whose checkpoints had
// stalled showed an age an hour short, negative at first, and its alert
// came an hour late; stepped forward, every node paged at once. (A test
// cannot step the wall clock: what it checks is the reading that makes
// steps harmless.)
func TestCheckpointAgeOnMonotonicClock(t *testing.T) {
	e := newEnv(t, orders(t))
	s := testShard(t, e.node("n1"), 0) // deps.Now: time.Now
	if err := s.checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Time.String ends with "m=±<seconds>" when the time has a reading.
	if at := s.lastCommitted(); at.IsZero() || !strings.Contains(at.String(), " m=") {
		t.Fatalf("last commit %v carries no monotonic clock reading: its age moves with the wall clock", at)
	}
}

// TestFencedShardStops: a running shard whose store state was claimed by
// another owner (a split brain: each believes it holds the lease) stops at
// its next checkpoint instead of writing.
func TestFencedShardStops(t *testing.T) {
	e := newEnv(t, orders(t))
	pos := e.publish("orders", 0, stock(fourOrders()...))
	var logs testkit.LogBuffer
	p1 := e.node("n1", func(c *Config, d *Deps) { d.Log = slog.New(slog.NewTextHandler(&logs, nil)) })
	r1 := start(t, p1)
	waitCommitted(t, p1, pos)
	p1.mu.RLock()
	old := p1.shards[shardID{"orders", 0}]
	p1.mu.RUnlock()

	testShard(t, e.node("n2"), 0) // recovers: claims the shard
	E := old.committedEpoch
	e.publish("orders", 0, stock(order(t0, "eu", "book", 1000)))
	testkit.Eventually(t, "the fenced shard stops", func() error {
		p1.mu.RLock()
		defer p1.mu.RUnlock()
		if p1.shards[shardID{"orders", 0}] == old {
			return errors.New("still running")
		}
		// Before the node takes the bucket again (and commits above E).
		if n := versionsAbove(t, e.st, E); n != 0 {
			t.Fatalf("the fenced shard wrote %d cell versions", n)
		}
		return nil
	})
	r1.stop(t)
	if !strings.Contains(logs.String(), "another owner committed this shard") {
		t.Fatalf("no fencing in the logs:\n%s", logs.String())
	}
}
