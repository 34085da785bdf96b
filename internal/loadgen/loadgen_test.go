package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/thrift/gen/scribe"
)

var start = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func TestJSONLinesAreDeterministicSizedAndSayTheirRecord(t *testing.T) {
	l := Lines{Format: JSON, Size: 176, Keys: 10000, Seed: 7, Start: start, Step: 300 * time.Microsecond}
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	for i := range int64(5000) {
		line, r := l.Append(nil, i, 0)
		again, _ := l.Append(nil, i, 0)
		if !bytes.Equal(line, again) {
			t.Fatalf("line %d differs between two makes:\n%s\n%s", i, line, again)
		}
		if len(line) != 176 {
			t.Fatalf("line %d is %d bytes, want 176: %s", i, len(line), line)
		}
		var got struct {
			Ts    int64  `json:"ts"`
			Key   string `json:"key"`
			Value int64  `json:"value"`
		}
		if err := json.Unmarshal(line, &got); err != nil {
			t.Fatalf("line %d is not JSON: %v: %s", i, err, line)
		}
		want := Record{Value: r.Value, TsMs: start.UnixMilli() + i*3/10}
		if got.Ts != want.TsMs || got.Value != r.Value || got.Key != KeyName(r.Key, 10000) || r.TsMs != want.TsMs {
			t.Fatalf("line %d says ts %d key %s value %d; record %+v, want ts %d", i, got.Ts, got.Key, got.Value, r, want.TsMs)
		}
		if r.Value < 0 || r.Value > MaxValue || r.Key < 0 || r.Key >= 10000 {
			t.Fatalf("line %d: record out of range: %+v", i, r)
		}
	}
	other := l
	other.Seed = 8
	a, _ := l.Append(nil, 1, 0)
	b, _ := other.Append(nil, 1, 0)
	if bytes.Equal(a, b) {
		t.Fatalf("seeds 7 and 8 make the same line %s", a)
	}
}

func TestRegexLinesMatchThePattern(t *testing.T) {
	re := regexp.MustCompile(RegexPattern)
	for _, size := range []int{0, 200} {
		l := Lines{Format: Regex, Size: size, Keys: 1000, Seed: 1, Start: start.Add(1234 * time.Millisecond), Step: time.Millisecond}
		if err := l.Validate(); err != nil {
			t.Fatal(err)
		}
		for i := range int64(3000) {
			line, r := l.Append(nil, i, 0)
			if size > 0 && len(line) != size {
				t.Fatalf("line %d is %d bytes, want %d: %s", i, len(line), size, line)
			}
			m := re.FindSubmatch(line)
			if m == nil {
				t.Fatalf("line %d does not match the pattern: %s", i, line)
			}
			ts, err := time.Parse(TimeLayout, string(m[re.SubexpIndex("ts")]))
			if err != nil {
				t.Fatal(err)
			}
			v, _ := strconv.ParseInt(string(m[re.SubexpIndex("value")]), 10, 64)
			if key := string(m[re.SubexpIndex("key")]); key != KeyName(r.Key, 1000) || v != r.Value || ts.UnixMilli() != r.TsMs {
				t.Fatalf("line %d says key %s value %d ts %d; record %+v", i, key, v, ts.UnixMilli(), r)
			}
			if want := start.Add(1234*time.Millisecond + time.Duration(i)*time.Millisecond).Truncate(time.Second).UnixMilli(); r.TsMs != want {
				t.Fatalf("line %d: ts %d, want %d (to the second)", i, r.TsMs, want)
			}
		}
	}
}

func TestSequentialKeysAndLiveTimes(t *testing.T) {
	l := Lines{Format: JSON, Keys: 100, Sequential: true}
	for i := range int64(250) {
		r := l.Record(i, 42)
		if r.Key != int(i%100) || r.TsMs != 42 {
			t.Fatalf("line %d: %+v, want key %d ts 42", i, r, i%100)
		}
	}
	if line, _ := l.Append(nil, 3, 42); !strings.HasPrefix(string(line), `{"ts":42,"key":"k0000003","value":`) {
		t.Fatalf("shortest line: %s", line)
	}
}

// TestKeyNamesAndPaddedNumbers: key names and the lines' zero-padded
// fields are the decimal digits, padded to the width (key names to 7
// digits, more from 10 M keys), without an allocation per line.
func TestKeyNamesAndPaddedNumbers(t *testing.T) {
	for _, c := range []struct{ k, keys int }{{0, 1}, {9, 10}, {1234, 10000}, {9999999, 10000000}, {10000000, 10000001}, {123, 123456789}} {
		want := "k" + strings.Repeat("0", max(0, max(7, len(strconv.Itoa(c.keys-1)))-len(strconv.Itoa(c.k)))) + strconv.Itoa(c.k)
		if got := KeyName(c.k, c.keys); got != want {
			t.Errorf("key %d of %d: %q, want %q", c.k, c.keys, got, want)
		}
	}
	for _, c := range []struct {
		v, width int
		want     string
	}{{0, 2, "00"}, {7, 2, "07"}, {99, 2, "99"}, {42, 5, "00042"}, {123456, 5, "123456"}, {0, 0, "0"}, {1 << 62, 1, strconv.Itoa(1 << 62)}} {
		if got := string(appendPadded([]byte("x"), c.v, c.width)); got != "x"+c.want {
			t.Errorf("appendPadded(%d, %d) = %q, want %q", c.v, c.width, got, "x"+c.want)
		}
	}
	l := Lines{Format: JSON, Size: 176, Keys: 10000, Seed: 1, Start: start, Step: time.Millisecond}
	buf := make([]byte, 0, 1024)
	if a := testing.AllocsPerRun(100, func() { buf, _ = l.Append(buf[:0], 12345, 0) }); a != 0 {
		t.Errorf("%v allocations per line, want none", a)
	}
}

func TestValidateRefuses(t *testing.T) {
	for _, l := range []Lines{
		{Format: "xml", Keys: 1},
		{Format: JSON, Keys: 0},
		{Format: JSON, Keys: 10, Size: 50},
		{Format: Regex, Keys: 10, Size: 60},
		{Format: JSON, Keys: 10, Step: -1},
	} {
		if err := l.Validate(); err == nil {
			t.Errorf("%+v: no error", l)
		}
	}
	if m := MinSize(JSON, 10000); m > 176 {
		t.Fatalf("the issue's 176-byte lines do not fit: MinSize %d", m)
	}
}

func TestTruthAndCompare(t *testing.T) {
	l := Lines{Format: JSON, Keys: 50, Seed: 3, Start: start, Step: 10 * time.Millisecond}
	var buf bytes.Buffer
	truth := NewTruth(50)
	if err := l.Write(&buf, 0, 20000, 0, truth); err != nil {
		t.Fatal(err)
	}
	// Recount from the written lines.
	got := map[Cell]Agg{}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var r struct {
			Ts    int64
			Key   string
			Value int64
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		c := Cell{r.Key, r.Ts - r.Ts%Window}
		a := got[c]
		a.Count++
		a.Sum += r.Value
		got[c] = a
	}
	if ok, detail := Compare(truth.Cells(), got); !ok {
		t.Fatal(detail)
	}
	if truth.Total().Count != 20000 || truth.Len() != 50*4 {
		t.Fatalf("total %+v over %d cells, want 20000 over 200 (50 keys, 200 s)", truth.Total(), truth.Len())
	}
	for c, a := range got {
		a.Sum++
		got[c] = a
		break
	}
	if ok, detail := Compare(truth.Cells(), got); ok || !strings.Contains(detail, "1 wrong") {
		t.Fatalf("a changed sum: %v %s", ok, detail)
	}
}

func TestHistQuantiles(t *testing.T) {
	var h hist
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Millisecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.9, 900 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {1, time.Second}} {
		got := h.quantile(c.q)
		if d := float64(got-c.want) / float64(c.want); d > 0.04 || d < -0.04 {
			t.Errorf("q%.2f = %v, want %v within 4%%", c.q, got, c.want)
		}
	}
}

// server is a Scribe server that answers TRY_LATER to its first calls.
type server struct {
	mu       sync.Mutex
	tryLater int
	lines    []string
}

func (s *server) Log(_ context.Context, entries []*scribe.LogEntry) (scribe.ResultCode, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tryLater > 0 {
		s.tryLater--
		return scribe.ResultCode_TRY_LATER, nil
	}
	for _, e := range entries {
		if e.Category != "bench" {
			return scribe.ResultCode_TRY_LATER, nil
		}
		s.lines = append(s.lines, string(e.Message))
	}
	return scribe.ResultCode_OK, nil
}

func (s *server) LogBatch(context.Context, *scribe.Batch) (scribe.ResultCode, error) {
	return scribe.ResultCode_TRY_LATER, nil
}

func TestLoaderSendsEveryLineOnceAndRetriesTryLater(t *testing.T) {
	h := &server{tryLater: 3}
	srv, err := scribeapi.Listen("127.0.0.1:0", h, scribeapi.Info{Name: "test"}, thriftsrv.Limits{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = srv.Serve(ctx) }() // stops when the test ends; the test checks what it answered

	spec := Lines{Format: JSON, Size: 176, Keys: 100, Seed: 9, Start: start, Step: time.Millisecond}
	var out bytes.Buffer
	var ackMu sync.Mutex
	acked := NewTruth(100)
	ld, err := New(Options{Addr: srv.Addr(), Category: "bench", Lines: spec, Conns: 3, Batch: 7, Count: 1000, Out: &out,
		OnAck: func(rs []Record) {
			ackMu.Lock()
			defer ackMu.Unlock()
			for _, r := range rs {
				acked.Add(r)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	sum, err := ld.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Entries != 1000 || sum.Bytes != 176000 || sum.TryLater != 3 || sum.Errors != 0 || sum.Unknown != 0 || sum.Calls != 143+3 {
		t.Fatalf("summary %+v: want 1000 entries, 176000 bytes, 3 TRY_LATER, 146 calls", sum)
	}
	if sum.LatencyMs.P50 <= 0 || sum.LatencyMs.Max < sum.LatencyMs.P99 {
		t.Fatalf("latencies %+v", sum.LatencyMs)
	}
	// The server got lines 0-999 once each, as the file and the truth say.
	want := NewTruth(100)
	var file bytes.Buffer
	if err := spec.Write(&file, 0, 1000, 0, want); err != nil {
		t.Fatal(err)
	}
	wantLines := strings.Split(strings.TrimSpace(file.String()), "\n")
	got := append([]string(nil), h.lines...)
	sent := strings.Split(strings.TrimSpace(out.String()), "\n")
	for _, set := range [][]string{got, sent} {
		sortStrings(set)
	}
	sortStrings(wantLines)
	if strings.Join(got, "\n") != strings.Join(wantLines, "\n") || strings.Join(sent, "\n") != strings.Join(wantLines, "\n") {
		t.Fatalf("server got %d lines, --out has %d, want the same %d lines", len(got), len(sent), len(wantLines))
	}
	if ok, detail := Compare(want.Cells(), acked.Cells()); !ok {
		t.Fatal(detail)
	}
}

func TestLoaderCountsWhatFailsWithoutAnAnswer(t *testing.T) {
	// Nothing listens there: every connection attempt fails, nothing is
	// acknowledged, and the run ends with its duration.
	ld, err := New(Options{Addr: "127.0.0.1:1", Category: "bench", Lines: Lines{Format: JSON, Keys: 1},
		Conns: 2, Batch: 10, Duration: 300 * time.Millisecond, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	sum, err := ld.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if sum.Entries != 0 || sum.Errors == 0 || sum.LastErr == "" {
		t.Fatalf("summary %+v: want no entries and connection errors", sum)
	}
}

// TestLoaderStopsWhenNothingListens: a run of a count of lines to a
// server it cannot reach ends, with the error, once connecting has
// failed for Timeout (`freeway load --count 10` to a wrong port hung,
// printing nothing).
func TestLoaderStopsWhenNothingListens(t *testing.T) {
	ld, err := New(Options{Addr: "127.0.0.1:1", Category: "bench", Lines: Lines{Format: JSON, Keys: 1},
		Conns: 2, Batch: 10, Count: 100, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		sum Summary
		err error
	}
	done := make(chan result, 1)
	go func() {
		sum, err := ld.Run(context.Background())
		done <- result{sum, err}
	}()
	select {
	case r := <-done:
		if r.err == nil || !strings.Contains(r.err.Error(), "cannot connect to 127.0.0.1:1") || r.sum.Entries != 0 || r.sum.Unknown != 0 {
			t.Fatalf("summary %+v, error %v: want none sent and the connection error", r.sum, r.err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the run did not end with nothing listening")
	}
}

// TestLoaderPacesFromTheStart: a rate below a batch per connection a
// second does not send every connection's first batch at once: over a
// short run, one batch leaves (8000 entries for --rate 100 over 3s
// before, 8 connections of 1000).
func TestLoaderPacesFromTheStart(t *testing.T) {
	h := &server{}
	srv, err := scribeapi.Listen("127.0.0.1:0", h, scribeapi.Info{Name: "test"}, thriftsrv.Limits{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = srv.Serve(ctx) }() // stops when the test ends
	// One entry a second over 4 connections of batches of 10: a batch
	// every 10 s, the second one 10 s after the start, far past the run.
	ld, err := New(Options{Addr: srv.Addr(), Category: "bench", Lines: Lines{Format: JSON, Keys: 1},
		Conns: 4, Batch: 10, Rate: 1, Duration: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	sum, err := ld.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Entries != 10 {
		t.Fatalf("summary %+v: want one batch of 10 entries", sum)
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	ok := Options{Addr: "x:1", Category: "c", Lines: Lines{Format: JSON, Keys: 1}, Conns: 1, Batch: 1, Count: 1}
	for name, mutate := range map[string]func(*Options){
		"no addr":        func(o *Options) { o.Addr = "" },
		"no category":    func(o *Options) { o.Category = "" },
		"no conns":       func(o *Options) { o.Conns = 0 },
		"no batch":       func(o *Options) { o.Batch = 0 },
		"negative rate":  func(o *Options) { o.Rate = -1 },
		"negative count": func(o *Options) { o.Count = -1 },
		"bad lines":      func(o *Options) { o.Lines.Keys = 0 },
	} {
		o := ok
		mutate(&o)
		if _, err := New(o); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := New(ok); err != nil {
		t.Fatal(err)
	}
}

func sortStrings(s []string) { slices.Sort(s) }

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestLoaderStopsWhenOutFails(t *testing.T) {
	srv, err := scribeapi.Listen("127.0.0.1:0", &server{}, scribeapi.Info{Name: "test"}, thriftsrv.Limits{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = srv.Serve(ctx) }() // stops when the test ends; the test checks what it answered
	ld, err := New(Options{Addr: srv.Addr(), Category: "bench", Lines: Lines{Format: JSON, Size: 176, Keys: 10}, Conns: 2, Batch: 100,
		Count: 1_000_000, Out: failingWriter{}})
	if err != nil {
		t.Fatal(err)
	}
	sum, err := ld.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("error %v, want the write error", err)
	}
	if sum.Entries >= 1_000_000 {
		t.Fatalf("sent all %d lines though --out could not be written", sum.Entries)
	}
}
