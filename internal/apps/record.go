package apps

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"github.com/valyala/fastjson"
	"github.com/valyala/fastjson/fastfloat"

	"github.com/freeway-dev/freeway/internal/jsonscan"
)

// Value is one field of a record: a string, and a number when the record
// said it is one (JSON numbers) or the literal was one.
type Value struct {
	Str   string
	Num   float64
	IsNum bool
}

// Number returns the value as a number, parsing a string if needed.
func (v Value) Number() (float64, bool) {
	if v.IsNum {
		return v.Num, true
	}
	s := strings.TrimSpace(v.Str)
	if !mayBeNumber(s) {
		// What ParseFloat refuses costs it an allocated error: a filter
		// comparing a text field (key == "probe") would pay one a line.
		return 0, false
	}
	n, err := strconv.ParseFloat(s, 64)
	return n, err == nil
}

// mayBeNumber is false for text strconv.ParseFloat surely refuses:
// anything but an optional sign followed by a digit, a point, or one of
// inf, infinity and nan (any case) whole. Everything it takes is so.
func mayBeNumber(s string) bool {
	if s != "" && (s[0] == '+' || s[0] == '-') {
		s = s[1:]
	}
	if s == "" {
		return false
	}
	if c := s[0]; c >= '0' && c <= '9' || c == '.' {
		return true
	}
	return strings.EqualFold(s, "inf") || strings.EqualFold(s, "infinity") || strings.EqualFold(s, "nan")
}

// String returns the value as a string.
func (v Value) String() string {
	if v.IsNum && v.Str == "" {
		return strconv.FormatFloat(v.Num, 'f', -1, 64)
	}
	return v.Str
}

// Record holds the fields an app reads from one log line, by their index
// in the parse's field list. It is the one form a line takes between its
// parse and the cells it updates: an app's Extractor and Puma's
// aggregates read the fields they use from it where they lie, by index.
// A JSON line read by the field scan is held as the scan left it (each
// field's kind and its place in the line: nothing is copied or
// converted; a number is parsed the first time a line reads it); the other
// parses (regex, TSV, logfmt, the full JSON parse) set Values.
type Record struct {
	names   map[string]int
	vals    []Value
	present []bool
	// scan, when not nil, holds the fields instead of vals and present:
	// the JSON scan's of line (jsonscan.Scanner.Fields), by index.
	scan []jsonscan.Field
	line []byte
	// nums[i] is scan field i's number once parsed (numAt has bit i;
	// numOK too if it parsed): a number several apps or aggregates read
	// is parsed once a line. A scan reads at most 64 fields
	// (jsonscan.MaxFields).
	nums         []float64
	numAt, numOK uint64
	// view: the strings of the fields are views of the line parsed (the
	// JSON scan's, which copies nothing), valid only while the caller
	// leaves the line unchanged. What outlives the line (a text input a
	// state keeps, KeyExtractor's key) is copied from them.
	view bool
}

func newRecord(fields []string) *Record {
	r := &Record{names: map[string]int{}, vals: make([]Value, len(fields)), present: make([]bool, len(fields)), nums: make([]float64, len(fields))}
	for i, f := range fields {
		r.names[f] = i
	}
	return r
}

func (r *Record) reset() {
	r.numAt, r.numOK = 0, 0
	if r.scan != nil {
		r.scan, r.line = nil, nil
	} else {
		clear(r.present)
	}
	r.view = false
}

// index is the position of field name in the record, -1 if it has none.
func (r *Record) index(name string) int {
	if i, ok := r.names[name]; ok {
		return i
	}
	return -1
}

// at returns the field at index i (-1: none), and whether the line had it.
func (r *Record) at(i int) (Value, bool) {
	if i < 0 {
		return Value{}, false
	}
	if r.scan != nil {
		return r.scanned(i)
	}
	if !r.present[i] {
		return Value{}, false
	}
	return r.vals[i], true
}

// scanned is the Value of scan field i: what the full parse gives
// (FuzzJSONScanMatchesFullParse), its text a view of the line.
func (r *Record) scanned(i int) (Value, bool) {
	f := r.scan[i]
	switch f.Kind {
	case jsonscan.String:
		return Value{Str: view(r.line[f.Start:f.End])}, true
	case jsonscan.Number:
		// As parseFull: fastjson's Float64 is fastfloat.Parse of the text.
		s := view(r.line[f.Start:f.End])
		if n, ok := r.scanNumber(i); ok {
			return Value{Str: s, Num: n, IsNum: true}, true
		}
		return Value{Str: s}, true
	case jsonscan.True:
		return Value{Str: "true"}, true
	case jsonscan.False:
		return Value{Str: "false"}, true
	}
	return Value{}, false
}

// has reports whether the line had the field at index i (-1: none).
func (r *Record) has(i int) bool {
	switch {
	case i < 0:
		return false
	case r.scan != nil:
		k := r.scan[i].Kind
		return k == jsonscan.String || k == jsonscan.Number || k == jsonscan.True || k == jsonscan.False
	}
	return r.present[i]
}

// text is the field at index i as a string (Value.String), and whether
// the line had it: a JSON string the scan found is a view of it, with no
// Value made.
func (r *Record) text(i int) (string, bool) {
	if r.scan != nil && i >= 0 {
		if f := r.scan[i]; f.Kind == jsonscan.String {
			return view(r.line[f.Start:f.End]), true
		}
	}
	v, ok := r.at(i)
	return v.String(), ok
}

// number is the field at index i read as a number (Value.Number), and
// whether the line had it: a JSON number the scan found is parsed where
// it lies, with no Value made.
func (r *Record) number(i int) (n float64, present, ok bool) {
	if n, ok := r.scanNumber(i); ok {
		return n, true, true
	}
	v, present := r.at(i)
	if !present {
		return 0, false, false
	}
	n, ok = v.Number()
	return n, true, ok
}

// scanNumber is the field at index i if the scan found a JSON number
// there that parses (Value.Number's answer for it); false for anything
// else.
func (r *Record) scanNumber(i int) (float64, bool) {
	if r.scan == nil || i < 0 {
		return 0, false
	}
	bit := uint64(1) << uint(i)
	if r.numAt&bit != 0 {
		return r.nums[i], r.numOK&bit != 0
	}
	f := r.scan[i]
	if f.Kind != jsonscan.Number {
		return 0, false
	}
	r.numAt |= bit
	n, err := parseNumber(view(r.line[f.Start:f.End]))
	if err != nil {
		return 0, false
	}
	r.numOK |= bit
	r.nums[i] = n
	return n, true
}

func (r *Record) set(i int, v Value) {
	r.vals[i] = v
	r.present[i] = true
}

// Get returns field name, and whether the line had it. Its text may be a
// view of the line (see Record.view): valid while the line is unchanged.
func (r *Record) Get(name string) (Value, bool) {
	i, ok := r.names[name]
	if !ok {
		return Value{}, false
	}
	return r.at(i)
}

// ErrParse wraps every error about a line that does not fit its format.
var ErrParse = errors.New("cannot parse record")

// parser fills a record's fields from a line. Not safe for concurrent use.
type parser interface {
	parse(line []byte, r *Record) error
}

// newParser returns a parser of fields in s's format. scan: a JSON line
// is read by the field-only scan (jsonscan) where it can, by the full
// parse (fastjson) where it cannot; without it always by the full parse
// (the writer's key reader, which scans first itself, and the tests that
// compare the two).
func newParser(s *Spec, fields []string, scan bool) (parser, error) {
	switch s.Format {
	case "json":
		p := &jsonParser{paths: make([][]string, len(fields)), order: make([]int, len(fields))}
		for i, f := range fields {
			p.paths[i] = strings.Split(f, ".")
			p.order[i] = i
		}
		slices.SortStableFunc(p.order, func(a, b int) int { return len(p.paths[a]) - len(p.paths[b]) })
		if scan {
			p.scan = jsonscan.New(fields)
		}
		return p, nil
	case "regex":
		re, err := regexp.Compile(s.Pattern)
		if err != nil {
			return nil, err
		}
		p := &regexParser{re: re, group: make([]int, len(fields))}
		for i, f := range fields {
			p.group[i] = re.SubexpIndex(f)
		}
		return p, nil
	case "tsv":
		p := &tsvParser{sep: []byte(s.Separator), col: make([]int, len(fields))}
		for i, f := range fields {
			p.col[i] = -1
			for j, name := range s.Fields {
				if name == f {
					p.col[i] = j
				}
			}
		}
		return p, nil
	case "logfmt":
		return &logfmtParser{}, nil
	}
	return nil, fmt.Errorf("unknown format %q", s.Format)
}

type jsonParser struct {
	p     fastjson.Parser
	paths [][]string
	// order: the paths, fewest steps first. fastjson unescapes an
	// object's keys and a string in place when they are read, and then
	// writes them escaped its own way (Go's quoting) where it writes an
	// object or array read whole: a field read whole is written before
	// any field inside it is read, so that its text does not depend on
	// which other fields a parse reads (an app's own, or its category's).
	order []int
	scan  *jsonscan.Scanner // nil: the full parse only
}

// parse reads the fields by the scan, which gives exactly what the full
// parse below gives (FuzzJSONScanMatchesFullParse); a line the scan
// refuses or cannot read alone goes to the full parse, so that a bad
// line gets the full parse's error, word for word.
func (p *jsonParser) parse(line []byte, r *Record) error {
	if p.scan == nil || p.scan.Scan(line) != jsonscan.OK {
		return p.parseFull(line, r)
	}
	// The record holds the scan's fields as they are (Record.scan).
	r.view, r.scan, r.line = true, p.scan.Fields(), line
	return nil
}

// parseNumber is fastfloat.Parse (fastjson's Float64), with the usual
// number of a log line first: an integer of at most 15 digits, which a
// float64 holds exactly (below 2^53), so that its value is the integer's
// whichever way it is read (FuzzParseNumber holds the two equal).
func parseNumber(s string) (float64, error) {
	digits := s
	if len(s) > 0 && s[0] == '-' {
		digits = s[1:]
	}
	if len(digits) == 0 || len(digits) > 15 {
		return fastfloat.Parse(s)
	}
	var n uint64
	i := 0
	if len(digits) >= 8 {
		// Eight digits at once (a millisecond time has 13): a byte of
		// bad is not zero where the byte is no digit (0x30-0x39), as in
		// jsonscan; then the pairs, fours and eight are summed by
		// multiplication (Lemire's SWAR parse).
		_ = digits[7]
		v := uint64(digits[0]) | uint64(digits[1])<<8 | uint64(digits[2])<<16 | uint64(digits[3])<<24 |
			uint64(digits[4])<<32 | uint64(digits[5])<<40 | uint64(digits[6])<<48 | uint64(digits[7])<<56
		if bad := (v&0xF0F0F0F0F0F0F0F0 ^ 0x3030303030303030) | ((v+0x0606060606060606)&0xF0F0F0F0F0F0F0F0 ^ 0x3030303030303030); bad != 0 {
			return fastfloat.Parse(s)
		}
		v -= 0x3030303030303030
		v = v*10 + v>>8
		n = ((v&0x000000FF000000FF)*(100+1000000<<32) + (v>>16&0x000000FF000000FF)*(1+10000<<32)) >> 32
		i = 8
	}
	for ; i < len(digits); i++ {
		d := digits[i] - '0'
		if d > 9 {
			return fastfloat.Parse(s)
		}
		n = n*10 + uint64(d)
	}
	if len(digits) < len(s) {
		return -float64(n), nil
	}
	return float64(n), nil
}

// view is b as a string without a copy: valid while b is unchanged (a
// Record's view).
func view(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// parseFull reads the fields from fastjson's parse of the whole line.
func (p *jsonParser) parseFull(line []byte, r *Record) error {
	v, err := p.p.ParseBytes(line)
	if err != nil {
		return fmt.Errorf("%w: json: %w", ErrParse, err)
	}
	if v.Type() != fastjson.TypeObject {
		return fmt.Errorf("%w: json: a line must be an object, not %s", ErrParse, v.Type())
	}
	for _, i := range p.order {
		f := v.Get(p.paths[i]...)
		if f == nil {
			continue
		}
		switch f.Type() {
		case fastjson.TypeString:
			b, _ := f.StringBytes()
			r.set(i, Value{Str: string(b)})
		case fastjson.TypeNumber:
			// fastjson takes any run of digits, dots, signs and exponents
			// for a number (1.2.3, --1): such a value is text, so that a
			// numeric aggregate counts it as a bad value, not as 0.
			raw := string(f.MarshalTo(nil))
			if n, err := f.Float64(); err == nil {
				r.set(i, Value{Str: raw, Num: n, IsNum: true})
			} else {
				r.set(i, Value{Str: raw})
			}
		case fastjson.TypeTrue:
			r.set(i, Value{Str: "true"})
		case fastjson.TypeFalse:
			r.set(i, Value{Str: "false"})
		case fastjson.TypeNull:
		default:
			r.set(i, Value{Str: string(f.MarshalTo(nil))})
		}
	}
	return nil
}

type regexParser struct {
	re    *regexp.Regexp
	group []int
}

func (p *regexParser) parse(line []byte, r *Record) error {
	m := p.re.FindSubmatchIndex(line)
	if m == nil {
		return fmt.Errorf("%w: the line does not match the pattern", ErrParse)
	}
	for i, g := range p.group {
		if g < 0 || m[2*g] < 0 {
			continue
		}
		r.set(i, Value{Str: string(line[m[2*g]:m[2*g+1]])})
	}
	return nil
}

type tsvParser struct {
	sep []byte
	col []int
}

func (p *tsvParser) parse(line []byte, r *Record) error {
	line = bytes.TrimRight(line, "\r\n")
	cols := bytes.Split(line, p.sep)
	for i, c := range p.col {
		if c >= 0 && c < len(cols) {
			r.set(i, Value{Str: string(cols[c])})
		}
	}
	return nil
}

// logfmtParser reads key=value pairs separated by spaces; values may be
// double-quoted with backslash escapes; a bare key means "true".
type logfmtParser struct{}

func (logfmtParser) parse(line []byte, r *Record) error {
	s := string(line)
	i := 0
	for i < len(s) {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n') {
			i++
		}
		start := i
		for i < len(s) && s[i] != '=' && s[i] != ' ' && s[i] != '\t' {
			i++
		}
		key := s[start:i]
		if key == "" {
			if i < len(s) {
				return fmt.Errorf("%w: logfmt: a value without a key at byte %d", ErrParse, i)
			}
			break
		}
		val := "true"
		if i < len(s) && s[i] == '=' {
			i++
			if i < len(s) && s[i] == '"' {
				var b strings.Builder
				i++
				for i < len(s) && s[i] != '"' {
					if s[i] == '\\' && i+1 < len(s) {
						i++
					}
					b.WriteByte(s[i])
					i++
				}
				if i >= len(s) {
					return fmt.Errorf("%w: logfmt: unterminated quoted value of %s", ErrParse, key)
				}
				i++
				val = b.String()
			} else {
				vs := i
				for i < len(s) && s[i] != ' ' && s[i] != '\t' {
					i++
				}
				val = s[vs:i]
			}
		}
		if idx, ok := r.names[key]; ok {
			r.set(idx, Value{Str: val})
		}
	}
	return nil
}
