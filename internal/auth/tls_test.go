package auth

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
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
