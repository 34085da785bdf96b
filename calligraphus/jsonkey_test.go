package calligraphus

import (
	"errors"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/apps"
)

// keyFieldSets are the shard keys the scan is compared on: one field,
// nested paths, array indices, a path ending where another goes on,
// duplicates, an empty name, a name the scan leaves to the full parse.
var keyFieldSets = [][]string{
	{"key"},
	{"user"},
	{"a.b", "c"},
	{"a.0", "x.1.y", "key"},
	{"n", "t", "f"},
	{"a", "a.b"},
	{"key", "key"},
	{""},
	{"k\\ey"},
}

// keyReaders pairs the scan of fields with the apps' full parse of them
// (what Puma reads).
type keyReaders struct {
	fields []string
	scan   *jsonKey
	full   *apps.KeyExtractor
}

func newKeyReaders(t testing.TB, fields []string) keyReaders {
	t.Helper()
	app, err := apps.Compile(apps.Spec{Name: "k", Category: "c", Format: "json",
		GroupBy: []string{"key"}, Aggregates: []apps.AggregateSpec{{Fn: "count"}}}, "$.apps[0]")
	if err != nil {
		t.Fatal(err)
	}
	return keyReaders{fields, newJSONKey(fields), app.NewKeyExtractor(fields)}
}

// checkJSONKey fails if the scan of line disagrees with the full parse:
// a line the full parse takes must have its key, or be left to it; a
// line it refuses may have a key (read from the line's prefix, twice the
// same), be refused, or be left to it. It returns what the scan
// concluded.
func checkJSONKey(t testing.TB, k keyReaders, line []byte) scanResult {
	t.Helper()
	fields := k.fields
	want, err := k.full.Key(line)
	got, r := k.scan.appendKey([]byte("prefix"), line)
	switch r {
	case scanKey:
		if err == nil && string(got) != "prefix"+want {
			t.Fatalf("fields %q, line %q: the scan reads key %q; the full parse %q", fields, line, got, want)
		}
		if again, r2 := k.scan.appendKey([]byte("prefix"), line); r2 != r || string(again) != string(got) {
			t.Fatalf("fields %q, line %q: the scan reads key %q, then %q (%d)", fields, line, got, again, r2)
		}
	case scanInvalid:
		if err == nil {
			t.Fatalf("fields %q, line %q: the scan refuses the line; the full parse reads key %q", fields, line, want)
		}
		if !errors.Is(err, apps.ErrParse) {
			t.Fatalf("full parse error %v is not ErrParse", err)
		}
	case scanFull:
		if string(got) != "prefix" {
			t.Fatalf("a scan leaving the line to the full parse appended %q", got)
		}
	}
	return r
}

func TestJSONKeyAgreesWithTheFullParse(t *testing.T) {
	deep := strings.Repeat("[", 298) + "1" + strings.Repeat("]", 298) // the 1 at level 300
	for _, c := range []struct {
		fields []string
		line   string
		want   scanResult
	}{
		{[]string{"key"}, `{"ts":1764583200000,"key":"k0001234","value":42,"pad":"xxxxxxxx"}`, scanKey},
		{[]string{"key"}, ` {"key" : "a b" } ` + "\n", scanKey},
		{[]string{"key"}, `{"key":"a","key":"b"}`, scanKey},  // the first counts
		{[]string{"key"}, `{"key":null,"key":"b"}`, scanKey}, // a null first: ""
		{[]string{"key"}, `{"other":1}`, scanKey},
		{[]string{"key"}, `{}`, scanKey},
		{[]string{"key"}, `{"key":1.2.3}`, scanKey}, // fastjson's numbers
		{[]string{"key"}, `{"key":-Inf}`, scanKey},
		{[]string{"key"}, `{"key":nAn}`, scanKey},
		{[]string{"key"}, `{"key":NaN}`, scanKey},
		{[]string{"key"}, `{"key":true,"x":false}`, scanKey},
		{[]string{"key"}, "{\"key\":\"a\x00b\"}", scanKey},
		{[]string{"key"}, "{\"key\":\"\xff\xfe\x01\"}", scanKey},
		{[]string{"key"}, `{"x":"a\"b\\","key":"k"}`, scanKey},     // escapes elsewhere
		{[]string{"key"}, `{"x":{"\u0041":1},"key":"k"}`, scanKey}, // an escaped name off the path
		{[]string{"key"}, `{"key":"a\"b"}`, scanFull},
		// Long strings, read eight bytes at a time: escapes past the first word.
		{[]string{"key"}, `{"pad":"0123456789abcdef\"ghij\\","key":"a long key, longer than sixteen bytes"}`, scanKey},
		{[]string{"key"}, `{"pad":"0123456789abcdef\\\"ghij\\\\\"x","key":"k"}`, scanKey},
		{[]string{"key"}, `{"key":"0123456789abcdef0123\"tail"}`, scanFull},
		{[]string{"key"}, `{"key":"0123456789abcdef0123\\`, scanInvalid},
		{[]string{"key"}, `{"k\u0065y":"a"}`, scanFull},
		{[]string{"key"}, `{"key":{"a":1}}`, scanFull},
		{[]string{"key"}, `{"key":[1, 2]}`, scanFull},
		{[]string{"a.b", "c"}, `{"a":{"b":"x"},"c":3}`, scanKey},
		{[]string{"a.b", "c"}, `{"a":"s","c":3}`, scanKey},
		{[]string{"a.b", "c"}, `{"a":{"c":1},"a":{"b":2}}`, scanKey}, // first "a" only
		{[]string{"a.0", "x.1.y", "key"}, `{"a":["p","q"],"x":[0,{"y":true}],"key":7}`, scanKey},
		{[]string{"a.0", "x.1.y", "key"}, `{"a":{"0":"obj"},"x":[]}`, scanKey},
		{[]string{"k\\ey"}, `{"k\\ey":"a"}`, scanFull},
		{[]string{"key"}, `{"key":"a",}`, scanKey}, // the full parse refuses what follows the key
		{[]string{"key"}, `{"x":"a",}`, scanInvalid},
		{[]string{"key"}, `{"key":"a"} x`, scanKey},
		{[]string{"key"}, `{"x":"a"} x`, scanInvalid},
		{[]string{"key", "x"}, `{"key":"a","y":1,}`, scanInvalid}, // x not read yet
		{[]string{"key", "x"}, `{"x":1,"key":"a",}`, scanKey},
		{[]string{"key"}, `{"key":"a"`, scanKey},
		{[]string{"key"}, `{"key"`, scanInvalid},
		{[]string{"key"}, `{"key":tru}`, scanInvalid},
		{[]string{"key"}, `{"key":+}`, scanInvalid},
		{[]string{"key"}, `{"key":"unterminated}`, scanInvalid},
		{[]string{"key"}, `{key:1}`, scanInvalid},
		{[]string{"key"}, `["key"]`, scanInvalid}, // JSON, not an object
		{[]string{"key"}, `"key"`, scanInvalid},
		{[]string{"key"}, ``, scanInvalid},
		{[]string{"key"}, `  `, scanInvalid},
		{[]string{"key"}, `{"key":"a","d":` + deep + `}`, scanKey},
		{[]string{"key"}, `{"key":"a","d":[` + deep + `]}`, scanKey}, // 301 levels, after the key
		{[]string{"key"}, `{"d":[` + deep + `],"key":"a"}`, scanInvalid},
	} {
		if got := checkJSONKey(t, newKeyReaders(t, c.fields), []byte(c.line)); got != c.want {
			t.Errorf("fields %q, line %q: scan result %d, want %d", c.fields, c.line, got, c.want)
		}
	}
}

// FuzzJSONKeyMatchesFullParse: on any bytes, the scan's key is the full
// parse's, and it refuses exactly the lines the full parse refuses
// (lines it leaves to the full parse are read by it).
func FuzzJSONKeyMatchesFullParse(f *testing.F) {
	for _, s := range []string{
		`{"ts":1764583200000,"key":"k0001234","value":42,"pad":"xxxxxxxx"}`,
		`{"a":{"b":"x"},"c":3,"key":null}`,
		`{"a":["p","q"],"x":[0,{"y":true}],"key":-1e5}`,
		`{"n":nan,"t":true,"f":false}`,
		`{"key":"a\"b","k\u0065y":1}`,
		`{"key":[1,{"a":2}]}`,
		`{"key":"a"} `,
		`{"key":1.2.3,}`,
		"{\"\":\"\x00\"}",
	} {
		f.Add([]byte(s))
	}
	var readers []keyReaders
	for _, fields := range keyFieldSets {
		readers = append(readers, newKeyReaders(f, fields))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		for _, k := range readers {
			checkJSONKey(t, k, line)
		}
	})
}

// BenchmarkShardKey: the key of a bench line by the scan, and by the
// full parse it replaces.
func BenchmarkShardKey(b *testing.B) {
	lines := benchLines(b, 1000)
	k := newKeyReaders(b, []string{"key"})
	b.Run("scan", func(b *testing.B) {
		var buf []byte
		b.ReportAllocs()
		b.SetBytes(176)
		b.ResetTimer()
		report := cpuPerOp(b)
		defer report()
		for i := 0; i < b.N; i++ {
			var r scanResult
			if buf, r = k.scan.appendKey(buf[:0], lines[i%len(lines)]); r != scanKey {
				b.Fatal(r)
			}
		}
	})
	b.Run("full", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(176)
		b.ResetTimer()
		report := cpuPerOp(b)
		defer report()
		for i := 0; i < b.N; i++ {
			if _, err := k.full.Key(lines[i%len(lines)]); err != nil {
				b.Fatal(err)
			}
		}
	})
}
