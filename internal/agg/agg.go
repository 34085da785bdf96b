package agg

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/cespare/xxhash/v2"
)

// Input is what one record gives one aggregate.
type Input struct {
	// Num is the value as a number: set for numeric functions (always a
	// finite number there), and for a value the record said is a number.
	Num float64
	// Str is the value's text (non-numeric functions).
	Str string
	// IsNum: the record said the value is a number (a JSON number).
	IsNum bool
	// TimeMs is the record's event time, ArrivalMs its block's arrival
	// time (first and last order by them).
	TimeMs, ArrivalMs int64
}

// Params are an aggregate's parameters, as written in YAML.
type Params struct {
	// K: topk, how many values to answer (default 10).
	K int `yaml:"k"`
	// Quantiles: percentile, the quantiles to answer (default 0.5, 0.9,
	// 0.99).
	Quantiles []float64 `yaml:"quantiles"`
}

// Defaults and bounds of the parameters.
const (
	DefaultK = 10
	MaxK     = 100
	// MaxQuantiles bounds the quantiles of one percentile.
	MaxQuantiles = 32
)

// DefaultQuantiles are percentile's quantiles when none are given.
func DefaultQuantiles() []float64 { return []float64{0.5, 0.9, 0.99} }

// MaxCellBytes bounds the encoded states of one cell (Kind.MaxBytes summed
// over an app's aggregates): a cell is one row of a checkpoint, which must
// fit in one request to the store (the HBase Thrift2 gateway drops frames
// over 2 MB), and 256 of them, one scan batch, under the HBase client's
// 64 MiB frame.
const MaxCellBytes = 256 << 10

// MaxTextBytes bounds the text a state keeps of one value (topk, first,
// last): longer values are clipped.
const MaxTextBytes = 256

// State is the variable-size state of one aggregate in one cell. A state
// is not safe for concurrent use, except that Merge, Marshal and Size only
// read their source and argument: a query may merge a cell that other
// queries read at the same time.
type State interface {
	// Add feeds one input; false: the input cannot be aggregated (a number
	// out of the sketch's range), and nothing changed.
	Add(in *Input) bool
	// Merge adds src, a state of the same Kind, without keeping any
	// reference to it.
	Merge(src State)
	// Marshal appends the state's encoding to b.
	Marshal(b []byte) []byte
	// Result is the answer: a float64, a string, Quantiles, []TopItem, or
	// nil when there is none. It may reorganise the state (not its
	// answers), so it is only called on states the caller owns.
	Result() any
}

// Kind is a variable-state aggregate function with its parameters: it makes
// and decodes states.
type Kind interface {
	// Init returns an empty state.
	Init() State
	// Unmarshal decodes a state Marshal encoded. Damaged bytes are an
	// error, never a panic.
	Unmarshal(b []byte) (State, error)
	// MaxBytes bounds the encoding of a state.
	MaxBytes() int
}

// Func is one aggregate function of the registry.
type Func struct {
	Name string
	// NeedsField: the function aggregates a field's values.
	NeedsField bool
	// Numeric: the field's values must be numbers (others are counted as
	// bad values and skipped).
	Numeric bool

	// Slots > 0: a fixed-state function, kept in that many float64 slots
	// of a cell (the fast path): InitSlots, AddSlots, MergeSlots and
	// ResultSlots are its operations; a cell stores slots as 8 bytes each.
	Slots       int
	InitSlots   func(s []float64)
	AddSlots    func(s []float64, v float64)
	MergeSlots  func(dst, src []float64)
	ResultSlots func(s []float64) any // a float64, or nil: no value
	// NumberSlots is ResultSlots without boxing the value (ok false:
	// no value), for a query that orders a million cells by it.
	NumberSlots func(s []float64) (v float64, ok bool)
	// Slot0Value: NumberSlots(s) is (s[0], ok) for every s, the value
	// (when there is one) the first slot itself, so that a query ordering
	// a million cells compares their slots without calling NumberSlots.
	Slot0Value bool

	// params lists the parameters the function takes; check validates
	// them with defaults applied and returns the field (relative YAML
	// path, "k") of an error; kind makes the Kind (variable state only);
	// shape is the part of the parameters that changes the state's shape
	// ("" if none).
	params []string
	check  func(p Params) (field string, err error)
	kind   func(p Params) Kind
	shape  func(p Params) string
}

// Fixed reports whether the function keeps fixed float slots.
func (f *Func) Fixed() bool { return f.Slots > 0 }

// New returns the Kind of a variable-state function for p (with defaults
// applied and checked by Check).
func (f *Func) New(p Params) Kind {
	if f.kind == nil {
		panic("agg: " + f.Name + " keeps fixed slots, not a variable state")
	}
	return f.kind(p)
}

// Defaults fills the parameters p leaves out.
func (f *Func) Defaults(p *Params) {
	if slices.Contains(f.params, "k") && p.K == 0 {
		p.K = DefaultK
	}
	if slices.Contains(f.params, "quantiles") && p.Quantiles == nil {
		p.Quantiles = DefaultQuantiles()
	}
}

// Check validates p (with defaults applied). On error, field names the
// parameter at fault ("k", "quantiles").
func (f *Func) Check(p Params) (field string, err error) {
	if p.K != 0 && !slices.Contains(f.params, "k") {
		return "k", fmt.Errorf("k is only for topk, not %s", f.Name)
	}
	if p.Quantiles != nil && !slices.Contains(f.params, "quantiles") {
		return "quantiles", fmt.Errorf("quantiles are only for percentile, not %s", f.Name)
	}
	if f.check == nil {
		return "", nil
	}
	return f.check(p)
}

// Shape is the part of p that changes the shape of the state (what a
// stored state must have been made with to be read back): "" for most.
func (f *Func) Shape(p Params) string {
	if f.shape == nil {
		return ""
	}
	return f.shape(p)
}

var funcs = map[string]*Func{
	"count": {
		Name:        "count",
		Slots:       1,
		InitSlots:   func(s []float64) {},
		AddSlots:    func(s []float64, _ float64) { s[0]++ },
		MergeSlots:  func(d, s []float64) { d[0] += s[0] },
		ResultSlots: func(s []float64) any { return s[0] },
		NumberSlots: func(s []float64) (float64, bool) { return s[0], true },
		Slot0Value:  true,
	},
	"sum": {
		Name: "sum", NeedsField: true, Numeric: true,
		Slots:       1,
		InitSlots:   func(s []float64) {},
		AddSlots:    func(s []float64, v float64) { s[0] += v },
		MergeSlots:  func(d, s []float64) { d[0] += s[0] },
		ResultSlots: func(s []float64) any { return finite(s[0]) },
		NumberSlots: func(s []float64) (float64, bool) { return finiteNumber(s[0]) },
		Slot0Value:  true,
	},
	"min": {
		Name: "min", NeedsField: true, Numeric: true,
		Slots:       1,
		InitSlots:   func(s []float64) { s[0] = math.Inf(1) },
		AddSlots:    func(s []float64, v float64) { s[0] = math.Min(s[0], v) },
		MergeSlots:  func(d, s []float64) { d[0] = math.Min(d[0], s[0]) },
		ResultSlots: func(s []float64) any { return finite(s[0]) },
		NumberSlots: func(s []float64) (float64, bool) { return finiteNumber(s[0]) },
		Slot0Value:  true,
	},
	"max": {
		Name: "max", NeedsField: true, Numeric: true,
		Slots:       1,
		InitSlots:   func(s []float64) { s[0] = math.Inf(-1) },
		AddSlots:    func(s []float64, v float64) { s[0] = math.Max(s[0], v) },
		MergeSlots:  func(d, s []float64) { d[0] = math.Max(d[0], s[0]) },
		ResultSlots: func(s []float64) any { return finite(s[0]) },
		NumberSlots: func(s []float64) (float64, bool) { return finiteNumber(s[0]) },
		Slot0Value:  true,
	},
	"avg": {
		Name: "avg", NeedsField: true, Numeric: true,
		Slots:      2,
		InitSlots:  func(s []float64) {},
		AddSlots:   func(s []float64, v float64) { s[0] += v; s[1]++ },
		MergeSlots: func(d, s []float64) { d[0] += s[0]; d[1] += s[1] },
		ResultSlots: func(s []float64) any {
			if s[1] == 0 {
				return nil
			}
			return finite(s[0] / s[1])
		},
		NumberSlots: func(s []float64) (float64, bool) {
			if s[1] == 0 {
				return 0, false
			}
			return finiteNumber(s[0] / s[1])
		},
	},
	"count_distinct": {
		Name: "count_distinct", NeedsField: true,
		kind: func(Params) Kind { return distinctKind{} },
	},
	"topk": {
		Name: "topk", NeedsField: true,
		params: []string{"k"},
		check: func(p Params) (string, error) {
			if p.K < 1 || p.K > MaxK {
				return "k", fmt.Errorf("k must be between 1 and %d", MaxK)
			}
			return "", nil
		},
		kind:  func(p Params) Kind { return newTopKind(p.K) },
		shape: func(p Params) string { return "k=" + strconv.Itoa(p.K) },
	},
	"percentile": {
		Name: "percentile", NeedsField: true, Numeric: true,
		params: []string{"quantiles"},
		check:  checkQuantiles,
		kind:   func(p Params) Kind { return newPercentileKind(p.Quantiles) },
		// The quantiles asked change the answer, not the sketch: a
		// changed list reads the stored sketches.
	},
	"first": {
		Name: "first", NeedsField: true,
		kind: func(Params) Kind { return edgeKind{last: false} },
	},
	"last": {
		Name: "last", NeedsField: true,
		kind: func(Params) Kind { return edgeKind{last: true} },
	},
}

func checkQuantiles(p Params) (string, error) {
	if len(p.Quantiles) == 0 {
		return "quantiles", errors.New("quantiles must list at least one quantile")
	}
	if len(p.Quantiles) > MaxQuantiles {
		return "quantiles", fmt.Errorf("at most %d quantiles", MaxQuantiles)
	}
	seen := map[string]bool{}
	for _, q := range p.Quantiles {
		if !(q >= 0 && q <= 1) {
			return "quantiles", fmt.Errorf("quantile %v is not between 0 and 1", q)
		}
		k := QuantileKey(q)
		if seen[k] {
			return "quantiles", fmt.Errorf("quantile %s is listed twice", k)
		}
		seen[k] = true
	}
	return "", nil
}

// Lookup returns the function called name.
func Lookup(name string) (*Func, bool) {
	f, ok := funcs[name]
	return f, ok
}

// Names lists the functions, sorted.
func Names() []string {
	names := make([]string, 0, len(funcs))
	for n := range funcs {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// ParamNames lists the parameters f takes.
func (f *Func) ParamNames() []string { return slices.Clone(f.params) }

func finiteNumber(v float64) (float64, bool) {
	return v, !math.IsInf(v, 0) && !math.IsNaN(v)
}

func finite(v float64) any {
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return nil
	}
	return v
}

// QuantileKey is how a quantile names its answer: "0.5", "0.99", "1".
func QuantileKey(q float64) string { return strconv.FormatFloat(q, 'f', -1, 64) }

// TopValue is how topk answers value s: s, or when longer than
// MaxTextBytes its start, "…" and a hash of the whole value (so that long
// values that share a prefix stay apart).
func TopValue(s string) string {
	return clip(s, func(s string) string { return strconv.FormatUint(xxhash.Sum64String(s), 16) })
}

// EdgeValue is how first and last answer text s: s, or when longer than
// MaxTextBytes its start and "…".
func EdgeValue(s string) string { return clip(s, nil) }

// clip returns s, or its first MaxTextBytes bytes (cut at a rune start)
// followed by "…" when longer, with tag appended after the mark.
func clip(s string, tag func(string) string) string {
	if len(s) <= MaxTextBytes {
		return s
	}
	cut := MaxTextBytes - 24 // room for the mark and a tag
	for cut > 0 && !runeStart(s[cut]) {
		cut--
	}
	var b strings.Builder
	b.WriteString(s[:cut])
	b.WriteString("…")
	if tag != nil {
		b.WriteString(tag(s))
	}
	return b.String()
}

func runeStart(c byte) bool { return c&0xC0 != 0x80 }
