package puma

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/apps/appstest"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/demo"
	"github.com/freeway-dev/freeway/internal/jsonscan"
	"github.com/freeway-dev/freeway/ptail"
)

// recordApps are four JSON apps of one category (one shared parse) that
// read the access log's fields every way a line's Record is read: a key
// of a number, of one string (a view of the line), of two fields (the
// extractor's buffer), of a field no line has; a unix time read as a
// number, a time by a layout, the arrival time; where filters on numbers,
// strings and a bare field; every aggregate function, on numbers, text,
// numbers as text, null, garbage and missing values.
func recordApps(t testing.TB) []*apps.App {
	t.Helper()
	mk := func(s apps.Spec) *apps.App {
		s.Category, s.Format = "web", "json"
		s.AllowedLateness = config.Duration(7 * 24 * time.Hour)
		s.Retention = config.Duration(30 * 24 * time.Hour)
		return appstest.Compile(t, s)
	}
	return []*apps.App{
		mk(apps.Spec{
			Name: "by_status", Time: &apps.TimeSpec{Field: "ts", Layout: "unix"},
			GroupBy: []string{"status"},
			Aggregates: []apps.AggregateSpec{
				{Name: "hits", Fn: "count"},
				{Name: "with_bytes", Fn: "count", Field: "bytes"},
				{Name: "bytes", Fn: "sum", Field: "bytes"},
				{Name: "lo", Fn: "min", Field: "bytes"},
				{Name: "hi", Fn: "max", Field: "bytes"},
				{Name: "mean", Fn: "avg", Field: "bytes"},
				{Name: "size", Fn: "percentile", Field: "bytes", Quantiles: []float64{0.5, 0.99}},
				{Name: "ips", Fn: "count_distinct", Field: "ip"},
				{Name: "paths", Fn: "topk", Field: "path", K: 5},
				{Name: "first_ip", Fn: "first", Field: "ip"},
				{Name: "last_path", Fn: "last", Field: "path"},
			},
		}),
		mk(apps.Spec{
			Name: "by_path", Time: &apps.TimeSpec{Field: "when", Layout: demo.TimeLayout},
			GroupBy: []string{"path"},
			Where:   `status >= 400 or bot`,
			Aggregates: []apps.AggregateSpec{
				{Name: "hits", Fn: "count"},
				{Name: "with_bytes", Fn: "count", Field: "bytes"}, // lines that have the field
				{Name: "bytes", Fn: "sum", Field: "bytes"},
				{Name: "last_bytes", Fn: "last", Field: "bytes"},
			},
		}),
		mk(apps.Spec{
			Name: "by_ip", Time: &apps.TimeSpec{Field: "ts", Layout: "unix_ms"},
			GroupBy: []string{"ip", "code"},
			Where:   `method == "GET" and not bot and bytes != ip`,
			Windows: []config.Duration{config.Duration(time.Hour), config.Duration(24 * time.Hour)},
			Aggregates: []apps.AggregateSpec{
				{Name: "hits", Fn: "count"},
				{Name: "paths", Fn: "count_distinct", Field: "path"},
				{Name: "status_sum", Fn: "sum", Field: "code"},
				{Name: "first_status", Fn: "first", Field: "status"},
			},
		}),
		mk(apps.Spec{
			Name: "by_nothing", GroupBy: []string{"nothere"},
			Aggregates: []apps.AggregateSpec{{Name: "hits", Fn: "count"}, {Name: "bytes", Fn: "sum", Field: "bytes"}},
		}),
	}
}

// recordLines are the access log's 10,000 lines as JSON, each twice: as
// the field scan reads it (its fields kept where they lie in the line)
// and with its path's slashes escaped (\/), which the scan leaves to the
// full parse (its fields copied out as Values): the same fields either
// way. One line in a few has a field missing, null, of another type or
// garbage, a NUL in its path, a time out of range or of another type.
func recordLines(t testing.TB) (scan, full [][]byte) {
	t.Helper()
	lines, err := demo.Lines()
	if err != nil {
		t.Fatal(err)
	}
	scanner := jsonscan.New([]string{"ts", "when", "status", "code", "path", "ip", "bytes", "method", "bot", "nothere"})
	for i, l := range lines {
		m := accessRE.FindSubmatch(l)
		if m == nil {
			t.Fatalf("line %d does not parse: %s", i+1, l)
		}
		at, err := time.Parse(demo.TimeLayout, string(m[2]))
		if err != nil {
			t.Fatal(err)
		}
		method := strings.Fields(string(l[bytes.IndexByte(l, '"')+1:]))[0]
		ip, path, status, size := string(m[1]), string(m[3]), string(m[4]), string(m[5])
		fields := []string{
			fmt.Sprintf(`"ip": %q`, ip),
			fmt.Sprintf(`"when": %q`, m[2]),
			fmt.Sprintf(`"method": %q`, method),
			fmt.Sprintf(`"status": %s`, status),
			fmt.Sprintf(`"code": "%s"`, status),
		}
		ts := fmt.Sprintf(`"ts": %d`, at.Unix())
		switch {
		case i%31 == 0:
			ts = ""
		case i%37 == 0:
			ts = fmt.Sprintf(`"ts": "%d"`, at.Unix()) // a number as text
		case i%47 == 0:
			ts = `"ts": 1e400`
		case i%53 == 0:
			ts = `"ts": true`
		}
		if ts != "" {
			fields = append(fields, ts)
		}
		switch {
		case size == "-":
			fields = append(fields, `"bytes": "-"`)
		case i%17 == 0: // none
		case i%19 == 0:
			fields = append(fields, `"bytes": null`)
		case i%23 == 0:
			fields = append(fields, `"bytes": "12x"`)
		case i%29 == 0:
			fields = append(fields, fmt.Sprintf(`"bytes": " %s"`, size))
		case i%59 == 0:
			fields = append(fields, `"bytes": 1.2.3`)
		default:
			fields = append(fields, `"bytes": `+size)
		}
		if i%41 == 0 || i%43 == 0 {
			path += "\x00tail"
		}
		if i%43 == 0 {
			fields = append(fields, `"bot": true`)
		} else if i%7 == 0 {
			fields = append(fields, `"bot": false`)
		}
		if i%3 == 0 {
			fields = append(fields, `"agent": {"ua": "x", "path": "/not/this"}`)
		}
		rest := strings.Join(fields, ", ")
		if strings.ContainsAny(path, `"\`) {
			t.Fatalf("line %d: path %q needs escapes", i+1, path)
		}
		// The path as it is (a raw NUL in a string is taken by both
		// parses), and with its slashes escaped.
		plain := []byte(fmt.Sprintf(`{"path": "%s", %s}`, path, rest))
		escaped := []byte(fmt.Sprintf(`{"path": "%s", %s}`, strings.ReplaceAll(path, "/", `\/`), rest))
		if r := scanner.Scan(plain); r != jsonscan.OK {
			t.Fatalf("line %d: the scan says %v for %s", i+1, r, plain)
		}
		if r := scanner.Scan(escaped); r != jsonscan.Full {
			t.Fatalf("line %d: the scan says %v for %s, want Full", i+1, r, escaped)
		}
		scan, full = append(scan, plain), append(full, escaped)
	}
	return scan, full
}

// TestRecordCellsAsTheFullParse: the access log's lines as JSON, applied
// through the shared parse as the field scan reads them (a Record holding
// the scan's fields, read where they lie) and as the full parse reads
// them (a Record of Values), make the same cells, byte for byte, in every
// window of every app, and the same rejections by reason. Each block's
// lines are overwritten once applied, as a reader's buffer is: what a
// cell keeps of a line (a key, a state's text) must be its own copy.
func TestRecordCellsAsTheFullParse(t *testing.T) {
	scanLines, fullLines := recordLines(t)
	cells := func(lines [][]byte) (map[string]string, map[string][nReasons]uint64) {
		e := newEnv(t, recordApps(t)...)
		s := testShardOf(t, e.node("n1"), "web", 0)
		if len(s.parse.shared) != 1 {
			t.Fatalf("%d shared parsers, want one for the category", len(s.parse.shared))
		}
		for from := 0; from < len(lines); from += 500 {
			var blk [][]byte
			for _, l := range lines[from:min(from+500, len(lines))] {
				blk = append(blk, bytes.Clone(l))
			}
			s.apply(stock(blk...), ptail.Position{Offset: int64(from + 1)})
			for _, l := range blk {
				for j := range l {
					l[j] = '#'
				}
			}
		}
		out := map[string]string{}
		drops := map[string][nReasons]uint64{}
		for _, tb := range s.tables {
			for i, sp := range tb.spans {
				for w, wc := range sp.windows {
					wc.each(func(key string, c cell) {
						out[fmt.Sprintf("%s/%d/%d/%q", tb.app.Name(), i, w, key)] = fmt.Sprintf("%x", tb.layout.encodeCell(c))
					})
				}
			}
			drops[tb.app.Name()] = tb.drops
		}
		return out, drops
	}
	got, gotDrops := cells(scanLines)
	want, wantDrops := cells(fullLines)
	if fmt.Sprint(gotDrops) != fmt.Sprint(wantDrops) {
		t.Fatalf("rejections by the scan %v, by the full parse %v", gotDrops, wantDrops)
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range want {
			if !yield(k) {
				return
			}
		}
	})
	if len(got) != len(want) {
		t.Fatalf("%d cells by the scan, %d by the full parse", len(got), len(want))
	}
	apps, nuls := map[string]int{}, 0
	for _, k := range keys {
		// A NUL of a group_by value is U+FFFD in the key (apps.EncodeKey),
		// whichever way the key was made; NUL only parts two values.
		if !strings.HasPrefix(k, "by_ip/") && strings.Contains(k, `\x00`) {
			t.Fatalf("cell %s: a NUL in a key", k)
		}
		if strings.HasPrefix(k, "by_path/") && strings.Contains(k, "\uFFFDtail") {
			nuls++
		}
		if got[k] != want[k] {
			t.Fatalf("cell %s: %s by the scan, %s by the full parse", k, got[k], want[k])
		}
		apps[k[:strings.IndexByte(k, '/')]]++
	}
	// Every app made cells, and rejected lines of each kind: the lines
	// test what they mean to.
	if nuls == 0 {
		t.Fatal("no cell of by_path has a key with a NUL")
	}
	for _, a := range []string{"by_status", "by_path", "by_ip", "by_nothing"} {
		if apps[a] == 0 {
			t.Fatalf("app %s made no cell (%v)", a, apps)
		}
	}
	for _, c := range []struct {
		app    string
		reason int
	}{{"by_status", reasonBadTime}, {"by_status", reasonBadValue}, {"by_path", reasonFiltered}, {"by_ip", reasonFiltered}, {"by_nothing", reasonBadValue}} {
		if wantDrops[c.app][c.reason] == 0 {
			t.Fatalf("app %s rejected no line as %s: %v", c.app, reasonNames[c.reason], wantDrops)
		}
	}
}

// BenchmarkApplyRecordApps is TestRecordCellsAsTheFullParse's four apps
// (one shared parse; two where filters; keys of a number, a string, two
// fields; every aggregate function) on the access log's lines as JSON,
// as the field scan reads them, in blocks of 500 through the shard. An
// op is one line; every cell exists (the lines are applied once first).
//
//	go test -run '^$' -bench BenchmarkApplyRecordApps -benchmem ./puma
func BenchmarkApplyRecordApps(b *testing.B) {
	lines, _ := recordLines(b)
	e := newEnv(b, recordApps(b)...)
	s := testShardOf(b, e.node("n1"), "web", 0)
	var blocks [][][]byte
	for from := 0; from < len(lines); from += 500 {
		blocks = append(blocks, lines[from:min(from+500, len(lines))])
	}
	for i, blk := range blocks {
		s.apply(stock(blk...), ptail.Position{Offset: int64(i + 1)})
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU(b)
	n := 0
	for i := 0; n < b.N; i++ {
		blk := blocks[i%len(blocks)]
		s.apply(stock(blk...), ptail.Position{Offset: int64(len(blocks) + i + 1)})
		n += len(blk)
	}
	b.ReportMetric(float64(processCPU(b)-cpu0)/float64(n), "cpu-ns/entry")
}

// TestTextInputCopiedOncePerLine: a line's text that a state may keep is
// copied out of the line once, for every span of an app of several window
// lengths, not once a span.
func TestTextInputCopiedOncePerLine(t *testing.T) {
	app := appstest.Compile(t, apps.Spec{
		Name: "last_path", Category: "web", Format: "json",
		Time:       &apps.TimeSpec{Field: "ts", Layout: "unix"},
		Windows:    []config.Duration{config.Duration(time.Minute), config.Duration(time.Hour), config.Duration(24 * time.Hour)},
		GroupBy:    []string{"status"},
		Aggregates: []apps.AggregateSpec{{Name: "path", Fn: "last", Field: "path"}},
	})
	e := newEnv(t, app)
	s := testShardOf(t, e.node("n1"), "web", 0)
	line := []byte(`{"ts": 1431857103, "status": 200, "path": "/presentations/logstash-monitorama-2013/images/kibana-search.png"}`)
	bt := newBlockTime(0, time.Now().UnixMilli())
	s.applyLine(line, bt) // the cells
	if n := testing.AllocsPerRun(100, func() { s.applyLine(line, bt) }); n != 1 {
		t.Fatalf("%v allocations a line, want 1 (the path's copy, for three spans)", n)
	}
	if got := s.tables[0].ncells; got != 3 {
		t.Fatalf("%d cells, want 3", got)
	}
}
