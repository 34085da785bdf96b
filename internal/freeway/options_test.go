package freeway

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/config"
)

func TestOptionsAreFlatWithoutSecrets(t *testing.T) {
	cfg := DefaultConfig()
	cfg.DFS = "hdfs://alice:s3cret@nn:9000/freeway?user=alice&token=abc"
	cfg.Coord = "zk://127.0.0.1:2181/freeway"
	cfg.Categories = map[string]CategoryConfig{"access": {Buckets: 2, ShardKey: []string{"path"}}}
	cfg.Apps = []apps.Spec{{Name: "hits", Category: "access", Aggregates: []apps.AggregateSpec{{Name: "n", Fn: "count"}}}}
	opts := flatOptions(cfg)
	for k, want := range map[string]string{
		"agent.listen":                "127.0.0.1:1463",
		"agent.upstream":              "127.0.0.1:1464",
		"agent.max_call_bytes":        "64MiB",
		"calligraphus.idle_timeout":   "10m",
		"max_inflight_bytes":          "256MiB",
		"categories.access.buckets":   "2",
		"categories.access.shard_key": "path",
		"apps[0].name":                "hits",
		"apps[0].aggregates[0].fn":    "count",
		"coord":                       "zk://127.0.0.1:2181/freeway",
	} {
		if opts[k] != want {
			t.Errorf("%s = %q, want %q", k, opts[k], want)
		}
	}
	for k, v := range opts {
		if strings.Contains(v, "s3cret") || strings.Contains(v, "abc") {
			t.Errorf("%s = %q leaks a secret", k, v)
		}
	}
	if !strings.Contains(opts["dfs"], "alice:redacted@nn:9000") || !strings.Contains(opts["dfs"], "user=alice") {
		t.Errorf("dfs = %q", opts["dfs"])
	}
	if got := redact("store.password", "hunter2"); got != "(redacted)" {
		t.Errorf("a password key: %q", got)
	}
	// Keys naming files show their paths (never the files' contents).
	cfg.TLS = auth.TLSConfig{CertFile: "/etc/freeway/node.crt", KeyFile: "/etc/freeway/node.key", CAFile: "/etc/freeway/ca.crt", ClientAuth: true}
	cfg.Auth = auth.Config{QueryTokensFile: "/etc/freeway/query-tokens", AdminTokenFile: "/etc/freeway/admin-token"}
	opts = flatOptions(cfg)
	for k, want := range map[string]string{
		"tls.cert_file": "/etc/freeway/node.crt", "tls.key_file": "/etc/freeway/node.key", "tls.ca_file": "/etc/freeway/ca.crt",
		"tls.client_auth": "true", "auth.query_tokens_file": "/etc/freeway/query-tokens", "auth.admin_token_file": "/etc/freeway/admin-token",
		"agent.tls": "true",
	} {
		if opts[k] != want {
			t.Errorf("%s = %q, want %q", k, opts[k], want)
		}
	}
	if got := redact("auth.admin_token", "hunter2"); got != "(redacted)" {
		t.Errorf("a token key: %q", got)
	}
}

func TestInflightBudgetValidated(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxInflightBytes = 64 << 20
	err := cfg.Validate()
	if err == nil || !strings.HasPrefix(err.Error(), "max_inflight_bytes: must be at least") || !strings.Contains(err.Error(), "max_call_bytes 64MiB") {
		t.Fatalf("a budget smaller than a call: %v", err)
	}
	cfg = DefaultConfig()
	cfg.Calligraphus.MaxCallBytes = 200 << 20
	cfg.Calligraphus.MaxPendingBytes = 200 << 20
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "calligraphus.max_call_bytes 200MiB") {
		t.Fatalf("a budget smaller than calligraphus's calls: %v", err)
	}
	cfg.MaxInflightBytes = 1 << 30
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

// TestReplacedKeysSaySo: a file still using calligraphus.max_frame_bytes
// or max_message_bytes is refused with the key that replaced them, at
// the line of the old key.
func TestReplacedKeysSaySo(t *testing.T) {
	dir := t.TempDir()
	for key, want := range map[string]string{
		"max_frame_bytes":   "replaced by calligraphus.max_call_bytes",
		"max_message_bytes": "a message is bounded by calligraphus.max_call_bytes",
	} {
		f := filepath.Join(dir, key+".yaml")
		if err := os.WriteFile(f, []byte("calligraphus:\n  listen: 127.0.0.1:1464\n  "+key+": 16MiB\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := LoadFile(f)
		var ce *config.Error
		if err == nil || !strings.Contains(err.Error(), want) || !asConfigError(err, &ce) || ce.Line != 3 {
			t.Errorf("%s: %v", key, err)
		}
	}
}

func asConfigError(err error, target **config.Error) bool {
	ce, ok := err.(*config.Error)
	*target = ce
	return ok
}

// TestCategoryErrorsAtTheirKey: an error about a category whose name a
// YAML path would misread ("web.v2", "0[0") points at its own key. A
// name with "[" crashed go-yaml's path parser (found by FuzzConfig).
func TestCategoryErrorsAtTheirKey(t *testing.T) {
	for name, want := range map[string]int{"plain": 20, "web.v2": 21, "0[0": 18, "a b": 18} {
		src := "buckets: 2\ncategories:\n  " + name + ": {buckets: -1}\n"
		cfg := DefaultConfig()
		err := config.Decode("c.yaml", []byte(src), &cfg, cfg.Validate)
		var ce *config.Error
		if !asConfigError(err, &ce) || ce.Line != 3 || ce.Column != want || !strings.Contains(ce.Msg, "buckets: must be between 1 and 4096") {
			t.Errorf("%s: %v, want line 3 column %d", name, err, want)
		}
	}
}

// TestInflightBudgetErrorAtTheCall: a max_call_bytes that the default
// max_inflight_bytes cannot hold is reported at max_call_bytes, the key
// the file sets (found by FuzzConfig: the error had no position).
func TestInflightBudgetErrorAtTheCall(t *testing.T) {
	src := "calligraphus:\n  max_call_bytes: 200MiB\n  max_pending_bytes: 200MiB\n"
	cfg := DefaultConfig()
	err := config.Decode("c.yaml", []byte(src), &cfg, cfg.Validate)
	var ce *config.Error
	if !asConfigError(err, &ce) || ce.Line != 2 || ce.Column != 19 || !strings.Contains(ce.Msg, "max_inflight_bytes: must be at least") {
		t.Fatalf("%v, want line 2 column 19", err)
	}
}

// TestForwardTimeoutBelowUpstreamTimeout: a file whose writers' forward
// timeout is not below its agents' upstream timeout is refused at the
// key it sets, forward_timeout or, left at its default, upstream_timeout;
// the defaults are ordered. The code before took both unchecked.
func TestForwardTimeoutBelowUpstreamTimeout(t *testing.T) {
	if cfg := DefaultConfig(); cfg.Validate() != nil || cfg.Calligraphus.ForwardTimeout >= cfg.Agent.UpstreamTimeout {
		t.Fatalf("defaults: forward %v, upstream %v: %v", cfg.Calligraphus.ForwardTimeout, cfg.Agent.UpstreamTimeout, cfg.Validate())
	}
	for _, c := range []struct {
		src          string
		line, column int
	}{
		{"agent:\n  upstream_timeout: 5s\n", 2, 21},                                       // forward_timeout 10s by default
		{"agent:\n  upstream_timeout: 5s\ncalligraphus:\n  forward_timeout: 5s\n", 4, 20}, // equal
		{"calligraphus:\n  forward_timeout: 40s\n", 2, 20},                                // upstream_timeout 30s by default
	} {
		cfg := DefaultConfig()
		err := config.Decode("c.yaml", []byte(c.src), &cfg, cfg.Validate)
		var ce *config.Error
		if !asConfigError(err, &ce) || ce.Line != c.line || ce.Column != c.column || !strings.Contains(ce.Msg, "must be below agent.upstream_timeout") {
			t.Errorf("%q: %v, want line %d column %d", c.src, err, c.line, c.column)
		}
	}
	cfg := DefaultConfig()
	if err := config.Decode("c.yaml", []byte("agent:\n  upstream_timeout: 5s\ncalligraphus:\n  forward_timeout: 3s\n"), &cfg, cfg.Validate); err != nil {
		t.Fatalf("ordered timeouts refused: %v", err)
	}
}

// TestAgentBatchesFitTheWriters: a file whose agents could send a writer
// a call larger than its max_call_bytes (a batch of agent.batch_bytes, or
// an app's entry of up to agent.max_call_bytes) is refused, naming both
// keys, at the one it sets. The code before took them: the writer
// answered such a batch TRY_LATER (too_large) at every retry, and the
// agent's queue stopped behind it.
func TestAgentBatchesFitTheWriters(t *testing.T) {
	for _, c := range []struct {
		src          string
		line, column int
		want         string
	}{
		{"calligraphus:\n  max_call_bytes: 512KiB\n  max_pending_bytes: 1MiB\n", 2, 19, "batch_bytes: 1MiB must not exceed calligraphus.max_call_bytes 512KiB"},
		{"agent:\n  batch_bytes: 2MiB\ncalligraphus:\n  max_call_bytes: 1MiB\n", 2, 16, "batch_bytes: 2MiB must not exceed calligraphus.max_call_bytes 1MiB"},
		{"agent:\n  max_call_bytes: 65MiB\n", 2, 19, "max_call_bytes: 65MiB must not exceed calligraphus.max_call_bytes 64MiB"},
	} {
		cfg := DefaultConfig()
		cfg.MaxInflightBytes = 1 << 30
		err := config.Decode("c.yaml", []byte(c.src), &cfg, cfg.Validate)
		var ce *config.Error
		if !asConfigError(err, &ce) || ce.Line != c.line || ce.Column != c.column || !strings.Contains(ce.Msg, c.want) {
			t.Errorf("%q: %v, want %q at line %d column %d", c.src, err, c.want, c.line, c.column)
		}
	}
	cfg := DefaultConfig()
	if err := config.Decode("c.yaml", []byte("agent:\n  batch_bytes: 4MiB\n  max_call_bytes: 4MiB\ncalligraphus:\n  max_call_bytes: 4MiB\n  max_pending_bytes: 4MiB\n"), &cfg, cfg.Validate); err != nil {
		t.Fatalf("equal limits refused: %v", err)
	}
}

// TestWhereErrorAtItsColumn: an app's where expression that does not
// parse is reported at the file's column of the fault, not at the
// value's start with a second column within it ("5:12: ... column 11").
func TestWhereErrorAtItsColumn(t *testing.T) {
	for where, want := range map[string]struct {
		col int
		msg string
	}{
		`status >= and x`:     {22, `apps[0].where: expected a field or a value, found "and"`},
		`'status > 3 and (x'`: {30, `apps[0].where: expected ')'`},
		`"a == \"b"`:          {12, `apps[0].where: column 6: unterminated string`}, // an escape: no column of the file is the expression's
	} {
		src := "apps:\n  - name: a\n    category: c\n    format: json\n    where: " + where + "\n    aggregates: [{fn: count}]\n"
		cfg := DefaultConfig()
		err := config.Decode("c.yaml", []byte(src), &cfg, cfg.Validate)
		var ce *config.Error
		if !asConfigError(err, &ce) || ce.Line != 5 || ce.Column != want.col || ce.Msg != want.msg {
			t.Errorf("where %s: %v, want line 5 column %d: %s", where, err, want.col, want.msg)
		}
	}
}

// TestBackendURLsAndAddressesCheckedInTheFile: a backend URL no backend
// can open, or a listen address that is not host:port, is refused by the
// configuration check at its key; "freeway config check" said ok and
// the start failed with no position in the file.
func TestBackendURLsAndAddressesCheckedInTheFile(t *testing.T) {
	for src, want := range map[string]string{
		"dfs: /data/freeway\n":                  `dfs: bad URL "/data/freeway": no scheme`,
		"store: redis://x\n":                    `store: unknown scheme "redis"`,
		"coord: zk://127.0.0.1:2181\n":          "coord: parse zk URL",
		"dfs: hdfs://\n":                        "dfs: ",
		"store: hbase:///x\n":                   "store: ",
		"serving:\n  listen: \"8080\"\n":        `serving.listen: must be host:port`,
		"serving:\n  thrift_listen: nohost\n":   `serving.thrift_listen: must be host:port`,
		"calligraphus:\n  listen: \":99999\"\n": `calligraphus.listen: must be host:port`,
		"puma:\n  listen: nohost\n":             `puma.listen: must be host:port`,
	} {
		cfg := DefaultConfig()
		err := config.Decode("c.yaml", []byte(src), &cfg, cfg.Validate)
		var ce *config.Error
		if !asConfigError(err, &ce) || ce.Line == 0 || !strings.HasPrefix(ce.Msg, want) {
			t.Errorf("%q: %v, want at its line: %s", src, err, want)
		}
	}
	// What the backends take, and no listener, pass.
	cfg := DefaultConfig()
	src := "dfs: hdfs://127.0.0.1:9000/freeway\nstore: hbase://127.0.0.1:9090\ncoord: zk://127.0.0.1:2181/freeway\n" +
		"puma:\n  listen: \"\"\nserving:\n  listen: \"[::1]:0\"\n  thrift_listen: \"\"\n"
	if err := config.Decode("c.yaml", []byte(src), &cfg, cfg.Validate); err != nil {
		t.Fatalf("valid URLs and addresses refused: %v", err)
	}
}
