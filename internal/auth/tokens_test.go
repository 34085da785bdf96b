package auth

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/freeway-dev/freeway/internal/testkit"
)

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestTokensFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens")
	writeFile(t, path, "# dashboards\r\n  alpha-0123456789  \r\n\n#beta-disabled\nbeta-9876543210\n")
	tok, err := LoadTokens("query", path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for tk, want := range map[string]bool{
		"alpha-0123456789": true, "beta-9876543210": true, "beta-disabled": false, "#beta-disabled": false,
		"alpha": false, "alpha-0123456789x": false, "": false, "dashboards": false,
	} {
		if got := tok.Valid(tk); got != want {
			t.Errorf("Valid(%q) = %v, want %v", tk, got, want)
		}
	}
	var none *Tokens
	if none.Valid("alpha-0123456789") {
		t.Error("a nil Tokens accepts a token")
	}

	for data, want := range map[string]string{
		"":                          "holds no token",
		"# only a comment\n\n":      "holds no token",
		"good\nsecret with space\n": path + ":2: a token must be printable ASCII without spaces",
		"good\nsecr\x00et\n":        path + ":2: a token must be printable ASCII",
		"good\nsecrét-unicode\n":    path + ":2: a token must be printable ASCII",
	} {
		writeFile(t, path, data)
		c := Config{QueryTokensFile: path}
		err := c.Validate()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", data, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "secr") {
			t.Errorf("the error quotes a token: %v", err)
		}
	}
	c := Config{AdminTokenFile: filepath.Join(dir, "missing")}
	if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "auth.admin_token_file: open ") {
		t.Errorf("missing file: %v", err)
	}
}

// TestAllowedHostsValidate: auth.allowed_hosts takes host names alone;
// a port or a scheme, which no Host header's name would match, is
// refused with the entry's path.
func TestAllowedHostsValidate(t *testing.T) {
	ok := Config{AllowedHosts: []string{"freeway.internal", "Dash.Example.", "10.0.0.1"}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{"", "freeway.internal:8080", "https://freeway.internal", "[::1]", "a b"} {
		c := Config{AllowedHosts: []string{"fine.example", h}}
		if err := c.Validate(); err == nil || !strings.HasPrefix(err.Error(), "auth.allowed_hosts[1]: ") {
			t.Errorf("%q: %v, want an error of auth.allowed_hosts[1]", h, err)
		}
	}
}

// TestTokensReload: a changed file is used at the next check; a file
// that does not parse, or holds no token, keeps the previous tokens.
func TestTokensReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens")
	writeFile(t, path, "old-token-1\n")
	logs := &syncLog{}
	reg := prometheus.NewRegistry()
	tok, err := LoadTokens("admin", path, slog.New(slog.NewTextHandler(logs, nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	if !tok.Valid("old-token-1") {
		t.Fatal("token not valid")
	}
	writeFile(t, path, "new-token-2\n")
	if tok.Valid("old-token-1") || !tok.Valid("new-token-2") {
		t.Fatal("the changed file was not used")
	}
	for _, broken := range []string{"", "# nothing\n", "a b\n"} {
		writeFile(t, path, broken)
		if !tok.Valid("new-token-2") {
			t.Fatalf("file %q replaced the tokens", broken)
		}
	}
	os.Remove(path)
	if !tok.Valid("new-token-2") {
		t.Fatal("a removed file dropped the tokens")
	}
	writeFile(t, path, "third-token-3\n")
	if !tok.Valid("third-token-3") || tok.Valid("new-token-2") {
		t.Fatal("the fixed file was not used")
	}
	if ok, bad := testutil.ToFloat64(tok.reloads.WithLabelValues("admin", "ok")), testutil.ToFloat64(tok.reloads.WithLabelValues("admin", "error")); ok != 2 || bad != 4 {
		t.Fatalf("reloads ok %v error %v, want 2 and 4", ok, bad)
	}
	for _, secret := range []string{"old-token-1", "new-token-2", "third-token-3"} {
		if strings.Contains(logs.String(), secret) {
			t.Fatalf("a token is in the log:\n%s", logs)
		}
	}
}

// TestPresentedReload: the token presented is the file's first, read
// again when the file changes; a file that does not load, or is gone,
// keeps the previous one, and no token is logged.
func TestPresentedReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "tokens")
	writeFile(t, path, "# dashboards\r\n  old-token-1  \r\nother-token\n")
	logs := &syncLog{}
	p, err := LoadPresented(path, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Token(); got != "old-token-1" {
		t.Fatalf("presents %q, want the first token", got)
	}
	writeFile(t, path, "new-token-2\nold-token-1\n")
	if got := p.Token(); got != "new-token-2" {
		t.Fatalf("presents %q after the rotation, want new-token-2", got)
	}
	for _, broken := range []string{"", "# nothing\n", "third-token\na b\n"} {
		writeFile(t, path, broken)
		if got := p.Token(); got != "new-token-2" {
			t.Fatalf("file %q: presents %q", broken, got)
		}
	}
	os.Remove(path)
	if got := p.Token(); got != "new-token-2" {
		t.Fatalf("a removed file: presents %q", got)
	}
	writeFile(t, path, "third-token-3\n")
	if got := p.Token(); got != "third-token-3" {
		t.Fatalf("the fixed file: presents %q", got)
	}
	var none *Presented
	if got := none.Token(); got != "" {
		t.Fatalf("a nil Presented presents %q", got)
	}
	if _, err := LoadPresented(filepath.Join(dir, "missing"), nil); err == nil {
		t.Fatal("a missing file loaded")
	}
	for _, secret := range []string{"old-token-1", "new-token-2", "third-token"} {
		if strings.Contains(logs.String(), secret) {
			t.Fatalf("a token is in the log:\n%s", logs)
		}
	}
}

func TestGuard(t *testing.T) {
	dir := t.TempDir()
	qf, af := filepath.Join(dir, "query"), filepath.Join(dir, "admin")
	writeFile(t, qf, "query-token-1\nquery-token-2\n")
	writeFile(t, af, "admin-token-1\n")
	logs := &syncLog{}
	reg := prometheus.NewRegistry()
	g, err := NewGuard(Config{QueryTokensFile: qf, AdminTokenFile: af}, slog.New(slog.NewTextHandler(logs, nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("served")) })
	mux := http.NewServeMux()
	mux.Handle("GET /api/v1/query", g.Query(ok))
	mux.Handle("GET /metrics", g.Admin(ok))
	mux.Handle("POST /admin/reload", g.Control(ok))
	do := func(method, path, header, remote string) (int, http.Header, string) {
		r := httptest.NewRequest(method, "http://127.0.0.1:8080"+path, nil)
		if header != "" {
			r.Header.Set("Authorization", header)
		}
		if remote != "" {
			r.RemoteAddr = remote
		}
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, r)
		return w.Code, w.Header(), w.Body.String()
	}
	for _, tc := range []struct {
		method, path, header string
		code                 int
		challenge            string
	}{
		{"GET", "/api/v1/query", "", 401, `Bearer realm="freeway"`},
		{"GET", "/api/v1/query", "Bearer wrong", 401, `Bearer realm="freeway", error="invalid_token"`},
		{"GET", "/api/v1/query", "Basic cXVlcnktdG9rZW4tMQ==", 401, `Bearer realm="freeway"`},
		{"GET", "/api/v1/query", "Bearer admin-token-1", 401, `Bearer realm="freeway", error="invalid_token"`},
		{"GET", "/api/v1/query", "Bearer query-token-1", 200, ""},
		{"GET", "/api/v1/query", "bearer  query-token-2", 200, ""},
		{"GET", "/metrics", "", 401, `Bearer realm="freeway"`},
		{"GET", "/metrics", "Bearer query-token-1", 401, `Bearer realm="freeway", error="invalid_token"`},
		{"GET", "/metrics", "Bearer admin-token-1", 200, ""},
		{"POST", "/admin/reload", "", 401, `Bearer realm="freeway"`},
		{"POST", "/admin/reload", "Bearer admin-token-1", 200, ""},
	} {
		code, h, body := do(tc.method, tc.path, tc.header, "")
		if code != tc.code || h.Get("WWW-Authenticate") != tc.challenge {
			t.Errorf("%s %s %q: %d %q, want %d %q", tc.method, tc.path, tc.header, code, h.Get("WWW-Authenticate"), tc.code, tc.challenge)
		}
		if code == 401 {
			var e map[string]string
			if err := json.Unmarshal([]byte(body), &e); err != nil || e["error"] == "" || h.Get("Content-Type") != "application/json" {
				t.Errorf("401 body %q: %v", body, err)
			}
		}
	}
	if n := testutil.ToFloat64(g.refused.WithLabelValues(EndpointQuery, "invalid")); n != 2 {
		t.Errorf("query invalid refusals %v", n)
	}
	// A Basic header carries no bearer token: missing.
	if n := testutil.ToFloat64(g.refused.WithLabelValues(EndpointQuery, "missing")); n != 2 {
		t.Errorf("query missing refusals %v", n)
	}
	if err := g.CheckQuery(EndpointThriftQuery, "query-token-2", "x"); err != nil {
		t.Error(err)
	}
	if err := g.CheckQuery(EndpointThriftQuery, "nope", "x"); err == nil || !strings.Contains(err.Error(), "unauthorized") {
		t.Error(err)
	}
	for _, secret := range []string{"query-token-1", "query-token-2", "admin-token-1", "cXVlcnktdG9rZW4tMQ"} {
		if strings.Contains(logs.String(), secret) {
			t.Fatalf("a token is in the log:\n%s", logs)
		}
	}

	// Without tokens everything passes, but control requests only from
	// the local host.
	open, err := NewGuard(Config{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	mux = http.NewServeMux()
	mux.Handle("GET /api/v1/query", open.Query(ok))
	mux.Handle("POST /admin/reload", open.Control(ok))
	if code, _, _ := do("GET", "/api/v1/query", "", ""); code != 200 {
		t.Errorf("query without tokens configured: %d", code)
	}
	if code, _, _ := do("POST", "/admin/reload", "", "127.0.0.1:5555"); code != 200 {
		t.Errorf("local control request: %d", code)
	}
	if code, _, body := do("POST", "/admin/reload", "", "10.1.2.3:5555"); code != 403 || !strings.Contains(body, "local host") {
		t.Errorf("remote control request: %d %s", code, body)
	}
	var nilGuard *Guard
	if code := func() int {
		w := httptest.NewRecorder()
		r := httptest.NewRequest("POST", "/", nil)
		r.RemoteAddr = "10.1.2.3:1"
		nilGuard.Control(ok).ServeHTTP(w, r)
		return w.Code
	}(); code != 403 {
		t.Errorf("nil guard, remote control: %d", code)
	}
}

// TestControlCrossOrigin: a control request a browser sends for a page of
// another origin is refused, with or without an admin token (without
// one, the local host's browser would pass the local-host rule); a
// client that is not a browser (curl: neither Sec-Fetch-Site nor Origin)
// and the page's own origin pass.
func TestControlCrossOrigin(t *testing.T) {
	dir := t.TempDir()
	af := filepath.Join(dir, "admin")
	writeFile(t, af, "admin-token-1\n")
	reg := prometheus.NewRegistry()
	withToken, err := NewGuard(Config{AdminTokenFile: af}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	open, err := NewGuard(Config{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("served")) })
	for _, tc := range []struct {
		name         string
		site, origin string
		code         int
	}{
		{"curl", "", "", 200},
		{"the page's own origin", "same-origin", "http://127.0.0.1:8080", 200},
		{"typed in the address bar", "none", "", 200},
		{"another site's form", "cross-site", "https://evil.example", 403},
		{"another port of the host", "same-site", "http://127.0.0.1:9999", 403},
		{"an old browser, another site", "", "https://evil.example", 403},
		{"an old browser, the page's own origin", "", "http://127.0.0.1:8080", 200},
	} {
		for _, g := range []*Guard{open, withToken, nil} {
			r := httptest.NewRequest("POST", "http://127.0.0.1:8080/admin/shutdown", strings.NewReader("x=1"))
			r.RemoteAddr = "127.0.0.1:5555"
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			r.Header.Set("Authorization", "Bearer admin-token-1")
			if tc.site != "" {
				r.Header.Set("Sec-Fetch-Site", tc.site)
			}
			if tc.origin != "" {
				r.Header.Set("Origin", tc.origin)
			}
			w := httptest.NewRecorder()
			g.Control(ok).ServeHTTP(w, r)
			if w.Code != tc.code {
				t.Errorf("%s (admin token %v): %d %s, want %d", tc.name, g.AdminToken(), w.Code, w.Body, tc.code)
			}
			if w.Code == 403 && (w.Header().Get("Content-Type") != "application/json" || !strings.Contains(w.Body.String(), "another origin")) {
				t.Errorf("%s: refusal %q %s", tc.name, w.Header().Get("Content-Type"), w.Body)
			}
		}
	}
	if n := testutil.ToFloat64(withToken.refused.WithLabelValues(EndpointControl, "cross_origin")); n != 3 {
		t.Errorf("cross-origin refusals counted %v, want 3", n)
	}
}

// TestControlLocalHostByName: without an admin token, a control request
// from the local host must also name the host as the local host (an IP
// address, or localhost). A page of another site whose name the attacker
// rebinds to 127.0.0.1 gets the operator's browser to send it from the
// local host, as the page's own origin (so no cross-origin check
// refuses it), but with the Host of that name.
func TestControlLocalHostByName(t *testing.T) {
	open, err := NewGuard(Config{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("served")) })
	for host, want := range map[string]int{
		"127.0.0.1:8080":            200,
		"[::1]:8080":                200,
		"localhost:8080":            200,
		"LocalHost":                 200,
		"dashboard.localhost:8080":  403, // a browser's own, but maybe not every resolver's
		"10.1.2.3:8080":             200, // an address cannot be rebound
		"":                          200, // HTTP/1.0 without Host: no browser
		"evil.example:8080":         403,
		"evil.example":              403,
		"127.0.0.1.nip.io:8080":     403,
		"localhost.evil.example:80": 403,
	} {
		r := httptest.NewRequest("POST", "/admin/shutdown", nil)
		r.Host = host
		r.RemoteAddr = "127.0.0.1:5555"
		if host != "" {
			r.Header.Set("Origin", "http://"+host)
		}
		r.Header.Set("Sec-Fetch-Site", "same-origin")
		w := httptest.NewRecorder()
		open.Control(ok).ServeHTTP(w, r)
		if w.Code != want {
			t.Errorf("Host %q: %d %s, want %d", host, w.Code, w.Body, want)
		}
		if w.Code == 403 && !strings.Contains(w.Body.String(), "localhost") {
			t.Errorf("Host %q: refusal %s does not say how to address the host", host, w.Body)
		}
	}
}

// TestControlRefusalLogsWhy: a control request refused for where it
// came from (another host, another name of this one, a page of another
// origin) presented no credentials that could have been wrong; its log
// line must not send the operator looking for a bad token.
func TestControlRefusalLogsWhy(t *testing.T) {
	logs := &testkit.LogBuffer{}
	open, err := NewGuard(Config{}, logs.Logger(), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("served")) })
	for _, tc := range []struct{ remote, host, origin, reason string }{
		{"10.1.2.3:5555", "127.0.0.1:8080", "", "not_local"},
		{"127.0.0.1:5555", "evil.example:8080", "", "not_local"},
		{"127.0.0.1:5555", "127.0.0.1:8080", "http://evil.example", "cross_origin"},
	} {
		r := httptest.NewRequest("POST", "/admin/shutdown", nil)
		r.RemoteAddr, r.Host = tc.remote, tc.host
		if tc.origin != "" {
			r.Header.Set("Origin", tc.origin)
		}
		w := httptest.NewRecorder()
		open.Control(ok).ServeHTTP(w, r)
		if w.Code != 403 {
			t.Fatalf("%+v: %d %s, want 403", tc, w.Code, w.Body)
		}
	}
	for _, reason := range []string{"not_local", "cross_origin"} {
		lines := logs.Lines("reason=" + reason)
		if len(lines) == 0 {
			t.Fatalf("no log line for reason %s:\n%s", reason, logs)
		}
		for _, l := range lines {
			if strings.Contains(l, "credentials") || strings.Contains(l, "token") {
				t.Errorf("a %s refusal is logged as one of credentials: %s", reason, l)
			}
		}
	}
}
