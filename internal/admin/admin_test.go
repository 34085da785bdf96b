package admin

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/component"
)

func serve(rt Routes, method, path string) *httptest.ResponseRecorder {
	mux := http.NewServeMux()
	rt.Mount(mux)
	mux.HandleFunc("/", Fallback([]string{"/api"}, "try /api"))
	w := httptest.NewRecorder()
	r := httptest.NewRequest(method, "http://127.0.0.1:8461"+path, nil)
	r.RemoteAddr = "127.0.0.1:1234"
	mux.ServeHTTP(w, r)
	return w
}

func TestRoutes(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "x_total", Help: "x"}))
	var reloads int
	ready := false
	rt := Routes{Gatherer: reg, Ready: func() (bool, string) {
		if ready {
			return true, "ready\n"
		}
		return false, "not ready: shards recovering\n"
	}, Control: component.Control{Reinitialize: func() { reloads++ }}}
	for _, tc := range []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/healthz", 200, "ok\n"},
		{"GET", "/readyz", 503, "not ready: shards recovering\n"},
		{"GET", "/metrics", 200, "x_total 0"},
		{"POST", "/admin/reload", 202, `{"action":"reload","status":"accepted"}`},
		{"POST", "/admin/shutdown", 501, "shutdown is not supported by this process"},
		{"GET", "/admin/reload", 405, `"method GET not allowed on /admin/reload (use POST)"`},
		{"POST", "/healthz", 405, `"method POST not allowed on /healthz (use GET)"`},
		{"POST", "/api", 405, `"method POST not allowed on /api (use GET)"`},
		{"GET", "/nope", 404, `"no such endpoint GET /nope (try /api)"`},
		{"GET", "/debug/pprof/", 404, "no such endpoint"},
	} {
		w := serve(rt, tc.method, tc.path)
		if w.Code != tc.code || !strings.Contains(w.Body.String(), tc.body) {
			t.Errorf("%s %s: %d %q, want %d with %q", tc.method, tc.path, w.Code, w.Body, tc.code, tc.body)
		}
	}
	if reloads != 1 {
		t.Errorf("%d reloads", reloads)
	}
	ready = true
	if w := serve(rt, "GET", "/readyz"); w.Code != 200 || w.Body.String() != "ready\n" || w.Header().Get("Cache-Control") != "no-store" {
		t.Errorf("readyz when ready: %d %q %v", w.Code, w.Body, w.Header())
	}
	if w := serve(Routes{}, "GET", "/readyz"); w.Code != 200 || w.Body.String() != "ready\n" {
		t.Errorf("readyz without Ready: %d %q", w.Code, w.Body)
	}
	if w := serve(Routes{}, "GET", "/metrics"); w.Code != 404 {
		t.Errorf("metrics without a gatherer: %d", w.Code)
	}
	if w := serve(Routes{Pprof: true}, "GET", "/debug/pprof/"); w.Code != 200 {
		t.Errorf("pprof: %d", w.Code)
	}
	var wrapped []string
	wrap := func(name string, h http.HandlerFunc) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { wrapped = append(wrapped, name); h(w, r) })
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		serve(Routes{Wrap: wrap}, "GET", p)
	}
	serve(Routes{Wrap: wrap}, "POST", "/admin/reload")
	if strings.Join(wrapped, ",") != "healthz,readyz,admin" {
		t.Errorf("wrapped %v", wrapped)
	}
}

// TestReloadRefusedAnswersWhy: a reload whose file does not validate is
// answered 422 with the error (file:line:col), not 202 "accepted", and
// nothing is reloaded.
func TestReloadRefusedAnswersWhy(t *testing.T) {
	var reloads int
	bad := errors.New("freeway.yaml:3:7: unknown key \"buckts\"")
	rt := Routes{Control: component.Control{Reinitialize: func() { reloads++ }, CheckReload: func() error { return bad }}}
	w := serve(rt, "POST", "/admin/reload")
	if w.Code != http.StatusUnprocessableEntity || !strings.Contains(w.Body.String(), `freeway.yaml:3:7: unknown key`) {
		t.Errorf("reload of an invalid file: %d %q, want 422 with the error", w.Code, w.Body)
	}
	if reloads != 0 {
		t.Errorf("%d reloads of an invalid file", reloads)
	}
	rt.Control.CheckReload = func() error { return nil }
	if w := serve(rt, "POST", "/admin/reload"); w.Code != http.StatusAccepted || reloads != 1 {
		t.Errorf("reload of a valid file: %d, %d reloads", w.Code, reloads)
	}
}

// TestScrape reads back what /metrics serves, labelled series included.
func TestScrape(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "x_total", Help: "x"}, []string{"k"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "y", Help: "y"})
	reg.MustRegister(c, g)
	c.WithLabelValues("a").Add(3)
	c.WithLabelValues("b").Add(1.5)
	g.Set(-2)
	mux := http.NewServeMux()
	Routes{Gatherer: reg}.Mount(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	m, err := Scrape(srv.Client(), strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	for series, want := range map[string]float64{`x_total{k="a"}`: 3, `x_total{k="b"}`: 1.5, "y": -2} {
		if got, ok := m[series]; !ok || got != want {
			t.Errorf("%s: %v (present %v), want %v", series, got, ok, want)
		}
	}
	if _, err := Scrape(srv.Client(), strings.TrimPrefix(srv.URL, "http://")+"/nope"); err == nil {
		t.Error("a 404 scraped without an error")
	}
}
