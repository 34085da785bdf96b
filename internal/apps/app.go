package apps

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/freeway-dev/freeway/internal/agg"
	"github.com/freeway-dev/freeway/internal/ratelog"
)

// App is a validated, compiled app.
type App struct {
	Spec Spec
	// WindowsMs are the app's window lengths in ms, shortest first;
	// WindowMs is the shortest.
	WindowsMs []int64
	// WindowMs, LatenessMs and RetentionMs are the spec's durations in ms.
	WindowMs, LatenessMs, RetentionMs int64
	Aggs                              []Agg
	where                             expr
	whereForm                         string // WhereForm
	fields                            []string
	timeField                         string
	timeParse                         timeReader

	// MaxFutureMs is the spec's max_future in ms.
	MaxFutureMs int64
}

// Agg is one compiled aggregate.
type Agg struct {
	Name  string
	Fn    *Fn
	Field string
	// Params are its parameters, defaults applied.
	Params agg.Params
}

// Compile validates s (with defaults applied) and compiles it. path is its
// YAML path for errors.
func Compile(s Spec, path string) (*App, error) {
	s.SetDefaults()
	if err := s.Validate(path); err != nil {
		return nil, err
	}
	a := &App{
		Spec:        s,
		LatenessMs:  s.AllowedLateness.D().Milliseconds(),
		RetentionMs: s.Retention.D().Milliseconds(),
		MaxFutureMs: s.MaxFuture.D().Milliseconds(),
	}
	for _, w := range s.WindowList() {
		a.WindowsMs = append(a.WindowsMs, w.D().Milliseconds())
	}
	a.WindowMs = a.WindowsMs[0]
	for _, ref := range s.fieldRefs() {
		if !slices.Contains(a.fields, ref.name) {
			a.fields = append(a.fields, ref.name)
		}
	}
	if s.Where != "" {
		a.where, _ = parseWhere(s.Where)
		if a.where != nil {
			a.whereForm = whereForm(a.where)
		}
	}
	if s.Time != nil {
		a.timeField = s.Time.Field
		parse, _ := newTimeParser(s.Time.Layout)
		a.timeParse = timeReader{field: s.Time.Field, scale: unixScale[s.Time.Layout], parse: parse}
	}
	for _, as := range s.Aggregates {
		fn, _ := LookupFn(as.Fn)
		a.Aggs = append(a.Aggs, Agg{Name: as.Name, Fn: fn, Field: as.Field, Params: as.Params()})
	}
	return a, nil
}

// Name is the app's name.
func (a *App) Name() string { return a.Spec.Name }

// WindowStart is the start (ms) of the shortest window holding event time
// t (ms).
func (a *App) WindowStart(t int64) int64 { return WindowStart(t, a.WindowMs) }

// WindowStart is the start (ms) of the window of length size (ms) holding
// t (ms): windows are aligned on multiples of their length since the Unix
// epoch, so a window of a multiple of size is made of whole windows of
// size.
func WindowStart(t, size int64) int64 {
	w := t - t%size
	if t < 0 && t%size != 0 {
		w -= size
	}
	return w
}

// Input is what one record gives one aggregate.
type Input struct {
	Value   Value
	Present bool
}

// Extracted is what an app takes from one line: its event time and group
// key, and its aggregates' inputs read from the line's Record where they
// lie (Number, Present, Input), not copied out of it per line.
type Extracted struct {
	TimeMs int64
	// Key is the group key: the group_by values, encoded by EncodeKey.
	// It is a view of the line (one group_by field without a NUL) or the
	// extractor's buffer, valid like the inputs: a table looks its cell
	// up by these bytes and copies them only for a cell it adds, so that
	// a line of an existing cell allocates nothing.
	Key []byte
	rec *Record
	// at[i] is aggregate i's field in rec (-1: none), kind[i] what it
	// takes from it.
	at   []int
	kind []inputKind
	// kept[i] is aggregate i's text copied for this line (Input) when
	// keptAt[i] == line: the spans of an app of several window lengths
	// share one copy. line counts the extractor's lines.
	kept   []string
	keptAt []uint64
	line   uint64
}

// Present reports whether aggregate i has an input in the line: always
// for one without a field (count), else whether the line has its field.
func (e *Extracted) Present(i int) bool {
	return e.kind[i] == inputNone || e.rec.has(e.at[i])
}

// Number is aggregate i's input as a number (Value.Number), and whether
// the line has it; a JSON number is parsed where it lies in the line.
func (e *Extracted) Number(i int) (n float64, present, ok bool) {
	// A number read already this line (Record.nums): no call. The field
	// of an input without one (-1) shifts to no bit.
	if at := e.at[i]; e.rec.numOK&(1<<uint(at)) != 0 {
		return e.rec.nums[at], true, true
	}
	return e.number(i)
}

func (e *Extracted) number(i int) (n float64, present, ok bool) {
	if e.kind[i] == inputNone {
		return 0, true, false
	}
	return e.rec.number(e.at[i])
}

// Input is aggregate i's input, and whether the line has it. Its text
// outlives the line (a copy where the record's strings are views of it),
// for a state that keeps it; the input of a numeric aggregate that is a
// number carries the number alone (Str ""): its text is never read.
func (e *Extracted) Input(i int) (Value, bool) {
	kind := e.kind[i]
	if kind == inputNone {
		return Value{}, true
	}
	v, ok := e.rec.at(e.at[i])
	switch {
	case !ok:
	case v.IsNum && kind == inputNumeric:
		v.Str = ""
	case !e.rec.view:
	case e.keptAt[i] == e.line:
		v.Str = e.kept[i]
	default:
		v.Str = strings.Clone(v.Str)
		e.kept[i], e.keptAt[i] = v.Str, e.line
	}
	return v, ok
}

// Inputs are the inputs of every aggregate (Input), in a new slice.
func (e *Extracted) Inputs() []Input {
	in := make([]Input, len(e.at))
	for i := range in {
		in[i].Value, in[i].Present = e.Input(i)
	}
	return in
}

// InputsOf is the extraction of a line at time timeMs, key key, whose
// aggregates take in (in their order), as an Extractor would give it: for
// callers that have the inputs already (tests, benchmarks).
func InputsOf(timeMs int64, key []byte, in []Input) *Extracted {
	e := &Extracted{TimeMs: timeMs, Key: key, rec: &Record{vals: make([]Value, len(in)), present: make([]bool, len(in))},
		at: make([]int, len(in)), kind: make([]inputKind, len(in)), kept: make([]string, len(in)), keptAt: make([]uint64, len(in)), line: 1}
	for i, x := range in {
		e.rec.vals[i], e.rec.present[i] = x.Value, x.Present
		e.at[i], e.kind[i] = i, inputText
	}
	return e
}

// Why a line yields nothing for an app.
var (
	// ErrFiltered: the where filter rejected the line (not an error to log).
	ErrFiltered = errors.New("filtered out by where")
	// ErrBadTime: the time field is missing, does not fit the layout, or
	// is not a time after 1970 that fits in int64 ms; or the record has
	// no time field and no arrival time.
	ErrBadTime = errors.New("bad event time")
)

// Extractor pulls an app's fields out of lines. Not safe for concurrent
// use: each goroutine makes its own.
type Extractor struct {
	app    *App
	parser parser
	rec    *Record
	out    Extracted
	keyBuf []byte
	// Where the app's fields are in the record last read (its own, or a
	// shared parser's), found by name once per record, not once per line.
	from    *Record
	timeAt  int
	groupAt []int
	where   expr // the app's filter, bound to from's fields
}

// inputKind is what an aggregate takes from a record.
type inputKind uint8

const (
	inputNone    inputKind = iota // no field (count): the line's presence
	inputNumeric                  // a number: its text is not read
	inputText                     // the value, text and all
)

// NewExtractor returns an extractor for a.
func (a *App) NewExtractor() *Extractor {
	p, err := newParser(&a.Spec, a.fields, true)
	if err != nil {
		panic(fmt.Sprintf("compiled app %s has an invalid parser: %v", a.Name(), err))
	}
	x := &Extractor{app: a, parser: p, rec: newRecord(a.fields), out: Extracted{at: make([]int, len(a.Aggs)), kind: make([]inputKind, len(a.Aggs)), kept: make([]string, len(a.Aggs)), keptAt: make([]uint64, len(a.Aggs))},
		keyBuf: make([]byte, 0, 64), groupAt: make([]int, len(a.Spec.GroupBy))}
	for i, ag := range a.Aggs {
		switch {
		case ag.Field == "":
			x.out.kind[i] = inputNone
		case ag.Fn.Numeric:
			x.out.kind[i] = inputNumeric
		default:
			x.out.kind[i] = inputText
		}
	}
	return x
}

// Extract parses line for the app. arrivalMs is the event time of apps
// without a time field. The result is valid until the next call, and
// while line is unchanged. Errors: ErrParse, ErrFiltered, ErrBadTime
// (wrapped).
func (x *Extractor) Extract(line []byte, arrivalMs int64) (*Extracted, error) {
	x.rec.reset()
	if err := x.parser.parse(line, x.rec); err != nil {
		return nil, err
	}
	return x.ExtractRecord(x.rec, arrivalMs)
}

// locate finds the app's fields in rec.
func (x *Extractor) locate(rec *Record) {
	a := x.app
	x.from, x.out.rec = rec, rec
	if a.where != nil {
		x.where = a.where.bind(rec)
	}
	x.timeAt = -1
	if a.timeField != "" {
		x.timeAt = rec.index(a.timeField)
	}
	for i, g := range a.Spec.GroupBy {
		x.groupAt[i] = rec.index(g)
	}
	for i, ag := range a.Aggs {
		x.out.at[i] = -1
		if ag.Field != "" {
			x.out.at[i] = rec.index(ag.Field)
		}
	}
}

// ExtractRecord is Extract from a record a SharedParser of the app's
// group parsed: the app's own fields are read from it by index.
//
// What it returns reads the record: it is valid until the next call, and
// while the record and its line are unchanged (the record's strings may
// be views of the line). The key is a view of the line or the
// extractor's buffer; an input whose text a state keeps is copied
// (Extracted.Input).
func (x *Extractor) ExtractRecord(rec *Record, arrivalMs int64) (*Extracted, error) {
	a := x.app
	x.out.line++ // a new line: no text of it kept yet
	if rec != x.from {
		x.locate(rec)
	}
	if x.where != nil && !x.where.eval(rec) {
		return nil, ErrFiltered
	}
	out := &x.out
	out.TimeMs = arrivalMs
	if a.timeField == "" && arrivalMs <= 0 {
		return nil, fmt.Errorf("%w: no arrival time (%d)", ErrBadTime, arrivalMs)
	}
	if a.timeField != "" {
		t, err := a.timeParse.read(rec, x.timeAt)
		if err != nil {
			return nil, err
		}
		out.TimeMs = t
	}
	if len(x.groupAt) == 1 {
		// One group_by field without a NUL is its own key (EncodeKey):
		// a view of it, not a copy.
		if s, _ := rec.text(x.groupAt[0]); s != "" && strings.IndexByte(s, 0) < 0 {
			out.Key = unsafe.Slice(unsafe.StringData(s), len(s))
			return out, nil
		}
	}
	x.keyBuf = appendRecordKey(x.keyBuf[:0], rec, x.groupAt)
	out.Key = x.keyBuf
	return out, nil
}

// recordKey is the encoded key of the fields of rec at indexes at (a
// missing field counts as ""), as EncodeKey of their strings, built in
// buf (returned for the next call): a string of its own only where the
// key is not one of the record's strings that outlives the line.
func recordKey(rec *Record, at []int, buf []byte) (string, []byte) {
	if len(at) == 1 && !rec.view {
		v, _ := rec.at(at[0])
		if s := v.String(); strings.IndexByte(s, 0) < 0 {
			return s, buf
		}
	}
	buf = appendRecordKey(buf[:0], rec, at)
	return string(buf), buf
}

// appendRecordKey appends the encoded key of the fields of rec at
// indexes at (a missing field counts as ""), as EncodeKey of their
// strings, to dst.
func appendRecordKey(dst []byte, rec *Record, at []int) []byte {
	for i, j := range at {
		if i > 0 {
			dst = append(dst, 0)
		}
		v, _ := rec.at(j)
		dst = appendKeyValue(dst, v.String())
	}
	return dst
}

// appendKeyValue appends v with every NUL as U+FFFD (EncodeKey).
func appendKeyValue(dst []byte, v string) []byte {
	for {
		n := strings.IndexByte(v, 0)
		if n < 0 {
			return append(dst, v...)
		}
		dst = append(dst, v[:n]...)
		dst = append(dst, "\uFFFD"...)
		v = v[n+1:]
	}
}

// KeyExtractor pulls a shard key out of lines in an app's format, by the
// full parse of a JSON line (the writer's key reader scans it itself
// first, and gives it only the lines the scan leaves to it). Not safe for
// concurrent use.
type KeyExtractor struct {
	parser parser
	rec    *Record
	at     []int
	buf    []byte
}

// NewKeyExtractor returns an extractor of fields, read in a's format.
func (a *App) NewKeyExtractor(fields []string) *KeyExtractor {
	p, err := newParser(&a.Spec, fields, false)
	if err != nil {
		panic(fmt.Sprintf("compiled app %s has an invalid parser: %v", a.Name(), err))
	}
	x := &KeyExtractor{parser: p, rec: newRecord(fields), at: make([]int, len(fields))}
	for i, f := range fields {
		x.at[i] = x.rec.index(f)
	}
	return x
}

// Key returns the encoded values of the fields for line, or ErrParse.
// Missing fields count as "".
func (x *KeyExtractor) Key(line []byte) (string, error) {
	x.rec.reset()
	if err := x.parser.parse(line, x.rec); err != nil {
		return "", err
	}
	var key string
	key, x.buf = recordKey(x.rec, x.at, x.buf)
	return key, nil
}

// EncodeKey joins group key values with NUL; a NUL inside a value
// becomes U+FFFD so that the encoding splits back unambiguously.
func EncodeKey(vals []string) string {
	switch len(vals) {
	case 0:
		return ""
	case 1:
		if !strings.Contains(vals[0], "\x00") {
			return vals[0]
		}
	}
	var b strings.Builder
	for i, v := range vals {
		if i > 0 {
			b.WriteByte(0)
		}
		b.WriteString(strings.ReplaceAll(v, "\x00", "\uFFFD"))
	}
	return b.String()
}

// DecodeKey splits an encoded key of n values.
func DecodeKey(key string, n int) []string {
	if n == 0 {
		return nil
	}
	return strings.SplitN(key, "\x00", n)
}

// timeReader reads an app's event time from a record.
type timeReader struct {
	field string
	// scale is the ms of the layout's unit for a unix layout, 0 for
	// others; parse is newTimeParser's for the layout.
	scale float64
	parse func(Value) (int64, error)
}

// unixScale is the ms of a unix layout's unit.
var unixScale = map[string]float64{"unix": 1000, "unix_ms": 1, "unix_us": 1e-3, "unix_ns": 1e-6}

// read returns the time of the field at index at of rec, or ErrBadTime
// (wrapped). A JSON number the scan found, of a unix layout, that is a
// time in range is parsed where it lies (Record.scanNumber), without a
// Value; anything else, and every error, is parse's.
func (p timeReader) read(rec *Record, at int) (int64, error) {
	if p.scale != 0 {
		// What parse gives for a number in range (NaN and ±Inf fail both
		// tests).
		if n, ok := rec.scanNumber(at); ok {
			if ms := n * p.scale; ms >= 1 && ms < math.MaxInt64 {
				return int64(ms), nil
			}
		}
	}
	v, ok := rec.at(at)
	if !ok {
		return 0, fmt.Errorf("%w: no field %q", ErrBadTime, p.field)
	}
	t, err := p.parse(v)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrBadTime, err)
	}
	return t, nil
}

// newTimeParser returns a parser of event times (ms) for a layout. Times
// at or before 1970-01-01T00:00:00Z are refused (a zero or negative value
// is a missing or broken clock, not an event), and so are NaN, infinities
// and numbers whose ms do not fit in int64 (a conversion would wrap).
func newTimeParser(layout string) (func(Value) (int64, error), error) {
	unix := func(scale float64) func(Value) (int64, error) {
		return func(v Value) (int64, error) {
			n, ok := v.Number()
			if !ok || math.IsNaN(n) || math.IsInf(n, 0) {
				return 0, fmt.Errorf("%q is not a number", ratelog.Clip(v.String()))
			}
			ms := n * scale
			switch {
			case ms >= math.MaxInt64: // 2^63: the first float64 past the int64 range
				return 0, fmt.Errorf("%s does not fit in int64 ms", ratelog.Clip(v.String()))
			case ms < 1:
				return 0, fmt.Errorf("%s is not after 1970-01-01T00:00:00Z", ratelog.Clip(v.String()))
			}
			return int64(ms), nil
		}
	}
	switch layout {
	case "unix":
		return unix(1000), nil
	case "unix_ms":
		return unix(1), nil
	case "unix_us":
		return unix(1e-3), nil
	case "unix_ns":
		return unix(1e-6), nil
	case "", "rfc3339":
		layout = time.RFC3339Nano
	}
	// A Go layout must format the reference time back to something it can
	// parse; a layout without any time element is a typo.
	ref := time.Date(2011, 3, 7, 8, 9, 10, 0, time.UTC)
	back, err := time.Parse(layout, ref.Format(layout))
	if err != nil || ref.Format(layout) == layout {
		return nil, fmt.Errorf("%q is not a time layout (use unix, unix_ms, unix_us, unix_ns, rfc3339 or a Go layout like \"02/Jan/2006:15:04:05 -0700\")", layout)
	}
	// Without a year every time reads as year 0, before 1970: every
	// line would be a bad time.
	if back.Year() != ref.Year() {
		return nil, fmt.Errorf("time layout %q has no year (2006 or 06): its times would fall in year 0 and every line would be refused", layout)
	}
	return func(v Value) (int64, error) {
		if v.IsNum && v.Str == "" {
			return 0, fmt.Errorf("number %v for layout %q", v.Num, layout)
		}
		t, err := time.Parse(layout, v.Str)
		if err != nil {
			return 0, fmt.Errorf("%q does not fit layout %q", ratelog.Clip(v.Str), layout)
		}
		if ms := t.UnixMilli(); ms >= 1 {
			return ms, nil
		}
		return 0, fmt.Errorf("%q is not after 1970-01-01T00:00:00Z", ratelog.Clip(v.Str))
	}, nil
}

// CheckFields reports whether fields can be read from lines in a's format
// (named groups of a regex, columns of a tsv; anything in json and logfmt).
func (a *App) CheckFields(fields []string) error {
	var known []string
	switch a.Spec.Format {
	case "regex":
		known = namedGroups(regexp.MustCompile(a.Spec.Pattern))
	case "tsv":
		known = a.Spec.Fields
	default:
		return nil
	}
	for _, f := range fields {
		if !slices.Contains(known, f) {
			return fmt.Errorf("field %q cannot be read in format %s of app %s (fields: %s)", f, a.Spec.Format, a.Name(), strings.Join(known, ", "))
		}
	}
	return nil
}
