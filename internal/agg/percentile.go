package agg

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"

	"github.com/DataDog/sketches-go/ddsketch"
	"github.com/DataDog/sketches-go/ddsketch/mapping"
	"github.com/DataDog/sketches-go/ddsketch/store"
)

// RelativeAccuracy is percentile's guarantee: an answer is within this
// fraction of the true quantile's value.
const RelativeAccuracy = 0.01

// MaxPercentileBins bounds the bins of each sign of a percentile sketch:
// with 1% accuracy, 2048 bins span values from x to x·1.0202^2048 ≈
// x·5·10^17 before the lowest collapse.
const MaxPercentileBins = 2048

// Quantile is one answer of a percentile: the value at quantile Q.
type Quantile struct {
	Q     float64
	Value float64
}

// Quantiles is a percentile's answer, in the order the quantiles were
// asked. In JSON it is an object keyed by quantile: {"0.5": 12, "0.99": 80}.
type Quantiles []Quantile

// MarshalJSON writes the object in the order asked; a value that is not
// a finite number (none is expected) is null.
func (qs Quantiles) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, q := range qs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Quote(QuantileKey(q.Q)))
		b.WriteByte(':')
		if math.IsNaN(q.Value) || math.IsInf(q.Value, 0) {
			b.WriteString("null")
			continue
		}
		v, err := json.Marshal(q.Value)
		if err != nil {
			return nil, err
		}
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// Encodings of a percentile state (the format byte).
const (
	// percentileSketch: the logarithmic mapping of RelativeAccuracy and
	// collapsing-lowest stores of MaxPercentileBins are implied by it.
	percentileSketch = 1
	// percentileExact: uvarint n, then the n values (8 bytes each).
	percentileExact = 2
)

// ExactPercentile is how many values a percentile keeps as they are
// (answering exactly) before it turns to a sketch: most cells of a fine
// group key see few values, and a sketch's bins take hundreds of bytes.
const ExactPercentile = 32

type percentileKind struct {
	quantiles []float64
	mapping   mapping.IndexMapping
}

func newPercentileKind(qs []float64) *percentileKind {
	m, err := mapping.NewLogarithmicMapping(RelativeAccuracy)
	if err != nil {
		panic(err) // a constant accuracy the library accepts
	}
	return &percentileKind{quantiles: qs, mapping: m}
}

func (k *percentileKind) Init() State { return &percentile{kind: k} }

func (k *percentileKind) newSketch() *ddsketch.DDSketch {
	return ddsketch.NewDDSketch(k.mapping, store.NewCollapsingLowestDenseStore(MaxPercentileBins), store.NewCollapsingLowestDenseStore(MaxPercentileBins))
}

// MaxBytes: the zero count, and per sign at most MaxPercentileBins bins of
// an index delta (the first up to 10 bytes, then under 2048: 2 bytes) and
// a count (a whole number under 2^53: 8 bytes).
func (k *percentileKind) MaxBytes() int {
	return 1 + binary.MaxVarintLen64 + 2*(binary.MaxVarintLen64+binary.MaxVarintLen64+MaxPercentileBins*(2+8))
}

// trackable is v as the sketch would keep it: 0 for values too close to
// zero, false for values beyond its range.
func (k *percentileKind) trackable(v float64) (float64, bool) {
	a := math.Abs(v)
	switch {
	case math.IsNaN(v) || a > k.mapping.MaxIndexableValue():
		return 0, false
	case a <= k.mapping.MinIndexableValue():
		return 0, true
	}
	return v, true
}

// Encoding: format byte, uvarint zero count, then the positive and the
// negative store, each a uvarint bin count n and n bins (varint index,
// then uvarint delta to the previous index, and a uvarint count).
func (k *percentileKind) Unmarshal(b []byte) (State, error) {
	r := &reader{b: b}
	p := &percentile{kind: k}
	switch f := r.byte(); {
	case r.err != nil:
		return nil, fmt.Errorf("percentile: %w", r.err)
	case f == percentileExact:
		n := r.count(ExactPercentile, 8)
		p.exact = make([]float64, 0, n)
		for range n {
			v := r.float()
			if t, ok := k.trackable(v); (!ok || t != v) && r.err == nil {
				r.fail("value %v out of range", v)
			}
			p.exact = append(p.exact, v)
		}
		if err := r.done(); err != nil {
			return nil, fmt.Errorf("percentile: %w", err)
		}
		return p, nil
	case f != percentileSketch:
		return nil, fmt.Errorf("percentile: %w: unknown format %d", errDamaged, f)
	}
	zero := r.uvarint()
	stores := [2]store.Store{}
	for i := range stores {
		st := store.NewCollapsingLowestDenseStore(MaxPercentileBins)
		n := r.count(MaxPercentileBins, 2)
		var index int64
		for j := range n {
			if j == 0 {
				index = r.varint()
			} else {
				d := r.uvarint()
				if (d == 0 || d >= MaxPercentileBins) && r.err == nil {
					r.fail("bins out of order")
				}
				index += int64(d)
			}
			c := r.uvarint()
			if (c == 0 || c > 1<<53 || index < math.MinInt32 || index > math.MaxInt32) && r.err == nil {
				r.fail("bad bin %d: %d", index, c)
			}
			if r.err == nil {
				st.AddWithCount(int(index), float64(c))
			}
		}
		stores[i] = st
	}
	if err := r.done(); err != nil {
		return nil, fmt.Errorf("percentile: %w", err)
	}
	if zero == 0 && stores[0].IsEmpty() && stores[1].IsEmpty() {
		return p, nil
	}
	p.sk = ddsketch.NewDDSketch(k.mapping, stores[0], stores[1])
	if zero > 0 {
		if err := p.sk.AddWithCount(0, float64(zero)); err != nil {
			return nil, fmt.Errorf("percentile: %w: %w", errDamaged, err)
		}
	}
	return p, nil
}

// percentile keeps its values as they are while there are at most
// ExactPercentile of them, then a DDSketch holding the same values: the
// sketch one would have got by adding every value to it from the start
// (a sketch does not depend on the order of its values).
type percentile struct {
	kind  *percentileKind
	exact []float64 // while sk is nil
	sk    *ddsketch.DDSketch
}

func (p *percentile) Add(in *Input) bool {
	v, ok := p.kind.trackable(in.Num)
	if !ok {
		return false
	}
	if p.sk == nil && len(p.exact) < ExactPercentile {
		p.exact = append(p.exact, v)
		return true
	}
	p.toSketch()
	return p.sk.Add(v) == nil
}

func (p *percentile) toSketch() {
	if p.sk != nil {
		return
	}
	p.sk = p.kind.newSketch()
	for _, v := range p.exact {
		p.sk.Add(v) //nolint:errcheck // trackable values
	}
	p.exact = nil
}

func (p *percentile) Merge(src State) {
	o := src.(*percentile)
	if o.sk == nil {
		if p.sk == nil && len(p.exact)+len(o.exact) <= ExactPercentile {
			p.exact = append(p.exact, o.exact...)
			return
		}
		p.toSketch()
		for _, v := range o.exact {
			p.sk.Add(v) //nolint:errcheck // trackable values
		}
		return
	}
	p.toSketch()
	if err := p.sk.MergeWith(o.sk); err != nil {
		panic(err) // both use the kind's mapping
	}
}

func (p *percentile) Marshal(b []byte) []byte {
	if p.sk == nil {
		b = append(b, percentileExact)
		b = binary.AppendUvarint(b, uint64(len(p.exact)))
		for _, v := range p.exact {
			b = appendFloat(b, v)
		}
		return b
	}
	b = append(b, percentileSketch)
	b = binary.AppendUvarint(b, uint64(p.sk.GetZeroCount()))
	for _, st := range []store.Store{p.sk.GetPositiveValueStore(), p.sk.GetNegativeValueStore()} {
		n := 0
		st.ForEach(func(int, float64) bool { n++; return false })
		b = binary.AppendUvarint(b, uint64(n))
		first, prev := true, 0
		st.ForEach(func(index int, count float64) bool {
			if first {
				b = binary.AppendVarint(b, int64(index))
				first = false
			} else {
				b = binary.AppendUvarint(b, uint64(index-prev))
			}
			prev = index
			b = binary.AppendUvarint(b, uint64(count))
			return false
		})
	}
	return b
}

// Result is the value at each quantile asked, or nil with no input. Of
// values kept as they are, the value at quantile q is the one of rank
// ⌊q·(n−1)⌋ (0-based, ascending).
func (p *percentile) Result() any {
	out := make(Quantiles, len(p.kind.quantiles))
	if p.sk == nil {
		if len(p.exact) == 0 {
			return nil
		}
		sorted := slices.Clone(p.exact)
		slices.Sort(sorted)
		for i, q := range p.kind.quantiles {
			out[i] = Quantile{Q: q, Value: sorted[int(math.Floor(q*float64(len(sorted)-1)))]}
		}
		return out
	}
	if p.sk.IsEmpty() {
		return nil
	}
	for i, q := range p.kind.quantiles {
		v, err := p.sk.GetValueAtQuantile(q)
		if err != nil {
			v = math.NaN()
		}
		out[i] = Quantile{Q: q, Value: v}
	}
	return out
}
