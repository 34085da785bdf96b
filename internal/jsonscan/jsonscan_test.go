package jsonscan

import (
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fastjson"

	"github.com/freeway-dev/freeway/internal/loadgen"
)

// pathSets are the paths the scan is compared on: one field, nested
// paths, array indices, a path ending where another goes on, duplicates,
// an empty name, a name the scan leaves to the full parse, 64 paths.
var pathSets = [][]string{
	{"key"},
	{"ts", "user", "bytes", "status"},
	{"a.b", "c"},
	{"a.0", "x.1.y", "key"},
	{"n", "t", "f"},
	{"a", "a.b"},
	{"key", "key"},
	{""},
	{"k\\ey"},
	sixtyFour(),
}

func sixtyFour() []string {
	var p []string
	for i := range MaxFields {
		p = append(p, string(rune('a'+i%26))+strings.Repeat("x", i/26))
	}
	return p
}

// check fails if the scan of line by s (of paths) disagrees with
// fastjson's parse, or its prefix scan with it or with the scan; it
// returns what the scan concluded.
func check(t testing.TB, s *Scanner, paths []string, line []byte) Result {
	t.Helper()
	var p fastjson.Parser
	v, err := p.ParseBytes(line)
	refused := err != nil || v.Type() != fastjson.TypeObject
	r := s.Scan(line)
	switch r {
	case Invalid:
		if !refused {
			t.Fatalf("paths %q, line %q: the scan refuses the line; fastjson takes it", paths, line)
		}
	case OK:
		if refused {
			t.Fatalf("paths %q, line %q: the scan reads the line; fastjson refuses it (%v) or it is no object", paths, line, err)
		}
		checkFields(t, s, paths, line, v)
	}
	full := append([]Field(nil), s.Fields()...)
	// The prefix scan: Scan's answer, or OK where it has read every
	// path's value; then the values Scan reads where it reads the line,
	// and fastjson's where fastjson takes it.
	switch pr := s.ScanPrefix(line); {
	case pr != OK && pr != r:
		t.Fatalf("paths %q, line %q: the prefix scan answers %d, the scan %d", paths, line, pr, r)
	case pr == OK && r == OK:
		if !slices.Equal(s.Fields(), full) {
			t.Fatalf("paths %q, line %q: the prefix scan reads %v, the scan %v", paths, line, s.Fields(), full)
		}
	case pr == OK && !refused:
		checkFields(t, s, paths, line, v)
	}
	return r
}

// checkFields fails if the fields s read from line are not fastjson's
// (v, its parse of line).
func checkFields(t testing.TB, s *Scanner, paths []string, line []byte, v *fastjson.Value) {
	t.Helper()
	for f, path := range paths {
		got := s.Fields()[f]
		raw := string(line[got.Start:got.End])
		want := v.Get(strings.Split(path, ".")...)
		var ok bool
		switch {
		case want == nil:
			ok = got.Kind == Absent
		case want.Type() == fastjson.TypeString:
			b, _ := want.StringBytes()
			ok = got.Kind == String && raw == string(b)
		case want.Type() == fastjson.TypeNumber:
			ok = got.Kind == Number && raw == string(want.MarshalTo(nil))
		case want.Type() == fastjson.TypeTrue:
			ok = got.Kind == True && raw == "true"
		case want.Type() == fastjson.TypeFalse:
			ok = got.Kind == False && raw == "false"
		case want.Type() == fastjson.TypeNull:
			ok = got.Kind == Null && raw == "null"
		}
		if !ok {
			t.Fatalf("paths %q, line %q: path %q reads as kind %d %q; fastjson says %s", paths, line, path, got.Kind, raw, want)
		}
	}
}

func TestScanAgreesWithFastjson(t *testing.T) {
	deep := strings.Repeat("[", 298) + "1" + strings.Repeat("]", 298) // the 1 at level 300
	for _, c := range []struct {
		paths []string
		line  string
		want  Result
	}{
		{[]string{"key"}, `{"ts":1764583200000,"key":"k0001234","value":42,"pad":"xxxxxxxx"}`, OK},
		{[]string{"ts", "user", "bytes", "status"}, `{"ts": 1.7e9, "user": "u1", "bytes": -12, "status": true}`, OK},
		{[]string{"ts", "user", "bytes", "status"}, `{"ts": null, "user": false, "bytes": 1.2.3, "status": nAn}`, OK},
		{[]string{"key"}, `{"key":"a","key":"b"}`, OK},
		{[]string{"key"}, `{"key":null,"key":"b"}`, OK},
		{[]string{"key"}, `{"key":-Inf}`, OK},
		{[]string{"key"}, `{"key":"a\"b"}`, Full},
		{[]string{"key"}, `{"k\u0065y":"a"}`, Full},
		{[]string{"key"}, `{"key":{"a":1}}`, Full},
		{[]string{"key"}, `{"key":[1, 2]}`, Full},
		{[]string{"a.b", "c"}, `{"a":{"c":1},"a":{"b":2}}`, OK},
		{[]string{"a.0", "x.1.y", "key"}, `{"a":["p","q"],"x":[0,{"y":true}],"key":7}`, OK},
		{[]string{"k\\ey"}, `{"k\\ey":"a"}`, Full},
		{sixtyFour(), `{"a":1,"zx":"s","lxx":true}`, OK},
		{[]string{"key"}, `{"key":"a",}`, Invalid},
		{[]string{"key"}, `["key"]`, Invalid},
		{[]string{"key"}, ``, Invalid},
		{[]string{"key"}, `{"key":"a","d":` + deep + `}`, OK},
		{[]string{"key"}, `{"key":"a","d":[` + deep + `]}`, Invalid}, // 301 levels
		// Objects to level 300, a string and a number at the last: 301.
		{[]string{"key"}, strings.Repeat(`{"a":`, 299) + `{"b":"s"}` + strings.Repeat("}", 299), Invalid},
		{[]string{"key"}, strings.Repeat(`{"a":`, 299) + `{"b":1}` + strings.Repeat("}", 299), Invalid},
		{[]string{"key"}, strings.Repeat(`{"a":`, 299) + `{}` + strings.Repeat("}", 299), OK},
		{[]string{"key"}, strings.Repeat(`{"a":`, 298) + `{"b":1}` + strings.Repeat("}", 298), OK},
	} {
		if got := check(t, New(c.paths), c.paths, []byte(c.line)); got != c.want {
			t.Errorf("paths %q, line %q: scan result %d, want %d", c.paths, c.line, got, c.want)
		}
	}
	if r := New(append(sixtyFour(), "more")).Scan([]byte(`{}`)); r != Full {
		t.Errorf("65 paths: result %d, want Full", r)
	}
}

// TestNamesMatchByWord: a name of up to eight bytes is matched by its
// bytes in a word (Scanner.match): names that agree in the word's bytes
// but not in length (a raw NUL pads a word as the zero above a shorter
// name does), that share a prefix, of exactly eight and nine bytes, and
// near the line's end (no word to read) are told apart as fastjson
// tells them; paths that share a step all take it.
func TestNamesMatchByWord(t *testing.T) {
	for _, c := range []struct {
		paths []string
		line  string
	}{
		{[]string{"a"}, "{\"a\x00\":1,\"a\":2}"},
		{[]string{"a\x00"}, "{\"a\":1,\"a\x00\":2}"},
		{[]string{"a", "a\x00\x00"}, "{\"a\x00\":1,\"a\x00\x00\":3,\"a\":2}"},
		{[]string{"abcdefgh", "abcdefg"}, `{"abcdefghi":1,"abcdefg":2,"abcdefgh":3}`},
		{[]string{"abcdefghi", "abcdefgh"}, `{"abcdefgh":1,"abcdefghi":2}`},
		{[]string{"x", "xy"}, `{"xy":1,"x":2}`},
		{[]string{"k"}, `{"k":1}`},
		{[]string{"ky"}, `{"k":1,"ky":2}`},
		{[]string{""}, `{"":7}`},
		{[]string{"a.b", "a.c", "b"}, `{"b":0,"a":{"c":1,"b":2}}`},
		{[]string{"a.b", "a", "b"}, `{"b":0,"a":5}`},
	} {
		if got := check(t, New(c.paths), c.paths, []byte(c.line)); got != OK {
			t.Errorf("paths %q, line %q: scan result %d, want OK", c.paths, c.line, got)
		}
	}
}

// TestScanAllocatesNothing: a scan of a usual line allocates nothing.
func TestScanAllocatesNothing(t *testing.T) {
	s := New([]string{"ts", "user", "bytes", "req.path"})
	line := []byte(`{"ts": 1700000000, "user": "u1", "bytes": 120, "req": {"path": "/a", "ms": [1, 2]}, "pad": "xxxxxxxxxxxxxxxxxxxx"}`)
	if n := testing.AllocsPerRun(100, func() {
		if s.Scan(line) != OK {
			t.Fatal("not read")
		}
	}); n != 0 {
		t.Fatalf("%v allocations a scan", n)
	}
}

// FuzzScanMatchesFastjson: on any bytes and every path set, a value the
// scan reads is fastjson's, and it refuses exactly the lines fastjson
// refuses (or that are not objects); lines it leaves to the full parse
// are fastjson's to read.
func FuzzScanMatchesFastjson(f *testing.F) {
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
	scanners := make([]*Scanner, len(pathSets))
	for i, p := range pathSets {
		scanners[i] = New(p)
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		for i, s := range scanners {
			check(t, s, pathSets[i], line)
		}
	})
}

// BenchmarkScan: the fields of the end-to-end bench's app (its time,
// key and value) from its 176-byte lines.
//
//	go test -run '^$' -bench BenchmarkScan ./internal/jsonscan
func BenchmarkScan(b *testing.B) {
	spec := loadgen.Lines{Format: loadgen.JSON, Size: 176, Keys: 10000, Seed: 1, Start: time.Unix(1764583200, 0), Step: time.Millisecond}
	lines := make([][]byte, 1000)
	for i := range lines {
		lines[i], _ = spec.Append(nil, int64(i), 0)
	}
	s := New([]string{"ts", "key", "value"})
	b.ReportAllocs()
	b.SetBytes(int64(len(lines[0])))
	cpu0 := cpuTime(b)
	for i := 0; b.Loop(); i++ {
		if s.Scan(lines[i%len(lines)]) != OK {
			b.Fatalf("line %q not read", lines[i%len(lines)])
		}
	}
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

// cpuTime is the process's CPU time so far (user + system): on a shared
// machine, CPU per op says more than wall time.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkScanLongString: a line of an access log with a long value
// (a user agent), none of whose fields the scan reads but one.
func BenchmarkScanLongString(b *testing.B) {
	line := []byte(`{"ts":1764583200000,"ip":"10.1.2.3","ua":"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0","url":"/search?q=a+fairly+long+query+string&page=2&sort=relevance","key":"k0001234"}`)
	s := New([]string{"key"})
	b.ReportAllocs()
	b.SetBytes(int64(len(line)))
	cpu0 := cpuTime(b)
	for b.Loop() {
		if s.Scan(line) != OK {
			b.Fatal("not read")
		}
	}
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
}

// TestStringEndEveryPosition: stringEnd (words, then bytes.IndexByte)
// finds what a byte at a time finds, with a quote, a backslash or both
// at every position of bodies up to 80 bytes long (either side of the
// words and of the vector search's blocks).
func TestStringEndEveryPosition(t *testing.T) {
	ref := func(b []byte, i int) (int, bool) {
		escaped := false
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				return i, escaped
			case '\\':
				escaped = true
				i++
			}
		}
		return -1, escaped
	}
	for n := 0; n <= 80; n++ {
		for _, at := range [][]int{{}, {n / 2}, {n - 1}, {0, n - 1}, {n / 3, 2 * n / 3}} {
			for _, marks := range []string{`"`, `\`, `\"`, `"\`, `\\`} {
				body := []byte("{" + strings.Repeat("x", n))
				for k, p := range at {
					if p >= 0 && p < n {
						body[1+p] = marks[k%len(marks)]
					}
				}
				for _, tail := range []string{``, `"`, `"}`, `\"` + strings.Repeat("y", 20) + `"`} {
					line := append(append([]byte(nil), body...), tail...)
					gotEnd, gotEsc := stringEnd(line, 1)
					wantEnd, wantEsc := ref(line, 1)
					if gotEnd != wantEnd || gotEnd >= 0 && gotEsc != wantEsc {
						t.Fatalf("%q: stringEnd %d %v, want %d %v", line, gotEnd, gotEsc, wantEnd, wantEsc)
					}
				}
			}
		}
	}
}
