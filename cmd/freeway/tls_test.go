package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// readmeRecipe is the shell block under "Making certificates with
// openssl" in the README, so that the test runs what users copy.
func readmeRecipe(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "### Making certificates with openssl")
	if !ok {
		t.Fatal("README has no openssl section")
	}
	_, rest, ok = strings.Cut(rest, "```sh\n")
	if !ok {
		t.Fatal("README's openssl section has no sh block")
	}
	recipe, _, ok := strings.Cut(rest, "```")
	if !ok {
		t.Fatal("README's openssl block is not closed")
	}
	return recipe
}

// TestTLSWithOpensslCertificates makes certificates and tokens with the
// README's openssl commands, runs `freeway all` with mutual TLS and both
// tokens on them, and checks: an app logs over TLS with the client
// certificate, the query answers over HTTPS with the query token and is
// refused without it, /metrics needs the admin token, a client without
// a certificate gets /healthz and /readyz only, fb303 control calls
// are refused while POST /admin/reload and /admin/shutdown work with the
// admin token; no token or key is in the output or the metrics.
func TestTLSWithOpensslCertificates(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (scripts/deps.sh installs it)")
	}
	bin := freewayBinary(t)
	dir := t.TempDir()
	recipe := exec.Command("bash", "-euo", "pipefail", "-c", readmeRecipe(t))
	recipe.Dir = dir
	if out, err := recipe.CombinedOutput(); err != nil {
		t.Fatalf("the README's openssl commands: %v\n%s", err, out)
	}
	file := func(name string) string { return filepath.Join(dir, name) }
	read := func(name string) string {
		b, err := os.ReadFile(file(name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	queryToken, adminToken := read("query-tokens"), read("admin-token")

	ports := freePorts(t, 4)
	agent := fmt.Sprintf("127.0.0.1:%d", ports[0])
	api := fmt.Sprintf("127.0.0.1:%d", ports[2])
	cfgFile := file("freeway.yaml")
	cfg := fmt.Sprintf(`data_dir: %s
tls:
  cert_file: %s
  key_file: %s
  ca_file: %s
  client_auth: true
auth:
  query_tokens_file: %s
  admin_token_file: %s
agent: {listen: "127.0.0.1:%d"}
calligraphus: {listen: "127.0.0.1:%d"}
serving: {listen: "127.0.0.1:%d", thrift_listen: "127.0.0.1:%d"}
apps:
  - name: hits
    category: web
    aggregates: [{name: n, fn: count}]
`, file("data"), file("node.crt"), file("node.key"), file("ca.crt"), file("query-tokens"), file("admin-token"), ports[0], ports[1], ports[2], ports[3])
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	check := exec.Command(bin, "config", "check", cfgFile)
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("config check: %v\n%s", err, out)
	}

	client, err := auth.NewTLS(auth.TLSConfig{CertFile: file("client.crt"), KeyFile: file("client.key"), CAFile: file("ca.crt")}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: client.ClientConfig(api)}, Timeout: 30 * time.Second}
	defer hc.CloseIdleConnections()
	do := func(method, path, token string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "https://"+api+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}

	cmd := exec.Command(bin, "all", "--config", cfgFile)
	p := &proc{cmd: cmd, out: &testkit.LogBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill() // it may have exited already
		<-p.exited
		if t.Failed() {
			t.Logf("freeway output:\n%s", p.out.String())
		}
	})
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for !cond() {
			select {
			case <-p.exited:
				t.Fatalf("freeway exited (%v) before %s", p.err, what)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("readiness over HTTPS", func() bool { code, _ := do("GET", "/readyz", ""); return code == 200 })
	p.waitOutput(t, "url=https://"+api+"/")

	// An app logs over TLS with its certificate; a plaintext one is refused.
	if c, err := scribeapi.Dial(agent, thriftsrv.Limits{}, 5*time.Second); err == nil {
		_, err = c.Log(context.Background(), []*scribethrift.LogEntry{{Category: "web", Message: []byte("x")}})
		c.Close()
		if err == nil {
			t.Fatal("a plaintext app was served")
		}
	}
	c, err := scribeapi.DialTLS(agent, client.ClientConfig(agent), thriftsrv.Limits{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if rc, err := c.Log(context.Background(), []*scribethrift.LogEntry{{Category: "web", Message: []byte(`{"path": "/"}`)}}); err != nil || rc != scribethrift.ResultCode_OK {
			t.Fatalf("log over TLS: %v %v", rc, err)
		}
	}
	query := "/api/v1/query?app=hits&window=all&group_by=&from=0"
	waitFor("the five entries in the answer", func() bool {
		code, body := do("GET", query, queryToken)
		if code != 200 {
			t.Fatalf("query with the token: %d %s", code, body)
		}
		var a struct {
			Rows []struct{ Values map[string]float64 }
		}
		if err := json.Unmarshal([]byte(body), &a); err != nil {
			t.Fatalf("query answer %s: %v", body, err)
		}
		return len(a.Rows) == 1 && a.Rows[0].Values["n"] == 5
	})
	if code, body := do("GET", query, ""); code != 401 || !strings.Contains(body, `"error"`) {
		t.Fatalf("query without a token: %d %s", code, body)
	}
	if code, _ := do("GET", "/metrics", queryToken); code != 401 {
		t.Fatalf("/metrics with the query token: %d", code)
	}
	code, metrics := do("GET", "/metrics", adminToken)
	if code != 200 || !strings.Contains(metrics, "freeway_agent_entries_shipped_total 5") {
		t.Fatalf("/metrics with the admin token: %d", code)
	}
	// Without a client certificate (a kubelet's probe) the HTTPS port
	// answers /healthz and /readyz, and 403 to anything else, tokens or
	// not.
	bare := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: client.ClientConfig(api).RootCAs}}, Timeout: 30 * time.Second}
	defer bare.CloseIdleConnections()
	for _, tc := range []struct {
		path, token string
		want        int
	}{{"/healthz", "", 200}, {"/readyz", "", 200}, {"/metrics", adminToken, 403}, {query, queryToken, 403}} {
		req, _ := http.NewRequest("GET", "https://"+api+tc.path, nil)
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := bare.Do(req)
		if err != nil {
			t.Fatalf("%s without a client certificate: %v", tc.path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Fatalf("%s without a client certificate: %d, want %d", tc.path, resp.StatusCode, tc.want)
		}
	}

	// fb303 control calls are refused (they cannot carry the token);
	// the HTTP control endpoints take it.
	// (reinitialize is oneway: the refusal shows in the log.)
	if err := c.Reinitialize(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.Close()
	p.waitOutput(t, "fb303 control call refused: an admin token is configured")
	if strings.Contains(p.out.String(), "reloading configuration") {
		t.Fatal("fb303 reinitialize reloaded with an admin token configured")
	}
	if code, _ := do("POST", "/admin/reload", ""); code != 401 {
		t.Fatalf("reload without the admin token: %d", code)
	}
	if code, body := do("POST", "/admin/reload", adminToken); code != 202 {
		t.Fatalf("reload: %d %s", code, body)
	}
	p.waitOutput(t, "configuration reloaded")
	waitFor("readiness after the reload", func() bool { code, _ := do("GET", "/readyz", ""); return code == 200 })
	if code, body := do("POST", "/admin/shutdown", adminToken); code != 202 {
		t.Fatalf("shutdown: %d %s", code, body)
	}
	p.stopped(t)

	secrets := []string{queryToken, adminToken}
	for _, key := range []string{"node.key", "client.key", "ca.key"} {
		lines := strings.Split(read(key), "\n")
		secrets = append(secrets, lines[1][:40])
	}
	for _, s := range secrets {
		if strings.Contains(p.out.String(), s) || strings.Contains(metrics, s) {
			t.Fatalf("a secret (%.6s...) is in the output or the metrics", s)
		}
	}
}
