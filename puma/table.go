package puma

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/cespare/xxhash/v2"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/ratelog"
)

// cellKey is a cell's place in an app's table.
type cellKey struct {
	window int64 // window start, Unix ms
	key    string
}

// table is one app's cells in one shard. Guarded by the shard's mutex.
type table struct {
	app    *apps.App
	layout *layout
	// fp identifies the shape of the app's state (window, group_by,
	// aggregates); stored rows carry it so that a changed app does not
	// read state of another shape.
	fp string
	// windows holds the cells by window start, then group key, so that a
	// query visits only the windows of its range and retention drops whole
	// windows.
	windows map[int64]map[string][]float64
	ncells  int
	// dirty lists the cells changed since the last checkpoint. A cell's
	// mark slot says whether it is listed, so that a record costs one
	// lookup, not a second one in a set.
	dirty []cellKey
	// lastW and lastCells cache the window of the previous record: most
	// records land in the current window.
	lastW     int64
	lastCells map[string][]float64
	watermark int64 // highest event time aggregated, ms
	extractor *apps.Extractor
	deps      tableDeps

	// drops counts records not aggregated since start, by reason (bad
	// values: inputs); samples keeps the last lines of each reason.
	drops   [nReasons]uint64
	samples [nReasons]sampleRing
	logKeys [nReasons]string
	nextLog [nReasons]int64 // ms before which the reason is not logged again
}

// tableDeps is what a table shares with its node; the zero value (for
// tests) bounds nothing and logs nothing.
type tableDeps struct {
	budget   *cellBudget
	limiter  *ratelog.Limiter
	category string
	bucket   int
}

// blockTime is what a table is told of the block a line came in.
type blockTime struct {
	// arrivalMs is the block's arrival time: the event time of apps
	// without a time field.
	arrivalMs int64
	// refMs bounds event times: a line more than the app's max_future
	// beyond it is rejected. It is the arrival time, or Puma's clock
	// when the arrival time is later or missing: an arrival time comes
	// from another process and is not trusted blindly.
	refMs int64
	nowMs int64 // Puma's clock, for samples
}

// newBlockTime returns the times of a block that arrived at arrivalMs,
// read at nowMs.
func newBlockTime(arrivalMs, nowMs int64) blockTime {
	ref := arrivalMs
	if ref <= 0 || ref > nowMs {
		ref = nowMs
	}
	return blockTime{arrivalMs: arrivalMs, refMs: ref, nowMs: nowMs}
}

func newTable(app *apps.App, deps tableDeps) (*table, error) {
	l, err := newLayout(app)
	if err != nil {
		return nil, err
	}
	t := &table{
		app:       app,
		layout:    l,
		fp:        fingerprint(app),
		windows:   map[int64]map[string][]float64{},
		watermark: -1 << 62,
		extractor: app.NewExtractor(),
		deps:      deps,
	}
	for r, name := range reasonNames {
		t.logKeys[r] = "puma reject " + app.Name() + " " + name
	}
	return t, nil
}

// cellBudget bounds the cells a node holds in memory (puma.max_cells),
// across its shards and apps. A nil budget bounds nothing.
type cellBudget struct {
	max int64
	n   atomic.Int64
}

// take reserves room for one new cell; it is the one place where the
// bound is checked.
func (b *cellBudget) take() bool {
	if b == nil {
		return true
	}
	if b.n.Add(1) > b.max {
		b.n.Add(-1)
		return false
	}
	return true
}

// add accounts for cells that come without asking (loaded from the store:
// committed state is always loaded whole) or go (n < 0).
func (b *cellBudget) add(n int) {
	if b != nil {
		b.n.Add(int64(n))
	}
}

func fingerprint(app *apps.App) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d|%q|", app.WindowMs, app.Spec.GroupBy)
	for _, a := range app.Aggs {
		fmt.Fprintf(&b, "%s:%s:%s|", a.Name, a.Fn.Name, a.Field)
	}
	return fmt.Sprintf("%08x", uint32(xxhash.Sum64String(b.String())))
}

// apply feeds one line to the table. A line it rejects changes nothing
// but the counters and samples (not the watermark, not a cell), except
// that a line refused for want of room (puma.max_cells) moves the
// watermark like any line with a good time.
func (t *table) apply(line []byte, bt blockTime) {
	ex, err := t.extractor.Extract(line, bt.arrivalMs)
	if err != nil {
		switch {
		case errors.Is(err, apps.ErrFiltered):
			t.reject(1, why{reason: reasonFiltered}, line, bt)
		case isBadTime(err):
			t.reject(1, why{reason: reasonBadTime, err: err}, line, bt)
		default:
			t.reject(1, why{reason: reasonParse, err: err}, line, bt)
		}
		return
	}
	ts := ex.TimeMs
	if ts > bt.refMs+t.app.MaxFutureMs {
		t.reject(1, why{reason: reasonFuture, a: ts, b: bt.refMs, c: t.app.MaxFutureMs}, line, bt)
		return
	}
	// Late against the watermark before this line: a line later than the
	// watermark is never late.
	if ts < t.watermark-t.app.LatenessMs {
		t.reject(1, why{reason: reasonLate, a: ts, b: t.watermark, c: t.app.LatenessMs}, line, bt)
		return
	}
	w := t.app.WindowStart(ts)
	if t.lastCells == nil || w != t.lastW {
		t.lastW, t.lastCells = w, t.windows[w] // nil if the window has no cells yet
	}
	cell, ok := t.lastCells[ex.Key]
	if !ok {
		if !t.deps.budget.take() {
			// The line's time is good: let it move the watermark, so that
			// retention frees room once time moves on (every line of a
			// new window needs a new cell).
			t.watermark = max(t.watermark, ts)
			t.reject(1, why{reason: reasonMaxCells, a: t.deps.budget.max}, line, bt)
			return
		}
		if t.lastCells == nil {
			t.lastCells = t.window(w)
		}
		cell = t.layout.newCell()
		t.lastCells[ex.Key] = cell
		t.ncells++
	}
	if ts > t.watermark {
		t.watermark = ts
	}
	if bad := t.layout.add(cell, ex.Inputs); bad > 0 {
		t.reject(uint64(bad), why{reason: reasonBadValue, a: int64(bad)}, line, bt)
	}
	if !t.layout.marked(cell) {
		t.layout.mark(cell, true)
		t.dirty = append(t.dirty, cellKey{window: w, key: ex.Key})
	}
}

// window returns the cells of window w, creating it if needed.
func (t *table) window(w int64) map[string][]float64 {
	cells, ok := t.windows[w]
	if !ok {
		cells = map[string][]float64{}
		t.windows[w] = cells
	}
	return cells
}

// load puts a cell read from the store (not dirty). Committed cells are
// loaded even beyond puma.max_cells: they are what the store says.
func (t *table) load(w int64, key string, cell []float64) {
	cells := t.window(w)
	if _, ok := cells[key]; !ok {
		t.ncells++
		t.deps.budget.add(1)
	}
	cells[key] = cell
}

// repairWatermark returns the start of the latest window loaded, a
// watermark the table's cells are consistent with.
func (t *table) repairWatermark() int64 {
	wm := int64(-1 << 62)
	for w := range t.windows {
		wm = max(wm, w)
	}
	return wm
}

// release gives the table's cells back to the node's budget (the shard
// stops).
func (t *table) release() {
	t.deps.budget.add(-t.ncells)
	t.ncells = 0
}

// each calls fn for every cell whose window starts in [from, to).
func (t *table) each(from, to int64, fn func(window int64, key string, cell []float64)) {
	for w, cells := range t.windows {
		if w < from || w >= to {
			continue
		}
		for key, cell := range cells {
			fn(w, key, cell)
		}
	}
}

// takeDirty calls fn for each changed cell, clears the changes and
// returns the keys it took, for remark should their write fail.
func (t *table) takeDirty(fn func(k cellKey, cell []float64)) []cellKey {
	taken := t.dirty[:0:0]
	for _, k := range t.dirty {
		cell, ok := t.windows[k.window][k.key]
		if !ok || !t.layout.marked(cell) {
			continue // expired, or listed twice after expiring and coming back
		}
		t.layout.mark(cell, false)
		fn(k, cell)
		taken = append(taken, k)
	}
	if cap(t.dirty) > 4*len(t.dirty) && cap(t.dirty) > 1024 {
		t.dirty = nil // let a burst's list go
	} else {
		t.dirty = t.dirty[:0]
	}
	return taken
}

// remark marks keys changed again, those whose cells still exist.
func (t *table) remark(keys []cellKey) {
	for _, k := range keys {
		if cell, ok := t.windows[k.window][k.key]; ok && !t.layout.marked(cell) {
			t.layout.mark(cell, true)
			t.dirty = append(t.dirty, k)
		}
	}
}

// expire drops windows that ended before watermark - retention and
// returns their starts.
func (t *table) expire() []int64 {
	horizon := t.watermark - t.app.RetentionMs
	var gone []int64
	for w, cells := range t.windows {
		if w+t.app.WindowMs <= horizon {
			t.ncells -= len(cells)
			t.deps.budget.add(-len(cells))
			delete(t.windows, w)
			gone = append(gone, w)
			if w == t.lastW {
				t.lastCells = nil
			}
		}
	}
	return gone
}
