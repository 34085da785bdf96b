package freeway

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/internal/version"
)

// startWith runs target with opts (Log, AdminListen) on cfg.
func startWith(t *testing.T, cfg Config, target string, opts Options) *running {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.Resolve()
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	p, err := New(cfg, target, opts)
	if err != nil {
		t.Fatalf("start %s: %v", target, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{p: p, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- p.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// TestOneVersion: every Scribe port's fb303 getVersion and /metrics'
// freeway_build_info say the version `freeway version` prints
// (version.Get()), and the one given in Options when there is one. The
// agent used to answer its own, "(devel)", where `freeway version` said
// "dev".
func TestOneVersion(t *testing.T) {
	for _, give := range []string{"", "v9.8.7"} {
		want := version.Or(give)
		r := startWith(t, testConfig(t.TempDir()), All, Options{Version: give, AdminListen: "off"})
		for name, addr := range map[string]string{"agent": r.p.Agent.Addr(), "calligraphus": r.p.Calligraphus.Addr()} {
			c, err := scribeapi.Dial(addr, thriftsrv.Limits{}, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			v, err := c.GetVersion(context.Background())
			c.Close()
			if err != nil || v != want {
				t.Errorf("version %q: %s getVersion = %q, %v; want %q", give, name, v, err, want)
			}
		}
		code, body := getBody(t, r.p.Serving.URL()+"/metrics")
		if line := `freeway_build_info{goversion=`; code != 200 || !strings.Contains(body, line) || !strings.Contains(body, `version="`+want+`"} 1`) {
			t.Errorf("version %q: /metrics (%d) has no freeway_build_info for %q", give, code, want)
		}
	}
	if version.Get() != version.Dev {
		t.Fatalf("a test binary's version is %q", version.Get())
	}
}

// TestSectionErrorsAtTheirKey: the components validate at paths relative
// to their sections, and the wiring places each error under its section,
// so that a file is still reported at the line and column of the key.
func TestSectionErrorsAtTheirKey(t *testing.T) {
	for _, tc := range []struct {
		src, want string
		line, col int
	}{
		{"agent:\n  batch_bytes: 32MiB\n", "agent.batch_bytes: must be at most", 2, 16},
		{"agent:\n  tail:\n    - {category: x}\n", "agent.tail[0].path: must be set", 3, 7},
		{"agent:\n  max_connections: 0\n", "agent.max_connections: must be between", 2, 20},
		{"calligraphus:\n  linger: -1s\n", "calligraphus.linger: must not be negative", 2, 11},
		{"puma:\n  max_cells: 0\n", "puma.max_cells: must be at least 1", 2, 14},
		{"serving:\n  max_rows: 0\n", "serving.max_rows: must be positive", 2, 13},
		{"copier:\n  destination: s3://x\n", "copier.destination: want a file:// or hdfs:// URL", 2, 16},
	} {
		cfg := DefaultConfig()
		err := config.Decode("c.yaml", []byte(tc.src), &cfg, cfg.Validate)
		var ce *config.Error
		if !asConfigError(err, &ce) || ce.Line != tc.line || ce.Column != tc.col || !strings.HasPrefix(ce.Msg, tc.want) {
			t.Errorf("%q: %v, want %q at %d:%d", tc.src, err, tc.want, tc.line, tc.col)
		}
	}
}

// TestAdminEndpointsAnswerAlike: the admin listener of a target without
// serving and the serving port answer the operator endpoints with the
// same code and body (they are internal/admin's on both). The admin
// listener used to answer a wrong method or path in net/http's plain
// text, the serving port in JSON.
func TestAdminEndpointsAnswerAlike(t *testing.T) {
	cfg := testConfig(t.TempDir())
	agent := startWith(t, cfg, Agent, Options{AdminListen: "127.0.0.1:0"})
	srv := startWith(t, cfg, Serving, Options{AdminListen: "127.0.0.1:0"})
	if srv.p.AdminAddr() != "" {
		t.Fatal("the serving target has an admin listener too")
	}
	do := func(base, method, path string) (int, string) {
		req, _ := http.NewRequest(method, base+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type") + " " + string(b)
	}
	for _, rq := range [][2]string{
		{"GET", "/healthz"}, {"GET", "/readyz"}, {"POST", "/healthz"}, {"DELETE", "/metrics"},
		{"GET", "/admin/reload"}, {"GET", "/admin/shutdown"},
	} {
		ac, ab := do(agent.p.AdminURL(), rq[0], rq[1])
		sc, sb := do(srv.p.Serving.URL(), rq[0], rq[1])
		if ac != sc || ab != sb {
			t.Errorf("%s %s: admin listener %d %q, serving %d %q", rq[0], rq[1], ac, ab, sc, sb)
		}
	}
	for _, base := range []string{agent.p.AdminURL(), srv.p.Serving.URL()} {
		if code, body := do(base, "GET", "/nope"); code != 404 || !strings.HasPrefix(body, `application/json {"error":"no such endpoint GET /nope`) {
			t.Errorf("%s/nope: %d %q", base, code, body)
		}
		if code, body := do(base, "GET", "/metrics"); code != 200 || !strings.Contains(body, "freeway_build_info") {
			t.Errorf("%s/metrics: %d", base, code)
		}
	}
}
