package apps

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/config"
)

const accessPattern = `^(?P<ip>\S+) \S+ \S+ \[(?P<ts>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+)[^"]*" (?P<status>\d{3}) (?P<bytes>\d+|-)`

func mustCompile(t *testing.T, s Spec) *App {
	t.Helper()
	a, err := Compile(s, "$.apps[0]")
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestJSONExtract(t *testing.T) {
	a := mustCompile(t, Spec{
		Name: "api", Category: "events", Format: "json",
		Time:    &TimeSpec{Field: "ts", Layout: "unix"},
		Where:   `status >= 500 or user.tier == "gold"`,
		GroupBy: []string{"route", "user.tier"},
		Aggregates: []AggregateSpec{
			{Fn: "count"}, {Fn: "sum", Field: "latency_ms"}, {Name: "slowest", Fn: "max", Field: "latency_ms"},
		},
	})
	if a.WindowMs != 60000 || a.Aggs[0].Name != "count" || a.Aggs[1].Name != "sum_latency_ms" || a.Aggs[2].Name != "slowest" {
		t.Fatalf("defaults: window %d aggs %+v", a.WindowMs, a.Aggs)
	}
	x := a.NewExtractor()
	e, err := x.Extract([]byte(`{"ts": 1700000061.5, "route": "/a", "status": 503, "latency_ms": 12.5, "user": {"tier": "free"}}`), 0)
	if err != nil {
		t.Fatal(err)
	}
	if e.TimeMs != 1700000061500 || a.WindowStart(e.TimeMs) != 1700000040000 {
		t.Fatalf("time %d window %d", e.TimeMs, a.WindowStart(e.TimeMs))
	}
	if got := DecodeKey(string(e.Key), 2); got[0] != "/a" || got[1] != "free" {
		t.Fatalf("key %q", got)
	}
	if !e.Inputs()[1].Present || e.Inputs()[1].Value.Num != 12.5 {
		t.Fatalf("inputs %+v", e.Inputs())
	}
	if _, err := x.Extract([]byte(`{"ts": 1, "status": 200, "user": {"tier": "free"}}`), 0); !errors.Is(err, ErrFiltered) {
		t.Fatalf("where: %v", err)
	}
	if e, err := x.Extract([]byte(`{"ts": 1, "status": 200, "user": {"tier": "gold"}}`), 0); err != nil || e.Inputs()[1].Present {
		t.Fatalf("gold user without latency: %v %+v", err, e)
	}
	// A JSON null is no value: the line does not have the field (count
	// with a field skips it, as sum does), whichever parse reads it (the
	// scan, or the full parse for a line with an escape in it).
	for _, line := range []string{
		`{"ts": 1, "status": 503, "latency_ms": null}`,
		`{"ts": 1, "status": 503, "route": "\/a", "latency_ms": null}`,
	} {
		if e, err := x.Extract([]byte(line), 0); err != nil || e.Inputs()[1].Present {
			t.Fatalf("%s: latency_ms present (%v, %+v), want absent", line, err, e)
		}
	}
	for _, bad := range []string{`not json`, `[1,2]`, `{"ts": 1`} {
		if _, err := x.Extract([]byte(bad), 0); !errors.Is(err, ErrParse) {
			t.Errorf("%q: %v, want ErrParse", bad, err)
		}
	}
	if _, err := x.Extract([]byte(`{"status": 500}`), 0); !errors.Is(err, ErrBadTime) {
		t.Errorf("missing time: %v", err)
	}
	if _, err := x.Extract([]byte(`{"status": 500, "ts": "soon"}`), 0); !errors.Is(err, ErrBadTime) {
		t.Errorf("bad time: %v", err)
	}
}

func TestRegexExtractApacheLine(t *testing.T) {
	a := mustCompile(t, Spec{
		Name: "http", Category: "access", Format: "regex", Pattern: accessPattern,
		Time:       &TimeSpec{Field: "ts", Layout: "02/Jan/2006:15:04:05 -0700"},
		Where:      "status >= 200",
		GroupBy:    []string{"status", "method"},
		Aggregates: []AggregateSpec{{Name: "hits", Fn: "count"}, {Name: "bytes", Fn: "sum", Field: "bytes"}},
	})
	x := a.NewExtractor()
	line := `83.149.9.216 - - [17/May/2015:10:05:03 +0000] "GET /presentations/logstash-monitorama-2013/images/kibana-search.png HTTP/1.1" 200 203023 "http://semicomplete.com/" "Mozilla/5.0"`
	e, err := x.Extract([]byte(line), 0)
	if err != nil {
		t.Fatal(err)
	}
	if e.TimeMs != 1431857103000 || string(e.Key) != "200\x00GET" {
		t.Fatalf("time %d key %q", e.TimeMs, e.Key)
	}
	if n, ok := e.Inputs()[1].Value.Number(); !ok || n != 203023 {
		t.Fatalf("bytes %+v", e.Inputs()[1])
	}
	dash := strings.Replace(line, "203023", "-", 1)
	e, err = x.Extract([]byte(dash), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := e.Inputs()[1].Value.Number(); ok {
		t.Fatal("a dash is not a number")
	}
	if _, err := x.Extract([]byte("garbage"), 0); !errors.Is(err, ErrParse) {
		t.Fatalf("garbage: %v", err)
	}
	key, err := a.NewKeyExtractor([]string{"path"}).Key([]byte(line))
	if err != nil || key != "/presentations/logstash-monitorama-2013/images/kibana-search.png" {
		t.Fatalf("shard key %q %v", key, err)
	}
}

func TestTSVAndLogfmtAndArrivalTime(t *testing.T) {
	tsv := mustCompile(t, Spec{Name: "t", Category: "c", Format: "tsv", Fields: []string{"host", "ms"},
		GroupBy: []string{"host"}, Aggregates: []AggregateSpec{{Fn: "avg", Field: "ms"}}})
	e, err := tsv.NewExtractor().Extract([]byte("web1\t42\n"), 1234)
	if err != nil || string(e.Key) != "web1" || e.Inputs()[0].Value.Str != "42" || e.TimeMs != 1234 {
		t.Fatalf("tsv: %v %+v", err, e)
	}
	lf := mustCompile(t, Spec{Name: "l", Category: "c", Format: "logfmt",
		Where: `level == "error"`, GroupBy: []string{"svc"}, Aggregates: []AggregateSpec{{Fn: "count"}, {Fn: "min", Field: "dur"}}})
	x := lf.NewExtractor()
	e, err = x.Extract([]byte(`level=error svc="billing api" dur=0.25 msg="it \"broke\""`), 99)
	if err != nil || string(e.Key) != "billing api" || e.Inputs()[1].Value.Str != "0.25" {
		t.Fatalf("logfmt: %v %+v", err, e)
	}
	if _, err := x.Extract([]byte(`level=info svc=x`), 99); !errors.Is(err, ErrFiltered) {
		t.Fatalf("logfmt where: %v", err)
	}
	if _, err := x.Extract([]byte(`level=error msg="unterminated`), 99); !errors.Is(err, ErrParse) {
		t.Fatalf("logfmt unterminated: %v", err)
	}
}

func TestWhere(t *testing.T) {
	rec := newRecord([]string{"status", "method", "bot", "path", "limit", "ville"})
	rec.set(0, Value{Str: "503"})
	rec.set(1, Value{Str: "GET"})
	rec.set(2, Value{Str: "false"})
	rec.set(3, Value{Str: "/a"})
	rec.set(4, Value{Str: "600"})
	rec.set(5, Value{Str: "Zürich"})
	cases := map[string]bool{
		`status >= 500`:                        true,
		`status > 503`:                         false,
		`status = 503 and method == "GET"`:     true,
		`status == 503 and method != 'GET'`:    false,
		`method == "POST" or (status < 600)`:   true,
		`not bot`:                              true,
		`bot`:                                  false,
		`missing == 1`:                         false,
		`missing != 1`:                         false,
		`not missing`:                          true,
		`status < limit`:                       true,
		`path == "/a" AND NOT method == "PUT"`: true,
		`status <> 200`:                        true,
		`method < "H"`:                         true,
		`status >= -1.5e1`:                     true,
		`ville == "Zürich"`:                    true,
		"status\u00a0>=\u00a0500":              true, // no-break spaces
	}
	for src, want := range cases {
		e, err := parseWhere(src)
		if err != nil {
			t.Errorf("%s: %v", src, err)
			continue
		}
		if got := e.eval(rec); got != want {
			t.Errorf("%s = %v, want %v", src, got, want)
		}
	}
	for src, msg := range map[string]string{
		`status >=`:          "ends too early",
		`status >> 5`:        "unknown operator",
		`(status > 1`:        "expected ')'",
		`"x" `:               "comparison after a literal",
		`status > 1 extra`:   "unexpected",
		`method == "GET`:     "unterminated",
		`status > 1 and`:     "ends too early",
		`status ! 1`:         "unknown operator",
		`status == 1 or and`: "expected a field",
		"status == \xff":     "invalid UTF-8",
	} {
		if _, err := parseWhere(src); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: error %v, want %q", src, err, msg)
		}
	}
}

func TestValidation(t *testing.T) {
	base := func() Spec {
		return Spec{Name: "a", Category: "c", Format: "json", GroupBy: []string{"k"}, Aggregates: []AggregateSpec{{Fn: "count"}}}
	}
	cases := []struct {
		mut  func(s *Spec)
		path string
		msg  string
	}{
		{func(s *Spec) { s.Name = "" }, "$.apps[0]", "name is required"},
		{func(s *Spec) { s.Name = "a b" }, "$.apps[0].name", "not a valid app name"},
		{func(s *Spec) { s.Category = "" }, "$.apps[0]", "category is required"},
		{func(s *Spec) { s.Format = "xml" }, "$.apps[0].format", "unknown format"},
		{func(s *Spec) { s.Format = "regex" }, "$.apps[0]", "needs a pattern"},
		{func(s *Spec) { s.Format = "regex"; s.Pattern = "(" }, "$.apps[0].pattern", "missing closing"},
		{func(s *Spec) { s.Format = "regex"; s.Pattern = `(?P<x>\d+)` }, "$.apps[0].group_by[0]", `"k" is not a named group`},
		{func(s *Spec) { s.Format = "tsv"; s.Fields = []string{"x"} }, "$.apps[0].group_by[0]", "not one of the tsv fields"},
		{func(s *Spec) { s.Time = &TimeSpec{Field: "ts", Layout: "yesterday"} }, "$.apps[0].time.layout", "not a time layout"},
		{func(s *Spec) { s.Time = &TimeSpec{Field: "ts", Layout: "Jan _2 15:04:05"} }, "$.apps[0].time.layout", "has no year"},
		{func(s *Spec) { s.Time = &TimeSpec{Layout: "unix"} }, "$.apps[0].time", "needs a field"},
		{func(s *Spec) { s.Window = config.Duration(1500 * 1e6) }, "$.apps[0].window", "whole number of seconds"},
		{func(s *Spec) { s.Window = config.Duration(3600 * 1e9); s.Retention = config.Duration(60 * 1e9) }, "$.apps[0].retention", "at least one window"},
		{func(s *Spec) { s.GroupBy = []string{"k", "k"} }, "$.apps[0].group_by[1]", "appears twice"},
		{func(s *Spec) { s.Where = "k >" }, "$.apps[0].where", "ends too early"},
		{func(s *Spec) { s.Aggregates = nil }, "$.apps[0]", "at least one"},
		{func(s *Spec) { s.Aggregates = []AggregateSpec{{Fn: "median", Field: "x"}} }, "$.apps[0].aggregates[0].fn", "unknown function"},
		{func(s *Spec) { s.Aggregates = []AggregateSpec{{Fn: "sum"}} }, "$.apps[0].aggregates[0]", "needs a field"},
		{func(s *Spec) { s.Aggregates = []AggregateSpec{{Fn: "count"}, {Fn: "count"}} }, "$.apps[0].aggregates[1].name", "used twice"},
		{func(s *Spec) {
			s.Windows = []config.Duration{config.Duration(time.Minute)}
			s.Window = config.Duration(time.Hour)
		}, "$.apps[0].window", "not both"},
		{func(s *Spec) {
			s.Windows = []config.Duration{config.Duration(time.Minute), config.Duration(1500 * time.Millisecond)}
		}, "$.apps[0].windows[1]", "whole number of seconds"},
		{func(s *Spec) {
			s.Windows = []config.Duration{config.Duration(time.Minute), config.Duration(time.Hour), config.Duration(time.Minute)}
		}, "$.apps[0].windows[2]", "appears twice"},
		{func(s *Spec) {
			s.Windows = make([]config.Duration, MaxWindows+1)
			for i := range s.Windows {
				s.Windows[i] = config.Duration(time.Duration(i+1) * time.Minute)
			}
		}, "$.apps[0].windows", "at most 8 windows"},
		{func(s *Spec) {
			s.Windows = []config.Duration{config.Duration(time.Minute), config.Duration(48 * time.Hour)}
			s.Retention = config.Duration(24 * time.Hour)
		}, "$.apps[0].retention", "at least one window (2d)"},
		{func(s *Spec) { s.Aggregates = []AggregateSpec{{Fn: "topk", Field: "x", K: 101}} }, "$.apps[0].aggregates[0].k", "between 1 and 100"},
		{func(s *Spec) { s.Aggregates = []AggregateSpec{{Fn: "topk", Field: "x", K: -1}} }, "$.apps[0].aggregates[0].k", "between 1 and 100"},
		{func(s *Spec) { s.Aggregates = []AggregateSpec{{Fn: "topk"}} }, "$.apps[0].aggregates[0]", "needs a field"},
		{func(s *Spec) { s.Aggregates = []AggregateSpec{{Fn: "count_distinct", Field: "x", K: 3}} }, "$.apps[0].aggregates[0].k", "only for topk"},
		{func(s *Spec) {
			s.Aggregates = []AggregateSpec{{Fn: "topk", Field: "x", Quantiles: []float64{0.5}}}
		}, "$.apps[0].aggregates[0].quantiles", "only for percentile"},
		{func(s *Spec) {
			s.Aggregates = []AggregateSpec{{Fn: "percentile", Field: "x", Quantiles: []float64{0.5, 1.5}}}
		}, "$.apps[0].aggregates[0].quantiles", "1.5 is not between 0 and 1"},
		{func(s *Spec) {
			s.Aggregates = []AggregateSpec{{Fn: "percentile", Field: "x", Quantiles: []float64{0.9, 0.9}}}
		}, "$.apps[0].aggregates[0].quantiles", "listed twice"},
		{func(s *Spec) {
			s.Aggregates = []AggregateSpec{{Fn: "percentile", Field: "x", Quantiles: []float64{}}}
		}, "$.apps[0].aggregates[0].quantiles", "at least one"},
		{func(s *Spec) {
			for i := range 20 {
				s.Aggregates = append(s.Aggregates, AggregateSpec{Name: fmt.Sprint("t", i), Fn: "topk", Field: "x", K: 100})
			}
		}, "$.apps[0].aggregates", "split them over two apps"},
		{func(s *Spec) { s.MaxFuture = -1 }, "$.apps[0].max_future", "must be positive"},
		{func(s *Spec) { s.MaxCells = -1 }, "$.apps[0].max_cells", "must not be negative"},
		{func(s *Spec) { s.MaxFuture = config.Duration(2 * time.Hour) }, "$.apps[0].max_future", "must not exceed allowed_lateness (1h)"},
		{func(s *Spec) { s.Retention = config.Duration(time.Hour); s.MaxFuture = config.Duration(time.Hour) }, "$.apps[0].max_future", "must be less than retention (1h)"},
		{func(s *Spec) {
			s.AllowedLateness = config.Duration(3 * time.Hour)
			s.MaxFuture = config.Duration(2 * time.Hour)
			s.Retention = config.Duration(2 * time.Hour)
		}, "$.apps[0].max_future", "less than retention"},
		// A line accepted allowed_lateness behind the watermark would
		// open again a window retention has dropped: a partial cell, in
		// memory and in the store, where the whole one was deleted.
		{func(s *Spec) {
			s.AllowedLateness = config.Duration(2 * time.Hour)
			s.Retention = config.Duration(time.Hour)
			s.MaxFuture = config.Duration(time.Minute)
		}, "$.apps[0].allowed_lateness", "must not exceed retention (1h)"},
	}
	for _, tc := range cases {
		s := base()
		tc.mut(&s)
		_, err := Compile(s, "$.apps[0]")
		var fe *config.FieldError
		if !errors.As(err, &fe) || fe.Path != tc.path || !strings.Contains(fe.Msg, tc.msg) {
			t.Errorf("want %s: %q, got %v", tc.path, tc.msg, err)
		}
	}
	if _, err := Compile(base(), "$.apps[0]"); err != nil {
		t.Fatal(err)
	}
	// max_future defaults to 1h, or to allowed_lateness or half the
	// retention if shorter; allowed_lateness to 1h, or to the retention
	// if shorter: a valid app without them stays valid.
	for _, tc := range []struct {
		lateness, retention time.Duration
		want, wantLate      int64
	}{
		{0, 0, 3600_000, 3600_000},
		{2 * time.Hour, 0, 3600_000, 7200_000},
		{5 * time.Minute, 0, 300_000, 300_000},
		{0, time.Hour, 1800_000, 3600_000},
		{0, time.Minute, 30_000, 60_000},
	} {
		s := base()
		s.AllowedLateness = config.Duration(tc.lateness)
		s.Retention = config.Duration(tc.retention)
		a, err := Compile(s, "$.apps[0]")
		if err != nil || a.MaxFutureMs != tc.want || a.LatenessMs != tc.wantLate {
			t.Errorf("allowed_lateness %v, retention %v: max_future %d ms, allowed_lateness %d ms, %v; want %d, %d", tc.lateness, tc.retention, a.MaxFutureMs, a.LatenessMs, err, tc.want, tc.wantLate)
		}
	}
}

func TestTimeLayouts(t *testing.T) {
	for layout, in := range map[string]Value{
		"unix":                {Str: "1700000000"},
		"unix_ms":             {Num: 1700000000000, IsNum: true},
		"unix_us":             {Str: "1700000000000000"},
		"unix_ns":             {Str: "1700000000000000000"},
		"rfc3339":             {Str: "2023-11-14T22:13:20Z"},
		"2006-01-02 15:04:05": {Str: "2023-11-14 22:13:20"},
	} {
		p, err := newTimeParser(layout)
		if err != nil {
			t.Fatalf("%s: %v", layout, err)
		}
		ms, err := p(in)
		if err != nil || ms != 1700000000000 {
			t.Errorf("%s(%v) = %d, %v", layout, in, ms, err)
		}
	}
}

// TestTimeOutOfRange: times that are not a moment after 1970 in int64 ms
// (NaN, infinities, zero, negative, overflowing) are bad times; a
// conversion must never wrap.
func TestTimeOutOfRange(t *testing.T) {
	cases := []struct {
		layout string
		in     Value
		msg    string
	}{
		{"unix", Value{Str: "NaN"}, "not a number"},
		{"unix", Value{Str: "-Inf"}, "not a number"},
		{"unix", Value{Str: "+Inf"}, "not a number"},
		{"unix", Value{Str: "0"}, "not after 1970"},
		{"unix", Value{Str: "-1700000000"}, "not after 1970"},
		{"unix_ms", Value{Num: 0.5, IsNum: true}, "not after 1970"},
		{"unix", Value{Str: "1e300"}, "does not fit in int64 ms"},
		{"unix", Value{Str: "9223372036854776"}, "does not fit in int64 ms"}, // 2^63 ms
		{"unix_ms", Value{Str: "9223372036854775808"}, "does not fit in int64 ms"},
		{"unix_ns", Value{Str: "1e40"}, "does not fit in int64 ms"},
		{"unix", Value{Str: "-1e300"}, "not after 1970"},
		{"rfc3339", Value{Str: "1970-01-01T00:00:00Z"}, "not after 1970"},
		{"rfc3339", Value{Str: "0001-01-01T00:00:00Z"}, "not after 1970"},
		{"unix", Value{Str: strings.Repeat("9", 10000) + "x"}, "bytes)"}, // clipped
	}
	for _, tc := range cases {
		p, err := newTimeParser(tc.layout)
		if err != nil {
			t.Fatal(err)
		}
		ms, err := p(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.msg) || len(err.Error()) > 400 {
			t.Errorf("%s(%.40v) = %d, %v; want an error with %q", tc.layout, tc.in, ms, err, tc.msg)
		}
	}
	// The largest times that fit are taken.
	p, _ := newTimeParser("unix_ms")
	if ms, err := p(Value{Str: "9223372036854774784"}); err != nil || ms != 9223372036854774784 {
		t.Errorf("largest unix_ms: %d, %v", ms, err)
	}
	if ms, err := p(Value{Str: "1"}); err != nil || ms != 1 {
		t.Errorf("1 ms: %d, %v", ms, err)
	}
	// Through Extract: a bad time, and no arrival time for an app without
	// a time field.
	a := mustCompile(t, Spec{Name: "a", Category: "c", Time: &TimeSpec{Field: "ts", Layout: "unix"}, Aggregates: []AggregateSpec{{Fn: "count"}}})
	if _, err := a.NewExtractor().Extract([]byte(`{"ts": -5}`), 1); !errors.Is(err, ErrBadTime) {
		t.Errorf("negative time: %v", err)
	}
	arr := mustCompile(t, Spec{Name: "a", Category: "c", Aggregates: []AggregateSpec{{Fn: "count"}}})
	for _, arrival := range []int64{0, -1} {
		if _, err := arr.NewExtractor().Extract([]byte(`{}`), arrival); !errors.Is(err, ErrBadTime) {
			t.Errorf("arrival %d: %v", arrival, err)
		}
	}
}

func TestWindowStartAndKeys(t *testing.T) {
	a := &App{WindowMs: 60000}
	for in, want := range map[int64]int64{0: 0, 59999: 0, 60000: 60000, -1: -60000, -60000: -60000} {
		if got := a.WindowStart(in); got != want {
			t.Errorf("WindowStart(%d) = %d, want %d", in, got, want)
		}
	}
	k := EncodeKey([]string{"a\x00b", "", "c"})
	if got := DecodeKey(k, 3); len(got) != 3 || got[0] != "a\uFFFDb" || got[1] != "" || got[2] != "c" {
		t.Fatalf("round trip %q", got)
	}
	if EncodeKey(nil) != "" || DecodeKey("", 0) != nil || DecodeKey("x", 1)[0] != "x" {
		t.Fatal("edge keys")
	}
}

// TestWhereForm: a filter written otherwise has the form of the
// original; one that means something else has another.
func TestWhereForm(t *testing.T) {
	form := func(w string) string {
		s := Spec{Name: "a", Category: "c", Format: "json", GroupBy: []string{"k"}, Aggregates: []AggregateSpec{{Fn: "count"}}}
		s.Where = w
		a, err := Compile(s, "$.apps[0]")
		if err != nil {
			t.Fatalf("%q: %v", w, err)
		}
		return a.WhereForm()
	}
	base := form(`status >= 500 and (method == "GET" or method <> 'HEAD') and not bot`)
	for _, same := range []string{
		"status>=500 AND (method = 'GET' OR method != \"HEAD\") and NOT bot",
		"((status >= 500) and (method == \"GET\" or (method != 'HEAD'))) and not (bot)",
		" status >=  500\n and\t(method=='GET' or method<>'HEAD') and not bot ",
	} {
		if got := form(same); got != base {
			t.Errorf("%q: form %q, want %q", same, got, base)
		}
	}
	for _, other := range []string{
		`status >= 500 and (method == "GET" or method != "HEAD") and bot`,
		`status >= "500" and (method == "GET" or method != "HEAD") and not bot`,
		`status >= 500 and method == "GET" or method != "HEAD" and not bot`,
		`status >= 500 and (method == "GET" or method != method) and not bot`,
		`status >= 5e2 and (method == "GET" or method != "HEAD") and not bot`,
	} {
		if got := form(other); got == base {
			t.Errorf("%q: the form of another filter, %q", other, got)
		}
	}
	if got := form(""); got != "" {
		t.Errorf("no filter: form %q", got)
	}
}
