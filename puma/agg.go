package puma

import (
	"fmt"
	"math"

	"github.com/freeway-dev/freeway/internal/apps"
)

// A cell's aggregate states live in one []float64; each aggregate owns a
// fixed run of slots. Compact (8 bytes a slot, one allocation a cell) and
// trivially serialised.
type aggImpl struct {
	slots int
	init  func(s []float64)
	add   func(s []float64, v float64)
	merge func(dst, src []float64)
	// result is a float64, or nil when there is no value: no input, or a
	// sum that overflowed (JSON has no infinities).
	result func(s []float64) any
}

var aggImpls = map[string]aggImpl{
	"count": {
		slots:  1,
		init:   func(s []float64) {},
		add:    func(s []float64, _ float64) { s[0]++ },
		merge:  func(d, s []float64) { d[0] += s[0] },
		result: func(s []float64) any { return s[0] },
	},
	"sum": {
		slots:  1,
		init:   func(s []float64) {},
		add:    func(s []float64, v float64) { s[0] += v },
		merge:  func(d, s []float64) { d[0] += s[0] },
		result: func(s []float64) any { return finite(s[0]) },
	},
	"min": {
		slots:  1,
		init:   func(s []float64) { s[0] = math.Inf(1) },
		add:    func(s []float64, v float64) { s[0] = math.Min(s[0], v) },
		merge:  func(d, s []float64) { d[0] = math.Min(d[0], s[0]) },
		result: func(s []float64) any { return finite(s[0]) },
	},
	"max": {
		slots:  1,
		init:   func(s []float64) { s[0] = math.Inf(-1) },
		add:    func(s []float64, v float64) { s[0] = math.Max(s[0], v) },
		merge:  func(d, s []float64) { d[0] = math.Max(d[0], s[0]) },
		result: func(s []float64) any { return finite(s[0]) },
	},
	"avg": {
		slots: 2,
		init:  func(s []float64) {},
		add:   func(s []float64, v float64) { s[0] += v; s[1]++ },
		merge: func(d, s []float64) { d[0] += s[0]; d[1] += s[1] },
		result: func(s []float64) any {
			if s[1] == 0 {
				return nil
			}
			return finite(s[0] / s[1])
		},
	},
}

func finite(v float64) any {
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return nil
	}
	return v
}

// layout is where each aggregate of an app lives in a cell.
type layout struct {
	app    *apps.App
	impls  []aggImpl
	offset []int
	width  int
}

func newLayout(app *apps.App) (*layout, error) {
	l := &layout{app: app}
	for _, a := range app.Aggs {
		impl, ok := aggImpls[a.Fn.Name]
		if !ok {
			return nil, fmt.Errorf("app %s: aggregate %s: function %s is not implemented", app.Name(), a.Name, a.Fn.Name)
		}
		l.impls = append(l.impls, impl)
		l.offset = append(l.offset, l.width)
		l.width += impl.slots
	}
	return l, nil
}

// newCell returns a cell's slots, and one more after them: the mark a
// table sets while the cell waits for a checkpoint.
func (l *layout) newCell() []float64 {
	s := make([]float64, l.width+1)
	for i, impl := range l.impls {
		impl.init(s[l.offset[i] : l.offset[i]+impl.slots])
	}
	return s
}

func (l *layout) marked(cell []float64) bool { return cell[l.width] != 0 }

func (l *layout) mark(cell []float64, on bool) {
	cell[l.width] = 0
	if on {
		cell[l.width] = 1
	}
}

func (l *layout) slots(cell []float64, i int) []float64 {
	return cell[l.offset[i] : l.offset[i]+l.impls[i].slots]
}

// add feeds one extracted record into a cell; it returns how many numeric
// inputs were not numbers (skipped).
func (l *layout) add(cell []float64, in []apps.Input) (bad int) {
	for i, impl := range l.impls {
		if !in[i].Present {
			continue
		}
		var v float64
		if l.app.Aggs[i].Fn.Numeric {
			n, ok := in[i].Value.Number()
			if !ok || math.IsNaN(n) || math.IsInf(n, 0) {
				bad++
				continue
			}
			v = n
		}
		impl.add(l.slots(cell, i), v)
	}
	return bad
}

func (l *layout) merge(dst, src []float64) {
	for i, impl := range l.impls {
		impl.merge(l.slots(dst, i), l.slots(src, i))
	}
}

// results returns name → value (a float64, or nil when there is none).
func (l *layout) results(cell []float64) map[string]any {
	out := make(map[string]any, len(l.impls))
	for i, impl := range l.impls {
		out[l.app.Aggs[i].Name] = impl.result(l.slots(cell, i))
	}
	return out
}
