package freeway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/browser"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// getJSON decodes a GET of the API into out.
func getJSON(t *testing.T, base, path string, params url.Values, out any) {
	t.Helper()
	u := "http://" + base + path
	if params != nil {
		u += "?" + params.Encode()
	}
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, out); err != nil {
		t.Fatalf("GET %s: %v: %s", u, err, body)
	}
}

// apiRows is an answer of /api/v1/query, values as numbers.
type apiRows struct {
	Rows []struct {
		WindowStart string             `json:"window_start"`
		Key         map[string]string  `json:"key"`
		Values      map[string]float64 `json:"values"`
	} `json:"rows"`
	Truncated bool `json:"truncated"`
	AsOf      struct {
		Mode      string `json:"mode"`
		Watermark string `json:"watermark"`
	} `json:"as_of"`
}

// shown is what the page shows, read from its DOM and its charts' data.
type shown struct {
	Rendered  int               `json:"rendered"`
	Errors    int               `json:"errors"`
	LastError string            `json:"lastError"`
	Totals    map[string]string `json:"totals"`    // aggregate → data-value
	TotalText map[string]string `json:"totalText"` // aggregate → text
	TopHead   []string          `json:"topHead"`
	Top       []struct {
		Key    string            `json:"key"`
		Values map[string]string `json:"values"`
	} `json:"top"`
	Charts map[string]struct {
		Names []string     `json:"names"`
		Data  [][]*float64 `json:"data"`
	} `json:"charts"`
	Canvases  int               `json:"canvases"`
	Freshness string            `json:"freshness"`
	Dropped   map[string]string `json:"dropped"`
	Samples   []string          `json:"samples"`
	Behind    string            `json:"behind"`
	Step      int64             `json:"step"` // the charts' window length, seconds
}

// readPage is the script that reads what the dashboard shows.
const readPage = `(() => {
  const d = window.freewayDashboard;
  const q = (s) => [...document.querySelectorAll(s)];
  const out = {rendered: d.rendered, errors: d.errors, lastError: d.lastError, totals: {}, totalText: {}, charts: {}, dropped: {}};
  for (const e of q('#totals .total')) {
    out.totals[e.dataset.agg] = e.querySelector('.value').dataset.value;
    out.totalText[e.dataset.agg] = e.querySelector('.value').textContent;
  }
  out.topHead = q('#topkeys thead th').map((th) => th.textContent);
  out.top = q('#topkeys tbody tr[data-key]').map((tr) => ({key: tr.dataset.key,
    values: Object.fromEntries([...tr.querySelectorAll('td[data-agg]')].map((td) => [td.dataset.agg, td.dataset.value]))}));
  for (const [agg, c] of Object.entries(d.charts)) out.charts[agg] = {names: c.names, data: c.data};
  out.canvases = q('#charts canvas').filter((c) => c.width > 0 && c.height > 0).length;
  out.freshness = document.getElementById('freshness').textContent;
  for (const tr of q('#dropped tr[data-reason]')) out.dropped[tr.dataset.reason] = tr.querySelector('td.num').dataset.value;
  out.samples = q('#rejected tr.sample td.line').map((td) => td.textContent);
  const b = document.querySelector('[data-app="orders"] .behind');
  out.behind = b ? b.dataset.behind : '';
  out.step = d.step || 0;
  return out;
})()`

// pageTime is how the page writes a time of the API: RFC 3339 in UTC
// with a space, no fraction, and no :00 seconds.
func pageTime(t *testing.T, iso string) string {
	t.Helper()
	ts, err := time.Parse(time.RFC3339Nano, iso)
	if err != nil {
		t.Fatal(err)
	}
	s := ts.UTC().Format("2006-01-02 15:04:05") + "Z"
	if strings.HasSuffix(s, ":00Z") {
		s = strings.TrimSuffix(s, ":00Z") + "Z"
	}
	return s
}

func num(t *testing.T, what, s string) float64 {
	t.Helper()
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("%s: %q is not a number", what, s)
	}
	return f
}

// TestDashboard loads the dashboard in headless Chromium from a running
// `freeway all` fed with known orders, and checks that what it shows
// equals what the API answers: the totals, the top keys table, every
// point of the charts, the watermark, the lines not aggregated; then that
// its controls ask again (split by another key, the committed mode) and
// that live refresh shows new data. It saves screenshots as artifacts.
func TestDashboard(t *testing.T) {
	chromium := browser.Need(t)
	cfg := testConfig(t.TempDir())
	r := start(t, cfg)
	defer r.stop(t)
	api := r.p.Serving.Addr()
	all := orders(3000, 0, base)
	send(t, r.p.Agent.Addr(), all, 100)
	bad := []string{"not json at all", `{"ts": "yesterday", "region": "eu"}`}
	sendRaw(t, r.p.Agent.Addr(), "orders", bad)
	from, to := base, base+180
	waitTotals(t, api, from, to, expected(all))
	var apps struct {
		Apps []struct {
			Name     string            `json:"name"`
			Dropped  map[string]uint64 `json:"dropped"`
			Rejected []struct {
				Line string `json:"line"`
			} `json:"rejected"`
		} `json:"apps"`
	}
	poll := func(what string, cond func() error) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			err := cond()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v", what, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	poll("both bad lines sampled", func() error {
		getJSON(t, api, "/api/v1/apps", nil, &apps)
		if n := len(apps.Apps[0].Rejected); n != 2 {
			return fmt.Errorf("%d samples", n)
		}
		return nil
	})

	ch, err := browser.Start(chromium)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := ch.Close(); err != nil {
			t.Error(err)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	page, err := ch.NewPage(ctx, 1400, 1000)
	if err != nil {
		t.Fatal(err)
	}
	artifacts := browser.Artifacts(t)
	shot := func(name string) {
		t.Helper()
		if _, err := page.SaveScreenshot(ctx, artifacts, name, true); err != nil {
			t.Errorf("screenshot %s: %v", name, err)
		}
	}
	defer func() {
		if t.Failed() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if _, err := page.SaveScreenshot(ctx, artifacts, "failed.png", true); err != nil {
				t.Errorf("screenshot: %v", err)
			}
			t.Logf("the page logged:\n%s\nchromium's stderr (but D-Bus):\n%s", strings.Join(page.Logs(), "\n"), withoutDBus(ch.Stderr()))
		}
	}()
	read := func(after int) shown {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if err := page.Wait(ctx, fmt.Sprintf("window.freewayDashboard && (freewayDashboard.rendered > %d || freewayDashboard.errors > 0)", after)); err != nil {
			t.Fatal(err)
		}
		var s shown
		if err := page.Eval(ctx, readPage, &s); err != nil {
			t.Fatal(err)
		}
		if s.Errors > 0 {
			t.Fatalf("the page failed: %s", s.LastError)
		}
		return s
	}
	view := fmt.Sprintf("#app=orders&from=%d&to=%d&aggs=n,total&split=region&top=5&refresh=0", from, to)
	if err := page.Navigate(ctx, "http://"+api+"/"+view); err != nil {
		t.Fatal(err)
	}
	s := read(0)
	shot("dashboard.png")

	rangeParams := func(extra url.Values) url.Values {
		v := url.Values{"app": {"orders"}, "from": {fmt.Sprint(from)}, "to": {fmt.Sprint(to)}}
		for k, x := range extra {
			v[k] = x
		}
		return v
	}
	checkView := func(s shown, key, mode string) {
		t.Helper()
		// Totals: one merged row.
		var tot apiRows
		getJSON(t, api, "/api/v1/query", rangeParams(url.Values{"window": {"all"}, "group_by": {""}, "mode": {mode}}), &tot)
		for _, agg := range []string{"n", "total", "lo", "hi", "mean"} {
			if got, want := num(t, "total "+agg, s.Totals[agg]), tot.Rows[0].Values[agg]; got != want {
				t.Errorf("total %s: page %v, API %v", agg, got, want)
			}
		}
		if want := fmt.Sprint(int(tot.Rows[0].Values["n"])); strings.ReplaceAll(s.TotalText["n"], ",", "") != want {
			t.Errorf("total n shows %q, API %s", s.TotalText["n"], want)
		}
		// Top keys by n.
		var top apiRows
		getJSON(t, api, "/api/v1/query", rangeParams(url.Values{"window": {"all"}, "group_by": {key}, "order_by": {"n:desc"}, "limit": {"5"}, "mode": {mode}}), &top)
		if len(s.Top) != len(top.Rows) || len(top.Rows) == 0 || s.TopHead[0] != key {
			t.Fatalf("top keys: page %+v (head %v), API %+v", s.Top, s.TopHead, top.Rows)
		}
		var keys []string
		for i, row := range top.Rows {
			keys = append(keys, row.Key[key])
			if s.Top[i].Key != row.Key[key] {
				t.Errorf("top key %d: page %q, API %q", i, s.Top[i].Key, row.Key[key])
			}
			for agg, want := range row.Values {
				if got := num(t, "top "+agg, s.Top[i].Values[agg]); got != want {
					t.Errorf("top %s=%s %s: page %v, API %v", key, row.Key[key], agg, got, want)
				}
			}
		}
		// The charts: a series per top key, a point per window of the
		// range, each the API's value (0 for a count without a row).
		where := url.Values{"group_by": {key}, "mode": {mode}}
		for _, k := range keys {
			where.Add("where", key+":"+k)
		}
		var series apiRows
		getJSON(t, api, "/api/v1/query", rangeParams(where), &series)
		want := map[string]map[string]float64{} // agg → "window|key" → value
		for _, row := range series.Rows {
			ws, _ := time.Parse(time.RFC3339, row.WindowStart)
			for agg, v := range row.Values {
				if want[agg] == nil {
					want[agg] = map[string]float64{}
				}
				want[agg][fmt.Sprintf("%d|%s", ws.Unix(), row.Key[key])] = v
			}
		}
		if len(s.Charts) != 2 || s.Canvases != 2 {
			t.Fatalf("%d charts, %d canvases drawn, want 2 (n and total)", len(s.Charts), s.Canvases)
		}
		for agg, c := range s.Charts {
			if strings.Join(c.Names, ",") != strings.Join(keys, ",") || len(c.Data) != len(keys)+1 {
				t.Fatalf("chart %s: series %v, want the top keys %v", agg, c.Names, keys)
			}
			if len(c.Data[0]) != 3 {
				t.Fatalf("chart %s: %d windows, want 3", agg, len(c.Data[0]))
			}
			points := 0
			for i, x := range c.Data[0] {
				for j, k := range keys {
					w, ok := want[agg][fmt.Sprintf("%d|%s", int64(*x), k)]
					got := c.Data[j+1][i]
					switch {
					case !ok && (got == nil || *got != 0):
						t.Errorf("chart %s %s at %v: %v, the API has no row (want 0)", agg, k, *x, got)
					case ok && (got == nil || *got != w):
						t.Errorf("chart %s %s at %v: %v, API %v", agg, k, *x, got, w)
					case ok:
						points++
					}
				}
			}
			if points != len(want[agg]) {
				t.Errorf("chart %s: %d points of the API's %d", agg, points, len(want[agg]))
			}
		}
		if wm := pageTime(t, tot.AsOf.Watermark); !strings.Contains(s.Freshness, mode+" data as of") || !strings.Contains(s.Freshness, "watermark "+wm) {
			t.Errorf("freshness %q, want %s data and watermark %s", s.Freshness, mode, wm)
		}
	}
	checkView(s, "region", "fresh")

	// What was not aggregated, as /api/v1/apps says.
	if got := num(t, "dropped", s.Dropped["parse_error"]) + num(t, "dropped", s.Dropped["bad_time"]); got != float64(apps.Apps[0].Dropped["parse_error"]+apps.Apps[0].Dropped["bad_time"]) || got != 2 {
		t.Errorf("dropped: page %v, API %v", s.Dropped, apps.Apps[0].Dropped)
	}
	var lines []string
	for _, x := range apps.Apps[0].Rejected {
		lines = append(lines, x.Line)
	}
	if strings.Join(s.Samples, "\n") != strings.Join(lines, "\n") {
		t.Errorf("samples: page %q, API %q", s.Samples, lines)
	}
	if _, err := strconv.ParseFloat(s.Behind, 64); err != nil {
		t.Errorf("no lag shown for the app: %q", s.Behind)
	}

	// Split by kind, from the store: the controls ask again.
	n := s.Rendered
	if err := page.Eval(ctx, `(() => {
	  const set = (id, v) => { const e = document.getElementById(id); e.value = v; e.dispatchEvent(new Event('change')); };
	  set('split', 'kind'); set('mode', 'committed'); })()`, nil); err != nil {
		t.Fatal(err)
	}
	s = read(n) // the first change's answer is dropped: the second's came after
	checkView(s, "kind", "committed")
	shot("dashboard-by-kind-committed.png")

	// Live refresh: new orders show without a reload.
	if err := page.Navigate(ctx, "about:blank"); err != nil { // a new document, not a new fragment
		t.Fatal(err)
	}
	if err := page.Navigate(ctx, "http://"+api+"/"+strings.Replace(view, "refresh=0", "refresh=1", 1)); err != nil {
		t.Fatal(err)
	}
	read(0)
	more := orders(300, 5000, base)
	send(t, r.p.Agent.Addr(), more, 100)
	if err := page.Wait(ctx, `document.querySelector('#totals .total[data-agg="n"] .value').dataset.value === "3300"`); err != nil {
		t.Fatal(err)
	}
	checkView(read(0), "region", "fresh")
	shot("dashboard-refreshed.png")

	// Seven days: the charts ask for rolled-up windows, not 10,000 minutes
	// per key, and their points are the API's rolled-up answer; together
	// they hold every order of each top key.
	if err := page.Navigate(ctx, "about:blank"); err != nil {
		t.Fatal(err)
	}
	from = base - 7*86400
	if err := page.Navigate(ctx, "http://"+api+"/"+fmt.Sprintf("#app=orders&from=%d&to=%d&aggs=n&split=region&top=5&refresh=0", from, to)); err != nil {
		t.Fatal(err)
	}
	s = read(0)
	shot("dashboard-7d.png")
	if s.Step <= 60 || s.Step%60 != 0 || (to-from)/s.Step > 500 {
		t.Fatalf("over 7 days the charts use windows of %ds, want a multiple of the app's 60s giving at most 500", s.Step)
	}
	var top apiRows
	getJSON(t, api, "/api/v1/query", rangeParams(url.Values{"window": {"all"}, "group_by": {"region"}, "order_by": {"n:desc"}, "limit": {"5"}}), &top)
	where := url.Values{"group_by": {"region"}, "window": {fmt.Sprintf("%ds", s.Step)}}
	for _, row := range top.Rows {
		where.Add("where", "region:"+row.Key["region"])
	}
	var rolled apiRows
	getJSON(t, api, "/api/v1/query", rangeParams(where), &rolled)
	c := s.Charts["n"]
	if len(c.Data) != len(top.Rows)+1 || len(c.Data[0]) > 501 {
		t.Fatalf("7-day chart: %d series of %d points, want %d series of at most 501", len(c.Data)-1, len(c.Data[0]), len(top.Rows))
	}
	at := map[string]float64{}
	for _, row := range rolled.Rows {
		ws, _ := time.Parse(time.RFC3339, row.WindowStart)
		at[fmt.Sprintf("%d|%s", ws.Unix(), row.Key["region"])] = row.Values["n"]
	}
	for j, k := range c.Names {
		sum := 0.0
		for i, x := range c.Data[0] {
			got := c.Data[j+1][i]
			if got == nil || *got != at[fmt.Sprintf("%d|%s", int64(*x), k)] {
				t.Errorf("7-day chart %s at %v: %v, API %v", k, *x, got, at[fmt.Sprintf("%d|%s", int64(*x), k)])
				continue
			}
			sum += *got
		}
		if want := top.Rows[j].Values["n"]; top.Rows[j].Key["region"] != k || sum != want {
			t.Errorf("7-day chart %s sums to %v, the API's total for %s is %v", k, sum, top.Rows[j].Key["region"], want)
		}
	}
}

// withoutDBus drops the lines of Chromium's stderr about the D-Bus it
// does not find on a server, keeping the last 4 KiB of the rest.
func withoutDBus(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.Contains(l, "dbus") && !strings.Contains(l, "DBus") {
			keep = append(keep, l)
		}
	}
	out := strings.Join(keep, "\n")
	return out[max(0, len(out)-4096):]
}

// sendRaw logs lines to category through the agent.
func sendRaw(t *testing.T, addr, category string, lines []string) {
	t.Helper()
	c, err := scribeapi.Dial(addr, thriftsrv.Limits{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var entries []*scribethrift.LogEntry
	for _, l := range lines {
		entries = append(entries, &scribethrift.LogEntry{Category: category, Message: []byte(l)})
	}
	for {
		rc, err := c.Log(context.Background(), entries)
		if err != nil {
			t.Fatal(err)
		}
		if rc == scribethrift.ResultCode_OK {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}
