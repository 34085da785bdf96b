package scribe

import (
	"context"
	"crypto/x509"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/auth/authtest"
	"github.com/freeway-dev/freeway/internal/component"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// tlsUpstream is a writer over TLS that records the batches it takes and
// the verified client certificate each came with.
type tlsUpstream struct {
	mu  sync.Mutex
	got []string // "<client CN>:<first_seq>:<n>"
}

func (u *tlsUpstream) LogBatch(ctx context.Context, b *scribethrift.Batch) (scribethrift.ResultCode, error) {
	who := "unverified"
	if st := thriftsrv.TLSState(ctx); auth.Verified(st) {
		who = st.VerifiedChains[0][0].Subject.CommonName
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	for i := range b.Messages {
		u.got = append(u.got, who+":"+strconv.FormatInt(b.FirstSeq+int64(i), 10))
	}
	return scribethrift.ResultCode_OK, nil
}

func (u *tlsUpstream) Log(ctx context.Context, es []*scribethrift.LogEntry) (scribethrift.ResultCode, error) {
	return u.LogBatch(ctx, &scribethrift.Batch{Messages: es})
}

func (u *tlsUpstream) received() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.got...)
}

func loadTLS(t *testing.T, c auth.TLSConfig) *auth.TLS {
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

func startTLSAgent(t *testing.T, cfg Config, x *auth.TLS) *agent {
	t.Helper()
	lb := &testkit.LogBuffer{}
	reg := prometheus.NewPedanticRegistry()
	a, err := newAgent(cfg, Deps{Common: component.Common{Log: lb.Logger(), Metrics: reg,
		Shared: component.Shared{TLS: x}}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, a.Run)
	return &agent{Agent: a, reg: reg, logs: lb}
}

// TestAgentTLS: with the process's TLS the agent's app port speaks TLS
// (a plaintext app is refused), or stays plaintext with agent.tls false;
// either way it ships over TLS with its certificate, verified by a
// writer requiring client certificates. An agent whose certificate is of
// another CA, or may not authenticate clients, or that has no TLS, is
// refused by that writer and delivers nothing.
func TestAgentTLS(t *testing.T) {
	dir := t.TempDir()
	ca := authtest.NewCA(t, dir, "ca")
	writer := ca.Issue(t, dir, "writer")
	agentCert := ca.Issue(t, dir, "agent-1")
	serverOnly := ca.Issue(t, dir, "server-only", x509.ExtKeyUsageServerAuth)
	stranger := authtest.NewCA(t, dir, "other-ca").Issue(t, dir, "stranger")
	wtls := loadTLS(t, auth.TLSConfig{CertFile: writer.CertFile, KeyFile: writer.KeyFile, CAFile: ca.File, ClientAuth: true})
	up := &tlsUpstream{}
	srv, err := scribeapi.Listen("127.0.0.1:0", up, scribeapi.Info{Name: "writer"}, thriftsrv.Limits{}, nil, thriftsrv.WithTLS(wtls.ServerConfig()))
	if err != nil {
		t.Fatal(err)
	}
	serve(t, srv.Serve)

	atls := loadTLS(t, auth.TLSConfig{CertFile: agentCert.CertFile, KeyFile: agentCert.KeyFile, CAFile: ca.File})
	a := startTLSAgent(t, testConfig(t.TempDir(), srv.Addr()), atls)
	if c, err := scribeapi.Dial(a.Addr(), thriftsrv.Limits{}, 5*time.Second); err == nil {
		_, err = c.Log(context.Background(), entries("web", "plain", 0, 1))
		c.Close()
		if err == nil {
			t.Fatal("a plaintext app was served on the TLS app port")
		}
	}
	c, err := scribeapi.DialTLS(a.Addr(), a.ClientTLS(), thriftsrv.Limits{}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	mustLog(t, c, entries("web", "tls", 0, 3))
	c.Close()
	testkit.WaitFor(t, "the entries over TLS", func() bool { return len(up.received()) == 3 })
	if got := strings.Join(up.received(), ","); got != "agent-1:1,agent-1:2,agent-1:3" {
		t.Fatalf("writer got %s", got)
	}

	// agent.tls: false keeps the app port plaintext; upstream is TLS.
	cfg := testConfig(t.TempDir(), srv.Addr())
	cfg.TLS = false
	plain := startTLSAgent(t, cfg, atls)
	if plain.ClientTLS() != nil {
		t.Fatal("ClientTLS of a plaintext port")
	}
	mustLog(t, dial(t, plain.Addr()), entries("web", "plain", 0, 2))
	testkit.WaitFor(t, "the entries of the plaintext app port", func() bool { return len(up.received()) == 5 })
	if got := strings.Join(up.received()[3:], ","); got != "agent-1:1,agent-1:2" {
		t.Fatalf("writer got %s", got)
	}

	// Refused by the writer: nothing delivered, failures counted.
	for name, x := range map[string]*auth.TLS{
		"a certificate of another CA": loadTLS(t, auth.TLSConfig{CertFile: stranger.CertFile, KeyFile: stranger.KeyFile, CAFile: ca.File}),
		"a server-only certificate":   loadTLS(t, auth.TLSConfig{CertFile: serverOnly.CertFile, KeyFile: serverOnly.KeyFile, CAFile: ca.File}),
		"no TLS":                      nil,
	} {
		cfg := testConfig(t.TempDir(), srv.Addr())
		cfg.TLS = false
		bad := startTLSAgent(t, cfg, x)
		mustLog(t, dial(t, bad.Addr()), entries("web", "refused", 0, 1))
		testkit.WaitFor(t, name+": failures", func() bool { return counterValue(t, bad, "freeway_agent_ship_errors_total") >= 3 })
		if n := len(up.received()); n != 5 {
			t.Fatalf("%s: the writer took entries (%d)", name, n)
		}
		if !strings.Contains(bad.logs.String(), "shipping upstream failed") {
			t.Fatalf("%s: no line about the failure:\n%s", name, bad.logs)
		}
	}
}
