package apps

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
)

// scanApps are JSON apps of one category that read fields every way an
// app reads them: event times by every kind of layout, group keys of one
// and several fields (nested, array indices, a field another one goes
// through), where filters on strings and numbers, numeric and text
// aggregates, a shard key, and no time field (arrival time).
func scanApps(t testing.TB) []*App {
	t.Helper()
	specs := []Spec{
		{Name: "a", Category: "c", Format: "json", Time: &TimeSpec{Field: "ts", Layout: "unix"},
			GroupBy: []string{"user"}, Aggregates: []AggregateSpec{{Fn: "count"}, {Fn: "sum", Field: "bytes"}, {Fn: "max", Field: "bytes"}}},
		{Name: "b", Category: "c", Format: "json", Time: &TimeSpec{Field: "ts", Layout: "unix_ms"},
			GroupBy: []string{"req.path", "status"}, Where: `status >= 500 or user == "u1"`,
			Aggregates: []AggregateSpec{{Fn: "avg", Field: "req.ms"}, {Fn: "first", Field: "user"}}},
		{Name: "d", Category: "c", Format: "json", GroupBy: []string{"tags.0", "req"},
			Aggregates: []AggregateSpec{{Fn: "count_distinct", Field: "user"}, {Fn: "topk", Field: "status"}, {Fn: "last", Field: "bytes"}}},
		{Name: "e", Category: "c", Format: "json", Time: &TimeSpec{Field: "t.at"},
			GroupBy: []string{"user", "ok"}, ShardKey: []string{"user"}, Where: "ok and not tags.1",
			Aggregates: []AggregateSpec{{Fn: "percentile", Field: "req.ms"}, {Fn: "min", Field: "status"}}},
		{Name: "f", Category: "c", Format: "json", Time: &TimeSpec{Field: "when", Layout: "02/Jan/2006:15:04:05 -0700"},
			GroupBy: []string{"user"}, Aggregates: []AggregateSpec{{Fn: "sum", Field: "n"}}},
	}
	var out []*App
	for _, s := range specs {
		a, err := Compile(s, "$")
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

// fullParse makes x read lines by the full parse alone (no scan).
func fullParse(t testing.TB, x *Extractor) *Extractor {
	t.Helper()
	p, err := newParser(&x.app.Spec, x.app.fields, false)
	if err != nil {
		t.Fatal(err)
	}
	x.parser = p
	return x
}

// fullShared is NewSharedParser reading lines by the full parse alone.
func fullShared(t testing.TB, list []*App) *SharedParser {
	t.Helper()
	sp := NewSharedParser(list)
	p, err := newParser(&list[0].Spec, fieldsOf(sp.rec), false)
	if err != nil {
		t.Fatal(err)
	}
	sp.parser = p
	return sp
}

func fieldsOf(r *Record) []string {
	out := make([]string, len(r.vals))
	for name, i := range r.names {
		out[i] = name
	}
	return out
}

// deepCopy is an extraction copied to the last byte of its strings.
func deepCopy(e *Extracted) *extraction {
	if e == nil {
		return nil
	}
	c := snapshot(e)
	return &c
}

// sameExtracted: a and b are equal, NaN equal to NaN.
func sameExtracted(a, b *extraction) bool {
	if a.TimeMs != b.TimeMs || !bytes.Equal(a.Key, b.Key) || len(a.Inputs) != len(b.Inputs) {
		return false
	}
	for i, x := range a.Inputs {
		y := b.Inputs[i]
		if math.IsNaN(x.Value.Num) && math.IsNaN(y.Value.Num) {
			x.Value.Num, y.Value.Num = 0, 0
		}
		if x != y {
			return false
		}
	}
	return true
}

// scanCheck compares, for every app, the extraction of line by the scan
// (its own parse, and the parse shared with the other apps) with the
// full parse's: the same error word for word, or the same time, key and
// inputs. The line the scan read is overwritten before the comparison of
// the extractions' copies.
type scanCheck struct {
	list         []*App
	scan, full   []*Extractor
	from         []*Extractor // fed by shared
	shared, fsha *SharedParser
}

func newScanCheck(t testing.TB) *scanCheck {
	c := &scanCheck{list: scanApps(t)}
	for _, a := range c.list {
		c.scan = append(c.scan, a.NewExtractor())
		c.full = append(c.full, fullParse(t, a.NewExtractor()))
		c.from = append(c.from, a.NewExtractor())
	}
	c.shared, c.fsha = NewSharedParser(c.list), fullShared(t, c.list)
	return c
}

func (c *scanCheck) check(t *testing.T, line []byte) (read int) {
	t.Helper()
	const arrival = 1_700_000_000_000
	type result struct {
		e   *extraction
		err error
	}
	n := len(c.list)
	want, scan, shared, fshared := make([]result, n), make([]result, n), make([]result, n), make([]result, n)
	// The scan reads copies of the line, overwritten once every app has
	// extracted and its extraction was copied (an extraction may read the
	// line where it lies; its copy may not).
	buf, own := bytes.Clone(line), bytes.Clone(line)
	rec, perr := c.shared.Parse(buf)
	frec, fperr := c.fsha.Parse(line)
	if fmt.Sprint(perr) != fmt.Sprint(fperr) {
		t.Fatalf("line %q: the shared parse says %v with the scan, %v without", line, perr, fperr)
	}
	for i := range c.list {
		e, err := c.full[i].Extract(line, arrival)
		want[i] = result{deepCopy(e), err}
		e, err = c.scan[i].Extract(own, arrival)
		scan[i] = result{deepCopy(e), err} // its next call reuses e
		shared[i].err, fshared[i].err = perr, fperr
		if perr == nil {
			e, err = c.from[i].ExtractRecord(rec, arrival)
			shared[i] = result{deepCopy(e), err}
		}
		if fperr == nil {
			e, err = c.full[i].ExtractRecord(frec, arrival)
			fshared[i] = result{deepCopy(e), err}
		}
	}
	for j := range own {
		own[j] = 'X'
	}
	for j := range buf {
		buf[j] = 'X'
	}
	for i, a := range c.list {
		w := want[i]
		for _, o := range []struct {
			what string
			result
		}{{"the scan", scan[i]}, {"the shared scan", shared[i]}, {"the shared full parse", fshared[i]}} {
			if fmt.Sprint(o.err) != fmt.Sprint(w.err) {
				t.Fatalf("app %s, line %q: %s says %v, the full parse %v", a.Name(), line, o.what, o.err, w.err)
			}
			if w.err == nil && !sameExtracted(o.e, w.e) {
				t.Fatalf("app %s, line %q: %s extracts %#v, the full parse %#v", a.Name(), line, o.what, *o.e, *w.e)
			}
		}
		if w.err == nil {
			read++
		}
	}
	return read
}

func TestScanExtractsAsTheFullParse(t *testing.T) {
	c := newScanCheck(t)
	read := 0
	for _, l := range []string{
		`{"ts": 1700000000, "user": "u1", "bytes": 120, "status": 503, "req": {"path": "/a", "ms": 3.5}, "tags": ["x", "y"], "ok": true, "t": {"at": "2024-05-06T07:08:09.123Z"}}`,
		`{"ts": 1700000000000, "user": "u1\u0000", "bytes": "12", "status": "503", "req": "flat", "tags": [null], "ok": 0}`,
		`{"ts": 1.7e9, "user": 7, "bytes": 1.2.3, "status": nan, "req": {"path": "a\"b"}, "ok": false}`,
		`{"ts": "1700000000", "user": null, "bytes": -Inf, "status": true, "req": {"path": {"x": 1}}, "tags": [[1], 2]}`,
		"{\"ts\": 1700000001, \"user\": \"a\x00b\", \"n\": 1e400, \"when\": \"17/May/2015:10:05:03 +0000\", \"t\": {\"at\": \"x\"}}",
		`{"ts": 1700000000, "user": "u2", "user": "u3", "bytes": 5, "tags": {"0": "obj"}}`,
		`{"ts": 1700000000, "user": "u2",}`,
		// An object read whole (app d's key) whose keys or strings the
		// full parse unescapes when another app's field is read inside
		// it: the same text whichever fields a parse reads.
		"{\"req\":{\"\x10\":\"\"}}",
		`{"ts": 1700000000, "req": {"path": "a\/b", "ms": 1}}`,
		`not json`,
		`["ts"]`,
		``,
		`{"ts": 1700000000, "user": "dup"} {}`,
	} {
		read += c.check(t, []byte(l))
	}
	if read < 10 {
		t.Fatalf("%d extractions without an error: the lines test too little", read)
	}
}

// FuzzJSONScanMatchesFullParse: on any bytes, JSON apps of every kind
// extract by the field-only scan (each app's own, and shared by the
// category's apps) exactly what they extract by the full parse: the same
// error, word for word, or the same event time, key and inputs, none of
// them pointing into the line.
func FuzzJSONScanMatchesFullParse(f *testing.F) {
	for _, s := range []string{
		`{"ts": 1700000000, "user": "u1", "bytes": 120, "status": 503, "req": {"path": "/a", "ms": 3.5}, "tags": ["x", "y"], "ok": true, "t": {"at": "2024-05-06T07:08:09.123Z"}}`,
		`{"ts": 1.7e9, "user": 7, "bytes": 1.2.3, "status": nan, "req": {"path": "a\"b"}, "ok": false}`,
		`{"ts": "1700000000", "user": null, "bytes": -Inf, "status": true, "req": {"path": {"x": 1}}, "tags": [[1], 2]}`,
		"{\"ts\": 1700000001, \"user\": \"a\x00b\", \"n\": 1e400, \"when\": \"17/May/2015:10:05:03 +0000\"}",
		`{"ts": 1700000000, "user": "u2",}`,
		`not json`,
	} {
		f.Add([]byte(s))
	}
	c := newScanCheck(f)
	f.Fuzz(func(t *testing.T, line []byte) {
		c.check(t, line)
	})
}

// TestExtractAllocatesNothing: a usual JSON line costs no allocation,
// by the app's own parse or a shared one: the record's strings are views
// of the line, and the group key is built in the extractor's buffer (a
// table copies it only for a cell it adds).
func TestExtractAllocatesNothing(t *testing.T) {
	a, err := Compile(Spec{Name: "a", Category: "c", Format: "json", Time: &TimeSpec{Field: "ts", Layout: "unix"},
		GroupBy: []string{"user", "req.path"}, Where: "bytes > 0",
		Aggregates: []AggregateSpec{{Fn: "count"}, {Fn: "sum", Field: "bytes"}, {Fn: "max", Field: "req.ms"}}}, "$")
	if err != nil {
		t.Fatal(err)
	}
	x := a.NewExtractor()
	for _, c := range []struct {
		line string
		want float64
	}{
		{`{"ts": 1700000000, "user": "u1", "bytes": 120, "req": {"path": "/a", "ms": 3.5}, "pad": "xxxxxxxxxxxxxxxx"}`, 0},
		{`{"ts": 1700000000, "user": "` + strings.Repeat("u", 300) + `", "bytes": 120, "req": {"path": "/a"}}`, 0}, // a key beyond the buffer's first room
		{`{"ts": 1700000000, "bytes": 120}`, 0},
	} {
		line := []byte(c.line)
		if n := testing.AllocsPerRun(100, func() {
			if _, err := x.Extract(line, 0); err != nil {
				t.Fatal(err)
			}
		}); n != c.want {
			t.Fatalf("line %s: %v allocations an extraction, want %v", c.line, n, c.want)
		}
		shared, from := NewSharedParser([]*App{a, a}), a.NewExtractor()
		if n := testing.AllocsPerRun(100, func() {
			rec, err := shared.Parse(line)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := from.ExtractRecord(rec, 0); err != nil {
				t.Fatal(err)
			}
		}); n != c.want {
			t.Fatalf("line %s: %v allocations a shared parse and extraction, want %v", c.line, n, c.want)
		}
	}
}

// TestFilterOnTextAllocatesNothing: a where comparing fields with texts
// (key == "probe", the bench's probe app; a number against a text)
// filters a line out without an allocation. Each text side was given to
// strconv.ParseFloat, whose refusal allocates its error: two a line.
func TestFilterOnTextAllocatesNothing(t *testing.T) {
	for _, where := range []string{`key == "probe"`, `key != "k1" and status < 500`, `method >= "GET"`} {
		a, err := Compile(Spec{Name: "a", Category: "c", Format: "json", Where: where,
			GroupBy: []string{"id"}, Aggregates: []AggregateSpec{{Fn: "count"}}}, "$")
		if err != nil {
			t.Fatal(err)
		}
		x := a.NewExtractor()
		line := []byte(`{"key": "k123", "status": "n/a", "method": "DELETE", "id": "x"}`)
		if n := testing.AllocsPerRun(100, func() {
			if _, err := x.Extract(line, 1); !errors.Is(err, ErrFiltered) {
				t.Fatalf("%s: %v, want it filtered out", where, err)
			}
		}); n != 0 {
			t.Fatalf("%s: %v allocations a line, want 0", where, n)
		}
	}
}
