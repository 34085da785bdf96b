package freeway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/auth/authtest"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/thrift/gen/freeway"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

const (
	queryToken = "q-7f3a9c0e5b1d4e2f8a6c"
	adminToken = "a-0b9e8d7c6f5a4b3c2d1e"
)

// pki is a CA, a certificate for the processes, one for the test's
// clients, and token files, under a test directory.
type pki struct {
	dir                string
	ca                 *authtest.CA
	node, client       authtest.Pair
	queryFile, adminFn string
	clientTLS          *auth.TLS
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	p := &pki{dir: dir, ca: authtest.NewCA(t, dir, "ca")}
	p.node = p.ca.Issue(t, dir, "node")
	p.client = p.ca.Issue(t, dir, "client")
	p.queryFile, p.adminFn = filepath.Join(dir, "query-tokens"), filepath.Join(dir, "admin-token")
	if err := os.WriteFile(p.queryFile, []byte("# dashboards\n"+queryToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.adminFn, []byte(adminToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	if p.clientTLS, err = auth.NewTLS(auth.TLSConfig{CertFile: p.client.CertFile, KeyFile: p.client.KeyFile, CAFile: p.ca.File}, nil, nil); err != nil {
		t.Fatal(err)
	}
	return p
}

// secure turns on mutual TLS and tokens in cfg.
func (p *pki) secure(cfg *Config) {
	cfg.TLS = auth.TLSConfig{CertFile: p.node.CertFile, KeyFile: p.node.KeyFile, CAFile: p.ca.File, ClientAuth: true}
	cfg.Auth = auth.Config{QueryTokensFile: p.queryFile, AdminTokenFile: p.adminFn}
}

// secrets are strings that must appear in no log and no metric: the
// tokens and pieces of every private key.
func (p *pki) secrets(t *testing.T) []string {
	out := []string{queryToken, adminToken}
	for _, f := range []string{p.node.KeyFile, p.client.KeyFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		body := strings.Join(strings.Split(string(b), "\n")[1:3], "")
		out = append(out, body[:32], body[len(body)-32:])
	}
	return out
}

// sendTLS sends orders to a Scribe port over TLS, as Log calls.
func sendTLS(t *testing.T, addr string, tc *tls.Config, os []order, batch int) {
	t.Helper()
	c, err := scribeapi.DialTLS(addr, tc, thriftsrv.Limits{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < len(os); i += batch {
		var entries []*scribethrift.LogEntry
		for _, o := range os[i:min(i+batch, len(os))] {
			entries = append(entries, &scribethrift.LogEntry{Category: "orders", Message: o.json()})
		}
		for {
			rc, err := c.Log(context.Background(), entries)
			if err != nil {
				t.Fatal(err)
			}
			if rc == scribethrift.ResultCode_OK {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// httpsClient dials with the client certificate.
func (p *pki) httpsClient(addr string) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: p.clientTLS.ClientConfig(addr)}, Timeout: 30 * time.Second}
}

func getWith(t *testing.T, c *http.Client, u, token string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// waitTotalsTLS polls the query API over HTTPS with the query token until
// the answer is exactly want.
func waitTotalsTLS(t *testing.T, c *http.Client, baseURL string, from, to int64, want map[string]*agg) {
	t.Helper()
	u := baseURL + "/api/v1/query?" + url.Values{"app": {"orders"}, "from": {fmt.Sprint(from)}, "to": {fmt.Sprint(to)}}.Encode()
	testkit.Eventually(t, "the totals to match", func() error {
		code, body := getWith(t, c, u, queryToken)
		if code != http.StatusOK {
			t.Fatalf("query: %d %s", code, body)
		}
		var a queryAnswer
		if err := json.Unmarshal(body, &a); err != nil {
			t.Fatal(err)
		}
		if d := diff(a, want); d != "" {
			return errors.New(d)
		}
		return nil
	})
}

func startSecure(t *testing.T, cfg Config, target string, logs *testkit.LogBuffer) *running {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.Resolve()
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})).With("target", target)
	p, err := New(cfg, target, Options{Version: "test", Log: log, AdminListen: "127.0.0.1:0"})
	if err != nil {
		t.Fatalf("start %s: %v", target, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{p: p, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- p.Run(ctx) }()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log:\n%s", target, logs)
		}
	})
	return r
}

// TestEndToEndOverTLS runs `freeway all` with mutual TLS on every port
// and both tokens: apps log over TLS to the agent (and a client straight
// to the writer), the agent ships over mutual TLS, queries over HTTPS and
// Thrift with the query token give exact totals. A replaced certificate
// is used by new connections while an open one keeps working. No token
// or key shows in the log or the metrics.
func TestEndToEndOverTLS(t *testing.T) {
	p := newPKI(t)
	cfg := testConfig(t.TempDir())
	p.secure(&cfg)
	logs := &testkit.LogBuffer{}
	r := startSecure(t, cfg, All, logs)
	defer r.stop(t)
	ap := r.p.Agent.ClientTLS()
	if ap == nil {
		t.Fatal("the agent's app port is not TLS")
	}
	// The test's client certificate, as an app would have.
	appTLS := p.clientTLS.ClientConfig(r.p.Agent.Addr())
	first := orders(2000, 0, base)
	sendTLS(t, r.p.Agent.Addr(), appTLS, first, 100)
	direct := orders(300, 7, base)
	sendTLS(t, r.p.Calligraphus.Addr(), p.clientTLS.ClientConfig(r.p.Calligraphus.Addr()), direct, 50)
	all := slices.Concat(first, direct)
	hc := p.httpsClient(r.p.Serving.Addr())
	defer hc.CloseIdleConnections()
	waitTotalsTLS(t, hc, r.p.Serving.URL(), base, base+180, expected(all))

	// Without a token, or with the admin one: 401 with a JSON error.
	u := r.p.Serving.URL() + "/api/v1/query?app=orders"
	for _, tok := range []string{"", adminToken, "nope"} {
		code, body := getWith(t, hc, u, tok)
		var e map[string]string
		if code != http.StatusUnauthorized || json.Unmarshal(body, &e) != nil || e["error"] == "" {
			t.Errorf("query with token %q: %d %s", tok, code, body)
		}
	}
	if code, _ := getWith(t, hc, r.p.Serving.URL()+"/metrics", queryToken); code != http.StatusUnauthorized {
		t.Errorf("/metrics with the query token: %d", code)
	}
	// The totals can match before Puma's first pass over its shards has
	// ended (until then it is not ready): wait for readiness, then ask
	// for it without a token.
	testkit.WaitFor(t, "puma ready", r.p.Puma.Ready)
	if code, _ := getWith(t, hc, r.p.Serving.URL()+"/readyz", ""); code != http.StatusOK {
		t.Errorf("/readyz without a token: %d", code)
	}

	// Thrift, over TLS, with the token.
	tc, err := thriftsrv.DialTLS(r.p.Serving.ThriftAddr(), p.clientTLS.ClientConfig(r.p.Serving.ThriftAddr()), thriftsrv.Limits{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	q := freeway.NewQueryClient(tc.TClient())
	req := &freeway.QueryRequest{App: "orders", FromUnix: base, ToUnix: base + 180, GroupBy: []string{}, AllWindows: true}
	var qe *freeway.QueryError
	if _, err := q.Query(context.Background(), req); !errors.As(err, &qe) || qe.GetCode() != 401 {
		t.Fatalf("thrift query without a token: %v", err)
	}
	if err := q.Authenticate(context.Background(), queryToken); err != nil {
		t.Fatal(err)
	}
	res, err := q.Query(context.Background(), req)
	if err != nil || len(res.Rows) != 1 || res.Rows[0].Values["n"] != float64(len(all)) {
		t.Fatalf("thrift query: %+v %v", res, err)
	}

	// Renew the certificate: the next connection gets the new one, the
	// open keep-alive connection keeps working with the old one.
	oldConn := p.httpsClient(r.p.Serving.Addr())
	defer oldConn.CloseIdleConnections()
	var oldSerial string
	oldConn.Transport.(*http.Transport).TLSClientConfig.VerifyConnection = func(st tls.ConnectionState) error {
		oldSerial = st.PeerCertificates[0].SerialNumber.String()
		return nil
	}
	if code, _ := getWith(t, oldConn, r.p.Serving.URL()+"/healthz", ""); code != 200 || oldSerial != p.node.Cert.SerialNumber.String() {
		t.Fatalf("before the renewal: %d, serial %s", code, oldSerial)
	}
	renewed := p.ca.Issue(t, p.dir, "node")
	newConn := p.httpsClient(r.p.Serving.Addr())
	defer newConn.CloseIdleConnections()
	var newSerial string
	newConn.Transport.(*http.Transport).TLSClientConfig.VerifyConnection = func(st tls.ConnectionState) error {
		newSerial = st.PeerCertificates[0].SerialNumber.String()
		return nil
	}
	if code, _ := getWith(t, newConn, r.p.Serving.URL()+"/healthz", ""); code != 200 || newSerial != renewed.Cert.SerialNumber.String() {
		t.Fatalf("after the renewal, a new connection: %d, serial %s, want %s", code, newSerial, renewed.Cert.SerialNumber)
	}
	oldSerial = ""
	if code, _ := getWith(t, oldConn, r.p.Serving.URL()+"/healthz", ""); code != 200 || oldSerial != "" {
		t.Fatalf("the open connection after the renewal: %d (handshake again: %q)", code, oldSerial)
	}
	// The pipeline goes on with the renewed certificate: the agent's
	// next connection to the writer, the apps', the queries'.
	more := orders(500, 3, base)
	sendTLS(t, r.p.Agent.Addr(), appTLS, more, 100)
	all = append(all, more...)
	waitTotalsTLS(t, newConn, r.p.Serving.URL(), base, base+180, expected(all))

	if n := gathered(t, r, "freeway_calligraphus_entries_unverified_total"); n != 0 {
		t.Errorf("the agent's batches were not verified: %v entries", n)
	}
	code, metrics := getWith(t, hc, r.p.Serving.URL()+"/metrics", adminToken)
	if code != 200 {
		t.Fatalf("/metrics with the admin token: %d", code)
	}
	for _, want := range []string{`freeway_auth_refused_total{endpoint="query",reason="invalid"} 2`, `freeway_tls_reloads_total{result="ok"} 1`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	for _, s := range p.secrets(t) {
		if strings.Contains(string(metrics), s) || strings.Contains(logs.String(), s) {
			t.Fatalf("secret %q in the metrics or the log", s)
		}
	}
}

// gathered is the sum of a metric's series in a process's registry.
func gathered(t *testing.T, r *running, name string) float64 {
	t.Helper()
	mfs, err := r.p.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
		}
	}
	return v
}

// TestSplitTargetsOverTLS runs an agent as its own process, with its app
// port kept plaintext (agent.tls: false) for stock clients, shipping over
// mutual TLS to the writer of another process: totals are exact. Agents
// with a certificate of another CA, or without TLS, are refused by the
// writer and add nothing. The agent's admin port is HTTPS and its
// /metrics needs the admin token.
func TestSplitTargetsOverTLS(t *testing.T) {
	p := newPKI(t)
	cfg := testConfig(t.TempDir())
	p.secure(&cfg)
	logs := &testkit.LogBuffer{}
	node := startSecure(t, cfg, All, logs)
	defer node.stop(t)

	agentCfg := cfg
	agentCfg.DataDir = t.TempDir()
	agentCfg.Agent.TLS = false
	agentCfg.Agent.Upstream = []string{node.p.Calligraphus.Addr()}
	agentLogs := &testkit.LogBuffer{}
	agent := startSecure(t, agentCfg, Agent, agentLogs)
	defer agent.stop(t)
	if agent.p.Agent.ClientTLS() != nil {
		t.Fatal("agent.tls: false, yet the app port speaks TLS")
	}
	sent := orders(1500, 0, base)
	send(t, agent.p.Agent.Addr(), sent, 100) // a stock, plaintext client

	// Refused agents: a certificate of another CA; no TLS at all.
	other := authtest.NewCA(t, p.dir, "other-ca").Issue(t, p.dir, "stranger")
	stranger := agentCfg
	stranger.DataDir = t.TempDir()
	stranger.TLS = auth.TLSConfig{CertFile: other.CertFile, KeyFile: other.KeyFile, CAFile: p.ca.File}
	stranger.Auth = auth.Config{}
	plain := agentCfg
	plain.DataDir = t.TempDir()
	plain.TLS, plain.Auth = auth.TLSConfig{}, auth.Config{}
	for name, c := range map[string]Config{"stranger": stranger, "plaintext": plain} {
		bad := startSecure(t, c, Agent, &testkit.LogBuffer{})
		defer bad.stop(t)
		send(t, bad.p.Agent.Addr(), orders(50, 1, base), 50)
		testkit.WaitFor(t, name+" agent's shipping failures", func() bool { return gathered(t, bad, "freeway_agent_ship_errors_total") >= 2 })
		if n := gathered(t, bad, "freeway_agent_entries_shipped_total"); n != 0 {
			t.Fatalf("%s agent shipped %v entries", name, n)
		}
	}
	hc := p.httpsClient(node.p.Serving.Addr())
	defer hc.CloseIdleConnections()
	waitTotalsTLS(t, hc, node.p.Serving.URL(), base, base+180, expected(sent))
	if n := gathered(t, node, "freeway_thrift_connections_closed_total"); n < 2 {
		t.Errorf("the writer closed %v connections, want the refused agents'", n)
	}
	if !strings.Contains(logs.String(), "tls handshake failed") || !strings.Contains(logs.String(), "client does not speak TLS") {
		t.Errorf("the writer's log does not say why it refused the agents")
	}

	admin := agent.p.AdminURL()
	if !strings.HasPrefix(admin, "https://") {
		t.Fatalf("agent admin URL %s", admin)
	}
	ac := p.httpsClient(agent.p.AdminAddr())
	defer ac.CloseIdleConnections()
	if code, _ := getWith(t, ac, admin+"/metrics", ""); code != http.StatusUnauthorized {
		t.Errorf("agent /metrics without a token: %d", code)
	}
	code, body := getWith(t, ac, admin+"/metrics", adminToken)
	if code != 200 || !strings.Contains(string(body), "freeway_agent_entries_shipped_total 1500") {
		t.Errorf("agent /metrics with the admin token: %d", code)
	}
	if code, _ := getWith(t, ac, admin+"/healthz", ""); code != 200 {
		t.Errorf("agent /healthz: %d", code)
	}
	for _, s := range p.secrets(t) {
		if strings.Contains(logs.String(), s) || strings.Contains(agentLogs.String(), s) || strings.Contains(string(body), s) {
			t.Fatalf("secret %q in a log or the metrics", s)
		}
	}
}

// TestPipelineOverTLSOnRealEngines runs the pipeline split into processes
// (agent, writer, Puma, serving) on the real engines with mutual TLS and
// tokens everywhere, and checks exact totals through HTTPS.
func TestPipelineOverTLSOnRealEngines(t *testing.T) {
	zk, hdfsAddr, hbase := engines(t)
	suffix := randomSuffix()
	p := newPKI(t)
	cfg := testConfig(t.TempDir())
	p.secure(&cfg)
	cfg.DFS = fmt.Sprintf("hdfs://%s/freeway-test/tls-%s", hdfsAddr, suffix)
	cfg.Store = fmt.Sprintf("hbase://%s/tls_%s_", hbase, suffix)
	cfg.Coord = fmt.Sprintf("zk://%s/freeway-test/tls-%s", zk, suffix)
	cfg.Calligraphus.SegmentMaxAge = config.Duration(300 * time.Millisecond)
	cfg.Puma.CheckpointInterval = config.Duration(500 * time.Millisecond)
	t.Cleanup(func() { removeTree(t, cfg.DFS) })

	logs := &testkit.LogBuffer{}
	writer := startSecure(t, cfg, Calligraphus, logs)
	defer writer.stop(t)
	agentCfg := cfg
	agentCfg.Agent.Upstream = []string{writer.p.Calligraphus.Addr()}
	agent := startSecure(t, agentCfg, Agent, logs)
	defer agent.stop(t)
	pm := startSecure(t, cfg, Puma, logs)
	defer pm.stop(t)
	srv := startSecure(t, cfg, Serving, logs)
	defer srv.stop(t)

	sent := orders(1200, 0, base)
	sendTLS(t, agent.p.Agent.Addr(), p.clientTLS.ClientConfig(agent.p.Agent.Addr()), sent, 200)
	hc := p.httpsClient(srv.p.Serving.Addr())
	defer hc.CloseIdleConnections()
	waitTotalsTLS(t, hc, srv.p.Serving.URL(), base, base+180, expected(sent))
	for _, s := range p.secrets(t) {
		if strings.Contains(logs.String(), s) {
			t.Fatalf("secret %q in the log", s)
		}
	}
}

// TestExposedListenersWarned: a listener bound beyond the local host
// without TLS gets a warning line; on loopback, or with TLS and tokens,
// none.
func TestExposedListenersWarned(t *testing.T) {
	p := newPKI(t)
	for _, tc := range []struct {
		name   string
		secure bool
		listen string
		want   bool
	}{
		{"loopback", false, "127.0.0.1:0", false},
		{"exposed", false, "0.0.0.0:0", true},
		{"exposed, secured", true, "0.0.0.0:0", false},
	} {
		cfg := testConfig(t.TempDir())
		cfg.Calligraphus.Listen = tc.listen
		cfg.Advertise = "127.0.0.1" // required of a listener on every interface
		if tc.secure {
			p.secure(&cfg)
		}
		logs := &testkit.LogBuffer{}
		r := startSecure(t, cfg, Calligraphus, logs)
		r.stop(t)
		got := strings.Contains(logs.String(), "listener open beyond the local host without tls")
		if got != tc.want {
			t.Errorf("%s: warned %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestBatchIdentityNeedsVerifiedCertificate: with client certificates
// verified (tls.ca_file) but not required, a batch sent twice by a
// client with a verified certificate counts once (its agent id and
// sequences are honoured), while the same from a client without one
// counts twice (taken as a stock client's, at-least-once).
func TestBatchIdentityNeedsVerifiedCertificate(t *testing.T) {
	p := newPKI(t)
	cfg := testConfig(t.TempDir())
	cfg.TLS = auth.TLSConfig{CertFile: p.node.CertFile, KeyFile: p.node.KeyFile, CAFile: p.ca.File}
	logs := &testkit.LogBuffer{}
	r := startSecure(t, cfg, All, logs)
	defer r.stop(t)
	addr := r.p.Calligraphus.Addr()
	roots := x509.NewCertPool()
	roots.AddCert(p.ca.Cert)
	batch := func(tc *tls.Config, agent string, os []order) {
		t.Helper()
		c, err := scribeapi.DialTLS(addr, tc, thriftsrv.Limits{}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var es []*scribethrift.LogEntry
		for _, o := range os {
			es = append(es, &scribethrift.LogEntry{Category: "orders", Message: o.json()})
		}
		inc := "run-1"
		b := &scribethrift.Batch{AgentID: agent, Incarnation: &inc, FirstSeq: 1, Messages: es, ReceivedAtMs: time.Now().UnixMilli()}
		for range 2 { // a retry after a lost answer
			if rc, err := c.LogBatch(context.Background(), b); err != nil || rc != scribethrift.ResultCode_OK {
				t.Fatalf("logbatch: %v %v", rc, err)
			}
		}
	}
	verified := orders(300, 0, base)
	batch(p.clientTLS.ClientConfig(addr), "dashboard", verified)
	anonymous := orders(200, 5, base)
	batch(&tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}, "anonymous", anonymous)
	want := append(append(verified, anonymous...), anonymous...)
	hc := p.httpsClient(r.p.Serving.Addr())
	defer hc.CloseIdleConnections()
	waitTotalsTLS(t, hc, r.p.Serving.URL(), base, base+180, expected(want))
	if n := gathered(t, r, "freeway_calligraphus_entries_unverified_total"); n != 400 {
		t.Errorf("unverified entries counted %v, want 400", n)
	}
}

// TestProbesWithoutClientCertificate: with mutual TLS (client_auth) and
// tokens, a health checker without a client certificate (a kubelet's
// httpGet probe) gets /healthz and /readyz of the serving port and of an
// agent's admin port, and nothing else (403: the API, the web page,
// /metrics, /debug/pprof/, POST /admin/reload, even with a valid token);
// with the client certificate every path answers as before; with a
// certificate of another CA the handshake fails; the Scribe and Thrift
// ports still refuse a client without a certificate.
func TestProbesWithoutClientCertificate(t *testing.T) {
	p := newPKI(t)
	cfg := testConfig(t.TempDir())
	p.secure(&cfg)
	cfg.Serving.Pprof = true
	logs := &testkit.LogBuffer{}
	node := startSecure(t, cfg, All, logs)
	defer node.stop(t)
	agentCfg := cfg
	agentCfg.DataDir = t.TempDir()
	agentCfg.Agent.Upstream = []string{node.p.Calligraphus.Addr()}
	agent := startSecure(t, agentCfg, Agent, &testkit.LogBuffer{})
	defer agent.stop(t)

	roots := x509.NewCertPool()
	roots.AddCert(p.ca.Cert)
	noCert := &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	probe := &http.Client{Transport: &http.Transport{TLSClientConfig: noCert}, Timeout: 30 * time.Second}
	defer probe.CloseIdleConnections()
	other := authtest.NewCA(t, p.dir, "other-ca").Issue(t, p.dir, "stranger")
	kp, err := tls.LoadX509KeyPair(other.CertFile, other.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	strangerTLS := noCert.Clone()
	strangerTLS.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &kp, nil }
	stranger := &http.Client{Transport: &http.Transport{TLSClientConfig: strangerTLS}, Timeout: 30 * time.Second}
	defer stranger.CloseIdleConnections()
	do := func(c *http.Client, method, u, token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, u, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, u, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}

	for _, port := range []struct{ name, base, addr string }{
		{"serving", node.p.Serving.URL(), node.p.Serving.Addr()},
		{"agent admin", agent.p.AdminURL(), agent.p.AdminAddr()},
	} {
		testkit.Eventually(t, port.name+" /readyz without a client certificate", func() error {
			if code, body := do(probe, "GET", port.base+"/readyz", ""); code != http.StatusOK {
				return fmt.Errorf("%d %s", code, body)
			}
			return nil
		})
		if code, body := do(probe, "GET", port.base+"/healthz", ""); code != http.StatusOK || body != "ok\n" {
			t.Errorf("%s /healthz without a client certificate: %d %q", port.name, code, body)
		}
		refused := []struct{ method, path, token string }{
			{"GET", "/metrics", ""}, {"GET", "/metrics", adminToken}, {"POST", "/admin/reload", adminToken},
		}
		if port.name == "serving" {
			refused = append(refused, []struct{ method, path, token string }{
				{"GET", "/api/v1/query?app=orders&from=0&to=60", queryToken}, {"GET", "/api/v1/apps", queryToken},
				{"GET", "/", queryToken}, {"GET", "/debug/pprof/", adminToken}, {"GET", "/debug/pprof/cmdline", adminToken},
			}...)
		}
		for _, r := range refused {
			code, body := do(probe, r.method, port.base+r.path, r.token)
			var e map[string]string
			if code != http.StatusForbidden || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e["error"], "client certificate") {
				t.Errorf("%s %s %s without a client certificate: %d %s, want 403 naming the certificate", port.name, r.method, r.path, code, body)
			}
		}
		// With the client certificate (and the tokens), as before.
		hc := p.httpsClient(port.addr)
		allowed := []struct{ path, token string }{{"/healthz", ""}, {"/readyz", ""}, {"/metrics", adminToken}}
		if port.name == "serving" {
			allowed = append(allowed, []struct{ path, token string }{
				{"/api/v1/apps", queryToken}, {"/debug/pprof/cmdline", adminToken},
			}...)
		}
		for _, a := range allowed {
			if code, body := do(hc, "GET", port.base+a.path, a.token); code != http.StatusOK {
				t.Errorf("%s %s with the client certificate: %d %s", port.name, a.path, code, body)
			}
		}
		hc.CloseIdleConnections()
		for _, path := range []string{"/healthz", "/metrics"} {
			if resp, err := stranger.Get(port.base + path); err == nil {
				resp.Body.Close()
				t.Errorf("%s %s with a certificate of another CA: %d, want a refused handshake", port.name, path, resp.StatusCode)
			}
		}
	}

	// The Scribe and Thrift ports still require a certificate: the
	// handshake (or, with TLS 1.3, the first call) fails. With TLS 1.3 the
	// server's "certificate required" alert may be lost to a write that
	// finds the connection closed (broken pipe, reset): any error counts
	// but one from past the TLS layer (the call answered or refused on
	// its token), which only a connection let in could give.
	refused := func(err error) bool {
		return err != nil && !strings.Contains(err.Error(), "token") && !strings.Contains(err.Error(), "unauthori")
	}
	for name, addr := range map[string]string{"agent": agent.p.Agent.Addr(), "writer": node.p.Calligraphus.Addr()} {
		c, err := scribeapi.DialTLS(addr, noCert, thriftsrv.Limits{}, 10*time.Second)
		if err == nil {
			_, err = c.Log(context.Background(), []*scribethrift.LogEntry{{Category: "orders", Message: orders(1, 0, base)[0].json()}})
			c.Close()
		}
		if !refused(err) {
			t.Errorf("%s port, a client without a certificate: %v, want a refused handshake", name, err)
		}
	}
	c, err := thriftsrv.DialTLS(node.p.Serving.ThriftAddr(), noCert, thriftsrv.Limits{}, 10*time.Second)
	if err == nil {
		err = freeway.NewQueryClient(c.TClient()).Authenticate(context.Background(), queryToken)
		c.Close()
	}
	if !refused(err) {
		t.Errorf("thrift query port, a client without a certificate: %v, want a refused handshake", err)
	}
}
