package puma

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
)

// TestBackfillJoinBeforeCommitOfEarlierSnapshot: a backfill that joins
// while a checkpoint whose snapshot it predates is still writing, and
// builds a window the live watermark closed in between (a line late for
// the live app but not for the backfill), leaves that window's cells to
// the next checkpoint. The checkpoint in flight commits; it holds the
// backfill's progress as of its snapshot, not the window's last lines,
// so its commit closes the joined windows only up to the backfill's
// committed watermark. Should the next checkpoint take the window's
// cells and the node evict (a line finds no room), the window stays in
// memory until a commit holds it: answers never lose its lines, neither
// while that checkpoint writes nor after it fails. The code before
// closed them by the live watermark at that commit: the window left
// memory while its cells were being written, answers read it from the
// store without them, and once the write failed they were gone for good.
func TestBackfillJoinBeforeCommitOfEarlierSnapshot(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, orders(t))
	minute := func(m int64) int64 { return t0 + m*60_000 + 1000 }
	e.publish("orders", 0, stock(order(minute(10), "eu", "book", 1)))
	e.publish("orders", 0, stock(order(minute(5), "eu", "book", 2)))
	end := e.publish("orders", 0, stock(order(minute(20), "eu", "book", 4)))
	r1 := start(t, e.node("n1"))
	waitCommitted(t, r1.p, end)
	r1.stop(t)

	// A window length added: the 1m windows stay live, the 2m ones are
	// built.
	e.apps = []*apps.App{orders(t, func(s *apps.Spec) {
		s.Window, s.Windows = 0, []config.Duration{config.Duration(time.Minute), config.Duration(2 * time.Minute)}
	})}
	fs := &faultStore{Store: e.st}
	p2 := e.node("n2", func(c *Config, d *Deps) { d.Store = fs })
	s := testShard(t, p2, 0)
	adopt(p2, s)
	bf := s.backfills[0]
	r := s.backfillReader(bf)
	t.Cleanup(func() { _ = r.Close() })
	if joined, err := s.backfillStep(bf, r, 1); joined || err != nil { // minute 10
		t.Fatalf("step: %v %v", joined, err)
	}

	// stall makes the next checkpoint stop once it has taken its cells
	// (its attempt marked), and returns what it returns once resumed.
	stall := func() (resume func() error) {
		marked, cont := make(chan struct{}), make(chan struct{})
		p2.afterMark = func(string, int) {
			close(marked)
			<-cont
		}
		done := make(chan error, 1)
		go func() { done <- s.checkpoint(ctx) }()
		<-marked
		p2.afterMark = nil
		return func() error {
			close(cont)
			return <-done
		}
	}

	// A checkpoint snapshots the backfill at minute 10; meanwhile it
	// reads minute 5 (in a 2m window the live watermark, at minute 20,
	// has closed) and joins. The checkpoint commits.
	resume := stall()
	if joined, err := s.backfillStep(bf, r, 0); !joined || err != nil {
		t.Fatalf("step: %v %v", joined, err)
	}
	if err := resume(); err != nil {
		t.Fatal(err)
	}

	row := func(m int64, amount float64) string {
		start := t0 + m*60_000
		return formatRow(Row{WindowStartMs: start, WindowEndMs: start + 120_000, Key: map[string]string{},
			Values: map[string]any{"n": float64(1), "total": amount, "lo": amount, "hi": amount, "mean": amount}})
	}
	want := []string{row(4, 2), row(10, 1), row(20, 4)}
	q := Query{App: "orders", GroupBy: []string{}, WindowMs: 120_000}
	equalRows(t, "2m windows after the join", rows(t, p2, q), want)

	// The next checkpoint takes minute 5's cell and stalls; a line finds
	// no room; its write fails.
	fs.set(func(f *faultStore) { f.failPut = true })
	resume = stall()
	s.mu.Lock()
	s.evictClosed()
	s.mu.Unlock()
	equalRows(t, "2m windows while a checkpoint writes them", rows(t, p2, q), want)
	if err := resume(); !errors.Is(err, errInjected) {
		t.Fatalf("checkpoint: %v, want the injected failure", err)
	}

	fs.set(func(f *faultStore) { f.failPut = false })
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	equalRows(t, "2m windows from memory", rows(t, p2, q), want)
	equalRows(t, "2m windows from the store", rows(t, committed(e), q), want)
}
