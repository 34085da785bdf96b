package serving

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/browser"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/puma"
)

// TestControlCrossSiteForm: without an admin token, POST /admin/shutdown
// is honoured from the local host, and the operator's browser on that
// host is the local host. A page of another site that the operator opens
// must not stop the process with a form that posts itself there (no
// JavaScript of the attacker's needs to read an answer for that).
func TestControlCrossSiteForm(t *testing.T) {
	chromium := browser.Need(t)
	var shutdowns atomic.Int32
	s := newServer(t, &fakeSource{apps: testApps(t)}, func(_ *Config, d *Deps) { d.Control.Shutdown = func() { shutdowns.Add(1) } })
	// The answer to the form's post, once the handler is done with it.
	posted := make(chan int, 1)
	h := s.Handler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		if r.URL.Path == "/admin/shutdown" {
			posted <- rec.code
		}
	}))
	defer srv.Close()
	// The attacker's page, on another site (localhost is not 127.0.0.1).
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, fmt.Sprintf(`<!doctype html><form method="POST" action="%s/admin/shutdown"><input name="x" value="1"></form>
<script>document.forms[0].submit()</script>`, srv.URL))
	}))
	defer evil.Close()

	c, ctx, done := browser.Open(t, chromium)
	defer done()
	page, err := c.NewPage(ctx, 800, 600)
	if err != nil {
		t.Fatal(err)
	}
	if err := page.Navigate(ctx, strings.Replace(evil.URL, "127.0.0.1", "localhost", 1)+"/"); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-posted:
		if code != http.StatusForbidden || shutdowns.Load() != 0 {
			t.Fatalf("a cross-site form post to /admin/shutdown: %d, %d shutdowns; want 403 and none", code, shutdowns.Load())
		}
	case <-ctx.Done():
		t.Fatalf("the form was never posted\n%s", strings.Join(page.Logs(), "\n"))
	}
}

// TestDashboardHostileText: keys, top values and rejected lines come from
// applications' log lines. The dashboard, served by the real port, shows
// markup in them as text, draws its charts under the port's
// Content-Security-Policy, and that policy stops script the page did not
// load from the port (inline scripts, inline event handlers) should such
// text ever reach the page as markup. (The policy refuses eval too, but
// not to code DevTools runs, which this test's is.)
func TestDashboardHostileText(t *testing.T) {
	chromium := browser.Need(t)
	hostile := []string{`<img src=x onerror="window.xss='img'">`, `"><script>window.xss='script'</script>`, `javascript:window.xss='url'`}
	spec := apps.Spec{Name: "web", Category: "web", Format: "json", GroupBy: []string{"path"}, Window: config.Duration(time.Minute),
		Aggregates: []apps.AggregateSpec{{Name: "hits", Fn: "count"}, {Name: "paths", Fn: "topk", Field: "path"}}}
	spec.SetDefaults()
	app, err := apps.Compile(spec, "$.apps[0]")
	if err != nil {
		t.Fatal(err)
	}
	w0 := now.Add(-10 * time.Minute).Truncate(time.Minute).UnixMilli()
	var top []any
	for i, h := range hostile {
		top = append(top, map[string]any{"value": h, "count": float64(30 - i), "error": 0.0})
	}
	src := &funcSource{apps: []*apps.App{app}, fn: func(q puma.Query) *puma.Result {
		res := &puma.Result{App: "web", AsOf: puma.AsOf{TimeMs: now.UnixMilli(), WatermarkMs: w0 + 61_000}}
		if len(q.GroupBy) == 0 {
			res.Rows = []puma.Row{{WindowStartMs: w0, WindowEndMs: w0 + 60_000, Key: map[string]string{}, Values: map[string]any{"hits": 90.0, "paths": top}}}
			return res
		}
		for i, h := range hostile {
			res.Rows = append(res.Rows, puma.Row{WindowStartMs: w0, WindowEndMs: w0 + 60_000, Key: map[string]string{"path": h}, Values: map[string]any{"hits": float64(30 - i), "paths": top}})
		}
		return res
	}}
	rej := puma.Rejections{Dropped: map[string]uint64{"parse_error": 1}, Samples: []puma.Rejected{
		{Reason: "parse_error", Line: hostile[0], Error: "parse " + hostile[1], Bucket: 0, At: now},
	}}
	s := newServer(t, &rejectingFuncSource{funcSource: src, rej: rej})
	stop := run(t, s)
	defer stop() //nolint:errcheck // the test is over; Run's error is not what it checks

	from, to := now.Add(-time.Hour).Unix(), now.Unix()
	page, ctx, done := dashboardAt(t, chromium, fmt.Sprintf("%s/#app=web&from=%d&to=%d&split=path&refresh=0", s.URL(), from, to))
	defer done()
	if err := page.Wait(ctx, "window.freewayDashboard && (freewayDashboard.rendered > 0 || freewayDashboard.errors > 0)"); err != nil {
		t.Fatal(err)
	}
	if _, err := page.SaveScreenshot(ctx, browser.Artifacts(t), "hostile.png", true); err != nil {
		t.Error(err)
	}
	var got struct {
		Error     string
		XSS       any
		Plots     int
		Legend    []string
		Keys      []string
		TopValues []string
		Sample    []string
		Images    int
		Injected  []string
	}
	err = page.Eval(ctx, `(() => {
	  const q = (s) => [...document.querySelectorAll(s)];
	  const injected = [];
	  window.ran = [];
	  const s = document.createElement('script');
	  s.textContent = 'window.ran.push("inline script")';
	  document.body.append(s);
	  const d = document.createElement('div');
	  d.setAttribute('onclick', 'window.ran.push("inline handler")');
	  document.body.append(d);
	  d.click();
	  return {
	    Error: freewayDashboard.lastError,
	    XSS: window.xss === undefined ? null : window.xss,
	    Plots: q('#charts .uplot canvas').length,
	    Legend: q('#charts .u-legend .u-label').map((e) => e.textContent),
	    Keys: q('#topkeys td.key').map((e) => e.textContent),
	    TopValues: q('#topk table[data-agg="paths"] tbody tr').map((tr) => tr.dataset.value),
	    Sample: q('#rejected tbody tr.sample td').map((e) => e.textContent),
	    Images: q('img').length,
	    Injected: window.ran,
	  };
	})()`, &got)
	if err != nil {
		t.Fatal(err)
	}
	if got.Error != "" {
		t.Fatalf("the page failed: %s\n%s", got.Error, strings.Join(page.Logs(), "\n"))
	}
	if got.XSS != nil {
		t.Errorf("text from the logs ran as script: window.xss = %v", got.XSS)
	}
	if got.Plots == 0 {
		t.Errorf("no chart drawn under the Content-Security-Policy\n%s", strings.Join(page.Logs(), "\n"))
	}
	for name, texts := range map[string][]string{"legend": got.Legend[1:], "top keys": got.Keys, "top values": got.TopValues} {
		if !reflect.DeepEqual(texts, hostile) {
			t.Errorf("%s: %q, want the keys as text %q", name, texts, hostile)
		}
	}
	if len(got.Sample) != 5 || got.Sample[3] != hostile[0] || got.Sample[4] != "parse "+hostile[1] || got.Images != 0 {
		t.Errorf("rejected line: %q, %d images; want the line and its error as text", got.Sample, got.Images)
	}
	if len(got.Injected) != 0 {
		t.Errorf("script not loaded from the port ran in the page: %v", got.Injected)
	}
}

// TestDashboardCraftedFragment: the view is in the URL's fragment, which
// anyone can write into a link. A fragment whose times are not times
// leaves the default range instead of breaking the page, and one that
// asks for a refresh every millisecond (or every 300 years, which
// setTimeout takes as at once) does not get the page to query the server
// back to back.
func TestDashboardCraftedFragment(t *testing.T) {
	chromium := browser.Need(t)
	s := newServer(t, &fakeSource{apps: testApps(t)})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	c, ctx, done := browser.Open(t, chromium)
	defer done()
	for _, fragment := range []string{"app=orders&from=x&to=y&refresh=0", "app=orders&from=1e20&to=2e20&refresh=0", "app=orders&refresh=0.001", "app=orders&refresh=1e10"} {
		page, err := c.NewPage(ctx, 1200, 900)
		if err != nil {
			t.Fatal(err)
		}
		if err := page.Navigate(ctx, srv.URL+"/#"+fragment); err != nil {
			t.Fatal(err)
		}
		var exceptions []string
		testkit.WaitFor(t, "the page to render or throw", func() bool {
			exceptions = exceptions[:0]
			for _, l := range page.Logs() {
				if strings.HasPrefix(l, "exception:") {
					exceptions = append(exceptions, l)
				}
			}
			var n int
			err := page.Eval(ctx, "window.freewayDashboard ? freewayDashboard.rendered + freewayDashboard.errors : 0", &n)
			return len(exceptions) > 0 || (err == nil && n > 0)
		})
		var got struct {
			Rendered  int
			LastError string
			Hash      string
			Refresh   float64
		}
		if err := page.Eval(ctx, "({Rendered: freewayDashboard.rendered, LastError: freewayDashboard.lastError, Hash: location.hash, Refresh: freewayDashboard.state.refresh})", &got); err != nil {
			t.Fatal(err)
		}
		if len(exceptions) > 0 || got.Rendered == 0 || got.LastError != "" || !strings.Contains(got.Hash, "range=3600") {
			t.Errorf("#%s: %+v, threw %q; want the page rendered over the default range", fragment, got, exceptions)
		}
		if got.Refresh != 0 && (got.Refresh < 1 || got.Refresh > 86400) {
			t.Errorf("#%s: refreshes every %vs", fragment, got.Refresh)
		}
	}
}

// rejectingFuncSource is a funcSource that also keeps rejected lines, as
// a Puma node does.
type rejectingFuncSource struct {
	*funcSource
	rej puma.Rejections
}

func (r *rejectingFuncSource) Rejections(string) (puma.Rejections, bool) { return r.rej, true }
