package serving

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/auth/authtest"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/thrift/gen/freeway"
)

type lockedLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func writeTokens(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// TestTLSAndTokens runs serving over TLS with query and admin tokens:
// queries over HTTPS and Thrift need a query token (401 and a JSON error
// or QueryError code 401 without or with a wrong one), /metrics and the
// admin endpoints the admin token, probes nothing; a token removed from
// the file stops working, a new one works, on both ports; no token is
// logged or exported.
func TestTLSAndTokens(t *testing.T) {
	dir := t.TempDir()
	ca := authtest.NewCA(t, dir, "ca")
	node := ca.Issue(t, dir, "node")
	qf, af := filepath.Join(dir, "query-tokens"), filepath.Join(dir, "admin-token")
	writeTokens(t, qf, "# dashboards\nquery-secret-one\n")
	writeTokens(t, af, "admin-secret-one\n")
	logs := &lockedLog{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	reg := prometheus.NewPedanticRegistry()
	x, err := auth.NewTLS(auth.TLSConfig{CertFile: node.CertFile, KeyFile: node.KeyFile, CAFile: ca.File}, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	g, err := auth.NewGuard(auth.Config{QueryTokensFile: qf, AdminTokenFile: af}, log, reg)
	if err != nil {
		t.Fatal(err)
	}
	var reloads, shutdowns atomic.Int32
	s := newServer(t, &fakeSource{apps: testApps(t)}, func(c *Config, d *Deps) {
		c.ThriftListen = "127.0.0.1:0"
		d.TLS, d.Auth, d.Log, d.Metrics, d.Gatherer = x, g, log, reg, reg
		d.Control.Reinitialize = func() { reloads.Add(1) }
		d.Control.Shutdown = func() { shutdowns.Add(1) }
	})
	run(t, s)
	if !strings.HasPrefix(s.URL(), "https://") {
		t.Fatalf("URL %s", s.URL())
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: x.ClientConfig(s.Addr())}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	do := func(method, path, token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, s.URL()+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == 401 {
			var e map[string]string
			if json.Unmarshal(body, &e) != nil || e["error"] == "" || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s %s: 401 without a JSON error and a challenge: %q %v", method, path, body, resp.Header)
			}
		}
		return resp.StatusCode, string(body)
	}
	for _, tc := range []struct {
		method, path, token string
		code                int
	}{
		{"GET", "/api/v1/apps", "", 401},
		{"GET", "/api/v1/apps", "wrong", 401},
		{"GET", "/api/v1/apps", "admin-secret-one", 401},
		{"GET", "/api/v1/apps", "query-secret-one", 200},
		{"GET", "/api/v1/query?app=orders", "", 401},
		{"GET", "/api/v1/query?app=orders", "query-secret-one", 200},
		// The page and its files hold no data: served without a token,
		// the page asks for one to call the API with.
		{"GET", "/", "", 200},
		{"GET", "/ui/app.js", "", 200},
		{"GET", "/", "query-secret-one", 200},
		{"GET", "/api/v1/openapi.json", "", 401},
		{"GET", "/healthz", "", 200},
		{"GET", "/readyz", "", 200},
		{"GET", "/metrics", "", 401},
		{"GET", "/metrics", "query-secret-one", 401},
		{"GET", "/metrics", "admin-secret-one", 200},
		{"POST", "/admin/reload", "", 401},
		{"POST", "/admin/reload", "query-secret-one", 401},
		{"POST", "/admin/reload", "admin-secret-one", 202},
		{"POST", "/admin/shutdown", "admin-secret-one", 202},
		{"GET", "/admin/shutdown", "admin-secret-one", 405},
	} {
		if code, body := do(tc.method, tc.path, tc.token); code != tc.code {
			t.Errorf("%s %s (token %q): %d %s, want %d", tc.method, tc.path, tc.token, code, body, tc.code)
		}
	}
	if reloads.Load() != 1 || shutdowns.Load() != 1 {
		t.Fatalf("reload %d, shutdown %d times", reloads.Load(), shutdowns.Load())
	}

	// Thrift, over TLS.
	dialQ := func() *freeway.QueryClient {
		t.Helper()
		c, err := thriftsrv.DialTLS(s.ThriftAddr(), x.ClientConfig(s.ThriftAddr()), thriftsrv.Limits{}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return freeway.NewQueryClient(c.TClient())
	}
	is401 := func(err error) bool {
		var qe *freeway.QueryError
		return errors.As(err, &qe) && qe.GetCode() == 401 && strings.Contains(qe.Message, "unauthorized")
	}
	ctx := context.Background()
	q := dialQ()
	if _, err := q.Apps(ctx); !is401(err) {
		t.Fatalf("apps without a token: %v", err)
	}
	if _, err := q.Query(ctx, &freeway.QueryRequest{App: "orders", FromUnix: 1, ToUnix: 2}); !is401(err) {
		t.Fatalf("query without a token: %v", err)
	}
	if err := q.Authenticate(ctx, "wrong"); !is401(err) {
		t.Fatalf("authenticate with a wrong token: %v", err)
	}
	if _, err := q.Apps(ctx); !is401(err) {
		t.Fatalf("apps after a wrong token: %v", err)
	}
	if err := q.Authenticate(ctx, "query-secret-one"); err != nil {
		t.Fatal(err)
	}
	if apps, err := q.Apps(ctx); err != nil || len(apps) != 2 {
		t.Fatalf("apps with a token: %v %v", apps, err)
	}
	if _, err := q.Query(ctx, &freeway.QueryRequest{App: "orders", FromUnix: 1, ToUnix: 2}); err != nil {
		t.Fatalf("query with a token: %v", err)
	}
	if _, err := q.Query(ctx, &freeway.QueryRequest{App: "orders", FromUnix: 2, ToUnix: 1}); err == nil || err.(*freeway.QueryError).GetCode() != 400 {
		t.Fatalf("a bad query: %v", err)
	}

	// The token file changes: the old token stops working on both
	// ports (also on the connection that authenticated with it), the new
	// one works.
	writeTokens(t, qf, "query-secret-two\n")
	if code, _ := do("GET", "/api/v1/apps", "query-secret-one"); code != 401 {
		t.Fatalf("removed token over HTTP: %d", code)
	}
	if code, _ := do("GET", "/api/v1/apps", "query-secret-two"); code != 200 {
		t.Fatalf("new token over HTTP: %d", code)
	}
	if _, err := q.Apps(ctx); !is401(err) {
		t.Fatalf("removed token over Thrift: %v", err)
	}
	q2 := dialQ()
	if err := q2.Authenticate(ctx, "query-secret-two"); err != nil {
		t.Fatal(err)
	}
	if _, err := q2.Apps(ctx); err != nil {
		t.Fatal(err)
	}

	// Refusals are counted, tokens appear nowhere.
	_, metrics := do("GET", "/metrics", "admin-secret-one")
	if !strings.Contains(metrics, `freeway_auth_refused_total{endpoint="thrift_query",reason="invalid"}`) ||
		!strings.Contains(metrics, `freeway_auth_refused_total{endpoint="query",reason="missing"}`) {
		t.Errorf("refusals not counted:\n%s", metrics)
	}
	for _, secret := range []string{"query-secret-one", "query-secret-two", "admin-secret-one"} {
		if strings.Contains(metrics, secret) || strings.Contains(logs.String(), secret) {
			t.Fatalf("token %s in the metrics or the log", secret)
		}
	}
}

// TestThriftWithoutTokens: without tokens configured, authenticate is
// accepted and ignored and old clients (which never call it) work.
func TestThriftWithoutTokens(t *testing.T) {
	s := newServer(t, &fakeSource{apps: testApps(t)}, func(c *Config, d *Deps) { c.ThriftListen = "127.0.0.1:0" })
	run(t, s)
	q := thriftClient(t, s)
	if apps, err := q.Apps(context.Background()); err != nil || len(apps) != 2 {
		t.Fatalf("apps: %v %v", apps, err)
	}
	if err := q.Authenticate(context.Background(), "anything"); err != nil {
		t.Fatal(err)
	}
	if apps, err := q.Apps(context.Background()); err != nil || len(apps) != 2 {
		t.Fatalf("apps after authenticate: %v %v", apps, err)
	}
}

// TestAdminEndpointsLocalWithoutToken: without an admin token the admin
// endpoints answer local clients only (as fb303's control calls).
func TestAdminEndpointsLocalWithoutToken(t *testing.T) {
	var reloads atomic.Int32
	s := newServer(t, &fakeSource{apps: testApps(t)}, func(c *Config, d *Deps) { d.Control.Reinitialize = func() { reloads.Add(1) } })
	for remote, want := range map[string]int{"127.0.0.1:40000": 202, "192.0.2.9:40000": 403} {
		w := httptest.NewRecorder()
		r := httptest.NewRequest("POST", "http://127.0.0.1:8080/admin/reload", nil)
		r.RemoteAddr = remote
		s.Handler().ServeHTTP(w, r)
		if w.Code != want {
			t.Errorf("from %s: %d %s, want %d", remote, w.Code, w.Body, want)
		}
	}
	w := httptest.NewRecorder()
	r := httptest.NewRequest("POST", "http://localhost:8080/admin/shutdown", nil)
	r.RemoteAddr = "127.0.0.1:40000"
	s.Handler().ServeHTTP(w, r)
	if w.Code != http.StatusNotImplemented {
		t.Errorf("shutdown without a hook: %d", w.Code)
	}
	if reloads.Load() != 1 {
		t.Fatalf("reloads %d", reloads.Load())
	}
}
