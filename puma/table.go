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
	fp        string
	cells     map[cellKey][]float64
	dirty     map[cellKey]struct{}
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
		cells:     map[cellKey][]float64{},
		dirty:     map[cellKey]struct{}{},
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
	k := cellKey{window: t.app.WindowStart(ex.TimeMs), key: ex.Key}
	cell, ok := t.cells[k]
	if !ok {
		cell = t.layout.newCell()
		t.cells[k] = cell
	}
	t.badValues += uint64(t.layout.add(cell, ex.Inputs))
	t.dirty[k] = struct{}{}
}

// each calls fn for every cell whose window starts in [from, to).
func (t *table) each(from, to int64, fn func(window int64, key string, cell []float64)) {
	for k, cell := range t.cells {
		if k.window >= from && k.window < to {
			fn(k.window, k.key, cell)
		}
	}
}

// expire drops windows that ended before watermark - retention and
// returns their starts.
func (t *table) expire() []int64 {
	horizon := t.watermark - t.app.RetentionMs
	seen := map[int64]bool{}
	var gone []int64
	for k := range t.cells {
		if k.window+t.app.WindowMs <= horizon {
			delete(t.cells, k)
			delete(t.dirty, k)
			if !seen[k.window] {
				seen[k.window] = true
				gone = append(gone, k.window)
			}
		}
	}
	return gone
}
