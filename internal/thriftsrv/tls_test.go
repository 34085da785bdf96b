package thriftsrv

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/auth/authtest"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/thrift/gen/freeway"
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

// whoami answers apps() with what the server knows of the connection:
// the verified client certificate's name (or "anonymous") and the token
// the connection authenticated with earlier.
type whoami struct{}

type tokenKey struct{}

func (whoami) Apps(ctx context.Context) ([]*freeway.AppInfo, error) {
	name := "plaintext"
	if st := TLSState(ctx); st != nil {
		name = "anonymous"
		if auth.Verified(st) {
			name = st.VerifiedChains[0][0].Subject.CommonName
		}
	}
	tok, _ := ConnValue(ctx, tokenKey{}).(string)
	return []*freeway.AppInfo{{Name: name, Category: tok}}, nil
}

func (whoami) Query(context.Context, *freeway.QueryRequest) (*freeway.QueryResult_, error) {
	return nil, &freeway.QueryError{Message: "no"}
}

func (whoami) Authenticate(ctx context.Context, token string) error {
	SetConnValue(ctx, tokenKey{}, token)
	return nil
}

func serveTLS(t *testing.T, cfg *tls.Config) (*Server, *syncLog, *prometheus.Registry) {
	t.Helper()
	logs := &syncLog{}
	reg := prometheus.NewRegistry()
	srv, err := Listen("127.0.0.1:0", freeway.NewQueryProcessor(whoami{}), Limits{}, slog.New(slog.NewTextHandler(logs, nil)),
		WithTLS(cfg), WithMetrics(reg), WithName("q"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return srv, logs, reg
}

func newTLS(t *testing.T, c auth.TLSConfig) *auth.TLS {
	t.Helper()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	x, err := auth.NewTLS(c, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func whoIs(t *testing.T, addr string, tc *tls.Config) (string, error) {
	t.Helper()
	c, err := DialTLS(addr, tc, Limits{}, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	apps, err := freeway.NewQueryClient(c.TClient()).Apps(context.Background())
	if err != nil {
		return "", err
	}
	return apps[0].Name, nil
}

func closed(reg *prometheus.Registry, reason string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "freeway_thrift_connections_closed_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "reason" && lp.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func waitClosed(t *testing.T, reg *prometheus.Registry, reason string, want float64) {
	t.Helper()
	testkit.Eventually(t, "connections closed for "+reason, func() error {
		if got := closed(reg, reason); got != want {
			return fmt.Errorf("%v, want %v", got, want)
		}
		return nil
	})
}

// TestTLSPort: a TLS port serves TLS clients, tells handlers whether the
// client's certificate was verified and keeps per-connection values
// between calls; it closes a plaintext client at once, saying so, and
// refuses a client certificate from another CA.
func TestTLSPort(t *testing.T) {
	dir := t.TempDir()
	ca := authtest.NewCA(t, dir, "ca")
	node := ca.Issue(t, dir, "node")
	client := ca.Issue(t, dir, "client")
	other := authtest.NewCA(t, dir, "other-ca").Issue(t, dir, "stranger")
	server := newTLS(t, auth.TLSConfig{CertFile: node.CertFile, KeyFile: node.KeyFile, CAFile: ca.File})
	srv, logs, reg := serveTLS(t, server.ServerConfig())

	// No client certificate: served, not verified.
	anon := &tls.Config{RootCAs: server.ClientConfig("x").RootCAs, ServerName: "127.0.0.1"}
	if who, err := whoIs(t, srv.Addr(), anon); err != nil || who != "anonymous" {
		t.Fatalf("without a client certificate: %q %v", who, err)
	}
	// A certificate of the CA: verified.
	withCert := newTLS(t, auth.TLSConfig{CertFile: client.CertFile, KeyFile: client.KeyFile, CAFile: ca.File})
	if who, err := whoIs(t, srv.Addr(), withCert.ClientConfig(srv.Addr())); err != nil || who != "client" {
		t.Fatalf("with a client certificate: %q %v", who, err)
	}
	// A value kept by one call is seen by the connection's next calls.
	c, err := DialTLS(srv.Addr(), anon, Limits{}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	q := freeway.NewQueryClient(c.TClient())
	if err := q.Authenticate(context.Background(), "t0k"); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if apps, err := q.Apps(context.Background()); err != nil || apps[0].Category != "t0k" {
			t.Fatalf("connection value: %v %v", apps, err)
		}
	}
	c.Close()
	// A second connection starts without it.
	c2, err := DialTLS(srv.Addr(), anon, Limits{}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if apps, err := freeway.NewQueryClient(c2.TClient()).Apps(context.Background()); err != nil || apps[0].Category != "" {
		t.Fatalf("a new connection has the value of another: %v %v", apps, err)
	}
	c2.Close()

	// A plaintext client: closed at once, with a line saying why.
	if who, err := whoIs(t, srv.Addr(), nil); err == nil {
		t.Fatalf("a plaintext client was served (%q)", who)
	}
	waitClosed(t, reg, "protocol", 1)
	if !strings.Contains(logs.String(), "client does not speak TLS") || !strings.Contains(logs.String(), "plaintext framed thrift") {
		t.Fatalf("no line about the plaintext client:\n%s", logs)
	}
	// A certificate of another CA: the handshake fails.
	stranger := newTLS(t, auth.TLSConfig{CertFile: other.CertFile, KeyFile: other.KeyFile, CAFile: ca.File})
	if who, err := whoIs(t, srv.Addr(), stranger.ClientConfig(srv.Addr())); err == nil {
		t.Fatalf("a certificate of another CA was taken (%q)", who)
	}
	waitClosed(t, reg, "tls_handshake", 1)
	// The server counts the close before it writes the line.
	testkit.Eventually(t, "a line about the failed handshake", func() error {
		if !strings.Contains(logs.String(), "tls handshake failed") {
			return fmt.Errorf("no line about the failed handshake:\n%s", logs)
		}
		return nil
	})
	// The port still serves.
	if who, err := whoIs(t, srv.Addr(), withCert.ClientConfig(srv.Addr())); err != nil || who != "client" {
		t.Fatalf("after the refusals: %q %v", who, err)
	}
}

// TestTLSClientAuthRequired: with client_auth a client without a
// certificate is refused; one with a certificate of the CA is served.
func TestTLSClientAuthRequired(t *testing.T) {
	dir := t.TempDir()
	ca := authtest.NewCA(t, dir, "ca")
	node := ca.Issue(t, dir, "node")
	client := ca.Issue(t, dir, "client")
	server := newTLS(t, auth.TLSConfig{CertFile: node.CertFile, KeyFile: node.KeyFile, CAFile: ca.File, ClientAuth: true})
	srv, _, reg := serveTLS(t, server.ServerConfig())
	anon := &tls.Config{RootCAs: server.ClientConfig("x").RootCAs, ServerName: "127.0.0.1"}
	if who, err := whoIs(t, srv.Addr(), anon); err == nil {
		t.Fatalf("a client without a certificate was served (%q)", who)
	}
	waitClosed(t, reg, "tls_handshake", 1)
	withCert := newTLS(t, auth.TLSConfig{CertFile: client.CertFile, KeyFile: client.KeyFile, CAFile: ca.File})
	if who, err := whoIs(t, srv.Addr(), withCert.ClientConfig(srv.Addr())); err != nil || who != "client" {
		t.Fatalf("with a client certificate: %q %v", who, err)
	}
}

// TestPlainPortClosesTLS: a TLS client on a plaintext port is closed with
// a line saying the port speaks plain TCP.
func TestPlainPortClosesTLS(t *testing.T) {
	dir := t.TempDir()
	ca := authtest.NewCA(t, dir, "ca")
	node := ca.Issue(t, dir, "node")
	x := newTLS(t, auth.TLSConfig{CertFile: node.CertFile, KeyFile: node.KeyFile, CAFile: ca.File})
	srv, logs, reg := serveTLS(t, nil)
	if who, err := whoIs(t, srv.Addr(), x.ClientConfig(srv.Addr())); err == nil {
		t.Fatalf("a TLS client was served on a plaintext port (%q)", who)
	}
	waitClosed(t, reg, "protocol", 1)
	if !strings.Contains(logs.String(), "a TLS handshake; this port speaks plain TCP") {
		t.Fatalf("no line about the TLS client:\n%s", logs)
	}
	if who, err := whoIs(t, srv.Addr(), nil); err != nil || who != "plaintext" {
		t.Fatalf("plaintext client: %q %v", who, err)
	}
}
