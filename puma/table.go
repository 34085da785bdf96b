package puma

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cespare/xxhash/v2"

	"github.com/freeway-dev/freeway/internal/apps"
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
	watermark int64 // highest event time seen, ms
	extractor *apps.Extractor

	// counters since start, for metrics
	late, parseErrors, badTime, badValues, filtered uint64
}

func newTable(app *apps.App) (*table, error) {
	l, err := newLayout(app)
	if err != nil {
		return nil, err
	}
	return &table{
		app:       app,
		layout:    l,
		fp:        fingerprint(app),
		windows:   map[int64]map[string][]float64{},
		watermark: -1 << 62,
		extractor: app.NewExtractor(),
	}, nil
}

func fingerprint(app *apps.App) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d|%q|", app.WindowMs, app.Spec.GroupBy)
	for _, a := range app.Aggs {
		fmt.Fprintf(&b, "%s:%s:%s|", a.Name, a.Fn.Name, a.Field)
	}
	return fmt.Sprintf("%08x", uint32(xxhash.Sum64String(b.String())))
}

// apply feeds one line to the table.
func (t *table) apply(line []byte, arrivalMs int64) {
	ex, err := t.extractor.Extract(line, arrivalMs)
	if err != nil {
		switch {
		case errors.Is(err, apps.ErrFiltered):
			t.filtered++
		case isBadTime(err):
			t.badTime++
		default:
			t.parseErrors++
		}
		return
	}
	if ex.TimeMs > t.watermark {
		t.watermark = ex.TimeMs
	}
	if ex.TimeMs < t.watermark-t.app.LatenessMs {
		t.late++
		return
	}
	w := t.app.WindowStart(ex.TimeMs)
	cells := t.lastCells
	if cells == nil || w != t.lastW {
		cells = t.window(w)
		t.lastW, t.lastCells = w, cells
	}
	cell, ok := cells[ex.Key]
	if !ok {
		cell = t.layout.newCell()
		cells[ex.Key] = cell
		t.ncells++
	}
	t.badValues += uint64(t.layout.add(cell, ex.Inputs))
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

// load puts a cell read from the store (not dirty).
func (t *table) load(w int64, key string, cell []float64) {
	cells := t.window(w)
	if _, ok := cells[key]; !ok {
		t.ncells++
	}
	cells[key] = cell
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
			delete(t.windows, w)
			gone = append(gone, w)
			if w == t.lastW {
				t.lastCells = nil
			}
		}
	}
	return gone
}
