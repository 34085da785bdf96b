package httpsrv

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/auth/authtest"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// TestHTTPS: with TLS the port serves HTTPS, its keep-alive connections
// are still seen idle by the connection cap (through the TLS layer), and
// a plaintext request is answered 400.
func TestHTTPS(t *testing.T) {
	dir := t.TempDir()
	ca := authtest.NewCA(t, dir, "ca")
	node := ca.Issue(t, dir, "node")
	x, err := auth.NewTLS(auth.TLSConfig{CertFile: node.CertFile, KeyFile: node.KeyFile, CAFile: ca.File}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	s, err := Listen("127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }),
		Options{Name: "test", Metrics: reg, TLS: x.ServerConfig()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	defer func() { cancel(); <-done }() //nolint:errcheck // stopping the server; its error is not what this test checks
	if !strings.HasPrefix(s.URL(), "https://") {
		t.Fatalf("URL %s", s.URL())
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: x.ClientConfig(s.Addr())}, Timeout: 30 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Get(s.URL() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok" || resp.TLS == nil {
		t.Fatalf("https answer %d %q", resp.StatusCode, body)
	}
	testkit.WaitFor(t, "the keep-alive TLS connection to be idle", func() bool { return gauge(t, reg, "freeway_listener_idle_connections") == 1 })
	plain := &http.Client{Transport: &http.Transport{}, Timeout: 30 * time.Second}
	resp, err = plain.Get("http://" + s.Addr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "HTTPS") {
		t.Fatalf("plaintext request: %d %q", resp.StatusCode, body)
	}
	testkit.Eventually(t, "the plaintext client's handshake error counted", func() error {
		if n := gauge(t, reg, "freeway_http_errors_total"); n != 1 {
			return fmt.Errorf("counted %v times, want 1", n)
		}
		return nil
	})
}
