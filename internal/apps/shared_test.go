package apps

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
)

// sharedApps are apps of one category that read different fields, filter
// differently and group differently; the last reads regex lines.
func sharedApps(t testing.TB) []*App {
	t.Helper()
	specs := []Spec{
		{Name: "a", Category: "c", Format: "json", Time: &TimeSpec{Field: "ts", Layout: "unix"},
			GroupBy: []string{"user"}, Aggregates: []AggregateSpec{{Fn: "count"}, {Fn: "sum", Field: "bytes"}}},
		{Name: "b", Category: "c", Format: "json", Time: &TimeSpec{Field: "ts", Layout: "unix_ms"},
			GroupBy: []string{"req.path", "status"}, Where: "status >= 500", Aggregates: []AggregateSpec{{Fn: "max", Field: "bytes"}}},
		{Name: "d", Category: "c", Format: "json",
			GroupBy: []string{"user"}, Aggregates: []AggregateSpec{{Fn: "avg", Field: "req.ms"}}},
		{Name: "e", Category: "c", Format: "regex", Pattern: `^(?P<user>\w+) (?P<bytes>\d+)`,
			GroupBy: []string{"user"}, Aggregates: []AggregateSpec{{Fn: "sum", Field: "bytes"}}},
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

// TestSharedParseExtractsAsEachApp: every app extracts from a line parsed
// once for its group exactly what it extracts from its own parse (the
// same time, key, inputs or error), over lines good and bad.
func TestSharedParseExtractsAsEachApp(t *testing.T) {
	list := sharedApps(t)
	groups := ParseGroups(list)
	if !reflect.DeepEqual(groups, [][]int{{0, 1, 2}, {3}}) {
		t.Fatalf("groups %v", groups)
	}
	r := rand.New(rand.NewPCG(3, 4))
	pieces := []string{`"ts": 1700000000`, `"ts": "1700000000123"`, `"ts": -1`, `"user": "u1"`, `"user": 7`, `"bytes": 120`,
		`"bytes": "12x"`, `"status": 503`, `"status": 200`, `"req": {"path": "/a", "ms": 3.5}`, `"req": []`, `"x": null`, `"ts": true`}
	var lines []string
	for range 2000 {
		var line string
		for k := range r.IntN(6) {
			if k > 0 {
				line += ", "
			}
			line += pieces[r.IntN(len(pieces))]
		}
		switch r.IntN(10) {
		case 0:
			lines = append(lines, line) // not an object
		case 1:
			lines = append(lines, fmt.Sprintf("u%d %d tail", r.IntN(3), r.IntN(1000)))
		default:
			lines = append(lines, "{"+line+"}")
		}
	}
	for _, g := range groups {
		var members []*App
		for _, i := range g {
			members = append(members, list[i])
		}
		shared := NewSharedParser(members)
		own := make([]*Extractor, len(members))
		from := make([]*Extractor, len(members))
		for i, a := range members {
			own[i], from[i] = a.NewExtractor(), a.NewExtractor()
		}
		ok := make([]int, len(members))
		for _, line := range lines {
			rec, perr := shared.Parse([]byte(line))
			for i, a := range members {
				want, werr := own[i].Extract([]byte(line), 1_700_000_000_000)
				var got *Extracted
				gerr := perr
				if perr == nil {
					got, gerr = from[i].ExtractRecord(rec, 1_700_000_000_000)
				}
				if fmt.Sprint(werr) != fmt.Sprint(gerr) {
					t.Fatalf("app %s, line %q: error %v from its own parse, %v from the shared one", a.Name(), line, werr, gerr)
				}
				if werr == nil && !reflect.DeepEqual(snapshot(want), snapshot(got)) {
					t.Fatalf("app %s, line %q: %+v from its own parse, %+v from the shared one", a.Name(), line, snapshot(want), snapshot(got))
				}
				if werr == nil {
					ok[i]++
				}
			}
		}
		for i, a := range members {
			if ok[i] < 20 || ok[i] > len(lines)-20 {
				t.Fatalf("app %s extracted %d of %d lines: the lines test too little", a.Name(), ok[i], len(lines))
			}
		}
	}
}
