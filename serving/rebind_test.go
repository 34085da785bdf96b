package serving

import (
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/auth/authtest"
)

// TestLoopbackPortRefusesReboundHosts: a port bound to 127.0.0.1 that
// serves without a token answers a request naming another host (a web
// page's name rebound to 127.0.0.1, read through the operator's browser)
// 403, for the API, the page, /metrics and /debug/pprof/; an IP address,
// localhost, a name of auth.allowed_hosts, or a valid token is served,
// and so is any host on a port bound beyond the loopback address.
func TestLoopbackPortRefusesReboundHosts(t *testing.T) {
	dir := t.TempDir()
	qf := filepath.Join(dir, "query-tokens")
	writeTokens(t, qf, "query-secret\n")
	start := func(listen string, cfg auth.Config) (*Server, *prometheus.Registry) {
		t.Helper()
		reg := prometheus.NewPedanticRegistry()
		g, err := auth.NewGuard(cfg, nil, reg)
		if err != nil {
			t.Fatal(err)
		}
		s := newServer(t, &fakeSource{apps: testApps(t)}, func(c *Config, d *Deps) {
			c.Listen, c.Pprof = listen, true
			d.Auth, d.Metrics, d.Gatherer = g, reg, reg
		})
		run(t, s)
		return s, reg
	}
	client := &http.Client{Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	get := func(s *Server, host, path, token string) (int, string) {
		t.Helper()
		port := s.Addr()[strings.LastIndex(s.Addr(), ":"):]
		req, _ := http.NewRequest("GET", "http://127.0.0.1"+port+path, nil)
		req.Host = strings.ReplaceAll(host, "PORT", port[1:])
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(body)
	}
	paths := []string{"/api/v1/query?app=orders", "/api/v1/apps", "/", "/metrics", "/debug/pprof/"}

	open, reg := start("127.0.0.1:0", auth.Config{})
	for _, p := range paths {
		code, body := get(open, "evil.example", p, "")
		var e map[string]string
		if code != http.StatusForbidden || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e["error"], "auth.allowed_hosts") {
			t.Errorf("GET %s for host evil.example on a loopback port without tokens: %d %s, want 403 naming auth.allowed_hosts", p, code, body)
		}
		for _, host := range []string{"evil.example:PORT", "127.0.0.1.nip.io:PORT"} {
			if code, body := get(open, host, p, ""); code != http.StatusForbidden {
				t.Errorf("GET %s for host %s: %d %s, want 403", p, host, code, body)
			}
		}
		for _, host := range []string{"127.0.0.1:PORT", "localhost:PORT", "LocalHost.", "[::1]:PORT"} {
			if code, body := get(open, host, p, ""); code != http.StatusOK {
				t.Errorf("GET %s for host %s: %d %s, want 200", p, host, code, body)
			}
		}
	}
	if code, _ := get(open, "evil.example", "/healthz", ""); code != http.StatusOK {
		t.Errorf("/healthz for host evil.example: %d, want 200 (probes stay open)", code)
	}
	if n := refused(t, reg, "query", "unknown_host"); n != 3*3 {
		t.Errorf("freeway_auth_refused_total{endpoint=query,reason=unknown_host} = %v, want 9 (3 paths, 3 hosts)", n)
	}
	if n := refused(t, reg, "admin", "unknown_host"); n != 2*3 {
		t.Errorf("freeway_auth_refused_total{endpoint=admin,reason=unknown_host} = %v, want 6 (2 paths, 3 hosts)", n)
	}

	allowed, _ := start("127.0.0.1:0", auth.Config{AllowedHosts: []string{"evil.example"}})
	for _, p := range paths {
		for _, host := range []string{"evil.example", "EVIL.example.:PORT"} {
			if code, body := get(allowed, host, p, ""); code != http.StatusOK {
				t.Errorf("GET %s for host %s with auth.allowed_hosts [evil.example]: %d %s, want 200", p, host, code, body)
			}
		}
		if code, body := get(allowed, "other.example", p, ""); code != http.StatusForbidden {
			t.Errorf("GET %s for host other.example with auth.allowed_hosts [evil.example]: %d %s, want 403", p, code, body)
		}
	}

	tokens, _ := start("127.0.0.1:0", auth.Config{QueryTokensFile: qf})
	if code, body := get(tokens, "evil.example", "/api/v1/query?app=orders", "query-secret"); code != http.StatusOK {
		t.Errorf("a valid query token for host evil.example: %d %s, want 200", code, body)
	}
	if code, body := get(tokens, "evil.example", "/api/v1/query?app=orders", ""); code != http.StatusUnauthorized {
		t.Errorf("no token for host evil.example with query tokens: %d %s, want 401", code, body)
	}

	// Over TLS the browser checks the certificate against the Host: a
	// rebound name cannot pass, and any name the certificate has is served.
	ca := authtest.NewCA(t, dir, "ca")
	node := ca.Issue(t, dir, "node")
	x, err := auth.NewTLS(auth.TLSConfig{CertFile: node.CertFile, KeyFile: node.KeyFile, CAFile: ca.File}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	g, err := auth.NewGuard(auth.Config{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	secure := newServer(t, &fakeSource{apps: testApps(t)}, func(c *Config, d *Deps) { d.TLS, d.Auth = x, g })
	run(t, secure)
	tlsClient := &http.Client{Transport: &http.Transport{TLSClientConfig: x.ClientConfig(secure.Addr())}, Timeout: 30 * time.Second}
	defer tlsClient.CloseIdleConnections()
	req, _ := http.NewRequest("GET", secure.URL()+"/api/v1/apps", nil)
	req.Host = "node.example"
	if resp, err := tlsClient.Do(req); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("GET /api/v1/apps over TLS for host node.example: %v %v, want 200", resp, err)
	} else {
		resp.Body.Close()
	}

	wide, _ := start("0.0.0.0:0", auth.Config{})
	for _, p := range paths {
		if code, body := get(wide, "evil.example", p, ""); code != http.StatusOK {
			t.Errorf("GET %s for host evil.example on a port bound to 0.0.0.0: %d %s, want 200 (tokens secure it)", p, code, body)
		}
	}
}

// refused is freeway_auth_refused_total{endpoint,reason} of reg.
func refused(t *testing.T, reg *prometheus.Registry, endpoint, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "freeway_auth_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["endpoint"] == endpoint && l["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
