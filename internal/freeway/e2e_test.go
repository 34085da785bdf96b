package freeway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"os"
	"runtime/pprof"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/apps/appstest"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// testConfig is a whole pipeline on the embedded backends under dir, on
// free ports, with short intervals.
func testConfig(dir string) Config {
	cfg := DefaultConfig()
	cfg.DataDir = dir
	cfg.Agent.Listen = "127.0.0.1:0"
	cfg.Calligraphus.Listen = "127.0.0.1:0"
	cfg.Calligraphus.SegmentMaxAge = config.Duration(50 * time.Millisecond)
	cfg.Puma.CheckpointInterval = config.Duration(200 * time.Millisecond)
	cfg.Puma.PollInterval = config.Duration(20 * time.Millisecond)
	cfg.Serving.Listen = "127.0.0.1:0"
	cfg.Serving.ThriftListen = "127.0.0.1:0"
	cfg.Buckets = 3
	cfg.Apps = []apps.Spec{appstest.Orders("unix")}
	return cfg
}

type running struct {
	p      *Process
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, cfg Config) *running {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.Resolve()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p, err := New(cfg, All, Options{Version: "test", Log: log, AdminListen: "off"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{p: p, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- p.Run(ctx) }()
	return r
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(60 * time.Second):
		_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 1) // a diagnostic, before failing
		t.Fatal("process did not stop")
	}
}

// order is one generated event; expected totals are computed from the
// same events the test sends.
type order struct {
	ts           int64
	region, kind string
	amount       float64
}

func (o order) json() []byte {
	return fmt.Appendf(nil, `{"ts": %d, "region": %q, "kind": %q, "amount": %v}`, o.ts, o.region, o.kind, o.amount)
}

func orders(n, seed int, base int64) []order {
	regions := []string{"eu", "us", "ap"}
	kinds := []string{"book", "music"}
	out := make([]order, n)
	for i := range out {
		j := i + seed
		out[i] = order{
			ts:     base + int64(j%180), // three one-minute windows
			region: regions[j%3],
			kind:   kinds[(j/3)%2],
			amount: float64(j%97) + 0.25,
		}
	}
	return out
}

type agg struct {
	n, total, lo, hi float64
}

func expected(all []order) map[string]*agg {
	want := map[string]*agg{}
	for _, o := range all {
		w := o.ts - o.ts%60
		k := fmt.Sprintf("%d|%s|%s", w, o.region, o.kind)
		a := want[k]
		if a == nil {
			a = &agg{lo: math.Inf(1), hi: math.Inf(-1)}
			want[k] = a
		}
		a.n++
		a.total += o.amount
		a.lo = math.Min(a.lo, o.amount)
		a.hi = math.Max(a.hi, o.amount)
	}
	return want
}

func send(t *testing.T, addr string, os []order, batch int) {
	t.Helper()
	c, err := scribeapi.Dial(addr, thriftsrv.Limits{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < len(os); i += batch {
		var entries []*scribethrift.LogEntry
		for _, o := range os[i:min(i+batch, len(os))] {
			entries = append(entries, &scribethrift.LogEntry{Category: "orders", Message: o.json()})
		}
		for {
			rc, err := c.Log(context.Background(), entries)
			if err != nil {
				t.Fatal(err)
			}
			if rc == scribethrift.ResultCode_OK {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

type queryAnswer struct {
	App  string `json:"app"`
	Rows []struct {
		WindowStart string             `json:"window_start"`
		WindowEnd   string             `json:"window_end"`
		Key         map[string]string  `json:"key"`
		Values      map[string]float64 `json:"values"`
	} `json:"rows"`
	Error string `json:"error"`
}

func query(t *testing.T, base string, params url.Values) (int, queryAnswer) {
	t.Helper()
	resp, err := http.Get("http://" + base + "/api/v1/query?" + params.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var a queryAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		t.Fatalf("query answer %q: %v", body, err)
	}
	return resp.StatusCode, a
}

// diff compares a query answer with the expected totals exactly.
func diff(a queryAnswer, want map[string]*agg) string {
	got := map[string]bool{}
	for _, r := range a.Rows {
		ws, _ := time.Parse(time.RFC3339, r.WindowStart)
		k := fmt.Sprintf("%d|%s|%s", ws.Unix(), r.Key["region"], r.Key["kind"])
		got[k] = true
		w := want[k]
		if w == nil {
			return "unexpected row " + k
		}
		v := r.Values
		if v["n"] != w.n || math.Abs(v["total"]-w.total) > 1e-9 || v["lo"] != w.lo || v["hi"] != w.hi || math.Abs(v["mean"]-w.total/w.n) > 1e-9 {
			return fmt.Sprintf("row %s: got %v, want n=%v total=%v lo=%v hi=%v", k, v, w.n, w.total, w.lo, w.hi)
		}
		we, _ := time.Parse(time.RFC3339, r.WindowEnd)
		if we.Sub(ws) != time.Minute {
			return fmt.Sprintf("row %s: window %s..%s", k, r.WindowStart, r.WindowEnd)
		}
	}
	if len(got) != len(want) {
		return fmt.Sprintf("%d rows, want %d", len(got), len(want))
	}
	return ""
}

func waitTotals(t *testing.T, base string, from, to int64, want map[string]*agg) {
	t.Helper()
	params := url.Values{"app": {"orders"}, "from": {fmt.Sprint(from)}, "to": {fmt.Sprint(to)}}
	testkit.Eventually(t, "the totals to match", func() error {
		code, a := query(t, base, params)
		if code != http.StatusOK {
			t.Fatalf("query: %d %s", code, a.Error)
		}
		if d := diff(a, want); d != "" {
			return errors.New(d)
		}
		return nil
	})
}

const base = int64(1_700_000_040) // a minute boundary

func TestEndToEnd(t *testing.T) {
	cfg := testConfig(t.TempDir())
	r := start(t, cfg)
	defer r.stop(t)
	os := orders(3000, 0, base)
	send(t, r.p.Agent.Addr(), os, 100)
	// A stock client writing straight to calligraphus is counted too.
	direct := orders(500, 7, base)
	send(t, r.p.Calligraphus.Addr(), direct, 50)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(append(os, direct...)))

	// Merged keys and windows.
	code, a := query(t, r.p.Serving.Addr(), url.Values{"app": {"orders"}, "from": {fmt.Sprint(base)}, "to": {fmt.Sprint(base + 180)}, "group_by": {""}, "window": {"all"}})
	if code != 200 || len(a.Rows) != 1 || a.Rows[0].Values["n"] != 3500 {
		t.Fatalf("merged query: %d %+v", code, a)
	}
	// One window, keys projected to kind.
	wantKind := map[string]float64{}
	for _, o := range append(os, direct...) {
		if o.ts < base+60 {
			wantKind[o.kind]++
		}
	}
	code, a = query(t, r.p.Serving.Addr(), url.Values{"app": {"orders"}, "from": {time.Unix(base, 0).UTC().Format(time.RFC3339)}, "to": {fmt.Sprint(base + 60)}, "group_by": {"kind"}})
	if code != 200 || len(a.Rows) != len(wantKind) {
		t.Fatalf("group_by=kind: %d %+v", code, a)
	}
	for _, row := range a.Rows {
		if len(row.Key) != 1 || row.Values["n"] != wantKind[row.Key["kind"]] {
			t.Fatalf("group_by=kind row %+v, want n=%v", row, wantKind[row.Key["kind"]])
		}
	}
	// Bad requests.
	for _, bad := range []url.Values{
		{"app": {"nope"}},
		{"app": {"orders"}, "from": {"yesterday"}},
		{"app": {"orders"}, "group_by": {"colour"}},
		{"app": {"orders"}, "window": {"90s"}}, // not a multiple of the app's 1m windows
		{"app": {"orders"}, "limit": {"-1"}},
		{"app": {"orders"}, "frm": {"1"}},
		{},
	} {
		code, a := query(t, r.p.Serving.Addr(), bad)
		if code != http.StatusBadRequest || a.Error == "" {
			t.Errorf("%v: %d %q", bad, code, a.Error)
		}
	}
}

func TestRestartIsExact(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	first := orders(2000, 0, base)
	r := start(t, cfg)
	send(t, r.p.Agent.Addr(), first, 100)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(first))
	r.stop(t)

	second := orders(1500, 11, base)
	r = start(t, cfg)
	defer r.stop(t)
	send(t, r.p.Agent.Addr(), second, 100)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(append(first, second...)))
}
