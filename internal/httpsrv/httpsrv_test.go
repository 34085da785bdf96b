package httpsrv

import (
	"context"
	"io"
	"net"
	"net/http"
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
