package puma

import (
	"fmt"
	"math"

	"github.com/freeway-dev/freeway/internal/agg"
	"github.com/freeway-dev/freeway/internal/apps"
)

// cell is one (window, key)'s aggregate states. The functions of
// internal/agg that keep fixed float slots (count, sum, min, max, avg)
// share one []float64, 8 bytes a slot and one allocation a cell: the fast
// path. The others keep a variable-size agg.State each.
type cell struct {
	// f holds the fixed slots; then, with variable states, the bytes
	// they took in the cell's last checkpoint (memory accounting). In a
	// table it is a view of its window's array (windowCells).
	f []float64
	// x holds the variable states, nil for an app without any.
	x []agg.State
}

// fixedAgg is where a fixed-slot aggregate lives in a cell.
type fixedAgg struct {
	i       int // index in the app's aggregates
	off, n  int // its slots: f[off : off+n]
	numeric bool
	// op is how add updates the slots: inline for the usual functions
	// (slotOp), else by the function's AddSlots.
	op  slotOp
	add func(s []float64, v float64)
	fn  *agg.Func
}

// slotOp is a fixed-slot function's AddSlots done inline by layout.add,
// without a call through a function value per aggregate and line: the
// same arithmetic (TestSlotOpsAreAddSlots holds the two equal).
type slotOp uint8

const (
	opCall  slotOp = iota // AddSlots
	opCount               // s[0]++
	opSum                 // s[0] += v
)

// slotOps are the functions layout.add updates inline.
var slotOps = map[string]slotOp{"count": opCount, "sum": opSum}

// varAgg is a variable-state aggregate: x[j] of a cell.
type varAgg struct {
	i       int
	numeric bool
	kind    agg.Kind
}

// layout is where each aggregate of an app lives in a cell.
type layout struct {
	app   *apps.App
	fixed []fixedAgg
	vars  []varAgg
	width int // fixed slots
	// in is the input handed to variable states, reused: a layout is used
	// by one goroutine at a time (a table under its shard's lock, or one
	// query).
	in agg.Input
}

func newLayout(app *apps.App) (*layout, error) {
	l := &layout{app: app}
	for i, a := range app.Aggs {
		fn, ok := agg.Lookup(a.Fn.Name)
		if !ok {
			return nil, fmt.Errorf("app %s: aggregate %s: function %s is not implemented", app.Name(), a.Name, a.Fn.Name)
		}
		if fn.Fixed() {
			l.fixed = append(l.fixed, fixedAgg{i: i, off: l.width, n: fn.Slots, numeric: fn.Numeric, op: slotOps[fn.Name], add: fn.AddSlots, fn: fn})
			l.width += fn.Slots
			continue
		}
		l.vars = append(l.vars, varAgg{i: i, numeric: fn.Numeric, kind: fn.New(a.Params)})
	}
	return l, nil
}

// stride is the slots of a cell: the fixed ones, and with variable states
// one more for their stored bytes.
func (l *layout) stride() int {
	if len(l.vars) > 0 {
		return l.width + 1
	}
	return l.width
}

// newCell returns an empty cell.
func (l *layout) newCell() cell {
	c := cell{f: make([]float64, l.stride())}
	for _, a := range l.fixed {
		a.fn.InitSlots(c.f[a.off : a.off+a.n])
	}
	if len(l.vars) > 0 {
		c.x = make([]agg.State, len(l.vars))
		for j, a := range l.vars {
			c.x[j] = a.kind.Init()
		}
	}
	return c
}

// storedBytes is what the cell's variable states took at its last
// checkpoint, and setStoredBytes records it.
func (l *layout) storedBytes(c cell) int64 {
	if len(l.vars) == 0 {
		return 0
	}
	return int64(c.f[l.width])
}

func (l *layout) setStoredBytes(c cell, n int64) {
	if len(l.vars) > 0 {
		c.f[l.width] = float64(n)
	}
}

// cellOverhead approximates the memory of a cell of key beyond its
// variable states' stored bytes: its entry in its window's index (with
// the index's spare room) and key ends, the key's bytes, the slots (and
// the arrays' room to grow), each state's structure in memory.
// Calibrated on the Go heap BenchmarkAggregators measures
// (heap-bytes/cell, states of a few values) since a window keeps its
// keys in one byte array with a hash index of its own (windowCells): 30
// for a cell and 56 a variable state bring the estimate within about 25%
// of the heap at 1 k to 1 M keys (count: 40 to 46 bytes measured, 44
// estimated; avg 50 to 54, 52; count_distinct 100 to 124, 100 + the
// stored bytes).
func (l *layout) cellOverhead(key string) int64 {
	return int64(30 + len(key) + 8*l.stride() + 56*len(l.vars))
}

// add feeds one extracted line into a cell; it returns how many inputs
// were not numbers for a numeric aggregate, or out of a sketch's range
// (skipped). It reads the aggregates in place (by index, not a copy of
// each per line), and each input from the line's record where it lies
// (apps.Extracted): a number is parsed there, a text copied only for a
// state that keeps it.
func (l *layout) add(c cell, in *apps.Extracted, tsMs, arrivalMs int64) (bad int) {
	for k := range l.fixed {
		a := &l.fixed[k]
		var v float64
		if a.numeric {
			n, present, ok := in.Number(a.i)
			if !present {
				continue
			}
			if !ok || math.IsNaN(n) || math.IsInf(n, 0) {
				bad++
				continue
			}
			v = n
		} else if !in.Present(a.i) {
			continue
		}
		switch a.op {
		case opCount:
			c.f[a.off]++
		case opSum:
			c.f[a.off] += v
		default:
			a.add(c.f[a.off:a.off+a.n], v)
		}
	}
	if len(l.vars) == 0 {
		return bad
	}
	x := &l.in
	x.TimeMs, x.ArrivalMs = tsMs, arrivalMs
	for j := range l.vars {
		a := &l.vars[j]
		if a.numeric {
			n, present, ok := in.Number(a.i)
			if !present {
				continue
			}
			if !ok || math.IsNaN(n) || math.IsInf(n, 0) {
				bad++
				continue
			}
			x.Num, x.IsNum, x.Str = n, true, ""
		} else {
			v, present := in.Input(a.i)
			if !present {
				continue
			}
			x.Str, x.IsNum, x.Num = v.String(), v.IsNum, v.Num
		}
		if !c.x[j].Add(x) {
			bad++
		}
	}
	x.Str = ""
	return bad
}

// merge adds src's states to dst's; src is only read.
func (l *layout) merge(dst, src cell) {
	for _, a := range l.fixed {
		a.fn.MergeSlots(dst.f[a.off:a.off+a.n], src.f[a.off:a.off+a.n])
	}
	for j := range l.vars {
		dst.x[j].Merge(src.x[j])
	}
}

// result is the answer of the app's i-th aggregate in c, as results
// gives it.
func (l *layout) result(c cell, i int) any {
	for _, a := range l.fixed {
		if a.i == i {
			return a.fn.ResultSlots(c.f[a.off : a.off+a.n])
		}
	}
	for j, a := range l.vars {
		if a.i == i {
			return c.x[j].Result()
		}
	}
	return nil
}

// results returns name → value: a float64, a string, agg.Quantiles,
// []agg.TopItem, or nil when there is none.
func (l *layout) results(c cell) map[string]any {
	out := make(map[string]any, len(l.fixed)+len(l.vars))
	for _, a := range l.fixed {
		out[l.app.Aggs[a.i].Name] = a.fn.ResultSlots(c.f[a.off : a.off+a.n])
	}
	for j, a := range l.vars {
		out[l.app.Aggs[a.i].Name] = c.x[j].Result()
	}
	return out
}
