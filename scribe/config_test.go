package scribe

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/freeway-dev/freeway/internal/config"
)

func TestDefaultConfigIsValid(t *testing.T) {
	cfg := DefaultConfig()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestValidateNamesTheKey(t *testing.T) {
	cases := []struct {
		mut  func(*Config)
		want string
	}{
		{func(c *Config) { c.Listen = "1463" }, "agent.listen: must be host:port"},
		{func(c *Config) { c.Upstream = nil }, "agent.upstream: must list at least one"},
		{func(c *Config) { c.Upstream = []string{"a:1", "nope"} }, "agent.upstream[1]: must be host:port"},
		{func(c *Config) { c.MaxQueueBytes = 0 }, "agent.max_queue_bytes: must be positive"},
		{func(c *Config) { c.QueueCompressAbove = -1 }, "agent.queue_compress_above: must not be negative"},
		{func(c *Config) { c.BatchBytes = 16 << 20 }, "agent.batch_bytes: must be at most 16320KiB, below the 16MiB Thrift frame limit"},
		{func(c *Config) { c.MaxMessageBytes = 2 << 20 }, "agent.max_message_bytes: must not exceed agent.batch_bytes (1MiB)"},
		{func(c *Config) { c.BatchEntries = 0 }, "agent.batch_entries: must be between 1 and"},
		{func(c *Config) { c.MaxInFlight = 0 }, "agent.max_in_flight: must be between 1 and 64"},
		{func(c *Config) { c.MaxInFlight = 65 }, "agent.max_in_flight: must be between 1 and 64"},
		{func(c *Config) { c.SeqWindow = 0 }, "agent.seq_window: must be between 1 and 131072"},
		{func(c *Config) { c.SeqWindow = 131073 }, "agent.seq_window: must be between 1 and 131072"},
		{func(c *Config) { c.SegmentBytes = 100 }, "agent.segment_bytes: must be at least 4KiB"},
		{func(c *Config) { c.RetryMax = c.RetryMin / 2 }, "agent.retry_max: must be at least agent.retry_min (50ms)"},
		{func(c *Config) { c.TailPollInterval = 0 }, "agent.tail_poll_interval: must be positive"},
		{func(c *Config) { c.TailRotateWait = -1 }, "agent.tail_rotate_wait: must not be negative"},
		{func(c *Config) { c.Tail = []TailConfig{{Path: "/a", Category: "x"}, {Path: "/b/../a", Category: "y"}} }, "agent.tail[1].path: /b/../a is tailed twice"},
		{func(c *Config) { c.Tail = []TailConfig{{Path: "/a", Category: ""}} }, "agent.tail[0].category: must be set"},
		{func(c *Config) { c.Tail = []TailConfig{{Category: "x"}} }, "agent.tail[0].path: must be set"},
		{func(c *Config) { c.Tail = []TailConfig{{Path: "/var/log/*.log", Category: "x"}} }, "agent.tail[0].path: /var/log/*.log is a pattern"},
		{func(c *Config) { c.MaxCallBytes = 300 << 20 }, "agent.max_call_bytes: must be between 1KiB and 256MiB"},
		{func(c *Config) { c.MaxConnections = 0 }, "agent.max_connections: must be between 1 and"},
		{func(c *Config) { c.IdleTimeout = 0 }, "agent.idle_timeout: must be at least 1ms"},
		{func(c *Config) { c.ReadTimeout = 0 }, "agent.read_timeout: must be at least 1ms"},
	}
	for _, tc := range cases {
		cfg := DefaultConfig()
		tc.mut(&cfg)
		// Validate names the key relative to the agent's section; the
		// wiring places it under "agent".
		err := cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(tc.want, "agent.")) {
			t.Errorf("Validate = %v, want %q", err, strings.TrimPrefix(tc.want, "agent."))
			continue
		}
		var fe *config.FieldError
		if !errors.As(err, &fe) || fe.Path == "" || strings.HasPrefix(fe.Path, "$") {
			t.Errorf("%v is not a FieldError at a path relative to the section", err)
		}
		placed := config.Under("$.agent", err)
		if !strings.Contains(placed.Error(), tc.want) || !errors.As(placed, &fe) || !strings.HasPrefix(fe.Path, "$.agent.") {
			t.Errorf("placed under $.agent: %v, want %q", placed, tc.want)
		}
	}
}

// Any category stock Scribe accepts can be tailed into.
func TestTailCategoryMayBeAnyNonEmptyString(t *testing.T) {
	for _, cat := range []string{"web/access", "a b", "_internal", strings.Repeat("c", 1000)} {
		cfg := DefaultConfig()
		cfg.Tail = []TailConfig{{Path: "/var/log/app.log", Category: cat}}
		if err := cfg.Validate(); err != nil {
			t.Errorf("tail category %.20q: %v", cat, err)
		}
	}
}

func TestConfigFromYAML(t *testing.T) {
	doc := `
listen: 0.0.0.0:1463
upstream: [10.0.0.1:1464, 10.0.0.2:1464]
queue_dir: /var/lib/freeway/agent
max_queue_bytes: 2GiB
queue_compress: false
queue_compress_above: 16MiB
max_message_bytes: 64KiB
batch_bytes: 4MiB
batch_entries: 20000
max_in_flight: 8
retry_max: 10s
max_call_bytes: 128MiB
max_connections: 50
idle_timeout: 1m
read_timeout: 5s
tail:
  - {path: /var/log/nginx/access.log, category: access}
`
	cfg := DefaultConfig()
	if err := config.Decode("agent.yaml", []byte(doc), &cfg, cfg.Validate); err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.Listen = "0.0.0.0:1463"
	want.Upstream = []string{"10.0.0.1:1464", "10.0.0.2:1464"}
	want.QueueDir = "/var/lib/freeway/agent"
	want.MaxQueueBytes = 2 << 30
	want.QueueCompress = false
	want.QueueCompressAbove = 16 << 20
	want.MaxMessageBytes = 64 << 10
	want.BatchBytes = 4 << 20
	want.BatchEntries = 20000
	want.MaxInFlight = 8
	want.RetryMax = want.RetryMax * 2
	want.MaxCallBytes = 128 << 20
	want.MaxConnections = 50
	want.IdleTimeout = config.Duration(time.Minute)
	want.ReadTimeout = config.Duration(5 * time.Second)
	want.Tail = []TailConfig{{Path: "/var/log/nginx/access.log", Category: "access"}}
	if d := cmp.Diff(want, cfg); d != "" {
		t.Fatalf("decoded config (-want +got):\n%s", d)
	}
	if err := config.Decode("agent.yaml", []byte("batch_sizes: 1\n"), &cfg, nil); err == nil {
		t.Fatal("an unknown key was accepted")
	}
}
