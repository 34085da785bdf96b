package auth

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/freeway-dev/freeway/internal/auth/authtest"
)

type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestTLSConfigValidate(t *testing.T) {
	dir := t.TempDir()
	ca := authtest.NewCA(t, dir, "ca")
	node := ca.Issue(t, dir, "node")
	other := ca.Issue(t, dir, "other")
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := os.ReadFile(node.KeyFile)
	for _, tc := range []struct {
		cfg  TLSConfig
		want string // "" valid
	}{
		{TLSConfig{}, ""},
		{TLSConfig{CertFile: node.CertFile, KeyFile: node.KeyFile}, ""},
		{TLSConfig{CertFile: node.CertFile, KeyFile: node.KeyFile, CAFile: ca.File, ClientAuth: true}, ""},
		{TLSConfig{CertFile: node.CertFile}, "tls.key_file: must be set with tls.cert_file"},
		{TLSConfig{KeyFile: node.KeyFile}, "tls.cert_file: must be set with tls.key_file"},
		{TLSConfig{CAFile: ca.File}, "tls.ca_file: needs tls.cert_file and tls.key_file"},
		{TLSConfig{CertFile: node.CertFile, KeyFile: node.KeyFile, ClientAuth: true}, "tls.client_auth: needs tls.ca_file"},
		{TLSConfig{CertFile: filepath.Join(dir, "nope.crt"), KeyFile: node.KeyFile}, "tls.cert_file: open " + dir + "/nope.crt: no such file"},
		{TLSConfig{CertFile: node.CertFile, KeyFile: other.KeyFile}, "tls.cert_file: certificate " + node.CertFile + " with key " + other.KeyFile + ": tls: private key does not match public key"},
		{TLSConfig{CertFile: garbage, KeyFile: node.KeyFile}, "tls.cert_file: certificate " + garbage},
		{TLSConfig{CertFile: node.CertFile, KeyFile: node.KeyFile, CAFile: garbage}, "tls.ca_file: " + garbage + " holds no PEM certificate"},
		// A key given as the certificate: the error must not quote it.
		{TLSConfig{CertFile: node.KeyFile, KeyFile: node.KeyFile}, "tls.cert_file: certificate " + node.KeyFile},
	} {
		err := tc.cfg.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", tc.cfg, err)
		case tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.want)):
			t.Errorf("%+v: %v, want %q...", tc.cfg, err, tc.want)
		case err != nil && strings.Contains(err.Error(), string(keyPEM[40:80])):
			t.Errorf("the error quotes the key: %v", err)
		}
	}
}

// tlsServer accepts TLS connections and echoes lines, so that a test can
// see which certificate a connection got and that it still works.
func tlsServer(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

func echo(t *testing.T, c *tls.Conn, msg string) {
	t.Helper()
	if _, err := fmt.Fprintln(c, msg); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != msg+"\n" {
		t.Fatalf("echo %q: %q %v", msg, line, err)
	}
}

// TestCertificateReload: replaced files are used by the next connection
// while an open one keeps working; a broken replacement keeps the
// previous certificate (logged once, counted) until the files are fixed.
func TestCertificateReload(t *testing.T) {
	dir := t.TempDir()
	ca := authtest.NewCA(t, dir, "ca")
	first := ca.Issue(t, dir, "node")
	logs := &syncLog{}
	reg := prometheus.NewRegistry()
	x, err := NewTLS(TLSConfig{CertFile: first.CertFile, KeyFile: first.KeyFile, CAFile: ca.File}, slog.New(slog.NewTextHandler(logs, nil)), reg)
	if err != nil {
		t.Fatal(err)
	}
	addr := tlsServer(t, x.ServerConfig())
	dial := func() *tls.Conn {
		t.Helper()
		c, err := tls.Dial("tcp", addr, x.ClientConfig(addr))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	serial := func(c *tls.Conn) string { return c.ConnectionState().PeerCertificates[0].SerialNumber.String() }
	old := dial()
	echo(t, old, "hello")
	if serial(old) != first.Cert.SerialNumber.String() {
		t.Fatal("not the first certificate")
	}

	// Renewed: same names, new key, written over the old files.
	second := ca.Issue(t, dir, "node")
	fresh := dial()
	echo(t, fresh, "again")
	if serial(fresh) != second.Cert.SerialNumber.String() {
		t.Fatalf("a new connection got certificate %s, want the renewed %s", serial(fresh), second.Cert.SerialNumber)
	}
	echo(t, old, "still there") // the open connection keeps its session
	if got := testutil.ToFloat64(x.reloads.WithLabelValues("ok")); got != 1 {
		t.Fatalf("reloads ok %v", got)
	}

	// A broken certificate file: the renewed certificate stays in use.
	if err := os.WriteFile(first.CertFile, []byte("-----BEGIN CERTIFICATE-----\nbroken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		c := dial()
		echo(t, c, "broken file")
		if serial(c) != second.Cert.SerialNumber.String() {
			t.Fatal("a broken file replaced the certificate")
		}
	}
	if got := testutil.ToFloat64(x.reloads.WithLabelValues("error")); got != 1 {
		t.Fatalf("reload errors %v, want 1 (the same broken file is tried once)", got)
	}
	if n := strings.Count(logs.String(), "tls files changed but do not load"); n != 1 {
		t.Fatalf("%d lines about the broken file:\n%s", n, logs)
	}
	// Fixed: the next connection gets the third certificate.
	third := ca.Issue(t, dir, "node")
	c := dial()
	echo(t, c, "fixed")
	if serial(c) != third.Cert.SerialNumber.String() {
		t.Fatal("the fixed files were not loaded")
	}
	keyPEM, _ := os.ReadFile(third.KeyFile)
	if strings.Contains(logs.String(), string(keyPEM[40:80])) {
		t.Fatal("key material in the log")
	}
}

// TestClientOffersCertificateOnlyForClientAuth: a certificate whose
// extended key usage is serverAuth alone is not offered (the server
// decides), so that it cannot break a handshake that needs none.
func TestClientOffersCertificateOnlyForClientAuth(t *testing.T) {
	dir := t.TempDir()
	ca := authtest.NewCA(t, dir, "ca")
	node := ca.Issue(t, dir, "node")
	serverOnly := ca.Issue(t, dir, "server-only", x509.ExtKeyUsageServerAuth)
	srv, err := NewTLS(TLSConfig{CertFile: node.CertFile, KeyFile: node.KeyFile, CAFile: ca.File}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var peers []int
	cfg := srv.ServerConfig()
	inner := cfg.GetConfigForClient
	cfg.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		c, err := inner(h)
		c = c.Clone()
		c.VerifyConnection = func(st tls.ConnectionState) error {
			mu.Lock()
			peers = append(peers, len(st.PeerCertificates))
			mu.Unlock()
			return nil
		}
		return c, err
	}
	addr := tlsServer(t, cfg)
	for _, p := range []struct {
		pair authtest.Pair
		want int
	}{{node, 1}, {serverOnly, 0}} {
		cl, err := NewTLS(TLSConfig{CertFile: p.pair.CertFile, KeyFile: p.pair.KeyFile, CAFile: ca.File}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.Dial("tcp", addr, cl.ClientConfig(addr))
		if err != nil {
			t.Fatal(err)
		}
		echo(t, c, "x")
		c.Close()
		mu.Lock()
		got := peers[len(peers)-1]
		mu.Unlock()
		if got != p.want {
			t.Errorf("%s offered %d certificates, want %d", p.pair.Cert.Subject.CommonName, got, p.want)
		}
	}
}

// TestHTTPServerProbesWithoutClientCertificate: with client_auth, an HTTP
// port lets a client without a certificate through the handshake and
// answers it GET and HEAD of /healthz and /readyz only (403 with a JSON
// error elsewhere: the API, /metrics, /debug/pprof/, a POST to a probe
// path); a client with a certificate of the CA gets every path; one with
// a certificate of another CA is refused at the handshake.
func TestHTTPServerProbesWithoutClientCertificate(t *testing.T) {
	dir := t.TempDir()
	ca := authtest.NewCA(t, dir, "ca")
	node := ca.Issue(t, dir, "node")
	client := ca.Issue(t, dir, "client")
	stranger := authtest.NewCA(t, dir, "other-ca").Issue(t, dir, "stranger")
	logs := &syncLog{}
	x, err := NewTLS(TLSConfig{CertFile: node.CertFile, KeyFile: node.KeyFile, CAFile: ca.File, ClientAuth: true}, slog.New(slog.NewTextHandler(logs, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	h, cfg := x.HTTPServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "served "+r.URL.Path)
	}))
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = cfg
	srv.StartTLS()
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	clientOf := func(p *authtest.Pair) *http.Client {
		tc := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
		if p != nil {
			kp, err := tls.LoadX509KeyPair(p.CertFile, p.KeyFile)
			if err != nil {
				t.Fatal(err)
			}
			// Offered whatever CAs the server names (a Go client with
			// Certificates offers none the server's CAs did not sign).
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &kp, nil }
		}
		return &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	}
	do := func(c *http.Client, method, path string) (int, string, error) {
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), nil
	}
	probe, withCert, other := clientOf(nil), clientOf(&client), clientOf(&stranger)
	defer probe.CloseIdleConnections()
	defer withCert.CloseIdleConnections()
	defer other.CloseIdleConnections()

	for _, tc := range []struct{ method, path string }{{"GET", "/healthz"}, {"GET", "/readyz"}, {"HEAD", "/healthz"}, {"HEAD", "/readyz"}} {
		if code, _, err := do(probe, tc.method, tc.path); err != nil || code != http.StatusOK {
			t.Errorf("%s %s without a client certificate: %d %v", tc.method, tc.path, code, err)
		}
	}
	paths := []string{"/api/v1/query?app=orders", "/api/v1/apps", "/metrics", "/debug/pprof/", "/debug/pprof/profile", "/", "/healthz/", "//healthz", "/readyz/../metrics", "/admin/reload"}
	for _, path := range paths {
		code, body, err := do(probe, "GET", path)
		var e map[string]string
		if err != nil || code != http.StatusForbidden || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e["error"], "client certificate") {
			t.Errorf("GET %s without a client certificate: %d %q %v, want 403 naming the certificate", path, code, body, err)
		}
	}
	for _, method := range []string{"POST", "PUT", "DELETE"} {
		if code, _, err := do(probe, method, "/healthz"); err != nil || code != http.StatusForbidden {
			t.Errorf("%s /healthz without a client certificate: %d %v, want 403", method, code, err)
		}
	}
	for _, path := range append(paths, "/healthz", "/readyz") {
		if code, body, err := do(withCert, "GET", path); err != nil || code != http.StatusOK || !strings.HasPrefix(body, "served ") {
			t.Errorf("GET %s with a client certificate: %d %q %v", path, code, body, err)
		}
	}
	if code, _, err := do(withCert, "POST", "/admin/reload"); err != nil || code != http.StatusOK {
		t.Errorf("POST /admin/reload with a client certificate: %d %v", code, err)
	}
	for _, path := range []string{"/healthz", "/metrics"} {
		if code, _, err := do(other, "GET", path); err == nil {
			t.Errorf("GET %s with a certificate of another CA: %d, want a refused handshake", path, code)
		}
	}
	if !strings.Contains(logs.String(), "request without a client certificate refused") {
		t.Errorf("refusals not logged:\n%s", logs)
	}
	if got, want := testutil.ToFloat64(x.refused), float64(len(paths)+3); got != want {
		t.Errorf("freeway_tls_requests_without_client_cert_total = %v, want %v (the 403s only)", got, want)
	}

	// The Thrift and Scribe ports' configuration still requires one.
	if _, err := tls.Dial("tcp", srv.Listener.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}); err != nil {
		t.Fatalf("the HTTP configuration refused a client without a certificate: %v", err)
	}
	addr := tlsServer(t, x.ServerConfig())
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
	if err == nil {
		// TLS 1.3: the refusal comes with the first read.
		_, _ = fmt.Fprintln(c, "hello")
		_, err = bufio.NewReader(c).ReadString('\n')
		c.Close()
	}
	if err == nil {
		t.Error("ServerConfig accepted a client without a certificate")
	}
}

// TestHTTPServerWithoutClientAuth: without client_auth the handler is
// the one given: a client without a certificate gets every path.
func TestHTTPServerWithoutClientAuth(t *testing.T) {
	dir := t.TempDir()
	ca := authtest.NewCA(t, dir, "ca")
	node := ca.Issue(t, dir, "node")
	x, err := NewTLS(TLSConfig{CertFile: node.CertFile, KeyFile: node.KeyFile, CAFile: ca.File}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	h, cfg := x.HTTPServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = cfg
	srv.StartTLS()
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/metrics without client_auth: %d", resp.StatusCode)
	}
	if h, cfg := (*TLS)(nil).HTTPServer(h); cfg != nil || h == nil {
		t.Error("a nil TLS gave a TLS configuration")
	}
}
