package agg

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"
)

// kind returns the Kind of fn with defaults applied to p.
func kind(t testing.TB, fn string, p Params) Kind {
	t.Helper()
	f, ok := Lookup(fn)
	if !ok {
		t.Fatalf("no function %s", fn)
	}
	f.Defaults(&p)
	if field, err := f.Check(p); err != nil {
		t.Fatalf("%s: %s: %v", fn, field, err)
	}
	return f.New(p)
}

func text(s string) *Input    { return &Input{Str: s} }
func number(v float64) *Input { return &Input{Num: v, IsNum: true, Str: fmt.Sprint(v)} }

// roundTrip encodes s and decodes it with k.
func roundTrip(t testing.TB, k Kind, s State) State {
	t.Helper()
	b := s.Marshal(nil)
	if len(b) > k.MaxBytes() {
		t.Fatalf("encoding of %d bytes, MaxBytes %d", len(b), k.MaxBytes())
	}
	back, err := k.Unmarshal(b)
	if err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	again := back.Marshal(nil)
	if _, hll := s.(*distinct); hll {
		// The sketch's encoding is not canonical (its temporary set is
		// written in map order): what it decodes to must answer the same.
		other, err := k.Unmarshal(again)
		if err != nil {
			t.Fatalf("unmarshal the re-encoding: %v", err)
		}
		if a, b := fmt.Sprint(other.Result()), fmt.Sprint(back.Result()); a != b {
			t.Fatalf("re-encoding answers %s, was %s", a, b)
		}
	} else if string(again) != string(b) {
		t.Fatalf("re-encoding differs: %d bytes, was %d", len(again), len(b))
	}
	return back
}

// mergeAll merges parts into a fresh state in the order given by perm.
func mergeAll(k Kind, parts []State, perm []int) State {
	m := k.Init()
	for _, i := range perm {
		m.Merge(parts[i])
	}
	return m
}

// partition feeds inputs to n states, each input to a random one.
func partition(k Kind, inputs []*Input, n int, r *rand.Rand) []State {
	parts := make([]State, n)
	for i := range parts {
		parts[i] = k.Init()
	}
	for _, in := range inputs {
		parts[r.IntN(n)].Add(in)
	}
	return parts
}

func TestRegistry(t *testing.T) {
	want := []string{"avg", "count", "count_distinct", "first", "last", "max", "min", "percentile", "sum", "topk"}
	if got := Names(); !slices.Equal(got, want) {
		t.Fatalf("Names() = %v", got)
	}
	for _, name := range want {
		f, _ := Lookup(name)
		if f.Fixed() != (f.Slots > 0) || (f.Fixed() && f.kind != nil) || (!f.Fixed() && f.kind == nil) {
			t.Errorf("%s: fixed %v, slots %d, kind %v", name, f.Fixed(), f.Slots, f.kind != nil)
		}
		if name != "count" && !f.NeedsField {
			t.Errorf("%s needs no field", name)
		}
	}
	// Parameters: defaults, bounds, and only where they belong.
	topk, _ := Lookup("topk")
	p := Params{}
	topk.Defaults(&p)
	if p.K != DefaultK || p.Quantiles != nil {
		t.Fatalf("topk defaults %+v", p)
	}
	for _, bad := range []Params{{K: -1}, {K: MaxK + 1}, {K: 5, Quantiles: []float64{0.5}}} {
		if field, err := topk.Check(bad); err == nil {
			t.Errorf("topk %+v accepted", bad)
		} else if field == "" {
			t.Errorf("topk %+v: no field for %v", bad, err)
		}
	}
	pct, _ := Lookup("percentile")
	p = Params{}
	pct.Defaults(&p)
	if !slices.Equal(p.Quantiles, []float64{0.5, 0.9, 0.99}) {
		t.Fatalf("percentile defaults %+v", p)
	}
	for _, bad := range [][]float64{{}, {1.5}, {-0.1}, {math.NaN()}, {0.5, 0.5}, make([]float64, MaxQuantiles+1)} {
		if _, err := pct.Check(Params{Quantiles: bad}); err == nil {
			t.Errorf("quantiles %v accepted", bad)
		}
	}
	if _, err := pct.Check(Params{Quantiles: []float64{0, 0.25, 1}}); err != nil {
		t.Errorf("quantiles 0, 0.25, 1: %v", err)
	}
	sum, _ := Lookup("sum")
	if field, err := sum.Check(Params{K: 3}); err == nil || field != "k" {
		t.Errorf("sum with k: %s %v", field, err)
	}
	// Only topk's k changes the state's shape.
	if topk.Shape(Params{K: 10}) == topk.Shape(Params{K: 11}) || pct.Shape(Params{Quantiles: []float64{0.5}}) != "" || sum.Shape(Params{}) != "" {
		t.Error("shapes")
	}
}

func TestCountDistinctSmallIsExact(t *testing.T) {
	k := kind(t, "count_distinct", Params{})
	s := k.Init()
	if got := s.Result(); got != 0.0 {
		t.Fatalf("empty: %v", got)
	}
	seen := map[string]bool{}
	r := rand.New(rand.NewPCG(1, 2))
	for range 5000 {
		v := fmt.Sprintf("user-%d", r.IntN(ExactDistinct))
		seen[v] = true
		s.Add(text(v))
	}
	if got := s.Result(); got != float64(len(seen)) {
		t.Fatalf("count_distinct = %v, want exactly %d", got, len(seen))
	}
	// A JSON number counts as its text.
	s.Add(number(7))
	if got := s.Result(); got != float64(len(seen)+1) {
		t.Fatalf("after a number: %v", got)
	}
	back := roundTrip(t, k, s)
	if back.Result() != s.Result() {
		t.Fatalf("round trip: %v, was %v", back.Result(), s.Result())
	}
}

// TestCountDistinctLarge: within 2.5% (three standard errors) of the
// exact count at several sizes, and merged from parts in any order, what
// one sketch over all the input gives.
func TestCountDistinctLarge(t *testing.T) {
	k := kind(t, "count_distinct", Params{})
	for _, n := range []int{300, 2000, 20_000, 200_000} {
		r := rand.New(rand.NewPCG(uint64(n), 7))
		var inputs []*Input
		exact := map[string]bool{}
		for range 2 * n {
			v := fmt.Sprintf("10.%d.%d.%d", r.IntN(n)/65536, r.IntN(n)/256%256, r.IntN(n)%256)
			v += fmt.Sprint("/", r.IntN(n))
			exact[v] = true
			inputs = append(inputs, text(v))
		}
		one := k.Init()
		for _, in := range inputs {
			one.Add(in)
		}
		want := float64(len(exact))
		got := one.Result().(float64)
		if math.Abs(got-want) > 0.025*want {
			t.Errorf("n=%d: estimate %v, exact %v (error %.2f%%)", n, got, want, 100*(got-want)/want)
		}
		for _, nparts := range []int{2, 37} {
			parts := partition(k, inputs, nparts, r)
			a := mergeAll(k, parts, r.Perm(nparts)).Result().(float64)
			b := mergeAll(k, parts, r.Perm(nparts)).Result().(float64)
			if a != b || a != got {
				t.Errorf("n=%d, %d parts: merged %v and %v, one sketch %v", n, nparts, a, b, got)
			}
			// Parts after a round trip through their encoding merge the same.
			decoded := make([]State, nparts)
			for i, p := range parts {
				decoded[i] = roundTrip(t, k, p)
			}
			if c := mergeAll(k, decoded, r.Perm(nparts)).Result().(float64); c != got {
				t.Errorf("n=%d, %d decoded parts: merged %v, one sketch %v", n, nparts, c, got)
			}
		}
		// A decoded state goes on counting as the original.
		back := roundTrip(t, k, one)
		extra := text("one more value")
		back.Add(extra)
		one.Add(extra)
		if back.Result() != one.Result() {
			t.Errorf("n=%d: after a round trip and an add: %v, %v", n, back.Result(), one.Result())
		}
	}
}

func TestTopKSmallIsExact(t *testing.T) {
	k := kind(t, "topk", Params{K: 3})
	s := k.Init()
	if got := s.Result().([]TopItem); got == nil || len(got) != 0 {
		t.Fatalf("empty: %#v", got)
	}
	for _, v := range strings.Fields("/a /b /a /c /a /b /d /e /e /e /e") {
		s.Add(text(v))
	}
	want := []TopItem{{"/e", 4, 0}, {"/a", 3, 0}, {"/b", 2, 0}}
	if got := s.Result().([]TopItem); !slices.Equal(got, want) {
		t.Fatalf("topk = %v, want %v", got, want)
	}
	b, _ := json.Marshal(s.Result())
	if string(b) != `[{"value":"/e","count":4,"error":0},{"value":"/a","count":3,"error":0},{"value":"/b","count":2,"error":0}]` {
		t.Fatalf("JSON %s", b)
	}
	// Merged from parts: the same.
	other := k.Init()
	other.Add(text("/c"))
	other.Add(text("/c"))
	m := k.Init()
	m.Merge(s)
	m.Merge(other)
	want = []TopItem{{"/e", 4, 0}, {"/a", 3, 0}, {"/c", 3, 0}}
	if got := m.Result().([]TopItem); !slices.Equal(got, want) {
		t.Fatalf("merged topk = %v, want %v", got, want)
	}
}

// zipf returns n values drawn from a Zipf distribution over distinct
// values, with their exact counts.
func zipf(r *rand.Rand, n, distinct int) ([]*Input, map[string]uint64) {
	z := rand.NewZipf(r, 1.1, 2, uint64(distinct-1))
	exact := map[string]uint64{}
	var inputs []*Input
	for range n {
		v := fmt.Sprintf("/page/%d", z.Uint64())
		exact[v]++
		inputs = append(inputs, text(v))
	}
	return inputs, exact
}

// checkTop holds an answer to Space-Saving's guarantees against exact
// counts: each count overestimates by at most its error, errors are at
// most total/counters, the list is in order, and no value left out has a
// true count above the last one listed.
func checkTop(t *testing.T, what string, got []TopItem, exact map[string]uint64, k int) {
	t.Helper()
	var total uint64
	for _, c := range exact {
		total += c
	}
	bound := total / uint64(Counters(k))
	if len(got) != min(k, len(exact)) {
		t.Fatalf("%s: %d items, want %d", what, len(got), min(k, len(exact)))
	}
	listed := map[string]bool{}
	for i, it := range got {
		tc := exact[it.Value]
		if it.Count < tc || it.Count-it.Error > tc || it.Error > bound {
			t.Fatalf("%s: %+v, true count %d, error bound %d", what, it, tc, bound)
		}
		if i > 0 && (got[i-1].Count < it.Count || (got[i-1].Count == it.Count && got[i-1].Value > it.Value)) {
			t.Fatalf("%s: out of order at %d: %v", what, i, got)
		}
		listed[it.Value] = true
	}
	last := got[len(got)-1].Count
	for v, c := range exact {
		if !listed[v] && c > last {
			t.Fatalf("%s: %s (true count %d) left out, last listed %d", what, v, c, last)
		}
	}
}

func TestTopKGuarantees(t *testing.T) {
	for _, k := range []int{1, 10, 100} {
		kd := kind(t, "topk", Params{K: k})
		r := rand.New(rand.NewPCG(uint64(k), 3))
		inputs, exact := zipf(r, 200_000, 20_000)
		one := kd.Init()
		for _, in := range inputs {
			one.Add(in)
		}
		checkTop(t, fmt.Sprintf("k=%d one summary", k), one.Result().([]TopItem), exact, k)
		for _, nparts := range []int{3, 40} {
			parts := partition(kd, inputs, nparts, r)
			a := mergeAll(kd, parts, r.Perm(nparts)).Result().([]TopItem)
			checkTop(t, fmt.Sprintf("k=%d merged from %d", k, nparts), a, exact, k)
			// Merged in another order, in two levels: the same answer.
			perm := r.Perm(nparts)
			left, right := kd.Init(), kd.Init()
			for i, j := range perm {
				if i%2 == 0 {
					left.Merge(parts[j])
				} else {
					right.Merge(parts[j])
				}
			}
			m := kd.Init()
			m.Merge(roundTrip(t, kd, right))
			m.Merge(left)
			if b := m.Result().([]TopItem); !slices.Equal(a, b) {
				t.Fatalf("k=%d, %d parts: merges disagree:\n%v\n%v", k, nparts, a, b)
			}
		}
		// A decoded summary goes on counting as the original.
		back := roundTrip(t, kd, one)
		more, _ := zipf(r, 10_000, 20_000)
		for _, in := range more {
			back.Add(in)
			one.Add(in)
		}
		if a, b := one.Result().([]TopItem), back.Result().([]TopItem); !slices.Equal(a, b) {
			t.Fatalf("k=%d: after a round trip: %v, %v", k, a, b)
		}
	}
}

func TestTopKClipsLongValues(t *testing.T) {
	k := kind(t, "topk", Params{K: 5})
	s := k.Init()
	long := strings.Repeat("x", 1000)
	s.Add(text(long + "a"))
	s.Add(text(long + "b"))
	s.Add(text(long + "b"))
	got := s.Result().([]TopItem)
	if len(got) != 2 || got[0].Count != 2 || got[1].Count != 1 {
		t.Fatalf("long values merged: %v", got)
	}
	for _, it := range got {
		if len(it.Value) > MaxTextBytes || !strings.HasPrefix(it.Value, "xxxx") || !strings.Contains(it.Value, "…") {
			t.Fatalf("clipped value %q (%d bytes)", it.Value, len(it.Value))
		}
	}
	roundTrip(t, k, s)
}

// exactQuantiles are the input values of the ranks around q·(n−1)
// (0-based): below and above when it falls between two.
func exactQuantiles(sorted []float64, q float64) (lo, hi float64) {
	r := q * float64(len(sorted)-1)
	return sorted[int(math.Floor(r))], sorted[int(math.Ceil(r))]
}

func checkAnswers(t *testing.T, what string, got any, sorted []float64, qs []float64) {
	t.Helper()
	res, ok := got.(Quantiles)
	if !ok || len(res) != len(qs) {
		t.Fatalf("%s: %#v", what, got)
	}
	for i, q := range qs {
		lo, hi := exactQuantiles(sorted, q)
		within := func(want float64) bool { return math.Abs(res[i].Value-want) <= RelativeAccuracy*math.Abs(want)+1e-12 }
		if res[i].Q != q || !(within(lo) || within(hi)) {
			t.Fatalf("%s: q=%v: %v, exact %v or %v", what, q, res[i].Value, lo, hi)
		}
	}
}

func TestPercentile(t *testing.T) {
	qs := []float64{0, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1}
	k := kind(t, "percentile", Params{Quantiles: qs})
	if got := k.Init().Result(); got != nil {
		t.Fatalf("empty: %v", got)
	}
	r := rand.New(rand.NewPCG(5, 5))
	for name, gen := range map[string]func() float64{
		"latency":  func() float64 { return math.Round(math.Exp(r.NormFloat64()*1.5+3)*10) / 10 },
		"bytes":    func() float64 { return float64(r.IntN(300_000)) },
		"signed":   func() float64 { return r.NormFloat64() * 1000 },
		"constant": func() float64 { return 42 },
	} {
		var inputs []*Input
		var vals []float64
		for range 50_000 {
			v := gen()
			vals = append(vals, v)
			inputs = append(inputs, number(v))
		}
		sort.Float64s(vals)
		one := k.Init()
		for _, in := range inputs {
			if !one.Add(in) {
				t.Fatalf("%s: %v refused", name, in.Num)
			}
		}
		checkAnswers(t, name, one.Result(), vals, qs)
		parts := partition(k, inputs, 24, r)
		merged := mergeAll(k, parts, r.Perm(24))
		checkAnswers(t, name+" merged", merged.Result(), vals, qs)
		// Bin counts add up: merged is exactly the one sketch.
		if a, b := fmt.Sprint(merged.Result()), fmt.Sprint(one.Result()); a != b {
			t.Fatalf("%s: merged %s, one sketch %s", name, a, b)
		}
		back := roundTrip(t, k, one)
		if a, b := fmt.Sprint(back.Result()), fmt.Sprint(one.Result()); a != b {
			t.Fatalf("%s: decoded %s, was %s", name, a, b)
		}
	}
	// Few values are kept as they are: exact answers; merged past the
	// bound, what one state of every value answers.
	var few []*Input
	var fewVals []float64
	for i := range ExactPercentile {
		v := float64((i * 37) % 101)
		few = append(few, number(v))
		fewVals = append(fewVals, v)
	}
	small := k.Init()
	for _, in := range few {
		small.Add(in)
	}
	sort.Float64s(fewVals)
	for i, q := range small.Result().(Quantiles) {
		if want := fewVals[int(math.Floor(qs[i]*float64(len(fewVals)-1)))]; q.Value != want {
			t.Fatalf("exact q=%v: %v, want %v", q.Q, q.Value, want)
		}
	}
	if b := roundTrip(t, k, small).Marshal(nil); b[0] != percentileExact {
		t.Fatalf("a state of %d values is stored as format %d", ExactPercentile, b[0])
	}
	doubled := append(slices.Clone(few), few...)
	one := k.Init()
	for _, in := range doubled {
		one.Add(in)
	}
	parts := partition(k, doubled, 9, r)
	if a, b := fmt.Sprint(mergeAll(k, parts, r.Perm(9)).Result()), fmt.Sprint(one.Result()); a != b {
		t.Fatalf("small parts merged past the bound: %s, one state %s", a, b)
	}
	s := k.Init()
	s.Add(number(2))
	s.Add(number(0))
	b, err := json.Marshal(s.Result())
	if err != nil || !strings.HasPrefix(string(b), `{"0":0,"0.01":0,"0.25":0,"0.5":0,"0.9":`) {
		t.Fatalf("JSON %s %v", b, err)
	}
	if s.Add(number(math.MaxFloat64)) {
		t.Fatal("a value beyond the sketch's range was taken")
	}
}

func TestFirstLast(t *testing.T) {
	first, last := kind(t, "first", Params{}), kind(t, "last", Params{})
	if first.Init().Result() != nil || last.Init().Result() != nil {
		t.Fatal("empty states answer")
	}
	r := rand.New(rand.NewPCG(9, 9))
	type ev struct {
		ts, arrival int64
		v           string
		seq         int
	}
	var evs []ev
	var inputs []*Input
	for i := range 5000 {
		e := ev{ts: int64(r.IntN(50)), arrival: int64(r.IntN(3)), v: fmt.Sprint("v", r.IntN(100)), seq: i}
		evs = append(evs, e)
		inputs = append(inputs, &Input{Str: e.v, TimeMs: e.ts, ArrivalMs: e.arrival})
	}
	// One state: ties on (ts, arrival) by arrival order.
	wantFirst, wantLast := evs[0], evs[0]
	for _, e := range evs[1:] {
		if e.ts < wantFirst.ts || (e.ts == wantFirst.ts && e.arrival < wantFirst.arrival) {
			wantFirst = e
		}
		if e.ts > wantLast.ts || (e.ts == wantLast.ts && e.arrival >= wantLast.arrival) {
			wantLast = e
		}
	}
	f, l := first.Init(), last.Init()
	for _, in := range inputs {
		f.Add(in)
		l.Add(in)
	}
	if f.Result() != wantFirst.v || l.Result() != wantLast.v {
		t.Fatalf("first %v last %v, want %v %v", f.Result(), l.Result(), wantFirst.v, wantLast.v)
	}
	// Merged: between parts, ties go to the smaller (first) or larger
	// (last) value, whatever the order of the merges.
	minOf := func(cmp func(a, b ev) bool) ev {
		best := evs[0]
		for _, e := range evs[1:] {
			if cmp(e, best) {
				best = e
			}
		}
		return best
	}
	mf := minOf(func(a, b ev) bool {
		return a.ts < b.ts || (a.ts == b.ts && (a.arrival < b.arrival || (a.arrival == b.arrival && a.v < b.v)))
	})
	ml := minOf(func(a, b ev) bool {
		return a.ts > b.ts || (a.ts == b.ts && (a.arrival > b.arrival || (a.arrival == b.arrival && a.v > b.v)))
	})
	// One input per part: every tie is between parts.
	for range 3 {
		perm := r.Perm(len(inputs))
		mfs, mls := first.Init(), last.Init()
		for _, i := range perm {
			p := first.Init()
			p.Add(inputs[i])
			mfs.Merge(roundTrip(t, first, p))
			q := last.Init()
			q.Add(inputs[i])
			mls.Merge(q)
		}
		if mfs.Result() != mf.v || mls.Result() != ml.v {
			t.Fatalf("merged first %v last %v, want %v %v", mfs.Result(), mls.Result(), mf.v, ml.v)
		}
	}
	// Numbers stay numbers.
	n := last.Init()
	n.Add(&Input{Str: "12.5", Num: 12.5, IsNum: true, TimeMs: 1})
	if n.Result() != 12.5 {
		t.Fatalf("number: %#v", n.Result())
	}
	if back := roundTrip(t, last, n); back.Result() != 12.5 {
		t.Fatalf("number round trip: %#v", back.Result())
	}
}

// TestUnmarshalRefusesDamage: truncated, extended and unknown encodings
// are errors, never a panic or a state.
func TestUnmarshalRefusesDamage(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	for _, fn := range []string{"count_distinct", "topk", "percentile", "first", "last"} {
		k := kind(t, fn, Params{})
		states := []State{k.Init()}
		for _, n := range []int{5, 1000} {
			s := k.Init()
			for i := range n {
				s.Add(&Input{Str: fmt.Sprint("v", r.IntN(n)), Num: float64(i), IsNum: true, TimeMs: int64(i)})
			}
			states = append(states, s)
		}
		for _, s := range states {
			b := s.Marshal(nil)
			for _, bad := range [][]byte{nil, {}, {99}, b[:len(b)-1], append(slices.Clone(b), 0)} {
				if len(bad) == len(b) && string(bad) == string(b) {
					continue
				}
				if _, err := k.Unmarshal(bad); err == nil {
					t.Errorf("%s: %x (from %d bytes) accepted", fn, bad[:min(len(bad), 16)], len(b))
				}
			}
		}
	}
}

// FuzzUnmarshal: no bytes make a decoder panic; what decodes encodes again
// to what decodes the same, and merges and answers without a panic.
func FuzzUnmarshal(f *testing.F) {
	fns := []string{"count_distinct", "topk", "percentile", "first", "last"}
	r := rand.New(rand.NewPCG(1, 1))
	for i, fn := range fns {
		k := kind(f, fn, Params{})
		for _, n := range []int{0, 3, 300} {
			s := k.Init()
			for j := range n {
				s.Add(&Input{Str: fmt.Sprint(r.IntN(50)), Num: float64(j), IsNum: true, TimeMs: int64(j)})
			}
			f.Add(uint8(i), s.Marshal(nil))
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, b []byte) {
		fn := fns[int(which)%len(fns)]
		k := kind(t, fn, Params{})
		s, err := k.Unmarshal(b)
		if err != nil {
			return
		}
		again, err := k.Unmarshal(s.Marshal(nil))
		if err != nil {
			t.Fatalf("%s: re-encoding does not decode: %v", fn, err)
		}
		m := k.Init()
		m.Merge(s)
		m.Merge(again)
		m.Result()
		s.Add(&Input{Str: "x", Num: 1, IsNum: true})
		s.Result()
	})
}

// TestNumberSlotsAgreeWithResultSlots: every fixed function's unboxed
// value is its result, with or without one, on ordinary, infinite and
// NaN slots.
func TestNumberSlotsAgreeWithResultSlots(t *testing.T) {
	vals := []float64{0, 1, -2.5, 1e300, math.Inf(1), math.Inf(-1), math.NaN()}
	for _, name := range []string{"count", "sum", "min", "max", "avg"} {
		f, ok := Lookup(name)
		if !ok || f.NumberSlots == nil {
			t.Fatalf("%s: no NumberSlots", name)
		}
		for _, a := range vals {
			for _, b := range vals {
				s := []float64{a, b}[:f.Slots]
				v, has := f.NumberSlots(s)
				want := f.ResultSlots(s)
				if got := any(nil); has {
					got = v
					if w, ok := want.(float64); !ok || math.Float64bits(w) != math.Float64bits(v) {
						t.Errorf("%s(%v): number %v, result %v", name, s, got, want)
					}
				} else if want != nil {
					t.Errorf("%s(%v): no number, result %v", name, s, want)
				}
			}
		}
	}
}

// TestSlot0ValueIsNumberSlots: a function that says its value is its
// first slot (Slot0Value) answers NumberSlots with that slot, bit for
// bit, whenever it has a value, over ordinary values and the edges
// (±0, ±Inf, NaN, the extremes); a query relies on it to order cells by
// their slots alone.
func TestSlot0ValueIsNumberSlots(t *testing.T) {
	vals := []float64{0, math.Copysign(0, -1), 1, -1, 0.5, 3e300, -3e300, math.MaxFloat64, -math.MaxFloat64,
		math.SmallestNonzeroFloat64, math.Inf(1), math.Inf(-1), math.NaN()}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		vals = append(vals, math.Float64frombits(rng.Uint64()))
	}
	n := 0
	for name, f := range funcs {
		if !f.Slot0Value {
			continue
		}
		n++
		if f.Slots < 1 || f.NumberSlots == nil {
			t.Fatalf("%s: Slot0Value without slots or NumberSlots", name)
		}
		for _, v := range vals {
			s := make([]float64, f.Slots)
			s[0] = v
			got, ok := f.NumberSlots(s)
			if ok && math.Float64bits(got) != math.Float64bits(v) {
				t.Errorf("%s: NumberSlots(%v) = %v, not its first slot", name, v, got)
			}
		}
	}
	if n < 4 {
		t.Fatalf("%d functions with Slot0Value, want count, sum, min, max", n)
	}
}
