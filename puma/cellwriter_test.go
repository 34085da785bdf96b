package puma

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/store"
)

// putLog is a store that reports each Put of cell rows and can fail the
// n-th of them.
type putLog struct {
	store.Store
	mu     sync.Mutex
	puts   [][]store.Cell
	failAt int // the Put of cell rows that fails (1-based; 0: none)
	seen   chan int
}

func (p *putLog) Put(ctx context.Context, table string, cells []store.Cell) error {
	if len(cells) == 0 || !strings.HasPrefix(cells[0].Row, "s/") {
		return p.Store.Put(ctx, table, cells)
	}
	p.mu.Lock()
	p.puts = append(p.puts, cells)
	n, fail := len(p.puts), len(p.puts) == p.failAt
	p.mu.Unlock()
	if p.seen != nil {
		p.seen <- n
	}
	if fail {
		return errInjected
	}
	return p.Store.Put(ctx, table, cells)
}

// TestCellWriterPutsWhileTaking: the writer puts a chunk as soon as it
// is sent, before the checkpoint has sent the rest (the marker first):
// taking the cells and writing them overlap.
func TestCellWriterPutsWhileTaking(t *testing.T) {
	e := newEnv(t, orders(t))
	pl := &putLog{Store: e.st, seen: make(chan int, 4)}
	s := testShard(t, e.node("n1", func(c *Config, d *Deps) { d.Store = pl }), 0)
	w := newCellWriter(context.Background(), s, s.nextEpoch)
	chunk := func(i int) []store.Cell {
		return []store.Cell{{Row: fmt.Sprintf("s/x/%d", i), Column: "v", Timestamp: s.nextEpoch, Value: []byte{1}}}
	}
	w.send(chunk(1))
	select {
	case n := <-pl.seen:
		if n != 1 {
			t.Fatalf("put %d, want the first chunk", n)
		}
	case <-time.After(time.Minute):
		t.Fatal("the first chunk was not put while the checkpoint was still taking cells")
	}
	w.send(chunk(2))
	w.finish()
	if w.err != nil || w.fenced || w.puts != 2 {
		t.Fatalf("err %v, fenced %v, %d puts; want 2 puts", w.err, w.fenced, w.puts)
	}
	_, _, attempt, err := readCommit(context.Background(), e.st, s.p.cfg.Table, s.category, s.bucket)
	if err != nil || attempt != s.nextEpoch {
		t.Fatalf("attempt marker %d (%v), want %d", attempt, err, s.nextEpoch)
	}
}

// TestCheckpointPutFailsMidway: a checkpoint of three chunks whose second
// Put fails returns the error, writes no commit and marks every cell it
// took changed again; the next checkpoint writes them all, in chunks in
// row order, and a new owner recovers exactly what was in memory.
func TestCheckpointPutFailsMidway(t *testing.T) {
	e := newEnv(t, orders(t))
	pl := &putLog{Store: e.st, failAt: 2}
	ctx := context.Background()
	s := testShard(t, e.node("n1", func(c *Config, d *Deps) { d.Store = pl }), 0)
	n := 2*putChunk + 1000
	lines := make([][]byte, 0, 1000)
	for i := 0; i < n; i += 1000 {
		lines = lines[:0]
		for j := i; j < min(i+1000, n); j++ {
			lines = append(lines, order(t0, fmt.Sprint("r", j%1000), fmt.Sprint("k", j/1000), j))
		}
		feed(s, int64(i+1), lines...)
	}
	want := memRows(t, s, Query{App: "orders", GroupBy: []string{}, AllWindows: true})
	E := s.committed.Epoch
	if err := s.checkpoint(ctx); !errors.Is(err, errInjected) {
		t.Fatalf("checkpoint: %v, want the injected failure", err)
	}
	if s.committed.Epoch != E {
		t.Fatalf("committed epoch %d after a failed put, want %d", s.committed.Epoch, E)
	}
	pl.mu.Lock()
	pl.puts, pl.failAt = nil, 0
	pl.mu.Unlock()
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	var last string
	total := 0
	for i, p := range pl.puts {
		if len(p) > putChunk || (i < len(pl.puts)-1 && len(p) != putChunk) {
			t.Fatalf("put %d of %d cells, want chunks of %d", i, len(p), putChunk)
		}
		for _, c := range p {
			if c.Row <= last {
				t.Fatalf("row %q put after %q", c.Row, last)
			}
			last = c.Row
		}
		total += len(p)
	}
	if total != n {
		t.Fatalf("the checkpoint after the failure put %d cells, want every one of the %d", total, n)
	}
	s2 := testShard(t, e.node("n2"), 0)
	equalRows(t, "recovered", memRows(t, s2, Query{App: "orders", GroupBy: []string{}, AllWindows: true}), want)
	if got := s2.tables[0].ncells; got != n {
		t.Fatalf("recovered %d cells, want %d", got, n)
	}
}
