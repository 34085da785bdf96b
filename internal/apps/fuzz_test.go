package apps

import (
	"errors"
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/valyala/fastjson/fastfloat"
)

// fuzzApps are apps of every format, reading the same fields (a time, two
// group keys, a number), so that one fuzzed line goes through each
// parser.
func fuzzApps(t testing.TB) []*App {
	t.Helper()
	aggs := []AggregateSpec{{Fn: "count"}, {Fn: "sum", Field: "n"}, {Fn: "max", Field: "n"}}
	specs := []Spec{
		{Name: "j", Category: "c", Format: "json", Time: &TimeSpec{Field: "ts", Layout: "unix"},
			GroupBy: []string{"k", "u.v"}, Aggregates: aggs},
		{Name: "jr", Category: "c", Format: "json", Time: &TimeSpec{Field: "ts"},
			GroupBy: []string{"k"}, ShardKey: []string{"u.v"}, Aggregates: aggs},
		{Name: "r", Category: "c", Format: "regex", Pattern: accessPattern,
			Time:    &TimeSpec{Field: "ts", Layout: "02/Jan/2006:15:04:05 -0700"},
			GroupBy: []string{"status", "method"}, Aggregates: []AggregateSpec{{Fn: "count"}, {Fn: "sum", Field: "bytes"}}},
		{Name: "t", Category: "c", Format: "tsv", Fields: []string{"ts", "k", "n", "v"},
			Time: &TimeSpec{Field: "ts", Layout: "unix_ms"}, GroupBy: []string{"k", "v"}, Aggregates: aggs},
		{Name: "t2", Category: "c", Format: "tsv", Separator: "::", Fields: []string{"k", "n", "ts"},
			Time: &TimeSpec{Field: "ts", Layout: "unix_ns"}, GroupBy: []string{"k"}, Aggregates: aggs},
		{Name: "l", Category: "c", Format: "logfmt", Time: &TimeSpec{Field: "ts", Layout: "unix_us"},
			GroupBy: []string{"k", "v"}, Aggregates: aggs},
		{Name: "la", Category: "c", Format: "logfmt", GroupBy: []string{"k"}, Aggregates: aggs},
	}
	var out []*App
	for _, s := range specs {
		a, err := Compile(s, "$.apps[0]")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

// extraction is an Extracted copied to the last byte of its strings:
// what it says outlives the extractor's next call and the line.
type extraction struct {
	TimeMs int64
	Key    []byte
	Inputs []Input
}

// snapshot copies an extraction (valid only until the next call, and
// while the line is unchanged: the key may be a view of the line or the
// extractor's buffer, the inputs read the record).
func snapshot(e *Extracted) extraction {
	in := e.Inputs()
	for i := range in {
		in[i].Value.Str = strings.Clone(in[i].Value.Str)
	}
	return extraction{TimeMs: e.TimeMs, Key: []byte(string(e.Key)), Inputs: in}
}

// FuzzExtract feeds a line to an app of every format. Whatever the line:
// nothing panics; an error is ErrParse, ErrFiltered or ErrBadTime; an
// event time is a moment after 1970 in int64 ms (or the arrival time); the
// key splits back into one value per group_by field and encodes to
// itself, and is what the key extractor calligraphus routes by gives; a
// number says the same as its text; and an extractor that read another
// line first gives the same answer as a fresh one.
func FuzzExtract(f *testing.F) {
	for _, s := range extractSeeds {
		f.Add([]byte(s), int64(1700000000000))
	}
	f.Add([]byte(`{"ts": 1, "k": "a"}`), int64(0))
	f.Add([]byte(`k=a ts=1`), int64(-5))
	apps := fuzzApps(f)
	other := []byte(`{"ts": 1700000000, "k": "other", "n": 7, "u": {"v": "w"}}` + "\tother\t7\tw k=other n=7 v=w")
	f.Fuzz(func(t *testing.T, line []byte, arrival int64) {
		for _, a := range apps {
			x := a.NewExtractor()
			e, err := x.Extract(line, arrival)
			if err != nil {
				if !errors.Is(err, ErrParse) && !errors.Is(err, ErrBadTime) && !errors.Is(err, ErrFiltered) {
					t.Fatalf("app %s: error %v is none of ErrParse, ErrBadTime, ErrFiltered", a.Name(), err)
				}
			} else {
				checkExtracted(t, a, line, arrival, e)
			}
			var got extraction
			if e != nil {
				got = snapshot(e)
			}
			// The same extractor, after another line, says the same.
			_, _ = x.Extract(other, arrival) // only its effect on the next call matters
			e2, err2 := x.Extract(line, arrival)
			if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) {
				t.Fatalf("app %s: %v, then after another line %v", a.Name(), err, err2)
			}
			if e2 != nil && !reflect.DeepEqual(got, snapshot(e2)) {
				t.Fatalf("app %s: %+v, then after another line %+v", a.Name(), got, snapshot(e2))
			}
		}
	})
}

func checkExtracted(t *testing.T, a *App, line []byte, arrival int64, e *Extracted) {
	t.Helper()
	if a.timeField == "" {
		if e.TimeMs != arrival {
			t.Fatalf("app %s: time %d, want the arrival time %d", a.Name(), e.TimeMs, arrival)
		}
	}
	if e.TimeMs < 1 {
		t.Fatalf("app %s: event time %d ms is not after 1970", a.Name(), e.TimeMs)
	}
	n := len(a.Spec.GroupBy)
	vals := DecodeKey(string(e.Key), n)
	if len(vals) != n {
		t.Fatalf("app %s: key %q splits into %d values, want %d", a.Name(), e.Key, len(vals), n)
	}
	if EncodeKey(vals) != string(e.Key) {
		t.Fatalf("app %s: key %q splits into %q, which encodes to %q", a.Name(), e.Key, vals, EncodeKey(vals))
	}
	if k, err := a.NewKeyExtractor(a.Spec.GroupBy).Key(line); err != nil || k != string(e.Key) {
		t.Fatalf("app %s: key extractor says %q, %v; the extractor %q", a.Name(), k, err, e.Key)
	}
	for i, in := range e.Inputs() {
		if in.Present && in.Value.IsNum {
			checkNumber(t, a.Name()+"."+a.Aggs[i].Name, in.Value)
		}
	}
}

// checkNumber: a value that says it is a number is the number its text
// reads as.
func checkNumber(t *testing.T, what string, v Value) {
	t.Helper()
	if v.Str == "" {
		return
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(v.Str), 64)
	if err != nil {
		// Out of range reads as ±Inf with an error; anything else is no
		// number at all.
		var ne *strconv.NumError
		if !errors.As(err, &ne) || ne.Err != strconv.ErrRange {
			t.Fatalf("%s: %q is a number %v, but its text is no number (%v)", what, v.Str, v.Num, err)
		}
	}
	if n != v.Num && !(math.IsNaN(n) && math.IsNaN(v.Num)) {
		t.Fatalf("%s: %q is the number %v, its text reads %v", what, v.Str, v.Num, n)
	}
}

var extractSeeds = []string{
	`{"ts": 1700000061.5, "k": "a", "n": 12.5, "u": {"v": "x\u0000y"}}`,
	`{"ts": "2024-05-06T07:08:09.123Z", "k": 1e3, "n": "7", "u": {"v": null}}`,
	`{"ts": 1e400, "k": "a"}`,
	`{"ts": 1700000000, "n": 1.2.3}`,
	`{"ts": NaN, "n": -Inf}`,
	`{"ts": 9223372036854775807, "n": 1}`,
	`83.149.9.216 - - [17/May/2015:10:05:03 +0000] "GET /a HTTP/1.1" 200 203023 "-" "Mozilla/5.0"`,
	`1.2.3.4 - - [31/Dec/1969:23:59:59 +0000] "GET / HTTP/1.1" 500 -`,
	"1700000000000\ta\t3.5\tb\r\n",
	"a::2::1700000000000000000",
	`ts=1700000000000000 k=a v="q \"x\" \\ y" n=5 flag`,
	`k="unterminated`,
	`=v`,
	"",
}

// FuzzLogfmtRoundTrip writes key=value pairs as logfmt, quoting values
// with backslash escapes, and reads them back: every value comes back
// exactly.
func FuzzLogfmtRoundTrip(f *testing.F) {
	f.Add("a", "1", "b", "two words", "c", `q"uote\`)
	f.Add("k", "", "v", "=", "w", "\t\n")
	f.Add("x.y", "ünï", "_", `\\`, "z-1", `""`)
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2, k3, v3 string) {
		keys, vals := []string{k1, k2, k3}, []string{v1, v2, v3}
		seen := map[string]bool{}
		var line strings.Builder
		for i, k := range keys {
			if k == "" || strings.ContainsAny(k, "= \t\r\n\"") || seen[k] {
				return
			}
			seen[k] = true
			if i > 0 {
				line.WriteByte(' ')
			}
			line.WriteString(k)
			line.WriteString(`="`)
			line.WriteString(strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(vals[i]))
			line.WriteByte('"')
		}
		r := newRecord(keys)
		if err := (logfmtParser{}).parse([]byte(line.String()), r); err != nil {
			t.Fatalf("%q: %v", line.String(), err)
		}
		for i, k := range keys {
			v, ok := r.Get(k)
			if !ok || v.Str != vals[i] {
				t.Fatalf("%q: %s is %q (present %v), want %q", line.String(), k, v.Str, ok, vals[i])
			}
		}
	})
}

// FuzzKey: a group key splits back into the values it was made of (a NUL
// inside one reads back as U+FFFD).
func FuzzKey(f *testing.F) {
	f.Add("a", "b", "c", 3)
	f.Add("", "", "", 1)
	f.Add("x\x00y", "\x00", "", 2)
	f.Add("\uFFFD", "a|b", "\xff", 0)
	f.Fuzz(func(t *testing.T, a, b, c string, n int) {
		vals := []string{a, b, c}[:uint(n)%4]
		key := EncodeKey(vals)
		got := DecodeKey(key, len(vals))
		want := make([]string, len(vals))
		for i, v := range vals {
			want[i] = strings.ReplaceAll(v, "\x00", "\uFFFD")
		}
		if len(vals) == 0 {
			want = nil
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q encodes to %q, which decodes to %q", vals, key, got)
		}
	})
}

// timeLayouts are every kind of time layout an app may declare.
var timeLayouts = []string{"unix", "unix_ms", "unix_us", "unix_ns", "rfc3339", "",
	"02/Jan/2006:15:04:05 -0700", "2006-01-02 15:04:05", "Mon Jan _2 15:04:05 2006", "20060102T150405Z0700", "06-1-2 3:4:5.000 PM"}

// FuzzEventTime parses a value with every layout: nothing panics, and an
// event time accepted is a moment after 1970 that fits in int64 ms, the
// one its text names.
func FuzzEventTime(f *testing.F) {
	for _, s := range []string{"1700000000", "1700000000.5", "0", "-1", "NaN", "+Inf", "1e400", "9.3e15", "9223372036854775807",
		"2024-05-06T07:08:09.123456789+02:00", "1970-01-01T00:00:00Z", "1969-12-31T23:59:59.999Z", "0001-01-01T00:00:00Z",
		"9999-12-31T23:59:59Z", "17/May/2015:10:05:03 +0000", " 17 ", "0x1p30", "1_000"} {
		f.Add(s, false, 0.0)
	}
	f.Add("", true, 1.7e9)
	f.Add("", true, math.Inf(1))
	f.Add("", true, 9.3e18)
	f.Add("", true, 5e-324)
	parsers := map[string]func(Value) (int64, error){}
	for _, l := range timeLayouts {
		p, err := newTimeParser(l)
		if err != nil {
			f.Fatalf("layout %q: %v", l, err)
		}
		parsers[l] = p
	}
	f.Fuzz(func(t *testing.T, s string, isNum bool, num float64) {
		v := Value{Str: s}
		if isNum {
			v = Value{Num: num, IsNum: true}
		}
		for _, l := range timeLayouts {
			ms, err := parsers[l](v)
			if err != nil {
				continue
			}
			if ms < 1 {
				t.Fatalf("layout %q: %+v is %d ms, not after 1970", l, v, ms)
			}
			switch l {
			case "unix", "unix_ms", "unix_us", "unix_ns":
				n, _ := v.Number()
				scale := map[string]float64{"unix": 1000, "unix_ms": 1, "unix_us": 1e-3, "unix_ns": 1e-6}[l]
				if want := n * scale; math.Abs(float64(ms)-want) > 1+math.Abs(want)*1e-15 {
					t.Fatalf("layout %q: %+v is %d ms, want %v", l, v, ms, want)
				}
			default:
				layout := l
				if l == "" || l == "rfc3339" {
					layout = time.RFC3339Nano
				}
				tm, err := time.Parse(layout, v.Str)
				if err != nil || tm.UnixMilli() != ms {
					t.Fatalf("layout %q: %q is %d ms, time.Parse says %v (%v)", l, v.Str, ms, tm, err)
				}
			}
		}
	})
}

// FuzzTimeLayout: a layout that validation accepts can name a moment
// after 1970 (the reference time it was checked with), so that an app's
// every line does not end up with a bad time.
func FuzzTimeLayout(f *testing.F) {
	for _, l := range timeLayouts {
		f.Add(l)
	}
	for _, l := range []string{"Jan _2 15:04:05", "15:04", "2006", "Monday", "x", "01/02 03:04:05PM '06 -0700", ".000", "__2 2006"} {
		f.Add(l)
	}
	ref := time.Date(2011, 3, 7, 8, 9, 10, 0, time.UTC)
	f.Fuzz(func(t *testing.T, layout string) {
		p, err := newTimeParser(layout)
		if err != nil {
			return
		}
		switch layout {
		case "unix", "unix_ms", "unix_us", "unix_ns":
			return
		case "", "rfc3339":
			layout = time.RFC3339Nano
		}
		if _, err := p(Value{Str: ref.Format(layout)}); err != nil {
			t.Fatalf("layout %q is accepted, but the reference time %s written in it (%q) is refused: %v", layout, ref, ref.Format(layout), err)
		}
	})
}

// printWhere writes e back as a where expression, fully parenthesized,
// with literals in a form the lexer reads back to the same value.
func printWhere(e expr) string {
	switch e := e.(type) {
	case andExpr:
		return "(" + printWhere(e.l) + " and " + printWhere(e.r) + ")"
	case orExpr:
		return "(" + printWhere(e.l) + " or " + printWhere(e.r) + ")"
	case notExpr:
		return "not " + printWhere(e.e)
	case truthExpr:
		return e.f.field
	case cmpExpr:
		return printOperand(e.l) + " " + e.op + " " + printOperand(e.r)
	}
	panic("unknown expression")
}

func printOperand(o operand) string {
	switch {
	case o.field != "":
		return o.field
	case o.lit.IsNum:
		return o.lit.Str
	default:
		return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(o.lit.Str) + `"`
	}
}

// FuzzWhere parses an arbitrary where expression. Nothing panics; an
// expression that parses prints back to one that parses to the same tree;
// the fields it names are what the app reads; and evaluating it on a
// record is deterministic and the same from a fresh extractor.
func FuzzWhere(f *testing.F) {
	for _, s := range []string{
		`status >= 500 and (method == "GET" or method == 'HEAD') and not bot`,
		`a = b or a <> 1.5e3 and not not c`,
		`x < -1 or x > .5 or x <= "a\"b\\" or x != 'it''s'`,
		`((((a))))`, `not`, `a ==`, `1 == 1`, `"s"`, `a === b`, `a !! b`, `(a`, `a)`, `a b`,
		`AND`, `x == 1e`, `x == -`, `é == "é"`, "a\u00a0== b", "𠠠", `a.b-c_d == x`, `x == 0x10`,
	} {
		f.Add(s, []byte(`status=503 method=GET bot=0 a=1 b=1.0 c=true x="a\"b" é=é`))
	}
	f.Fuzz(func(t *testing.T, where string, line []byte) {
		e, err := parseWhere(where)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "column ") {
				t.Fatalf("%q: error %q does not say the column", where, err)
			}
			return
		}
		printed := printWhere(e)
		e2, err := parseWhere(printed)
		if err != nil {
			t.Fatalf("%q prints as %q, which does not parse: %v", where, printed, err)
		}
		if !reflect.DeepEqual(e, e2) {
			t.Fatalf("%q prints as %q, which parses to %#v, not %#v", where, printed, e2, e)
		}
		fields := e.fields(nil)
		for _, fl := range fields {
			if fl == "" {
				t.Fatalf("%q names an empty field", where)
			}
			if utf8.ValidString(where) && !utf8.ValidString(fl) {
				t.Fatalf("%q names the field %q, cut inside a character", where, fl)
			}
		}
		a, err := Compile(Spec{Name: "w", Category: "c", Format: "logfmt", Where: where, Aggregates: []AggregateSpec{{Fn: "count"}}}, "$")
		if err != nil {
			t.Fatalf("%q parses but the app does not compile: %v", where, err)
		}
		rec := newRecord(a.fields)
		if err := (logfmtParser{}).parse(line, rec); err != nil {
			return
		}
		got := e.eval(rec)
		if e2.eval(rec) != got || e.eval(rec) != got {
			t.Fatalf("%q on %q: not deterministic", where, line)
		}
		// Bound to the fields' indexes, of this record or of one that
		// lays them out another way, it says the same as by name.
		layout := []string{"not.a.field"}
		for i := len(a.fields) - 1; i >= 0; i-- {
			layout = append(layout, a.fields[i])
		}
		other := newRecord(layout)
		if err := (logfmtParser{}).parse(line, other); err != nil {
			t.Fatal(err)
		}
		if e.bind(rec).eval(rec) != got || e.bind(other).eval(other) != got {
			t.Fatalf("%q on %q: %v by name, %v and %v bound", where, line, got, e.bind(rec).eval(rec), e.bind(other).eval(other))
		}
		_, xerr := a.NewExtractor().Extract(line, 1)
		if errors.Is(xerr, ErrFiltered) == got {
			t.Fatalf("%q on %q: evaluates to %v, the extractor says %v", where, line, got, xerr)
		}
	})
}

// FuzzWhereCompare compares three values every way a where expression can
// and checks that the comparisons form an order: exactly one of <, ==, >
// holds; each agrees with its mirror and its negation; and == is an
// equivalence (what equals one value equals what it equals).
func FuzzWhereCompare(f *testing.F) {
	f.Add("1", "1.0", "01")
	f.Add("10", "9", "a")
	f.Add("", " 1", "1 ")
	f.Add("1e3", "1000", "0x3E8")
	f.Add("-0", "0", "+0")
	f.Add("Inf", "+inf", "1e400")
	f.Add("true", "false", "0")
	f.Add("NaN", "1", "2")
	ops := []string{"<", "<=", "==", "!=", ">", ">="}
	f.Fuzz(func(t *testing.T, x, y, z string) {
		vals := map[string]string{"x": x, "y": y, "z": z}
		rec := newRecord([]string{"x", "y", "z"})
		for _, name := range []string{"x", "y", "z"} {
			rec.set(rec.names[name], Value{Str: vals[name]})
		}
		cmp := map[string]bool{}
		for _, a := range []string{"x", "y", "z"} {
			for _, b := range []string{"x", "y", "z"} {
				for _, op := range ops {
					e, err := parseWhere(a + " " + op + " " + b)
					if err != nil {
						t.Fatal(err)
					}
					cmp[a+op+b] = e.eval(rec)
				}
			}
		}
		for _, a := range []string{"x", "y", "z"} {
			if !cmp[a+"=="+a] {
				t.Fatalf("%q == %q is false", vals[a], vals[a])
			}
			for _, b := range []string{"x", "y", "z"} {
				lt, eq, gt := cmp[a+"<"+b], cmp[a+"=="+b], cmp[a+">"+b]
				if n := btoi(lt) + btoi(eq) + btoi(gt); n != 1 {
					t.Fatalf("%q vs %q: < %v, == %v, > %v", vals[a], vals[b], lt, eq, gt)
				}
				if lt != cmp[b+">"+a] || eq != cmp[b+"=="+a] || cmp[a+"!="+b] == eq ||
					cmp[a+"<="+b] != (lt || eq) || cmp[a+">="+b] != (gt || eq) {
					t.Fatalf("%q vs %q: the comparisons disagree: %v", vals[a], vals[b], cmp)
				}
				for _, c := range []string{"x", "y", "z"} {
					if cmp[a+"=="+b] && cmp[b+"=="+c] && !cmp[a+"=="+c] {
						t.Fatalf("%q == %q and %q == %q, but not %q == %q", vals[a], vals[b], vals[b], vals[c], vals[a], vals[c])
					}
				}
			}
		}
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// FuzzParseNumber: the integer fast path of parseNumber gives exactly
// fastfloat.Parse's value (to the bit: -0 too) and error, on any text.
func FuzzParseNumber(f *testing.F) {
	for _, s := range []string{"0", "-0", "42", "-42", "1764583200000", "999999999999999", "-999999999999999",
		"9999999999999999", "007", "-", "", "1.5", "1e3", "--1", "+1", "12a", "inf", "-nan", "18446744073709551616"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, gotErr := parseNumber(s)
		want, wantErr := fastfloat.Parse(s)
		if (gotErr == nil) != (wantErr == nil) || gotErr == nil && math.Float64bits(got) != math.Float64bits(want) && !(math.IsNaN(got) && math.IsNaN(want)) {
			t.Fatalf("%q: parseNumber %v (%v), fastfloat.Parse %v (%v)", s, got, gotErr, want, wantErr)
		}
	})
}

// FuzzNumber: a text value is a number exactly when strconv.ParseFloat
// takes it (spaces around trimmed), and the same number to the bit:
// Value.Number's shortcut for text ParseFloat refuses refuses nothing it
// takes.
func FuzzNumber(f *testing.F) {
	for _, s := range []string{"", " ", "0", " -1.5 ", "+2", ".5", "5.", "1e3", "0x1p-2", "0x_1p0", "_1", "1_0",
		"inf", "-Inf", "+INFINITY", "nan", "NaN", "-nan", "Infinity", "infx", "k123", "probe", "null", "true", "\t7\n", "\u00a08"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, ok := Value{Str: s}.Number()
		want, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if ok != (err == nil) || ok && math.Float64bits(got) != math.Float64bits(want) && !(math.IsNaN(got) && math.IsNaN(want)) {
			t.Fatalf("%q: Number %v, %v; ParseFloat %v, %v", s, got, ok, want, err)
		}
	})
}
