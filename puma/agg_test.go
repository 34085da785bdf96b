package puma

import (
	"math"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/agg"
	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/apps/appstest"
)

func num(v float64) apps.Input {
	return apps.Input{Value: apps.Value{Num: v, IsNum: true}, Present: true}
}
func str(s string) apps.Input          { return apps.Input{Value: apps.Value{Str: s}, Present: true} }
func absent() apps.Input               { return apps.Input{} }
func present() apps.Input              { return apps.Input{Present: true} }
func in(xs ...apps.Input) []apps.Input { return xs }

// addIn adds one record's inputs at event and arrival time 0.
func addIn(l *layout, c cell, in []apps.Input) int { return l.add(c, apps.InputsOf(0, nil, in), 0, 0) }

func TestAggregators(t *testing.T) {
	l, err := newLayout(orders(t))
	if err != nil {
		t.Fatal(err)
	}
	if l.width != 6 {
		t.Fatalf("width %d, want 6 (count, sum, min, max, avg×2)", l.width)
	}
	empty := l.newCell()
	want := map[string]any{"n": 0.0, "total": 0.0, "lo": nil, "hi": nil, "mean": nil}
	checkResults(t, "empty cell", l.results(empty), want)

	c := l.newCell()
	for _, v := range []float64{3, -1.5, 10} {
		if bad := addIn(l, c, in(present(), num(v), num(v), num(v), num(v))); bad != 0 {
			t.Fatalf("add %v: %d bad", v, bad)
		}
	}
	checkResults(t, "three values", l.results(c), map[string]any{"n": 3.0, "total": 11.5, "lo": -1.5, "hi": 10.0, "mean": 11.5 / 3})

	// Numbers written as strings count; non-numeric strings, NaN and ±Inf
	// are skipped and reported as bad; an absent field is neither.
	c2 := l.newCell()
	bad := addIn(l, c2, in(present(), str(" 4 "), str("4"), str("4"), str("4")))
	bad += addIn(l, c2, in(present(), str("x"), num(math.NaN()), num(math.Inf(1)), num(math.Inf(-1))))
	bad += addIn(l, c2, in(present(), absent(), absent(), absent(), absent()))
	if bad != 4 {
		t.Fatalf("bad = %d, want 4", bad)
	}
	checkResults(t, "strings and bad values", l.results(c2), map[string]any{"n": 3.0, "total": 4.0, "lo": 4.0, "hi": 4.0, "mean": 4.0})

	// Merge is what adding every input to one cell would give.
	m := l.newCell()
	l.merge(m, c)
	l.merge(m, c2)
	l.merge(m, empty)
	checkResults(t, "merged", l.results(m), map[string]any{"n": 6.0, "total": 15.5, "lo": -1.5, "hi": 10.0, "mean": 15.5 / 4})
	// Merging empty cells keeps "no value".
	e2 := l.newCell()
	l.merge(e2, empty)
	checkResults(t, "empty merged", l.results(e2), want)
}

func checkResults(t *testing.T, what string, got, want map[string]any) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %v, want %v", what, got, want)
	}
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Fatalf("%s: %s missing in %v", what, k, got)
		}
		if w == nil {
			if g != nil {
				t.Fatalf("%s: %s = %v, want nil", what, k, g)
			}
			continue
		}
		gf, ok := g.(float64)
		if !ok || math.Abs(gf-w.(float64)) > 1e-9 {
			t.Fatalf("%s: %s = %v, want %v", what, k, g, w)
		}
	}
}

func TestCellEncoding(t *testing.T) {
	l, err := newLayout(orders(t))
	if err != nil {
		t.Fatal(err)
	}
	c := l.newCell()
	addIn(l, c, in(present(), num(2.5), num(-7), num(1e300), num(0.1)))
	b := l.encodeCell(c)
	if len(b) != 1+8*6 || b[0] != 1 {
		t.Fatalf("encoded %d bytes, format %d", len(b), b[0])
	}
	back, err := l.decodeCell(b)
	if err != nil {
		t.Fatal(err)
	}
	for i := range c.f {
		if math.Float64bits(c.f[i]) != math.Float64bits(back.f[i]) {
			t.Fatalf("slot %d: %v != %v", i, back.f[i], c.f[i])
		}
	}
	// Infinities of empty min/max survive the round trip.
	back, err = l.decodeCell(l.encodeCell(l.newCell()))
	if err != nil || !math.IsInf(back.f[2], 1) || !math.IsInf(back.f[3], -1) {
		t.Fatalf("empty cell round trip: %v %v", back, err)
	}

	// A cell of another shape is refused with a reason.
	narrow, err := newLayout(orders(t, func(s *apps.Spec) { s.Aggregates = s.Aggregates[:1] }))
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]byte{narrow.encodeCell(narrow.newCell()), nil, append([]byte{2}, b[1:]...)} {
		_, err := l.decodeCell(bad)
		if err == nil || !strings.Contains(err.Error(), "aggregate list changed") {
			t.Errorf("decode %x: %v", bad, err)
		}
	}
}

func TestLayoutRefusesUnknownFunction(t *testing.T) {
	a := orders(t)
	a.Aggs = append(a.Aggs, apps.Agg{Name: "p99", Fn: &apps.Fn{Name: "median"}})
	if _, err := newLayout(a); err == nil || !strings.Contains(err.Error(), "median") {
		t.Fatalf("newLayout: %v", err)
	}
}

func TestWindowKeyOrder(t *testing.T) {
	ws := []int64{-1 << 62, -120000, -60000, 0, 60000, t0, 1 << 62}
	for i, w := range ws {
		k := windowKey(w)
		back, ok := parseWindowKey(k)
		if !ok || back != w {
			t.Fatalf("window %d: key %s parses to %d %v", w, k, back, ok)
		}
		if i > 0 && windowKey(ws[i-1]) >= k {
			t.Fatalf("key of %d sorts after key of %d", ws[i-1], w)
		}
	}
	for _, bad := range []string{"", "123", "zzzzzzzzzzzzzzzz", "00000000000000000"} {
		if _, ok := parseWindowKey(bad); ok {
			t.Errorf("parseWindowKey(%q) accepted", bad)
		}
	}
}

// TestOverflowHasNoValue: a sum past the largest float is an infinity,
// which JSON cannot carry; it is reported as no value.
func TestOverflowHasNoValue(t *testing.T) {
	l, err := newLayout(orders(t))
	if err != nil {
		t.Fatal(err)
	}
	c := l.newCell()
	for _, v := range []float64{math.MaxFloat64, math.MaxFloat64} {
		addIn(l, c, in(present(), num(v), num(v), num(v), num(v)))
	}
	checkResults(t, "overflow", l.results(c), map[string]any{"n": 2.0, "total": nil, "lo": math.MaxFloat64, "hi": math.MaxFloat64, "mean": nil})
	neg := l.newCell()
	addIn(l, neg, in(present(), num(-math.MaxFloat64), num(0), num(0), num(-math.MaxFloat64)))
	l.merge(c, neg) // +Inf + -MaxFloat64: still +Inf
	l.merge(c, c)
	checkResults(t, "merged overflow", l.results(c), map[string]any{"n": 6.0, "total": nil, "lo": 0.0, "hi": math.MaxFloat64, "mean": nil})
}

// TestSlotOpsAreAddSlots: the functions layout.add updates inline
// (slotOps) leave a cell's slots as their AddSlots does, to the bit, for
// values of every kind a numeric input can be (integers, fractions,
// large, tiny, negative zero, sums that round), from slots of any value.
func TestSlotOpsAreAddSlots(t *testing.T) {
	vals := []float64{0, 1, -1, 0.1, 0.2, 1e300, -1e300, 5e-324, math.Copysign(0, -1), 123456789.123, 1 << 53, 3}
	for name, op := range slotOps {
		fn, ok := agg.Lookup(name)
		if !ok || !fn.Fixed() || fn.Slots != 1 {
			t.Fatalf("%s: not a one-slot function", name)
		}
		app := appstest.Compile(t, apps.Spec{Name: "a", Category: "c", Format: "json", GroupBy: []string{"k"},
			Aggregates: []apps.AggregateSpec{{Name: "x", Fn: name, Field: "v"}}})
		if !fn.NeedsField {
			app = appstest.Compile(t, apps.Spec{Name: "a", Category: "c", Format: "json", GroupBy: []string{"k"},
				Aggregates: []apps.AggregateSpec{{Name: "x", Fn: name}}})
		}
		l, err := newLayout(app)
		if err != nil {
			t.Fatal(err)
		}
		if l.fixed[0].op != op || op == opCall {
			t.Fatalf("%s: layout op %d, want %d", name, l.fixed[0].op, op)
		}
		for _, start := range vals {
			c := l.newCell()
			want := []float64{start}
			c.f[0] = start
			for _, v := range vals {
				l.add(c, apps.InputsOf(1, nil, []apps.Input{{Value: apps.Value{Num: v, IsNum: true}, Present: true}}), 1, 1)
				fn.AddSlots(want, v)
				if math.Float64bits(c.f[0]) != math.Float64bits(want[0]) {
					t.Fatalf("%s from %v, after %v: slot %v, AddSlots gives %v", name, start, v, c.f[0], want[0])
				}
			}
		}
	}
}
