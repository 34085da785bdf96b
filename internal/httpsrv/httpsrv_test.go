package httpsrv

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/prometheus/client_golang/prometheus"
)

func serve(t *testing.T, h http.Handler, lim Limits) (*Server, *prometheus.Registry, context.CancelFunc, chan error) {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := Listen("127.0.0.1:0", h, Options{Name: "test", Limits: lim, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done }) //nolint:errcheck // stopping the server; its error is not what these tests check
	return s, reg, cancel, done
}

// TestKeepAliveIdleEvicted: at the cap, a client's idle keep-alive
// connection makes room for a new client, and the first client still
// gets its next answer (on a new connection).
func TestKeepAliveIdleEvicted(t *testing.T) {
	s, reg, _, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }), Limits{MaxConnections: 1})
	get := func(c *http.Client) {
		t.Helper()
		resp, err := c.Get("http://" + s.Addr() + "/")
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body) // drained so that the connection is reused
		resp.Body.Close()
	}
	first := &http.Client{Transport: &http.Transport{}, Timeout: 30 * time.Second}
	second := &http.Client{Transport: &http.Transport{}, Timeout: 30 * time.Second}
	// A new client finds the connection idle only once the server has
	// finished the answer (until then it is busy, and the newcomer would
	// be refused).
	idle := func() {
		t.Helper()
		testkit.WaitFor(t, "the connection to become idle", func() bool { return gauge(t, reg, "freeway_listener_idle_connections") == 1 })
	}
	get(first) // leaves an idle keep-alive connection
	idle()
	get(second)
	idle()
	get(first)
	if n := gauge(t, reg, "freeway_listener_connections_evicted_total"); n < 1 {
		t.Fatalf("evictions %v", n)
	}
}

// gauge is the value of a one-series counter or gauge in reg.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return 0
}

// TestShutdownLetsRequestsFinish: a request in progress when the context
// ends is answered; Serve then returns nil.
func TestShutdownLetsRequestsFinish(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	s, _, cancel, done := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		_, _ = io.WriteString(w, "finished")
	}), Limits{})
	got := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + s.Addr() + "/")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- string(b)
	}()
	<-entered
	cancel()
	close(release)
	if body := <-got; body != "finished" {
		t.Fatalf("request in progress at shutdown: %q", body)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	done <- nil // for the cleanup
	if _, err := net.Dial("tcp", s.Addr()); err == nil {
		t.Fatal("still accepting after Serve returned")
	}
}

// TestSecurityHeaders: every answer of the port, an error quoting what
// the client sent among them, tells a browser not to sniff it into HTML,
// not to run inline script, and not to let another site frame it.
func TestSecurityHeaders(t *testing.T) {
	s, _, _, _ := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		WriteError(w, http.StatusBadRequest, "unknown app "+r.URL.Query().Get("app"))
	}), Limits{})
	resp, err := http.Get("http://" + s.Addr() + "/api/v1/query?app=%3Cscript%3Ealert(1)%3C/script%3E")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "<script>") {
		t.Fatalf("answer %d %q", resp.StatusCode, body)
	}
	for h, want := range map[string]string{
		"Content-Type":                 "application/json",
		"X-Content-Type-Options":       "nosniff",
		"X-Frame-Options":              "DENY",
		"Cross-Origin-Resource-Policy": "same-origin",
	} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'self'", "frame-ancestors 'none'", "object-src 'none'", "base-uri 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
		t.Errorf("Content-Security-Policy %q allows inline or evaluated script", csp)
	}
}
