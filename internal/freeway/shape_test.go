package freeway

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

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
