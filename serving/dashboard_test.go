package serving

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/browser"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/puma"
)

// funcSource answers queries with a function.
type funcSource struct {
	apps []*apps.App
	fn   func(q puma.Query) *puma.Result
}

func (f *funcSource) Apps() []*apps.App { return f.apps }
func (f *funcSource) Query(_ context.Context, q puma.Query) (*puma.Result, error) {
	return f.fn(q), nil
}

// dashboardAt opens url (the server's page and a fragment) in a page of
// a Chromium of its own (browser.Open); done closes it, for the test to
// defer after the server's Close, so that it runs first.
func dashboardAt(t *testing.T, chromium, url string) (page *browser.Page, ctx context.Context, done func()) {
	t.Helper()
	c, ctx, done := browser.Open(t, chromium)
	page, err := c.NewPage(ctx, 1200, 900)
	if err == nil {
		err = page.Navigate(ctx, url)
	}
	if err != nil {
		done()
		t.Fatal(err)
	}
	return page, ctx, done
}

// TestDashboardStructuredValues: the page shows the values that are not
// numbers in their tables, as the answers give them: percentiles (an
// object of quantile to value) over the range and for the top keys, and
// top values (a list of value, count, error). The app has the functions
// that give such values (percentile, topk); its answers have the shapes
// the API documents.
func TestDashboardStructuredValues(t *testing.T) {
	chromium := browser.Need(t)
	spec := apps.Spec{Name: "latency", Category: "web", Format: "json", GroupBy: []string{"path"}, Window: config.Duration(time.Minute),
		Aggregates: []apps.AggregateSpec{
			{Name: "hits", Fn: "count"},
			{Name: "ms", Fn: "percentile", Field: "ms"},
			{Name: "paths", Fn: "topk", Field: "path"},
		}}
	spec.SetDefaults()
	app, err := apps.Compile(spec, "$.apps[0]")
	if err != nil {
		t.Fatal(err)
	}
	w0 := now.Add(-10 * time.Minute).Truncate(time.Minute).UnixMilli()
	pct := func(a, b, c float64) map[string]any { return map[string]any{"0.5": a, "0.9": b, "0.99": c} }
	top := []any{map[string]any{"value": "/a", "count": 70.0, "error": 0.0}, map[string]any{"value": "/b", "count": 50.0, "error": 2.0}}
	src := &funcSource{apps: []*apps.App{app}, fn: func(q puma.Query) *puma.Result {
		res := &puma.Result{App: "latency", AsOf: puma.AsOf{TimeMs: now.UnixMilli(), WatermarkMs: w0 + 61_000}}
		row := func(w int64, key map[string]string, hits float64, p map[string]any) puma.Row {
			return puma.Row{WindowStartMs: w, WindowEndMs: w + 60_000, Key: key, Values: map[string]any{"hits": hits, "ms": p, "paths": top}}
		}
		switch {
		case q.AllWindows && len(q.GroupBy) == 0:
			res.Rows = []puma.Row{row(w0, map[string]string{}, 120, pct(12, 40, 80))}
		case q.AllWindows:
			res.Rows = []puma.Row{row(w0, map[string]string{"path": "/a"}, 70, pct(10, 30, 60)), row(w0, map[string]string{"path": "/b"}, 50, pct(15, 45, 99.5))}
		default:
			for i, w := range []int64{w0, w0 + 60_000} {
				res.Rows = append(res.Rows, row(w, map[string]string{"path": "/a"}, 30+float64(10*i), nil), row(w, map[string]string{"path": "/b"}, 20+float64(10*i), nil))
			}
		}
		return res
	}}
	s := newServer(t, src)
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()

	from, to := now.Add(-time.Hour).Unix(), now.Unix()
	page, ctx, done := dashboardAt(t, chromium, fmt.Sprintf("%s/#app=latency&from=%d&to=%d&split=path&refresh=0", srv.URL, from, to))
	defer done()
	if err := page.Wait(ctx, "window.freewayDashboard && (freewayDashboard.rendered > 0 || freewayDashboard.errors > 0)"); err != nil {
		t.Fatal(err)
	}
	if _, err := page.SaveScreenshot(ctx, browser.Artifacts(t), "structured.png", true); err != nil {
		t.Error(err)
	}
	var got struct {
		Error       string
		Totals      []string
		Charts      []string
		Percentiles [][]string
		Top         [][]string
	}
	err = page.Eval(ctx, `(() => {
	  const q = (s) => [...document.querySelectorAll(s)];
	  return {
	    Error: freewayDashboard.lastError,
	    Totals: q('#totals .total').map((e) => e.dataset.agg + '=' + e.querySelector('.value').dataset.value),
	    Charts: Object.keys(freewayDashboard.charts),
	    Percentiles: q('#percentiles tbody tr').map((tr) => [tr.dataset.agg, tr.dataset.key, ...[...tr.querySelectorAll('td[data-q]')].map((td) => td.dataset.q + '=' + td.dataset.value)]),
	    Top: q('#topk table[data-agg="paths"] tbody tr').map((tr) => [tr.dataset.value, tr.querySelector('td[data-count]').dataset.count]),
	  };
	})()`, &got)
	if err != nil {
		t.Fatal(err)
	}
	if got.Error != "" {
		t.Fatalf("the page failed: %s\n%s", got.Error, strings.Join(page.Logs(), "\n"))
	}
	want := [][]string{
		{"ms", "all", "0.5=12", "0.9=40", "0.99=80"},
		{"ms", "path=/a", "0.5=10", "0.9=30", "0.99=60"},
		{"ms", "path=/b", "0.5=15", "0.9=45", "0.99=99.5"},
	}
	if !reflect.DeepEqual(got.Percentiles, want) {
		t.Errorf("percentiles:\n%v\nwant\n%v", got.Percentiles, want)
	}
	if w := [][]string{{"/a", "70"}, {"/b", "50"}}; !reflect.DeepEqual(got.Top, w) {
		t.Errorf("top values: %v, want %v", got.Top, w)
	}
	// Numbers only in the totals and the charts.
	if !reflect.DeepEqual(got.Totals, []string{"hits=120"}) || !reflect.DeepEqual(got.Charts, []string{"hits"}) {
		t.Errorf("totals %v, charts %v: want hits alone", got.Totals, got.Charts)
	}
}

// TestDashboardBadValueIsNotLines: the page's table of lines not
// aggregated counts lines, but Puma's bad_value counts the inputs of
// numeric aggregates it skipped, in lines it aggregated otherwise (one
// Apache line with "-" for its bytes is four under the demo's
// http_status). The row must say so rather than show them as lines.
func TestDashboardBadValueIsNotLines(t *testing.T) {
	chromium := browser.Need(t)
	spec := apps.Spec{Name: "sizes", Category: "web", Format: "json", GroupBy: []string{"path"}, Window: config.Duration(time.Minute),
		Aggregates: []apps.AggregateSpec{{Name: "hits", Fn: "count"}, {Name: "bytes", Fn: "sum", Field: "bytes"}}}
	spec.SetDefaults()
	app, err := apps.Compile(spec, "$.apps[0]")
	if err != nil {
		t.Fatal(err)
	}
	src := &rejectingFuncSource{
		funcSource: &funcSource{apps: []*apps.App{app}, fn: func(puma.Query) *puma.Result { return &puma.Result{App: "sizes"} }},
		rej:        puma.Rejections{Dropped: map[string]uint64{"parse_error": 2, "bad_value": 7}},
	}
	srv := httptest.NewServer(newServer(t, src).Handler())
	defer srv.Close()

	page, ctx, done := dashboardAt(t, chromium, srv.URL+"/#app=sizes&refresh=0")
	defer done()
	if err := page.Wait(ctx, "document.querySelectorAll('#dropped tr[data-reason]').length === 2"); err != nil {
		t.Fatal(err)
	}
	var rows map[string]string
	if err := page.Eval(ctx, `Object.fromEntries([...document.querySelectorAll('#dropped tr[data-reason]')].map((tr) => [tr.dataset.reason, tr.textContent]))`, &rows); err != nil {
		t.Fatal(err)
	}
	if got := rows["parse_error"]; got != "parse_error2" {
		t.Errorf("parse_error row %q, want the reason and its lines", got)
	}
	if got := rows["bad_value"]; !strings.Contains(got, "inputs") || !strings.Contains(got, "7") {
		t.Errorf("bad_value row %q: its 7 are inputs skipped, not lines, and it must say so", got)
	}
}

// TestDashboardAsksForToken: with query tokens, the page loads without
// one (it holds no data), says that the server asks for one, and sends
// the one entered with its API calls: a wrong one is refused and said
// so, the right one shows the apps. The token is kept for the tab
// (sessionStorage), not in the page's URL.
func TestDashboardAsksForToken(t *testing.T) {
	chromium := browser.Need(t)
	qf := filepath.Join(t.TempDir(), "query-tokens")
	writeTokens(t, qf, "page-secret\n")
	g, err := auth.NewGuard(auth.Config{QueryTokensFile: qf}, slog.New(slog.DiscardHandler), prometheus.NewPedanticRegistry())
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, &fakeSource{apps: testApps(t)}, func(_ *Config, d *Deps) { d.Auth = g })
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()

	page, ctx, done := dashboardAt(t, chromium, srv.URL+"/#refresh=0")
	defer done()
	note := func(want string) {
		t.Helper()
		cond := fmt.Sprintf("window.freewayDashboard && freewayDashboard.askedToken && !document.getElementById('token-form').hidden && document.getElementById('token-note').textContent.includes(%q)", want)
		if err := page.Wait(ctx, cond); err != nil {
			t.Fatalf("waiting for the token form saying %q: %v\n%s", want, err, strings.Join(page.Logs(), "\n"))
		}
	}
	enter := func(tok string) {
		t.Helper()
		// Submitted after Eval returns: the submit reloads the page.
		js := fmt.Sprintf("setTimeout(() => { document.getElementById('token').value = %q; document.getElementById('token-form').requestSubmit(); }, 0); true", tok)
		var ok bool
		if err := page.Eval(ctx, js, &ok); err != nil {
			t.Fatal(err)
		}
	}
	note("asks for a query token")
	enter("wrong-secret")
	note("refused")
	enter("page-secret")
	if err := page.Wait(ctx, "window.freewayDashboard && freewayDashboard.state.apps.length > 0"); err != nil {
		t.Fatalf("the apps with the token: %v\n%s", err, strings.Join(page.Logs(), "\n"))
	}
	var got struct {
		Asked, FormShown bool
		Error, Hash      string
		Stored           string
	}
	if err := page.Eval(ctx, `({Asked: freewayDashboard.askedToken, FormShown: !document.getElementById('token-form').hidden,
	  Error: freewayDashboard.lastError, Hash: location.hash, Stored: sessionStorage.getItem('freeway.queryToken')})`, &got); err != nil {
		t.Fatal(err)
	}
	if got.Asked || got.FormShown || got.Error != "" || got.Stored != "page-secret" || strings.Contains(got.Hash, "secret") {
		t.Fatalf("with the token: %+v", got)
	}
}
