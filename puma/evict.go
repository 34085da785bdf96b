package puma

import (
	"context"
	"fmt"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/store"
)

// Eviction: when the node's cells reach puma.memory_limit or
// puma.max_cells (or an app's cells its max_cells), closed windows leave
// memory and are answered from the store.
//
// A window may leave memory only when both hold:
//   - it is closed: it ends at or before the watermark of the last commit
//     minus the app's allowed_lateness. From that commit on, the
//     watermark is at least that high, so a line that would fall in the
//     window is late (counted as late, as always) and no cell of it
//     changes again.
//   - it is committed: its cells are in a committed checkpoint. A closed
//     window is: the commit that closed it wrote every cell changed
//     before its snapshot, and none can change after. (A cell still
//     marked changed keeps its window in memory all the same.) A
//     backfill's windows close by its own committed watermark, and still
//     do from its join to the first commit of a snapshot taken after it:
//     the live table's closed them without holding their cells, which a
//     checkpoint still writing may have taken (unmarked) and may fail to
//     write, and a commit of a snapshot taken before the join holds them
//     only as the backfill had built them then.
//
// Each span (an app's windows of one length) keeps one horizon: its
// windows that end at or before it are not in memory, every later window
// is. Queries read the windows up to the horizon from the store, as of
// the shard's committed epoch, and the others from memory: no window is
// in both, none in neither. The horizon is written in the commit row
// (evicted_ms, by app@fingerprint);
// recovery loads only the windows after it and takes every line before
// it as late, whatever the watermark (reset on recovery, say, or with
// less lateness than allowed now), so that a window in the store alone
// cannot be opened again in memory and overwritten by a fresh cell at the
// next checkpoint.
// Rows of code before eviction have no horizon: everything loads, as
// then; that code reading a row with one loads every window, which is
// right too (the watermark it commits with is at least the horizon plus
// the lateness).

// evictPressure is the share of a bound at which a checkpoint evicts the
// closed windows of its shard: a little room is kept, so that lines of a
// new window are rarely refused before the next checkpoint.
const (
	evictPressureNum = 3
	evictPressureDen = 4
)

// evictState is a table's eviction state; guarded by the shard's mutex.
type evictState struct {
	// closed: windows that end at or before it are closed and committed
	// (the last commit's watermark minus the allowed lateness).
	closed int64
	// lateBefore: lines before it are late, whatever the watermark (the
	// latest horizon on recovery: keepClosed).
	lateBefore int64
	// deletedTo[i]: the store rows of span i before this window start
	// were deleted by retention (set once a delete is queued).
	deletedTo []int64
	// windows and cells evicted since the shard started here.
	windows, cells uint64
}

const noHorizon = int64(-1 << 62)

func newEvictState(spans int) evictState {
	ev := evictState{closed: noHorizon, lateBefore: noHorizon, deletedTo: make([]int64, spans)}
	for i := range ev.deletedTo {
		ev.deletedTo[i] = noHorizon
	}
	return ev
}

// resident is the start of the first window of length ms that is in
// memory under horizon: windows that start before it are evicted.
func resident(horizon, ms int64) int64 {
	if horizon <= noHorizon {
		return noHorizon
	}
	return horizon - ms + 1
}

// evictClosed drops the table's closed, committed windows from memory and
// returns the cells it dropped. A span still being built (backfill.go) is
// left alone: its windows are not committed yet.
func (t *table) evictClosed() int {
	dropped := 0
	for _, sp := range t.spans {
		if !sp.pending {
			dropped += t.evictSpan(sp)
		}
	}
	return dropped
}

func (t *table) evictSpan(sp *span) int {
	h := t.ev.closed
	if h <= sp.horizon {
		return 0
	}
	for w, cells := range sp.windows {
		if w+sp.ms <= h && cells.ndirty > 0 {
			h = min(h, w) // keep it, and so every window that ends after it
		}
	}
	if h <= sp.horizon {
		return 0
	}
	dropped := 0
	for w, cells := range sp.windows {
		if w+sp.ms > h {
			continue
		}
		bytes := t.windowBytes(cells)
		t.ncells -= cells.len()
		t.bytes -= bytes
		t.account(-cells.len(), -bytes)
		dropped += cells.len()
		t.ev.windows++
		t.ev.cells += uint64(cells.len())
		sp.drop(w)
	}
	sp.horizon = h
	return dropped
}

// evictClosed evicts the closed windows of every app of the shard; s.mu
// is held. It is how a line that needs a new cell makes room (tableDeps'
// evict) before it is refused.
func (s *shard) evictClosed() int {
	n := 0
	for _, t := range s.tables {
		n += t.evictClosed()
	}
	if n > 0 {
		s.p.m.evictions.Inc()
	}
	return n
}

// afterCommit notes what the commit of state closed and, when the node or
// an app of the shard is near its bound, evicts the shard's closed
// windows.
func (s *shard) afterCommit(state commitState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.tables {
		wm, ok := state.Watermarks[t.app.Name()]
		if !ok {
			continue
		}
		// A backfill in this commit that has joined since: the commit
		// holds its cells as of its snapshot only, and the lines it read
		// after that, which the live watermark may be well past, are
		// still to be written. Its windows are closed and committed up to
		// its own committed watermark.
		if st := state.Backfill[t.app.Name()]; st != nil && !slices.ContainsFunc(s.backfills, func(bf *backfill) bool { return bf.live == t }) {
			wm = min(wm, st.Watermark)
		}
		t.ev.closed = max(t.ev.closed, wm-t.app.LatenessMs)
	}
	// A backfill's windows close by its own committed watermark.
	for _, bf := range s.backfills {
		if st := state.Backfill[bf.live.app.Name()]; st != nil {
			bf.t.ev.closed = max(bf.t.ev.closed, st.Watermark-bf.t.app.LatenessMs)
		}
	}
	if s.p.nearBound(s.tables) {
		s.evictClosed()
		for _, bf := range s.backfills {
			for _, sp := range bf.t.spans {
				bf.t.evictSpan(sp)
			}
		}
	}
}

// nearBound reports whether the node's cells, or the cells of an app of
// tables, are at evictPressure of their bound.
func (p *Puma) nearBound(tables []*table) bool {
	near := func(b *cellBudget) bool {
		if b == nil {
			return false
		}
		return (b.max > 0 && b.n.Load()*evictPressureDen >= b.max*evictPressureNum) ||
			(b.maxBytes > 0 && b.bytes.Load()*evictPressureDen >= b.maxBytes*evictPressureNum)
	}
	if near(&p.cells) {
		return true
	}
	for _, t := range tables {
		if near(t.appBudget) {
			return true
		}
	}
	return false
}

// keepClosed, on recovery, takes every line before the latest horizon as
// late, whatever the commit row's watermark says (a watermark reset
// because it was in the future, an app without one, an allowed_lateness
// raised since), so that no line can fall in a window that is in the
// store only; and notes that the windows closed by the watermark are
// committed (all loaded cells are). The watermark itself is left alone:
// pushed to the horizon plus a lateness raised since, it would run ahead
// of the lines, and retention would drop windows that early.
func (t *table) keepClosed() {
	for _, sp := range t.spans {
		t.ev.lateBefore = max(t.ev.lateBefore, sp.horizon)
	}
	t.ev.closed = max(t.ev.closed, t.watermark-t.app.LatenessMs)
}

// spanName is a span's name in the commit row: app@fingerprint, as in
// its rows' prefix.
func spanName(app string, sp *span) string { return app + "@" + sp.fp }

// loadStart is the first row of span sp to load on recovery: the windows
// before the horizon stay in the store.
func loadStart(prefix string, sp *span) string {
	if sp.horizon <= noHorizon {
		return prefix
	}
	return prefix + windowKey(resident(sp.horizon, sp.ms))
}

// evictedRetention returns the store rows of span i's evicted windows
// that retention has passed, to delete once the commit at epoch is made:
// memory drops its own windows (table.expire), the store's rows of
// windows no longer in memory are deleted here, as one range.
func (t *table) evictedRetention(i int, prefix string, epoch int64) []expiredRows {
	sp := t.spans[i]
	if sp.horizon <= noHorizon {
		return nil
	}
	end := min(sp.horizon, t.watermark-t.app.RetentionMs)
	to := resident(end, sp.ms)
	if to <= t.ev.deletedTo[i] {
		return nil
	}
	t.ev.deletedTo[i] = to
	return []expiredRows{{prefix: prefix, stop: prefix + windowKey(to), epoch: epoch}}
}

// mergeShard merges the cells of pl's app in shard s into m: those in
// memory and, for windows of the range that were evicted, those in the
// store as of the shard's last commit (its epoch, without the versions of
// aborted epochs). It is all or nothing: on an
// error nothing of the shard is in m.
func (s *shard) mergeShard(ctx context.Context, pl *plan, m cellSink) error {
	var (
		into        = m
		start, stop int64
		at          commitState
		evicted     bool
	)
	s.snapshot(func(tables []*table) {
		for _, t := range tables {
			if t.app != pl.app {
				continue
			}
			sp := t.spans[pl.span]
			// Not the windows retention drops (or dropped: their rows are
			// left in the store until a delete after a commit is done).
			start = max(pl.from, retainedFrom(t.app, t.watermark, sp.ms))
			if stop = min(pl.to, resident(sp.horizon, sp.ms)); start < stop {
				evicted = true
				at = commitState{Epoch: s.committedEpoch, Aborted: s.readAborted}
				into = m.fresh()
			}
			if tn, ok := into.(*topN); ok && tn.scannable() {
				tn.scan(sp)
				continue
			}
			pl.eachCell(sp, into.add)
		}
	})
	if !evicted {
		return nil
	}
	prefix := appPrefix(s.category, s.bucket, pl.app, fingerprint(pl.app, pl.srcMs))
	err := scanCommitted(ctx, s.p.deps.Store, s.p.cfg.Table, prefix, prefix+windowKey(start), prefix+windowKey(stop), at, pl.layout,
		func(w int64, key string, c cell, _ int64) { into.add(w, key, c) })
	if err != nil {
		return fmt.Errorf("read evicted windows of %s/%d: %w", s.category, s.bucket, err)
	}
	m.absorb(into)
	return nil
}

// hasEvicted reports whether a shard of shards evicted windows of pl's
// range.
func hasEvicted(shards []*shard, pl *plan) bool {
	found := false
	for _, s := range shards {
		s.snapshot(func(tables []*table) {
			for _, t := range tables {
				if sp := t.spans[pl.span]; t.app == pl.app && pl.from < resident(sp.horizon, sp.ms) {
					found = true
				}
			}
		})
	}
	return found
}

// absorb merges the rows of o (a merger of the same plan) into m.
func (m *merger) absorb(o cellSink) {
	for k, r := range o.(*merger).rows {
		mine, ok := m.rows[k]
		if !ok {
			m.rows[k] = r
			continue
		}
		mine.start = min(mine.start, r.start)
		mine.end = max(mine.end, r.end)
		m.pl.layout.merge(mine.cell, r.cell)
	}
}

// AppMemory is an app's cells in this node's memory and what eviction
// took out of it.
type AppMemory struct {
	Cells int64
	// Bytes are the cells' approximate bytes (freeway_puma_cell_bytes);
	// BytesPerCell is Bytes / Cells (0 without cells).
	Bytes        int64
	BytesPerCell float64
	// EvictedWindows and EvictedCells count the windows (of every
	// length) and cells evicted to the store since the shards started
	// here.
	EvictedWindows uint64
	EvictedCells   uint64
	// EvictedBeforeMs: in the shards running here, windows that end at
	// or before it are answered from the store (0: none evicted); the
	// lowest over the shards and window lengths.
	EvictedBeforeMs int64
}

// Memory returns app's cells in this node's memory, and false if there
// is no such app.
func (p *Puma) Memory(app string) (AppMemory, bool) {
	if _, ok := p.apps[app]; !ok {
		return AppMemory{}, false
	}
	var out AppMemory
	for _, s := range p.readyShards() {
		s.mu.RLock()
		for _, t := range s.tables {
			if t.app.Name() != app {
				continue
			}
			out.Cells += int64(t.ncells)
			out.Bytes += t.bytes
			out.EvictedWindows += t.ev.windows
			out.EvictedCells += t.ev.cells
			for _, sp := range t.spans {
				if h := sp.horizon; h > noHorizon && (out.EvictedBeforeMs == 0 || h < out.EvictedBeforeMs) {
					out.EvictedBeforeMs = h
				}
			}
		}
		for _, bf := range s.backfills { // the cells it built so far
			if bf.live.app.Name() == app {
				out.Cells += int64(bf.t.ncells)
				out.Bytes += bf.t.bytes
				out.EvictedWindows += bf.t.ev.windows
				out.EvictedCells += bf.t.ev.cells
			}
		}
		s.mu.RUnlock()
	}
	if out.Cells > 0 {
		out.BytesPerCell = float64(out.Bytes) / float64(out.Cells)
	}
	return out, true
}

var (
	descBytesPerCell   = prometheus.NewDesc("freeway_puma_bytes_per_cell", "Approximate bytes per cell in memory, by app (freeway_puma_cell_bytes / freeway_puma_cells).", []string{"app"}, nil)
	descEvictedWindows = prometheus.NewDesc("freeway_puma_evicted_windows_total", "Closed windows dropped from memory to be answered from the store, by app, since the shards started on this node.", []string{"app"}, nil)
	descEvictedCells   = prometheus.NewDesc("freeway_puma_evicted_cells_total", "Cells of closed windows dropped from memory to be answered from the store, by app, since the shards started on this node.", []string{"app"}, nil)
)

// evictCollector reports AppMemory per app at scrape time.
type evictCollector struct{ p *Puma }

func (c *evictCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descBytesPerCell
	ch <- descEvictedWindows
	ch <- descEvictedCells
}

func (c *evictCollector) Collect(ch chan<- prometheus.Metric) {
	for _, a := range c.p.Apps() {
		m, _ := c.p.Memory(a.Name())
		ch <- prometheus.MustNewConstMetric(descBytesPerCell, prometheus.GaugeValue, m.BytesPerCell, a.Name())
		ch <- prometheus.MustNewConstMetric(descEvictedWindows, prometheus.CounterValue, float64(m.EvictedWindows), a.Name())
		ch <- prometheus.MustNewConstMetric(descEvictedCells, prometheus.CounterValue, float64(m.EvictedCells), a.Name())
	}
}

// deleteRows deletes the store rows of x up to its epoch.
func deleteRows(ctx context.Context, st store.Store, table string, x expiredRows) error {
	stop := x.stop
	if stop == "" {
		stop = store.PrefixEnd(x.prefix)
	}
	return st.DeleteUpTo(ctx, table, x.prefix, stop, x.epoch)
}
